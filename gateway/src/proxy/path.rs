//! Request paths as the gateway routes and forwards them.
//!
//! A route protects a path only if the gateway and the upstream agree on what the path is. An
//! upstream that resolves `/public/../admin` to `/admin` (nginx, most frameworks) would otherwise
//! serve `/admin` behind the open `/public` route. So the path is put in one canonical form
//! *before* routing, and that form is what the upstream receives:
//!
//! 1. Percent-encoded unreserved characters are decoded (RFC 3986 §2.3: `%41` is `A`, `%2E` is
//!    `.`), and other percent-encodings are written in upper case (§6.2.2.1).
//! 2. Dot segments are removed (§5.2.4); a path that climbs above `/` is refused.
//! 3. Runs of `/` become one (`mergeSlashes`, on by default: nginx merges them too).
//!
//! Encoded characters that change a path's meaning depending on who decodes it (`%2F`, `%5C`,
//! `%00`, `%3B`, `%25`, `%3F`, `%23`) are never decoded here; whether they may appear at all is
//! the route's `encodedCharacters` policy (Traefik's option of that name), checked after routing
//! because they do not alter the segments routing sees. Raw `\`, control characters, invalid
//! percent-encoding and segments such as `..;` (which Tomcat resolves as `..`) are always refused.

use std::borrow::Cow;
use std::fmt;

/// How the listener canonicalises paths (top-level `paths`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathPolicy {
    /// Decode unreserved characters and remove dot segments (Envoy's `normalize_path`). Off, the
    /// path is routed and forwarded byte for byte: only for upstreams that never resolve `..`.
    pub normalize: bool,
    /// Replace runs of `/` by one (Envoy's `merge_slashes`).
    pub merge_slashes: bool,
}

impl Default for PathPolicy {
    fn default() -> Self {
        Self {
            normalize: true,
            merge_slashes: true,
        }
    }
}

/// Percent-encoded characters whose meaning depends on who decodes them. Each one is refused
/// unless the route allows it (Traefik's `encodedCharacters`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EncodedCharacters {
    /// `%2F`.
    pub slash: bool,
    /// `%5C`.
    pub back_slash: bool,
    /// `%00`.
    pub null_character: bool,
    /// `%3B`.
    pub semicolon: bool,
    /// `%25`.
    pub percent: bool,
    /// `%3F`.
    pub question_mark: bool,
    /// `%23`.
    pub hash: bool,
}

impl EncodedCharacters {
    /// The first character present in `self` that `allowed` does not allow, by its encoding.
    pub fn first_refused(&self, allowed: &Self) -> Option<&'static str> {
        [
            (self.slash && !allowed.slash, "%2F"),
            (self.back_slash && !allowed.back_slash, "%5C"),
            (self.null_character && !allowed.null_character, "%00"),
            (self.semicolon && !allowed.semicolon, "%3B"),
            (self.percent && !allowed.percent, "%25"),
            (self.question_mark && !allowed.question_mark, "%3F"),
            (self.hash && !allowed.hash, "%23"),
        ]
        .into_iter()
        .find_map(|(refused, name)| refused.then_some(name))
    }

    fn note(&mut self, byte: u8) {
        match byte {
            b'/' => self.slash = true,
            b'\\' => self.back_slash = true,
            0 => self.null_character = true,
            b';' => self.semicolon = true,
            b'%' => self.percent = true,
            b'?' => self.question_mark = true,
            b'#' => self.hash = true,
            _ => {}
        }
    }
}

/// A path in canonical form, with the ambiguous encoded characters it still carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CanonicalPath<'a> {
    /// The path to route on and to forward (borrowed when the request's path already was).
    pub path: Cow<'a, str>,
    /// Which ambiguous encoded characters it contains.
    pub encoded: EncodedCharacters,
}

/// Why a path is refused (always 400; the text is safe to show the caller).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathError {
    /// The path does not start with `/` (asterisk or authority form where a path is needed).
    NotAbsolute,
    /// A `%` not followed by two hex digits.
    InvalidPercentEncoding,
    /// A raw `\`, control character or non-ASCII byte.
    ForbiddenCharacter,
    /// `..` would leave the root.
    AboveRoot,
    /// A segment such as `..;x` that some servers resolve as a dot segment.
    AmbiguousSegment,
}

impl fmt::Display for PathError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotAbsolute => "the request path must start with /",
            Self::InvalidPercentEncoding => "the request path has invalid percent-encoding",
            Self::ForbiddenCharacter => "the request path has a forbidden character",
            Self::AboveRoot => "the request path climbs above /",
            Self::AmbiguousSegment => "the request path has an ambiguous dot segment",
        })
    }
}

impl std::error::Error for PathError {}

