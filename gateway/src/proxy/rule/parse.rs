//! Traefik's rule language (v3 syntax): matchers such as ``Host(`a.example`)`` combined with
//! `&&`, `||` (which binds less tightly), `!` and parentheses. Values are Go string literals:
//! raw between backticks, or between double quotes with Go's escapes.
//!
//! Every value is checked here, once: regular expressions compiled, header names and methods
//! parsed, networks read. An error says where in the rule it is.

use http::{HeaderName, HeaderValue, Method};
use ipnet::IpNet;
use regex::Regex;

use super::Rule;

/// Why a rule does not parse: the message, and the byte offset where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message} (at column {})", .at + 1)]
pub struct RuleError {
    /// What is wrong.
    pub message: String,
    /// Byte offset into the rule.
    pub at: usize,
}

/// Parses a rule.
pub fn parse(text: &str) -> Result<Rule, RuleError> {
    let mut p = Parser { text, at: 0 };
    let rule = p.or()?;
    p.skip_space();
    if p.at < text.len() {
        return Err(p.error("expected && or || or the end of the rule"));
    }
    Ok(rule)
}

/// Most nesting a rule may have; deeper ones are refused rather than overflowing the stack.
const MAX_DEPTH: usize = 64;

struct Parser<'a> {
    text: &'a str,
    at: usize,
}

impl Parser<'_> {
    fn error(&self, message: impl Into<String>) -> RuleError {
        RuleError {
            message: message.into(),
            at: self.at,
        }
    }

    fn rest(&self) -> &str {
        &self.text[self.at..]
    }

    fn skip_space(&mut self) {
        let trimmed = self.rest().trim_start();
        self.at = self.text.len() - trimmed.len();
    }

    fn eat(&mut self, token: &str) -> bool {
        self.skip_space();
        if self.rest().starts_with(token) {
            self.at += token.len();
            true
        } else {
            false
        }
    }

    fn or(&mut self) -> Result<Rule, RuleError> {
        self.nested(0, Self::or_at)
    }

    fn nested(
        &mut self,
        depth: usize,
        f: fn(&mut Self, usize) -> Result<Rule, RuleError>,
    ) -> Result<Rule, RuleError> {
        if depth > MAX_DEPTH {
            return Err(self.error(format!("nested more than {MAX_DEPTH} deep")));
        }
        f(self, depth)
    }

    fn or_at(&mut self, depth: usize) -> Result<Rule, RuleError> {
        let mut any = vec![self.nested(depth + 1, Self::and_at)?];
        while self.eat("||") {
            any.push(self.nested(depth + 1, Self::and_at)?);
        }
        Ok(one_or(any, Rule::Any))
    }

    fn and_at(&mut self, depth: usize) -> Result<Rule, RuleError> {
        let mut all = vec![self.nested(depth + 1, Self::unary_at)?];
        while self.eat("&&") {
            all.push(self.nested(depth + 1, Self::unary_at)?);
        }
        Ok(one_or(all, Rule::All))
    }

    fn unary_at(&mut self, depth: usize) -> Result<Rule, RuleError> {
        if self.eat("!") {
            return Ok(Rule::Not(Box::new(self.nested(depth + 1, Self::unary_at)?)));
        }
        if self.eat("(") {
            let inner = self.nested(depth + 1, Self::or_at)?;
            if !self.eat(")") {
                return Err(self.error("expected )"));
            }
            return Ok(inner);
        }
        self.matcher()
    }

    fn matcher(&mut self) -> Result<Rule, RuleError> {
        self.skip_space();
        let start = self.at;
        let name_len = self
            .rest()
            .find(|c: char| !c.is_ascii_alphanumeric())
            .unwrap_or(self.rest().len());
        let name = &self.text[start..start + name_len];
        if name.is_empty() {
            return Err(self.error("expected a matcher such as Host(`...`), ! or ("));
        }
        self.at += name_len;
        if !self.eat("(") {
            return Err(self.error(format!("expected ( after {name}")));
        }
        let mut args = Vec::new();
        if !self.eat(")") {
            loop {
                args.push(self.string()?);
                if self.eat(")") {
                    break;
                }
                if !self.eat(",") {
                    return Err(self.error("expected , or )"));
                }
            }
        }
        let at = |message: String| RuleError { message, at: start };
        matcher(name, args).map_err(at)
    }

    /// A Go string literal: `raw`, or "interpreted" with escapes.
    fn string(&mut self) -> Result<String, RuleError> {
        self.skip_space();
        if self.eat("`") {
            let Some(end) = self.rest().find('`') else {
                return Err(self.error("unterminated `"));
            };
            let value = self.rest()[..end].to_owned();
            self.at += end + 1;
            return Ok(value);
        }
        if !self.eat("\"") {
            return Err(self.error("expected a value in backticks or double quotes"));
        }
        let mut out = String::new();
        let mut chars = self.rest().char_indices();
        while let Some((i, c)) = chars.next() {
            match c {
                '"' => {
                    self.at += i + 1;
                    return Ok(out);
                }
                '\\' => {
                    let escaped = |chars: &mut std::str::CharIndices<'_>, n: usize, radix| {
                        let digits: String = chars.by_ref().take(n).map(|(_, c)| c).collect();
                        (digits.len() == n)
                            .then(|| u32::from_str_radix(&digits, radix).ok())
                            .flatten()
                            .and_then(char::from_u32)
                    };
                    let decoded = match chars.next().map(|(_, c)| c) {
                        Some('\\') => Some('\\'),
                        Some('"') => Some('"'),
                        Some('n') => Some('\n'),
                        Some('t') => Some('\t'),
                        Some('r') => Some('\r'),
                        Some('x') => escaped(&mut chars, 2, 16),
                        Some('u') => escaped(&mut chars, 4, 16),
                        Some('U') => escaped(&mut chars, 8, 16),
                        _ => None,
                    };
                    match decoded {
                        Some(c) => out.push(c),
                        None => {
                            self.at += i;
                            return Err(self.error("invalid escape in a double-quoted value"));
                        }
                    }
                }
                c => out.push(c),
            }
        }
        Err(self.error("unterminated \""))
    }
}

