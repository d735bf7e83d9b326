//! Finding the caller's bearer token (RFC 6750 §2) where a middleware's `tokenSource` says, and
//! removing it before the request goes upstream.
//!
//! A request carries one token, in one place: RFC 6750 §2 forbids more than one method, and a
//! second token is how an unverified credential would reach the upstream beside the verified
//! one. So every configured source is read, every copy counted (repeated headers, repeated query
//! parameters, repeated cookies), and more than one is 400 `invalid_request`. A header holding
//! another scheme (`Basic ...` where `Bearer` is expected) is not a token of ours.
//! A token longer than `limits.tokenMaxLength`, or not printable ASCII, is malformed: 401
//! before anything is spent on it.

use std::sync::Arc;

use http::header::COOKIE;
use http::request::Parts;
use http::{HeaderName, HeaderValue, Uri};

use super::AuthError;
use super::limits::CallerLimits;

/// Where a caller's bearer token is looked for, in this order: header, query, cookie.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenSource {
    /// Headers, tried in order, each with the scheme that must precede the token in it
    /// (`None`: the whole value).
    pub headers: Vec<(HeaderName, Option<String>)>,
    /// A query parameter.
    pub query: Option<String>,
    /// A cookie.
    pub cookie: Option<String>,
}

impl Default for TokenSource {
    /// RFC 6750 §2.1: `Authorization: Bearer <token>`.
    fn default() -> Self {
        Self {
            headers: vec![(http::header::AUTHORIZATION, Some("Bearer".into()))],
            query: None,
            cookie: None,
        }
    }
}