/// RFC 3986 §3.3: a path is `/` and `pchar`s (unreserved, sub-delims, `:` and `@`; `%` is
/// handled apart). Anything else (`\`, spaces, controls, `"`, `<`, `>`, `[`, `]`, `^`, `` ` ``,
/// `{`, `|`, `}`, non-ASCII) is a character servers disagree about, so it is refused.
fn is_pchar_or_slash(b: u8) -> bool {
    is_unreserved(b)
        || matches!(
            b,
            b'/' | b'!'
                | b'$'
                | b'&'
                | b'\''
                | b'('
                | b')'
                | b'*'
                | b'+'
                | b','
                | b';'
                | b'='
                | b':'
                | b'@'
        )
}

/// RFC 3986 §2.3 unreserved characters.
fn is_unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Whether `raw` is already canonical under any policy: only characters that need no decoding
/// or checking, no empty segment and no segment starting with a dot. Most requests are; they
/// cost one scan and no allocation.
fn is_plainly_canonical(raw: &str) -> bool {
    raw.starts_with('/')
        && raw.bytes().all(is_pchar_or_slash)
        && !raw.contains("//")
        && !raw.contains("/.")
}

/// Puts `raw` (the path of the request target, without query) in canonical form.
pub fn canonicalize<'a>(raw: &'a str, policy: &PathPolicy) -> Result<CanonicalPath<'a>, PathError> {
    if is_plainly_canonical(raw) {
        return Ok(CanonicalPath {
            path: Cow::Borrowed(raw),
            encoded: EncodedCharacters::default(),
        });
    }
    if !raw.starts_with('/') {
        return Err(PathError::NotAbsolute);
    }
    let bytes = raw.as_bytes();
    // Pass 1: check every byte and canonicalise percent-encodings.
    let mut decoded = String::with_capacity(raw.len());
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b == b'%' {
            let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) else {
                return Err(PathError::InvalidPercentEncoding);
            };
            let value = hi << 4 | lo;
            if policy.normalize && is_unreserved(value) {
                decoded.push(char::from(value));
            } else {
                decoded.push('%');
                decoded.push(char::from(bytes[i + 1].to_ascii_uppercase()));
                decoded.push(char::from(bytes[i + 2].to_ascii_uppercase()));
            }
            i += 3;
            continue;
        }
        if !is_pchar_or_slash(b) {
            return Err(PathError::ForbiddenCharacter);
        }
        decoded.push(char::from(b));
        i += 1;
    }
    if !policy.normalize {
        let path = if policy.merge_slashes {
            merge_slashes(&decoded)
        } else {
            decoded
        };
        return Ok(CanonicalPath {
            encoded: encoded_in(&path),
            path: path.into(),
        });
    }
    // Pass 2: remove dot segments (RFC 3986 §5.2.4), refusing to climb above the root.
    let mut segments: Vec<&str> = Vec::new();
    let mut parts = decoded[1..].split('/').peekable();
    let mut trailing_slash = false;
    while let Some(segment) = parts.next() {
        let last = parts.peek().is_none();
        match segment {
            "." => trailing_slash = last,
            ".." => {
                if segments.pop().is_none() {
                    return Err(PathError::AboveRoot);
                }
                trailing_slash = last;
            }
            s if s.starts_with(".;") || s.starts_with("..;") => {
                return Err(PathError::AmbiguousSegment);
            }
            "" if policy.merge_slashes => trailing_slash = last,
            s => {
                segments.push(s);
                trailing_slash = false;
            }
        }
    }
    let mut path = String::with_capacity(decoded.len());
    for s in &segments {
        path.push('/');
        path.push_str(s);
    }
    if path.is_empty() || trailing_slash {
        path.push('/');
    }
    Ok(CanonicalPath {
        encoded: encoded_in(&path),
        path: path.into(),
    })
}

/// The ambiguous encoded characters a canonical path still holds (what the upstream will see:
/// an encoding inside a segment that `..` removed is gone).
fn encoded_in(path: &str) -> EncodedCharacters {
    let mut encoded = EncodedCharacters::default();
    let bytes = path.as_bytes();
    for (i, b) in bytes.iter().enumerate() {
        if *b == b'%'
            && let (Some(hi), Some(lo)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            encoded.note(hi << 4 | lo);
        }
    }
    encoded
}

