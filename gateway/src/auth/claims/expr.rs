//! Claims authorization expressions, in Traefik Hub's language.
//!
//! ```text
//! Equals(`grp`, `admin`) && (Prefix(`iss`, `https://`) || !Contains(`aud`, `legacy`))
//! ```
//!
//! Grammar (`!` binds tighter than `&&`, which binds tighter than `||`):
//!
//! ```text
//! expr    = and *( "||" and )
//! and     = unary *( "&&" unary )
//! unary   = "!" unary / "(" expr ")" / call
//! call    = name "(" string *( "," string ) ")"
//! string  = "`" raw "`" / DQUOTE escaped DQUOTE      ; as in Go, like Traefik's rules
//! ```
//!
//! The first argument of every function is a claim name; dots descend into objects
//! (`realm.roles`). What each function means for strings, scalars and arrays:
//!
//! | function | string claim | number / bool | array claim |
//! |---|---|---|---|
//! | `Equals(c, v)` | `c == v` | printed form `== v` | some element equals `v` |
//! | `Prefix(c, v)` | starts with `v` | printed form starts with `v` | some element starts with `v` |
//! | `Contains(c, v)` | has substring `v` | printed form has substring `v` | some element equals `v` |
//! | `SplitContains(c, sep, v)` | split on `sep`, some part equals `v` | as string | some element, split, does |
//! | `OneOf(c, v1, v2, ...)` | equals one of the values | printed form does | some element does |
//!
//! A missing claim, `null` or an object makes every function false. Expressions are compiled
//! once, at configuration load; evaluation allocates nothing.

use std::fmt;

use serde_json::{Map, Value};

use super::lookup;

/// Deepest nesting of `(` and `!` accepted: far beyond any real policy, and it keeps a
/// hostile configuration from overflowing the parser's stack.
const MAX_DEPTH: usize = 64;

/// A compiled claims expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClaimsExpr {
    /// Both hold.
    And(Box<ClaimsExpr>, Box<ClaimsExpr>),
    /// Either holds.
    Or(Box<ClaimsExpr>, Box<ClaimsExpr>),
    /// Does not hold.
    Not(Box<ClaimsExpr>),
    /// A function of one claim.
    Test {
        /// The claim's path.
        claim: String,
        /// What is checked.
        check: Check,
    },
}

/// What a function checks about its claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// `Equals`.
    Equals(String),
    /// `Prefix`.
    Prefix(String),
    /// `Contains`.
    Contains(String),
    /// `SplitContains`: separator, value.
    SplitContains(String, String),
    /// `OneOf`.
    OneOf(Vec<String>),
}

/// A syntax error, with the 1-based column (in characters) where it was found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("column {column}: {message}")]
pub struct ExprError {
    /// Where.
    pub column: usize,
    /// What.
    pub message: String,
}

impl ClaimsExpr {
    /// Compiles an expression.
    pub fn parse(text: &str) -> Result<Self, ExprError> {
        let tokens = lex(text)?;
        let mut p = Parser {
            tokens: &tokens,
            pos: 0,
            end: text.chars().count() + 1,
        };
        let expr = p.or(0)?;
        match p.peek() {
            None => Ok(expr),
            Some((col, t)) => Err(ExprError {
                column: col,
                message: format!("unexpected {t} after a complete expression"),
            }),
        }
    }

    /// Whether `claims` satisfy the expression.
    pub fn allows(&self, claims: &Map<String, Value>) -> bool {
        match self {
            Self::And(a, b) => a.allows(claims) && b.allows(claims),
            Self::Or(a, b) => a.allows(claims) || b.allows(claims),
            Self::Not(e) => !e.allows(claims),
            Self::Test { claim, check } => {
                lookup(claims, claim).is_some_and(|v| check.holds_for(v))
            }
        }
    }
}

