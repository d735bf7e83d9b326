//! Cross-origin resource sharing (the Fetch standard's CORS protocol) per route, with the
//! options of Traefik's `headers` middleware.
//!
//! A preflight (`OPTIONS` with `Origin` and `Access-Control-Request-Method`) is answered by the
//! gateway before authentication, because browsers send it without credentials; it never
//! reaches the upstream. Other requests are authenticated as usual, and their answers (the
//! upstream's, or the gateway's refusal) carry the CORS headers when the origin is allowed, so
//! the page can read a 401 too.

use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_METHOD, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode};
use regex::Regex;

use crate::http::{BoxBody, full};

/// A route's CORS policy.
#[derive(Debug, Clone, Default)]
pub struct Cors {
    /// `accessControlAllowOriginList`: origins allowed exactly; `*` allows any (never with
    /// credentials: configuration refuses it).
    pub origins: Vec<String>,
    /// `accessControlAllowOriginListRegex`.
    pub origin_patterns: Vec<Regex>,
    /// `accessControlAllowMethods`, joined.
    pub methods: Option<HeaderValue>,
    /// `accessControlAllowHeaders`, joined.
    pub headers: Option<HeaderValue>,
    /// `accessControlExposeHeaders`, joined.
    pub expose: Option<HeaderValue>,
    /// `accessControlAllowCredentials`.
    pub credentials: bool,
    /// `accessControlMaxAge`, seconds.
    pub max_age: Option<HeaderValue>,
    /// `addVaryHeader`: `Vary: Origin` on answers that depend on it.
    pub vary: bool,
}

impl Cors {
    /// Whether `req` is a CORS preflight.
    pub fn is_preflight(method: &Method, headers: &HeaderMap) -> bool {
        method == Method::OPTIONS
            && headers.contains_key(ORIGIN)
            && headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
    }

    /// The value of `Access-Control-Allow-Origin` for `origin`, if it is allowed.
    fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        if self.origins.iter().any(|o| o == "*") {
            return Some(HeaderValue::from_static("*"));
        }
        let text = origin.to_str().ok()?;
        (self.origins.iter().any(|o| o == text)
            || self.origin_patterns.iter().any(|re| re.is_match(text)))
        .then(|| origin.clone())
    }

    /// The answer to a preflight: 200, with the CORS headers if the origin is allowed (without
    /// them the browser does not send the request).
    pub fn preflight(&self, headers: &HeaderMap) -> Response<BoxBody> {
        let mut resp = Response::new(full(bytes::Bytes::new()));
        *resp.status_mut() = StatusCode::OK;
        let out = resp.headers_mut();
        if self.decorate(headers.get(ORIGIN), out) {
            for (name, value) in [
                (ACCESS_CONTROL_ALLOW_METHODS, &self.methods),
                (ACCESS_CONTROL_ALLOW_HEADERS, &self.headers),
                (ACCESS_CONTROL_MAX_AGE, &self.max_age),
            ] {
                if let Some(v) = value {
                    out.insert(name, v.clone());
                }
            }
        }
        resp
    }

    /// Adds the headers every answer to a request from `origin` carries, if it is allowed;
    /// whether it is.
    pub fn decorate(&self, origin: Option<&HeaderValue>, out: &mut HeaderMap) -> bool {
        if self.vary {
            out.append(VARY, HeaderValue::from_static("Origin"));
        }
        let Some(allowed) = origin.and_then(|o| self.allow_origin(o)) else {
            return false;
        };
        out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
        if self.credentials {
            out.insert(
                ACCESS_CONTROL_ALLOW_CREDENTIALS,
                HeaderValue::from_static("true"),
            );
        }
        if let Some(v) = &self.expose {
            out.insert(ACCESS_CONTROL_EXPOSE_HEADERS, v.clone());
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(origin: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ORIGIN, HeaderValue::try_from(origin).unwrap());
        h.insert(
            ACCESS_CONTROL_REQUEST_METHOD,
            HeaderValue::from_static("POST"),
        );
        h
    }

    fn policy() -> Cors {
        Cors {
            origins: vec!["https://app.example".into()],
            origin_patterns: vec![Regex::new(r"^https://[a-z]+\.preview\.example$").unwrap()],
            methods: Some(HeaderValue::from_static("GET, POST")),
            headers: Some(HeaderValue::from_static("Authorization, Content-Type")),
            expose: Some(HeaderValue::from_static("X-Request-Id")),
            credentials: true,
            max_age: Some(HeaderValue::from_static("600")),
            vary: true,
        }
    }

    #[test]
    fn a_preflight_from_an_allowed_origin_gets_the_policy() {
        let resp = policy().preflight(&request("https://staging.preview.example"));
        let h = resp.headers();
        assert_eq!(resp.status(), 200);
        assert_eq!(
            h[ACCESS_CONTROL_ALLOW_ORIGIN],
            "https://staging.preview.example"
        );
        assert_eq!(h[ACCESS_CONTROL_ALLOW_METHODS], "GET, POST");
        assert_eq!(
            h[ACCESS_CONTROL_ALLOW_HEADERS],
            "Authorization, Content-Type"
        );
        assert_eq!(h[ACCESS_CONTROL_ALLOW_CREDENTIALS], "true");
        assert_eq!(h[ACCESS_CONTROL_MAX_AGE], "600");
        assert_eq!(h[VARY], "Origin");
    }

    #[test]
    fn other_origins_get_no_cors_headers() {
        for origin in ["https://evil.example", "https://app.example.evil", "null"] {
            let resp = policy().preflight(&request(origin));
            assert!(
                !resp.headers().contains_key(ACCESS_CONTROL_ALLOW_ORIGIN),
                "{origin}"
            );
            assert!(!resp.headers().contains_key(ACCESS_CONTROL_ALLOW_METHODS));
        }
    }

    #[test]
    fn any_origin_is_answered_with_a_star() {
        let cors = Cors {
            origins: vec!["*".into()],
            ..Cors::default()
        };
        let mut out = HeaderMap::new();
        assert!(cors.decorate(request("https://x.example").get(ORIGIN), &mut out));
        assert_eq!(out[ACCESS_CONTROL_ALLOW_ORIGIN], "*");
        assert!(!Cors::is_preflight(
            &Method::POST,
            &request("https://x.example")
        ));
        assert!(Cors::is_preflight(
            &Method::OPTIONS,
            &request("https://x.example")
        ));
    }
}