fn merge_slashes(path: &str) -> String {
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if !(c == '/' && out.ends_with('/')) {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn canon(raw: &str) -> Result<String, PathError> {
        canonicalize(raw, &PathPolicy::default()).map(|c| c.path.into_owned())
    }

    #[test]
    fn dot_segments_are_removed_before_routing() {
        assert_eq!(canon("/public/../admin/secret"), Ok("/admin/secret".into()));
        assert_eq!(
            canon("/public/%2e%2e/admin/secret"),
            Ok("/admin/secret".into())
        );
        assert_eq!(canon("/a/./b/."), Ok("/a/b/".into()));
        assert_eq!(canon("/a/b/.."), Ok("/a/".into()));
        assert_eq!(canon("/"), Ok("/".into()));
        assert_eq!(canon("/a/"), Ok("/a/".into()));
        assert_eq!(canon("/.."), Err(PathError::AboveRoot));
        assert_eq!(canon("/a/../../b"), Err(PathError::AboveRoot));
    }

    #[test]
    fn unreserved_characters_are_decoded_and_others_upper_cased() {
        assert_eq!(canon("/%41%7e%2d"), Ok("/A~-".into()));
        assert_eq!(canon("/a%20b%3a"), Ok("/a%20b%3A".into()));
    }

    #[test]
    fn slashes_merge_by_default() {
        assert_eq!(canon("//admin///x//"), Ok("/admin/x/".into()));
        let keep = PathPolicy {
            merge_slashes: false,
            ..PathPolicy::default()
        };
        assert_eq!(
            canonicalize("//a//b", &keep).unwrap().path,
            "//a//b",
            "empty segments are kept when merging is off"
        );
    }

    #[test]
    fn ambiguous_encodings_are_kept_encoded_and_reported() {
        let c = canonicalize("/public/..%2fadmin/secret", &PathPolicy::default()).unwrap();
        assert_eq!(c.path, "/public/..%2Fadmin/secret");
        assert!(c.encoded.slash);
        assert_eq!(
            c.encoded.first_refused(&EncodedCharacters::default()),
            Some("%2F")
        );
        let allowed = EncodedCharacters {
            slash: true,
            ..Default::default()
        };
        assert_eq!(c.encoded.first_refused(&allowed), None);
        for (raw, name) in [
            ("/a%5Cb", "%5C"),
            ("/a%00", "%00"),
            ("/a%3b", "%3B"),
            ("/a%25", "%25"),
            ("/a%3F", "%3F"),
            ("/a%23", "%23"),
        ] {
            let c = canonicalize(raw, &PathPolicy::default()).unwrap();
            assert_eq!(
                c.encoded.first_refused(&EncodedCharacters::default()),
                Some(name),
                "{raw}"
            );
        }
    }

    #[test]
    fn malformed_paths_are_refused() {
        assert_eq!(canon("/a%2"), Err(PathError::InvalidPercentEncoding));
        assert_eq!(canon("/a%zz"), Err(PathError::InvalidPercentEncoding));
        assert_eq!(canon("/a\\..\\b"), Err(PathError::ForbiddenCharacter));
        assert_eq!(canon("/a\0"), Err(PathError::ForbiddenCharacter));
        assert_eq!(canon("/a\u{e9}"), Err(PathError::ForbiddenCharacter));
        // Found by the fuzzer: characters outside RFC 3986's pchar.
        for raw in [
            "/ppbul;bli`c",
            "/a{b}",
            "/a|b",
            "/a\"b",
            "/a[0]",
            "/a^b",
            "/a<b>",
        ] {
            assert_eq!(canon(raw), Err(PathError::ForbiddenCharacter), "{raw}");
        }
        assert_eq!(canon("*"), Err(PathError::NotAbsolute));
        assert_eq!(canon("/public/..;/admin"), Err(PathError::AmbiguousSegment));
        assert_eq!(canon("/public/.;x/admin"), Err(PathError::AmbiguousSegment));
        assert_eq!(canon("/a;b/c"), Ok("/a;b/c".into()), "plain ; is data");
    }

    #[test]
    fn without_normalisation_the_path_is_kept() {
        let raw = PathPolicy {
            normalize: false,
            merge_slashes: false,
        };
        let c = canonicalize("/a/../%41", &raw).unwrap();
        assert_eq!(c.path, "/a/../%41");
        assert!(matches!(
            canonicalize("/api/v1/orders;x=1", &PathPolicy::default())
                .unwrap()
                .path,
            Cow::Borrowed("/api/v1/orders;x=1")
        ));
    }

    proptest! {
        /// Whatever the caller sends, the canonical path has no dot segment, no empty segment,
        /// no encoded unreserved character, and canonicalising it again changes nothing: the
        /// upstream cannot resolve it to anything else.
        #[test]
        fn canonical_paths_are_fixed_points(raw in "/[a-zA-Z0-9./%;_~-]{0,40}") {
            if let Ok(c) = canonicalize(&raw, &PathPolicy::default()) {
                prop_assert!(c.path.starts_with('/'));
                prop_assert!(!c.path.contains("//"));
                for segment in c.path.split('/') {
                    prop_assert!(segment != "." && segment != "..", "{}", c.path);
                }
                let again = canonicalize(&c.path, &PathPolicy::default()).unwrap();
                prop_assert_eq!(&again.path, &c.path);
                prop_assert_eq!(again.encoded, c.encoded);
            }
        }
    }
}