impl Check {
    fn holds_for(&self, value: &Value) -> bool {
        match value {
            Value::Array(items) => items.iter().any(|item| match self {
                // For arrays, Contains means "has this element".
                Self::Contains(v) => scalar_eq(item, v),
                _ => !item.is_array() && self.holds_for(item),
            }),
            Value::String(s) => self.holds_for_text(s),
            Value::Number(_) | Value::Bool(_) => self.holds_for_text(&value.to_string()),
            Value::Null | Value::Object(_) => false,
        }
    }

    fn holds_for_text(&self, text: &str) -> bool {
        match self {
            Self::Equals(v) => text == v,
            Self::Prefix(v) => text.starts_with(v.as_str()),
            Self::Contains(v) => text.contains(v.as_str()),
            Self::SplitContains(sep, v) => text.split(sep.as_str()).any(|part| part == v),
            Self::OneOf(vs) => vs.iter().any(|v| v == text),
        }
    }
}

fn scalar_eq(item: &Value, v: &str) -> bool {
    match item {
        Value::String(s) => s == v,
        Value::Number(_) | Value::Bool(_) => *item.to_string() == *v,
        _ => false,
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    Name(String),
    Str(String),
    Open,
    Close,
    Comma,
    And,
    Or,
    Not,
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Name(n) => write!(f, "`{n}`"),
            Self::Str(_) => f.write_str("a string"),
            Self::Open => f.write_str("'('"),
            Self::Close => f.write_str("')'"),
            Self::Comma => f.write_str("','"),
            Self::And => f.write_str("'&&'"),
            Self::Or => f.write_str("'||'"),
            Self::Not => f.write_str("'!'"),
        }
    }
}

/// Splits the text into tokens, each with its 1-based column.
fn lex(text: &str) -> Result<Vec<(usize, Token)>, ExprError> {
    let chars: Vec<char> = text.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let err = |column: usize, message: String| ExprError { column, message };
    while i < chars.len() {
        let col = i + 1;
        let c = chars[i];
        match c {
            c if c.is_whitespace() => i += 1,
            '(' | ')' | ',' | '!' => {
                out.push((
                    col,
                    match c {
                        '(' => Token::Open,
                        ')' => Token::Close,
                        ',' => Token::Comma,
                        _ => Token::Not,
                    },
                ));
                i += 1;
            }
            '&' | '|' => {
                if chars.get(i + 1) != Some(&c) {
                    return Err(err(col, format!("expected '{c}{c}'")));
                }
                out.push((col, if c == '&' { Token::And } else { Token::Or }));
                i += 2;
            }
            '`' => {
                let close = chars[i + 1..]
                    .iter()
                    .position(|&c| c == '`')
                    .ok_or_else(|| err(col, "unterminated `string`".into()))?;
                out.push((
                    col,
                    Token::Str(chars[i + 1..i + 1 + close].iter().collect()),
                ));
                i += close + 2;
            }
            '"' => {
                let (s, next) = quoted(&chars, i)?;
                out.push((col, Token::Str(s)));
                i = next;
            }
            c if c.is_ascii_alphabetic() => {
                let len = chars[i..]
                    .iter()
                    .take_while(|c| c.is_ascii_alphanumeric() || **c == '_')
                    .count();
                out.push((col, Token::Name(chars[i..i + len].iter().collect())));
                i += len;
            }
            '\'' => {
                return Err(err(
                    col,
                    "single quotes are not strings; use `backticks` or \"double quotes\"".into(),
                ));
            }
            other => return Err(err(col, format!("unexpected character {other:?}"))),
        }
    }
    Ok(out)
}

/// A double-quoted string starting at `start`, with Go's common escapes. Returns the string and
/// the index after its closing quote.
fn quoted(chars: &[char], start: usize) -> Result<(String, usize), ExprError> {
    let mut s = String::new();
    let mut i = start + 1;
    loop {
        let Some(&c) = chars.get(i) else {
            return Err(ExprError {
                column: start + 1,
                message: "unterminated \"string\"".into(),
            });
        };
        match c {
            '"' => return Ok((s, i + 1)),
            '\\' => {
                let escaped = match chars.get(i + 1) {
                    Some('"') => '"',
                    Some('\\') => '\\',
                    Some('n') => '\n',
                    Some('t') => '\t',
                    Some('/') => '/',
                    _ => {
                        return Err(ExprError {
                            column: i + 1,
                            message: "unknown escape (use \\\" \\\\ \\n \\t or \\/)".into(),
                        });
                    }
                };
                s.push(escaped);
                i += 2;
            }
            c => {
                s.push(c);
                i += 1;
            }
        }
    }
}