fn one_or(mut rules: Vec<Rule>, many: fn(Vec<Rule>) -> Rule) -> Rule {
    if rules.len() == 1 {
        rules.pop().expect("one rule")
    } else {
        many(rules)
    }
}

/// The matchers, by name, with their arguments checked.
fn matcher(name: &str, args: Vec<String>) -> Result<Rule, String> {
    let count = args.len();
    let arity = |n: usize| {
        if count == n {
            Ok(())
        } else {
            Err(format!("{name} takes {n} value(s), not {count}"))
        }
    };
    let regex =
        |s: &str| Regex::new(s).map_err(|e| format!("{name}: invalid regular expression: {e}"));
    let header = |s: &str| {
        HeaderName::try_from(s).map_err(|_| format!("{name}: {s:?} is not a header name"))
    };
    let path = |s: String| {
        if s.starts_with('/') {
            Ok(s)
        } else {
            Err(format!("{name}: {s:?} must start with /"))
        }
    };
    let mut args = args.into_iter();
    let mut next = || args.next().unwrap_or_default();
    Ok(match name {
        "Host" => {
            arity(1)?;
            let host = next().to_ascii_lowercase();
            if host.is_empty() || host.contains(['/', ' ', ':', '*']) {
                return Err(format!(
                    "Host: {host:?} is not a bare host name (no scheme, port, path or wildcard; HostRegexp matches patterns)"
                ));
            }
            Rule::Host(host)
        }
        "HostRegexp" => {
            arity(1)?;
            Rule::HostRegexp(regex(&next())?)
        }
        "Path" => {
            arity(1)?;
            Rule::Path(path(next())?)
        }
        "PathPrefix" => {
            arity(1)?;
            Rule::PathPrefix(path(next())?)
        }
        "PathRegexp" => {
            arity(1)?;
            Rule::PathRegexp(regex(&next())?)
        }
        "Method" => {
            arity(1)?;
            let m = next().to_ascii_uppercase();
            Rule::Method(
                Method::from_bytes(m.as_bytes())
                    .map_err(|_| format!("Method: {m:?} is not a method"))?,
            )
        }
        "Header" => {
            arity(2)?;
            let h = header(&next())?;
            let v = next();
            let v = HeaderValue::try_from(v.as_str())
                .map_err(|_| format!("Header: {v:?} is not a header value"))?;
            Rule::Header(h, v)
        }
        "HeaderRegexp" => {
            arity(2)?;
            Rule::HeaderRegexp(header(&next())?, regex(&next())?)
        }
        "Query" => {
            if !(1..=2).contains(&count) {
                return Err(format!("Query takes 1 or 2 values, not {count}"));
            }
            Rule::Query(next(), next())
        }
        "QueryRegexp" => {
            arity(2)?;
            Rule::QueryRegexp(next(), regex(&next())?)
        }
        "ClientIP" => {
            arity(1)?;
            let ip = next();
            let net = ip
                .parse::<IpNet>()
                .or_else(|_| ip.parse::<std::net::IpAddr>().map(IpNet::from))
                .map_err(|_| format!("ClientIP: {ip:?} is not an IP address or CIDR"))?;
            Rule::ClientIp(net)
        }
        other => {
            return Err(format!(
                "unknown matcher {other:?} (Host, HostRegexp, Path, PathPrefix, PathRegexp, Method, Header, HeaderRegexp, Query, QueryRegexp, ClientIP)"
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use http::HeaderMap;

    use super::super::RequestView;
    use super::*;

    fn matches(rule: &str, method: &str, host: &str, path: &str) -> bool {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-env", HeaderValue::from_static("staging"));
        parse(rule).unwrap().matches(&RequestView {
            method: &method,
            host: Some(host),
            path,
            query: None,
            headers: &headers,
            peer: [127, 0, 0, 1].into(),
        })
    }

    #[test]
    fn and_binds_tighter_than_or_and_not_tighter_than_both() {
        // a || b && c is a || (b && c).
        let rule = "Host(`a.test`) || Host(`b.test`) && PathPrefix(`/b`)";
        assert!(matches(rule, "GET", "a.test", "/x"));
        assert!(!matches(rule, "GET", "b.test", "/x"));
        assert!(matches(rule, "GET", "b.test", "/b/x"));
        let rule = "(Host(`a.test`) || Host(`b.test`)) && !PathPrefix(`/admin`)";
        assert!(matches(rule, "GET", "b.test", "/x"));
        assert!(!matches(rule, "GET", "a.test", "/admin/x"));
        assert!(matches("!!Method(`get`)", "GET", "h", "/"));
    }

    #[test]
    fn the_traefik_documentation_examples_parse_and_match() {
        assert!(matches(
            "Host(`whoami.docker.localhost`) && PathPrefix(`/api`)",
            "GET",
            "whoami.docker.localhost",
            "/api/users"
        ));
        assert!(matches(
            r"HostRegexp(`^.+\.example\.com$`)",
            "GET",
            "a.example.com",
            "/"
        ));
        assert!(!matches(
            r"HostRegexp(`^.+\.example\.com$`)",
            "GET",
            "example.com",
            "/"
        ));
        assert!(matches(
            r"PathRegexp(`\.(jpeg|jpg|png)$`)",
            "GET",
            "h",
            "/a/b.png"
        ));
        assert!(matches("Path(`/products`)", "GET", "h", "/products"));
        assert!(!matches("Path(`/products`)", "GET", "h", "/products/"));
        assert!(matches(
            "PathPrefix(`/products`)",
            "GET",
            "h",
            "/products-for-sale"
        ));
        assert!(matches("Header(`X-Env`, `staging`)", "GET", "h", "/"));
        assert!(matches(
            "HeaderRegexp(`x-env`, `(?i)^STAG`)",
            "GET",
            "h",
            "/"
        ));
        assert!(matches(
            r#"Host("a.test") && Path("/q\"uote\x41")"#,
            "GET",
            "a.test",
            "/q\"uoteA"
        ));
    }

    #[test]
    fn errors_name_the_problem_and_where_it_is() {
        let err = |rule: &str| parse(rule).unwrap_err().to_string();
        assert_eq!(
            err("Hots(`a`)"),
            "unknown matcher \"Hots\" (Host, HostRegexp, Path, PathPrefix, PathRegexp, Method, Header, HeaderRegexp, Query, QueryRegexp, ClientIP) (at column 1)"
        );
        assert_eq!(
            err("Host(`a`) && Path(`x`)"),
            "Path: \"x\" must start with / (at column 14)"
        );
        assert_eq!(
            err("Host(`a`) Path(`/x`)"),
            "expected && or || or the end of the rule (at column 11)"
        );
        assert_eq!(
            err("Host(`a`, `b`)"),
            "Host takes 1 value(s), not 2 (at column 1)"
        );
        assert_eq!(err("(Host(`a`)"), "expected ) (at column 11)");
        assert_eq!(
            err("Host('a')"),
            "expected a value in backticks or double quotes (at column 6)"
        );
        assert_eq!(err("Host(`a"), "unterminated ` (at column 7)");
        assert!(err("PathRegexp(`(`)").starts_with("PathRegexp: invalid regular expression"));
        assert!(err("Host(`*.a.test`)").contains("HostRegexp matches patterns"));
        assert!(err(&"!".repeat(500)).contains("nested more than"));
        assert!(
            err(&format!("{}Host(`a`){}", "(".repeat(200), ")".repeat(200))).contains("nested")
        );
    }
}
