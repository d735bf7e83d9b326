//! The demo's upstream, like traefik/whoami: it answers every request with what it received
//! (request line, remote address, headers) as plain text, so a `curl` shows what the gateway
//! forwarded.

use std::fmt::Write;
use std::net::SocketAddr;

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::http::{BoxBody, response};

/// The text description of `req`, headers in canonical capitalisation.
pub fn describe(req: &Request<Incoming>, remote: SocketAddr) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "RemoteAddr: {remote}");
    if req
        .extensions()
        .get::<std::sync::Arc<crate::http::tls::TlsSession>>()
        .is_some()
    {
        let _ = writeln!(out, "Received over: TLS");
    }
    let _ = writeln!(
        out,
        "{} {} {:?}",
        req.method(),
        req.uri().path_and_query().map_or("/", |p| p.as_str()),
        req.version()
    );
    for (name, value) in req.headers() {
        let _ = writeln!(
            out,
            "{}: {}",
            canonical(name.as_str()),
            String::from_utf8_lossy(value.as_bytes())
        );
    }
    out
}

/// Answers with [`describe`].
pub fn handle(req: &Request<Incoming>, remote: SocketAddr) -> Response<BoxBody> {
    let mut resp = response::json(StatusCode::OK, describe(req, remote));
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// `x-client-id` -> `X-Client-Id`.
fn canonical(name: &str) -> String {
    name.split('-')
        .map(|part| {
            let mut c = part.chars();
            c.next().map_or_else(String::new, |first| {
                first.to_ascii_uppercase().to_string() + c.as_str()
            })
        })
        .collect::<Vec<_>>()
        .join("-")
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_names_are_capitalised_per_word() {
        assert_eq!(super::canonical("x-client-id"), "X-Client-Id");
        assert_eq!(super::canonical("host"), "Host");
    }
}
