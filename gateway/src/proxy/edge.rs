//! The checks every request passes before routing: one unambiguous host, and a path in the
//! canonical form that routing and the upstream will both see (see [`super::path`]).
//!
//! hyper has already refused what does not parse as HTTP (obs-fold, a bad or repeated
//! `Content-Length`, `Transfer-Encoding` on HTTP/1.0, oversized heads); these are the rules of a
//! request that parses but could mean two things to two servers.

use http::header::HOST;
use http::uri::PathAndQuery;
use http::{Request, Response, StatusCode, Uri, Version};

use super::forward::ForwardedHeaders;
use super::path::{EncodedCharacters, PathError, PathPolicy, canonicalize};
use crate::auth::limits::{CallerLimits, MissBudgetConfig};
use crate::http::{BoxBody, IntoResponse, TransportLimits, response};

/// Everything the edge applies before a middleware sees a request.
#[derive(Debug, Clone, Default)]
pub struct EdgeConfig {
    /// `paths`.
    pub paths: PathPolicy,
    /// `encodedCharacters`: the default for routes that name none.
    pub encoded_characters: EncodedCharacters,
    /// `forwardedHeaders`.
    pub forwarded: ForwardedHeaders,
    /// `transport` and `http2`.
    pub transport: TransportLimits,
    /// `limits`.
    pub caller_limits: CallerLimits,
    /// `idpMissBudget`.
    pub miss_budget: MissBudgetConfig,
}

/// Why a request was refused at the edge. Always 400: the request is malformed or ambiguous.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// More than one `Host` field (RFC 9112 §3.2).
    SeveralHosts,
    /// HTTP/1.1 without `Host` (RFC 9112 §3.2).
    MissingHost,
    /// The target's authority and `Host` disagree (absolute-form, or HTTP/2 `:authority`).
    HostMismatch,
    /// The path cannot be put in canonical form.
    Path(PathError),
    /// An ambiguous encoded character the route does not allow.
    EncodedCharacter(&'static str),
    /// An upgrade the gateway does not relay: `h2c`, or one outside HTTP/1.1.
    Upgrade,
}

impl Refusal {
    /// A fixed word for the `edge_refused_total` metric.
    fn reason(&self) -> &'static str {
        match self {
            Self::SeveralHosts | Self::MissingHost | Self::HostMismatch => "host",
            Self::Path(_) => "path",
            Self::EncodedCharacter(_) => "encoded_character",
            Self::Upgrade => "upgrade",
        }
    }
}

impl IntoResponse for Refusal {
    /// The 400 answer, counted.
    fn into_response(self) -> Response<BoxBody> {
        crate::telemetry::metrics::metrics().edge_refused(self.reason());
        let description = match self {
            Self::SeveralHosts => "more than one Host header".to_owned(),
            Self::MissingHost => "the Host header is required".to_owned(),
            Self::HostMismatch => "the request target and the Host header disagree".to_owned(),
            Self::Path(e) => e.to_string(),
            Self::EncodedCharacter(c) => format!("the request path contains {c}, not allowed here"),
            Self::Upgrade => "this protocol upgrade is not supported".to_owned(),
        };
        response::error(StatusCode::BAD_REQUEST, "invalid_request", &description)
    }
}

/// Checks `req` and rewrites its target to the canonical path (query kept byte for byte).
/// Returns the ambiguous encoded characters the path still holds, for the route to judge.
pub fn check<B>(req: &mut Request<B>, paths: &PathPolicy) -> Result<EncodedCharacters, Refusal> {
    let mut hosts = req.headers().get_all(HOST).iter();
    let host = hosts.next();
    if hosts.next().is_some() {
        return Err(Refusal::SeveralHosts);
    }
    match (host, req.uri().authority()) {
        (None, None) if req.version() == Version::HTTP_11 => return Err(Refusal::MissingHost),
        (Some(h), Some(a)) if !h.as_bytes().eq_ignore_ascii_case(a.as_str().as_bytes()) => {
            return Err(Refusal::HostMismatch);
        }
        _ => {}
    }
    let canonical = canonicalize(req.uri().path(), paths).map_err(Refusal::Path)?;
    let encoded = canonical.encoded;
    let rewrite = match canonical.path {
        std::borrow::Cow::Borrowed(_) => None,
        std::borrow::Cow::Owned(p) => Some(p),
    };
    if rewrite.is_some() || req.uri().authority().is_some() && req.version() != Version::HTTP_2 {
        // Origin-form from here on: what was absolute-form has been checked against `Host`.
        let path = rewrite.unwrap_or_else(|| req.uri().path().to_owned());
        let path_and_query = match req.uri().query() {
            Some(q) => format!("{path}?{q}"),
            None => path,
        };
        let pq = PathAndQuery::try_from(path_and_query)
            .map_err(|_| Refusal::Path(PathError::ForbiddenCharacter))?;
        let mut parts = req.uri().clone().into_parts();
        parts.path_and_query = Some(pq);
        if req.version() != Version::HTTP_2 {
            parts.scheme = None;
            parts.authority = None;
        }
        *req.uri_mut() =
            Uri::from_parts(parts).map_err(|_| Refusal::Path(PathError::NotAbsolute))?;
    }
    Ok(encoded)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(target: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().uri(target);
        for h in hosts {
            b = b.header(HOST, *h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn the_path_is_rewritten_to_its_canonical_form_and_the_query_kept() {
        let mut r = request("/public/%2e%2e/admin/x?a=%2e%2e&b", &["gw"]);
        check(&mut r, &PathPolicy::default()).unwrap();
        assert_eq!(r.uri().to_string(), "/admin/x?a=%2e%2e&b");
    }

    #[test]
    fn hosts_must_be_one_and_agree_with_the_target() {
        let p = PathPolicy::default();
        assert_eq!(
            check(&mut request("/", &["a", "b"]), &p),
            Err(Refusal::SeveralHosts)
        );
        assert_eq!(check(&mut request("/", &[]), &p), Err(Refusal::MissingHost));
        assert_eq!(
            check(&mut request("http://evil.example/x", &["gw.example"]), &p),
            Err(Refusal::HostMismatch)
        );
        let mut same = request("http://GW.example/x/../y", &["gw.example"]);
        check(&mut same, &p).unwrap();
        assert_eq!(
            same.uri().to_string(),
            "/y",
            "absolute-form becomes origin-form"
        );
    }
}
