//! Finding the caller's bearer token (RFC 6750 §2) where a middleware's `tokenSource` says, and
//! removing it before the request goes upstream.
//!
//! Sources are tried in a fixed order: the headers (in their configured order), then the query
//! parameter, then the cookie.
//! The first one present wins, even if its value is malformed: a request carrying two different
//! tokens is not searched for "one that works". A header with another scheme (`Basic ...` where
//! `Bearer` is expected) does not count as present.

use std::sync::Arc;

use http::header::COOKIE;
use http::request::Parts;
use http::{HeaderValue, Uri};

use super::AuthError;
use crate::config::TokenSource;

/// The token, or the refusal a bearer-token middleware answers without one: no token at all is
/// a bare challenge, a malformed one is `invalid_token`.
pub fn require(
    source: &TokenSource,
    parts: &Parts,
    realm: &Arc<str>,
) -> Result<(String, Location), AuthError> {
    match find(source, parts) {
        Found::Token(t, at) => Ok((t, at)),
        Found::Malformed(_) => Err(AuthError::InvalidToken {
            realm: Arc::clone(realm),
            reason: "malformed token",
        }),
        Found::Nothing => Err(AuthError::MissingToken {
            realm: Arc::clone(realm),
        }),
    }
}

/// Where a token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// One of the configured headers.
    Header,
    /// The configured query parameter.
    Query,
    /// The configured cookie.
    Cookie,
}

/// What the request carries at the first source present.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// A token.
    Token(String, Location),
    /// A source is present but holds no usable token (wrong scheme, empty, not text).
    Malformed(Location),
    /// No source is present.
    Nothing,
}

/// Looks for the token.
pub fn find(source: &TokenSource, parts: &Parts) -> Found {
    for (name, scheme) in &source.headers {
        if let Some(value) = parts.headers.get(name)
            && let Some(token) = from_header(value, scheme.as_deref())
        {
            return match token {
                Some(t) => Found::Token(t, Location::Header),
                None => Found::Malformed(Location::Header),
            };
        }
    }
    if let Some(param) = &source.query
        && let Some(q) = parts.uri.query()
        && let Some((_, v)) = form_urlencoded::parse(q.as_bytes()).find(|(k, _)| k == param)
    {
        return token_text(&v).map_or(Found::Malformed(Location::Query), |t| {
            Found::Token(t.to_owned(), Location::Query)
        });
    }
    if let Some(name) = &source.cookie
        && let Some(v) = cookies(parts).find_map(|(k, v)| (k == name).then_some(v))
    {
        return token_text(v).map_or(Found::Malformed(Location::Cookie), |t| {
            Found::Token(t.to_owned(), Location::Cookie)
        });
    }
    Found::Nothing
}

/// Removes the token from where it was found, so the upstream never sees it. From a header,
/// every configured header holding a token for its scheme goes: a second copy of a credential
/// in another of them must not reach the upstream either.
pub fn remove(source: &TokenSource, parts: &mut Parts, at: Location) {
    match at {
        Location::Header => {
            for (name, scheme) in &source.headers {
                if parts
                    .headers
                    .get(name)
                    .is_some_and(|v| from_header(v, scheme.as_deref()).is_some())
                {
                    parts.headers.remove(name);
                }
            }
        }
        Location::Query => {
            if let Some(param) = &source.query
                && let Some(uri) = without_query_param(&parts.uri, param)
            {
                parts.uri = uri;
            }
        }
        Location::Cookie => {
            let Some(name) = &source.cookie else { return };
            let kept: Vec<String> = parts
                .headers
                .get_all(COOKIE)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .flat_map(|v| v.split(';'))
                .map(str::trim)
                .filter(|c| {
                    !c.is_empty() && c.split_once('=').is_none_or(|(k, _)| k.trim() != name)
                })
                .map(str::to_owned)
                .collect();
            parts.headers.remove(COOKIE);
            if !kept.is_empty()
                && let Ok(v) = HeaderValue::try_from(kept.join("; "))
            {
                parts.headers.insert(COOKIE, v);
            }
        }
    }
}

/// `<scheme> <token>` (scheme case-insensitive, RFC 7235 §2.1), or the whole value when no
/// scheme is configured. `None` when the value is for another scheme; `Some(None)` when it is
/// ours but holds no usable token.
fn from_header(value: &HeaderValue, scheme: Option<&str>) -> Option<Option<String>> {
    let Ok(text) = value.to_str() else {
        return Some(None);
    };
    let text = text.trim();
    let token = match scheme {
        Some(scheme) => {
            let (s, rest) = text.split_once(' ').unwrap_or((text, ""));
            if !s.eq_ignore_ascii_case(scheme) {
                return None;
            }
            rest.trim_start()
        }
        None => text,
    };
    Some(token_text(token).map(str::to_owned))
}