/// The token, or the refusal a bearer-token middleware answers without one: no token at all is
/// a bare challenge, a malformed one is `invalid_token`, two are `invalid_request`.
pub fn require(
    source: &TokenSource,
    parts: &Parts,
    limits: &CallerLimits,
    realm: &Arc<str>,
) -> Result<(String, Location), AuthError> {
    match find(source, parts, limits) {
        Found::Token(t, at) => Ok((t, at)),
        Found::Malformed(_) => Err(AuthError::InvalidToken {
            realm: Arc::clone(realm),
            reason: "malformed token",
        }),
        Found::Nothing => Err(AuthError::MissingToken {
            realm: Arc::clone(realm),
        }),
        Found::Several => Err(AuthError::InvalidRequest {
            realm: Arc::clone(realm),
            basic: false,
            reason: "more than one token in the request",
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

/// What the request carries.
#[derive(Debug, PartialEq, Eq)]
pub enum Found {
    /// Exactly one token.
    Token(String, Location),
    /// Exactly one source is present but holds no usable token (wrong length or characters).
    Malformed(Location),
    /// No source is present.
    Nothing,
    /// More than one token, or the same source twice.
    Several,
}

/// Looks for the token in every source.
pub fn find(source: &TokenSource, parts: &Parts, limits: &CallerLimits) -> Found {
    let mut found: Option<(Option<String>, Location)> = None;
    let mut present = |value: Option<String>, at: Location| -> bool {
        let first = found.is_none();
        found = Some((value, at));
        first
    };
    for (name, scheme) in &source.headers {
        for value in parts.headers.get_all(name) {
            if let Some(token) = from_header(value, scheme.as_deref(), limits)
                && !present(token, Location::Header)
            {
                return Found::Several;
            }
        }
    }
    if let Some(param) = &source.query
        && let Some(q) = parts.uri.query()
    {
        for (_, v) in form_urlencoded::parse(q.as_bytes()).filter(|(k, _)| k == param) {
            let token = token_text(&v, limits).map(str::to_owned);
            if !present(token, Location::Query) {
                return Found::Several;
            }
        }
    }
    if let Some(name) = &source.cookie {
        for (_, v) in cookies(parts).filter(|(k, _)| k == name) {
            let token = token_text(v, limits).map(str::to_owned);
            if !present(token, Location::Cookie) {
                return Found::Several;
            }
        }
    }
    match found {
        Some((Some(t), at)) => Found::Token(t, at),
        Some((None, at)) => Found::Malformed(at),
        None => Found::Nothing,
    }
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
                    .is_some_and(|v| is_for_scheme(v, scheme.as_deref()))
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

/// Whether a header value is for `scheme` (any value is, when no scheme is configured; a value
/// that is not text is treated as ours, so it is refused rather than passed on).
fn is_for_scheme(value: &HeaderValue, scheme: Option<&str>) -> bool {
    let (Some(scheme), Ok(text)) = (scheme, value.to_str()) else {
        return true;
    };
    let text = text.trim();
    let s = text.split_once(' ').map_or(text, |(s, _)| s);
    s.eq_ignore_ascii_case(scheme)
}

/// `<scheme> <token>` (scheme case-insensitive, RFC 7235 §2.1), or the whole value when no
/// scheme is configured. `None` when the value is for another scheme; `Some(None)` when it is
/// ours but holds no usable token.
fn from_header(
    value: &HeaderValue,
    scheme: Option<&str>,
    limits: &CallerLimits,
) -> Option<Option<String>> {
    if !is_for_scheme(value, scheme) {
        return None;
    }
    let Ok(text) = value.to_str() else {
        return Some(None);
    };
    let text = text.trim();
    let token = match scheme {
        Some(_) => text
            .split_once(' ')
            .map_or("", |(_, rest)| rest.trim_start()),
        None => text,
    };
    Some(token_text(token, limits).map(str::to_owned))
}

/// A token within the caller limits; quotes around a cookie or query value are not part of it.
fn token_text<'t>(t: &'t str, limits: &CallerLimits) -> Option<&'t str> {
    let t = t.trim_matches('"');
    limits.token_ok(t).then_some(t)
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

    fn found(s: &TokenSource, p: &Parts) -> Found {
        find(s, p, &CallerLimits::default())
    }

    #[test]
    fn the_one_token_is_found_wherever_it_is() {
        let s = source();
        let header = parts("/p", &[("authorization", "bearer h1")]);
        assert_eq!(
            found(&s, &header),
            Found::Token("h1".into(), Location::Header)
        );
        let query = parts("/p?a=1&access_token=q%2B1", &[("cookie", "x=1")]);
        assert_eq!(
            found(&s, &query),
            Found::Token("q+1".into(), Location::Query)
        );
        let cookie = parts("/p?a=1", &[("cookie", "x=1; tg=c1")]);
        assert_eq!(
            found(&s, &cookie),
            Found::Token("c1".into(), Location::Cookie)
        );
        assert_eq!(found(&s, &parts("/p", &[])), Found::Nothing);
        let basic = parts("/p?access_token=q1", &[("authorization", "Basic abc")]);
        assert_eq!(
            found(&s, &basic),
            Found::Token("q1".into(), Location::Query)
        );
        let empty = parts("/p", &[("authorization", "Bearer ")]);
        assert_eq!(found(&s, &empty), Found::Malformed(Location::Header));
        let own = parts(
            "/p",
            &[("authorization", "Basic abc"), ("x-tokengate-auth", "t1")],
        );
        assert_eq!(found(&s, &own), Found::Token("t1".into(), Location::Header));
    }

    #[test]
    fn two_tokens_anywhere_are_refused() {
        let s = source();
        for (uri, headers) in [
            ("/p?access_token=q1", &[("authorization", "Bearer h1")][..]),
            (
                "/p",
                &[("authorization", "Bearer h1"), ("x-tokengate-auth", "h2")][..],
            ),
            (
                "/p",
                &[("authorization", "Bearer h1"), ("cookie", "tg=c1")][..],
            ),
            (
                "/p",
                &[("x-tokengate-auth", "h1"), ("x-tokengate-auth", "h1")][..],
            ),
            ("/p?access_token=a&access_token=b", &[][..]),
            ("/p", &[("cookie", "tg=a; tg=b")][..]),
            ("/p", &[("cookie", "tg=a"), ("cookie", "tg=b")][..]),
            // A malformed copy beside a good one is still two.
            ("/p?access_token=q1", &[("authorization", "Bearer ")][..]),
        ] {
            assert_eq!(
                found(&s, &parts(uri, headers)),
                Found::Several,
                "{uri} {headers:?}"
            );
        }
    }

    #[test]
    fn tokens_over_the_length_limit_are_malformed() {
        let s = source();
        let limits = CallerLimits {
            token_max_length: 10,
            ..CallerLimits::default()
        };
        let long = parts("/p", &[("authorization", "Bearer 12345678901")]);
        assert_eq!(find(&s, &long, &limits), Found::Malformed(Location::Header));
        let fits = parts("/p", &[("authorization", "Bearer 1234567890")]);
        assert!(matches!(find(&s, &fits, &limits), Found::Token(..)));
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

    proptest::proptest! {
        /// Arbitrary query strings and cookies: at most one token is found, within the limits.
        #[test]
        fn arbitrary_sources_yield_at_most_one_bounded_token(
            query in "[a-z_=&%0-9A-F+.-]{0,60}",
            cookie in "[a-z_=; 0-9\"]{0,40}",
            header in proptest::option::of("(Bearer|bearer|Basic) ?[ -~]{0,30}"),
        ) {
            let mut headers = vec![("cookie", cookie.as_str())];
            if let Some(h) = &header {
                headers.push(("authorization", h.as_str()));
            }
            let Ok(req) = Request::builder().uri(format!("/p?{query}")).body(()) else {
                return Ok(());
            };
            let mut p = req.into_parts().0;
            for (k, v) in headers {
                if let Ok(v) = HeaderValue::try_from(v) {
                    p.headers.append(k, v);
                }
            }
            if let Found::Token(t, _) = found(&source(), &p) {
                proptest::prop_assert!(CallerLimits::default().token_ok(&t));
            }
        }
    }
}