struct Parser<'a> {
    tokens: &'a [(usize, Token)],
    pos: usize,
    /// Column just past the end, for "unexpected end" errors.
    end: usize,
}

impl Parser<'_> {
    fn peek(&self) -> Option<(usize, &Token)> {
        self.tokens.get(self.pos).map(|(c, t)| (*c, t))
    }

    fn next(&mut self, wanted: &str) -> Result<(usize, Token), ExprError> {
        let t = self
            .tokens
            .get(self.pos)
            .cloned()
            .ok_or_else(|| ExprError {
                column: self.end,
                message: format!("unexpected end, expected {wanted}"),
            })?;
        self.pos += 1;
        Ok(t)
    }

    fn or(&mut self, depth: usize) -> Result<ClaimsExpr, ExprError> {
        let mut left = self.and(depth)?;
        while matches!(self.peek(), Some((_, Token::Or))) {
            self.pos += 1;
            left = ClaimsExpr::Or(Box::new(left), Box::new(self.and(depth)?));
        }
        Ok(left)
    }

    fn and(&mut self, depth: usize) -> Result<ClaimsExpr, ExprError> {
        let mut left = self.unary(depth)?;
        while matches!(self.peek(), Some((_, Token::And))) {
            self.pos += 1;
            left = ClaimsExpr::And(Box::new(left), Box::new(self.unary(depth)?));
        }
        Ok(left)
    }

    fn unary(&mut self, depth: usize) -> Result<ClaimsExpr, ExprError> {
        let (col, t) = self.next("a function, '!' or '('")?;
        if depth >= MAX_DEPTH {
            return Err(ExprError {
                column: col,
                message: format!("nested more than {MAX_DEPTH} levels deep"),
            });
        }
        match t {
            Token::Not => Ok(ClaimsExpr::Not(Box::new(self.unary(depth + 1)?))),
            Token::Open => {
                let inner = self.or(depth + 1)?;
                match self.next("')'")? {
                    (_, Token::Close) => Ok(inner),
                    (c, other) => Err(ExprError {
                        column: c,
                        message: format!("expected ')', found {other}"),
                    }),
                }
            }
            Token::Name(name) => self.call(col, &name),
            other => Err(ExprError {
                column: col,
                message: format!("expected a function, '!' or '(', found {other}"),
            }),
        }
    }

    fn call(&mut self, col: usize, name: &str) -> Result<ClaimsExpr, ExprError> {
        let arity = match name {
            "Equals" | "Prefix" | "Contains" => 2..=2,
            "SplitContains" => 3..=3,
            "OneOf" => 2..=usize::MAX,
            _ => {
                return Err(ExprError {
                    column: col,
                    message: format!(
                        "unknown function `{name}` (expected Equals, Prefix, Contains, SplitContains or OneOf)"
                    ),
                });
            }
        };
        match self.next("'('")? {
            (_, Token::Open) => {}
            (c, other) => {
                return Err(ExprError {
                    column: c,
                    message: format!("expected '(' after {name}, found {other}"),
                });
            }
        }
        let mut args = Vec::new();
        loop {
            match self.next("a string")? {
                (_, Token::Str(s)) => args.push(s),
                (c, other) => {
                    return Err(ExprError {
                        column: c,
                        message: format!("expected a string argument, found {other}"),
                    });
                }
            }
            match self.next("',' or ')'")? {
                (_, Token::Comma) => {}
                (_, Token::Close) => break,
                (c, other) => {
                    return Err(ExprError {
                        column: c,
                        message: format!("expected ',' or ')', found {other}"),
                    });
                }
            }
        }
        if !arity.contains(&args.len()) {
            let expected = match name {
                "OneOf" => "a claim and at least one value".to_owned(),
                _ => format!("{} arguments", arity.start()),
            };
            return Err(ExprError {
                column: col,
                message: format!("{name} takes {expected}, not {}", args.len()),
            });
        }
        let mut args = args.into_iter();
        let claim = args.next().unwrap_or_default();
        if claim.is_empty() {
            return Err(ExprError {
                column: col,
                message: format!("{name}: the claim name is empty"),
            });
        }
        let mut arg = || args.next().unwrap_or_default();
        let check = match name {
            "Equals" => Check::Equals(arg()),
            "Prefix" => Check::Prefix(arg()),
            "Contains" => Check::Contains(arg()),
            "SplitContains" => {
                let sep = arg();
                if sep.is_empty() {
                    return Err(ExprError {
                        column: col,
                        message: "SplitContains: the separator is empty".into(),
                    });
                }
                Check::SplitContains(sep, arg())
            }
            _ => Check::OneOf(args.collect()),
        };
        Ok(ClaimsExpr::Test { claim, check })
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::json;

    use super::*;

    fn claims() -> Map<String, Value> {
        json!({
            "sub": "svc-billing",
            "iss": "https://idp.example.com/realms/prod",
            "scope": "read:invoices write:invoices",
            "aud": ["billing", "ledger"],
            "grp": "admin",
            "level": 3,
            "internal": true,
            "realm_access": { "roles": ["operator", "auditor"] },
            "tenant": { "id": "t-42", "tier": "gold" },
            "empty": null
        })
        .as_object()
        .unwrap()
        .clone()
    }

    #[test]
    fn expressions_evaluate_as_documented() {
        let c = claims();
        let table = [
            ("Equals(`grp`, `admin`)", true),
            ("Equals(\"grp\", \"admin\")", true),
            ("Equals(`grp`, `Admin`)", false),
            ("Equals(`aud`, `ledger`)", true),
            ("Equals(`level`, `3`)", true),
            ("Equals(`internal`, `true`)", true),
            ("Equals(`missing`, ``)", false),
            ("Equals(`empty`, `null`)", false),
            ("Equals(`tenant`, `t-42`)", false),
            ("Prefix(`iss`, `https://idp.example.com/`)", true),
            ("Prefix(`aud`, `led`)", true),
            ("Prefix(`sub`, `web-`)", false),
            ("Contains(`aud`, `billing`)", true),
            ("Contains(`aud`, `bill`)", false),
            ("Contains(`iss`, `/realms/`)", true),
            ("SplitContains(`scope`, ` `, `write:invoices`)", true),
            ("SplitContains(`scope`, ` `, `write`)", false),
            ("OneOf(`grp`, `dev`, `admin`)", true),
            ("OneOf(`grp`, `dev`)", false),
            ("OneOf(`aud`, `x`, `ledger`)", true),
            ("Equals(`tenant.tier`, `gold`)", true),
            ("Contains(`realm_access.roles`, `auditor`)", true),
            ("Contains(`realm_access.roles`, `root`)", false),
            ("!Equals(`grp`, `admin`)", false),
            ("!!Equals(`grp`, `admin`)", true),
            ("Equals(`grp`, `dev`) || Equals(`grp`, `admin`)", true),
            ("Equals(`grp`, `admin`) && Equals(`sub`, `other`)", false),
            // && binds tighter than ||: true || (false && false).
            (
                "Equals(`grp`, `admin`) || Equals(`grp`, `x`) && Equals(`grp`, `y`)",
                true,
            ),
            (
                "(Equals(`grp`, `admin`) || Equals(`grp`, `x`)) && Equals(`grp`, `y`)",
                false,
            ),
            (
                "!(Equals(`grp`, `x`) || Equals(`grp`, `y`)) && Prefix(`sub`, `svc-`)",
                true,
            ),
            ("Equals(`sub`, \"svc-\\\"billing\")", false),
        ];
        for (text, expected) in table {
            let expr = ClaimsExpr::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
            assert_eq!(expr.allows(&c), expected, "{text}");
        }
    }

    #[test]
    fn syntax_errors_name_their_column() {
        let table = [
            ("", 1, "unexpected end"),
            ("Equals(`a`, `b`", 16, "unexpected end, expected ',' or ')'"),
            ("Equal(`a`, `b`)", 1, "unknown function `Equal`"),
            ("Equals(`a`)", 1, "Equals takes 2 arguments, not 1"),
            (
                "OneOf(`a`)",
                1,
                "OneOf takes a claim and at least one value",
            ),
            ("Equals(`a`, `b`) & Equals(`a`, `b`)", 18, "expected '&&'"),
            (
                "Equals(`a`, `b`) Equals(`a`, `b`)",
                18,
                "unexpected `Equals` after",
            ),
            ("Equals('a', 'b')", 8, "single quotes"),
            ("Equals(`a, `b`)", 14, "unterminated `string`"),
            ("Equals(a, `b`)", 8, "expected a string argument"),
            ("(Equals(`a`, `b`)", 18, "unexpected end, expected ')'"),
            ("Equals(``, `b`)", 1, "the claim name is empty"),
            ("SplitContains(`s`, ``, `b`)", 1, "the separator is empty"),
            ("Equals(\"a\\q\", `b`)", 10, "unknown escape"),
            ("Equals(`a`, `b`) && ", 21, "unexpected end"),
        ];
        for (text, column, message) in table {
            let err = ClaimsExpr::parse(text).expect_err(text);
            assert_eq!(err.column, column, "{text}: {err}");
            assert!(err.message.contains(message), "{text}: {err}");
        }
    }

    #[test]
    fn nesting_is_bounded() {
        let deep = format!("{}Equals(`a`, `b`){}", "(".repeat(100), ")".repeat(100));
        assert!(
            ClaimsExpr::parse(&deep)
                .unwrap_err()
                .message
                .contains("nested")
        );
        let nots = format!("{}Equals(`a`, `b`)", "!".repeat(10_000));
        assert!(ClaimsExpr::parse(&nots).is_err());
        let ok = format!("{}Equals(`a`, `b`){}", "(".repeat(20), ")".repeat(20));
        assert!(ClaimsExpr::parse(&ok).is_ok());
    }

    /// Pieces of the language, so that random inputs are often nearly valid and reach deep
    /// into the parser rather than failing at the first character.
    fn fragment() -> impl Strategy<Value = String> {
        prop_oneof![
            Just("Equals".to_owned()),
            Just("OneOf".to_owned()),
            Just("SplitContains".to_owned()),
            Just("(".to_owned()),
            Just(")".to_owned()),
            Just(",".to_owned()),
            Just("&&".to_owned()),
            Just("||".to_owned()),
            Just("!".to_owned()),
            Just("&".to_owned()),
            Just("`a.b`".to_owned()),
            Just("`".to_owned()),
            Just("\"x\\\"".to_owned()),
            Just("\"".to_owned()),
            Just(" ".to_owned()),
            "\\PC{0,3}",
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn parsing_never_panics_on_arbitrary_text(text in "\\PC{0,80}") {
            let _ = ClaimsExpr::parse(&text);
        }

        #[test]
        fn parsing_never_panics_on_near_valid_text(parts in proptest::collection::vec(fragment(), 0..40)) {
            let text = parts.concat();
            if let Err(e) = ClaimsExpr::parse(&text) {
                // Columns point into the text (or just past its end).
                prop_assert!(e.column >= 1 && e.column <= text.chars().count() + 1, "{e}");
            }
        }

        #[test]
        fn valid_expressions_round_trip_through_negation(grp in "[a-z]{1,8}") {
            let c = claims();
            let text = format!("Equals(`grp`, `{grp}`)");
            let e = ClaimsExpr::parse(&text).unwrap();
            let not = ClaimsExpr::parse(&format!("!({text})")).unwrap();
            prop_assert_eq!(e.allows(&c), !not.allows(&c));
        }
    }
}