/// A token is non-empty printable text without whitespace (RFC 6750's b64token is stricter;
/// opaque tokens from real IdPs are not always that tidy, and the IdP is the judge).
fn token_text(t: &str) -> Option<&str> {
    let t = t.trim_matches('"');
    (!t.is_empty() && t.len() <= 16 * 1024 && t.bytes().all(|b| b.is_ascii_graphic())).then_some(t)
}

fn cookies(parts: &Parts) -> impl Iterator<Item = (&str, &str)> {
    parts
        .headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
}

/// The URI without every `param=...` pair; other pairs keep their exact bytes.
fn without_query_param(uri: &Uri, param: &str) -> Option<Uri> {
    let query = uri.query()?;
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| {
            let name = pair.split('=').next().unwrap_or_default();
            form_urlencoded::parse(name.as_bytes())
                .next()
                .is_none_or(|(k, _)| k != param)
        })
        .collect();
    let path_and_query = if kept.is_empty() {
        uri.path().to_owned()
    } else {
        format!("{}?{}", uri.path(), kept.join("&"))
    };
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(path_and_query.parse().ok()?);
    Uri::from_parts(parts).ok()
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;

    fn source() -> TokenSource {
        TokenSource {
            headers: vec![
                (http::header::AUTHORIZATION, Some("Bearer".into())),
                (http::HeaderName::from_static("x-tokengate-auth"), None),
            ],
            query: Some("access_token".into()),
            cookie: Some("tg".into()),
        }
    }

    fn parts(uri: &str, headers: &[(&str, &str)]) -> Parts {
        let mut b = Request::builder().uri(uri);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap().into_parts().0
    }

    #[test]
    fn header_then_query_then_cookie() {
        let s = source();
        let all = parts(
            "/p?access_token=q1",
            &[("authorization", "bearer h1"), ("cookie", "tg=c1")],
        );
        assert_eq!(find(&s, &all), Found::Token("h1".into(), Location::Header));
        let no_header = parts("/p?a=1&access_token=q%2B1", &[("cookie", "x=1; tg=c1")]);
        assert_eq!(
            find(&s, &no_header),
            Found::Token("q+1".into(), Location::Query)
        );
        let cookie_only = parts("/p?a=1", &[("cookie", "x=1; tg=c1")]);
        assert_eq!(
            find(&s, &cookie_only),
            Found::Token("c1".into(), Location::Cookie)
        );
        assert_eq!(find(&s, &parts("/p", &[])), Found::Nothing);
        let basic = parts("/p?access_token=q1", &[("authorization", "Basic abc")]);
        assert_eq!(find(&s, &basic), Found::Token("q1".into(), Location::Query));
        let empty = parts("/p?access_token=q1", &[("authorization", "Bearer ")]);
        assert_eq!(find(&s, &empty), Found::Malformed(Location::Header));
        let own = parts(
            "/p",
            &[("authorization", "Basic abc"), ("x-tokengate-auth", "t1")],
        );
        assert_eq!(find(&s, &own), Found::Token("t1".into(), Location::Header));
    }

    #[test]
    fn header_removal_takes_every_token_header_but_spares_other_schemes() {
        let s = source();
        let mut both = parts(
            "/p",
            &[("authorization", "Bearer h1"), ("x-tokengate-auth", "h2")],
        );
        remove(&s, &mut both, Location::Header);
        assert!(both.headers.is_empty());
        let mut basic = parts(
            "/p",
            &[("authorization", "Basic abc"), ("x-tokengate-auth", "h2")],
        );
        remove(&s, &mut basic, Location::Header);
        assert_eq!(basic.headers["authorization"], "Basic abc");
        assert!(basic.headers.get("x-tokengate-auth").is_none());
    }

    #[test]
    fn removal_keeps_everything_else() {
        let s = source();
        let mut p = parts(
            "/p?a=1&access_token=q1&b=%20x",
            &[("cookie", "x=1; tg=c1; y=2")],
        );
        remove(&s, &mut p, Location::Query);
        assert_eq!(p.uri, "/p?a=1&b=%20x");
        remove(&s, &mut p, Location::Cookie);
        assert_eq!(p.headers[COOKIE], "x=1; y=2");
        let mut only = parts("/p?access_token=q1", &[("cookie", "tg=c1")]);
        remove(&s, &mut only, Location::Query);
        remove(&s, &mut only, Location::Cookie);
        assert_eq!(only.uri, "/p");
        assert!(only.headers.get(COOKIE).is_none());
    }
}
