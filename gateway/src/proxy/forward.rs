//! Forwarding a request to an upstream: header hygiene, the target URI, the pooled client.

use std::net::SocketAddr;
use std::time::Duration;

use http::header::{CONNECTION, HeaderName};
use http::{HeaderMap, HeaderValue, Uri};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use url::Url;

use super::ProxyBody;

/// Idle upstream connections are kept this long for reuse.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// Connecting to an upstream on a healthy network takes milliseconds; fail fast otherwise.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1); never forwarded.
const HOP_BY_HOP: [&str; 8] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authenticate",
    "proxy-authorization",
    "te",
    "trailer",
    "upgrade",
];

/// The pooled keep-alive client towards upstreams.
pub type UpstreamClient = Client<HttpConnector, ProxyBody>;

/// Builds the upstream client.
pub fn client() -> UpstreamClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    connector.set_connect_timeout(Some(CONNECT_TIMEOUT));
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(POOL_IDLE_TIMEOUT)
        .build(connector)
}

/// Removes hop-by-hop headers, including any the `Connection` header names.
/// `Transfer-Encoding` is left to hyper, which re-frames bodies itself.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

/// Sets `X-Forwarded-For` (appending the caller's address to any chain it sent),
/// `X-Forwarded-Host` and `X-Forwarded-Proto` (replacing caller-sent values).
pub fn set_forwarded(headers: &mut HeaderMap, remote: SocketAddr, host: Option<&HeaderValue>) {
    let ip = remote.ip().to_string();
    let xff = HeaderName::from_static("x-forwarded-for");
    let chain: Vec<&str> = headers
        .get_all(&xff)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    let value = if chain.is_empty() {
        ip
    } else {
        format!("{}, {ip}", chain.join(", "))
    };
    if let Ok(v) = HeaderValue::try_from(value) {
        headers.insert(xff, v);
    }
    match host {
        Some(h) => headers.insert(HeaderName::from_static("x-forwarded-host"), h.clone()),
        None => headers.remove(HeaderName::from_static("x-forwarded-host")),
    };
    headers.insert(
        HeaderName::from_static("x-forwarded-proto"),
        HeaderValue::from_static("http"),
    );
}

/// The upstream URI: the upstream's base URL with the request's path and query appended.
pub fn target(base: &Url, uri: &Uri) -> Result<Uri, http::Error> {
    let path_and_query = uri.path_and_query().map_or("/", |p| p.as_str());
    let base_path = base.path().trim_end_matches('/');
    let authority = match base.port() {
        Some(p) => format!("{}:{p}", base.host_str().unwrap_or_default()),
        None => base.host_str().unwrap_or_default().to_owned(),
    };
    Uri::builder()
        .scheme(base.scheme())
        .authority(authority)
        .path_and_query(format!("{base_path}{path_and_query}"))
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_named_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(
            CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert("proxy-authorization", HeaderValue::from_static("Basic x"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
    }

    #[test]
    fn forwarded_for_appends_and_host_proto_replace() {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("10.0.0.1"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        set_forwarded(
            &mut h,
            "127.0.0.9:5000".parse().unwrap(),
            Some(&HeaderValue::from_static("api.local")),
        );
        assert_eq!(h["x-forwarded-for"], "10.0.0.1, 127.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.local");
    }

    #[test]
    fn target_keeps_base_path_and_query() {
        let base: Url = "http://10.0.0.5:8081/base/".parse().unwrap();
        let t = target(&base, &"/app/x?y=1".parse().unwrap()).unwrap();
        assert_eq!(t.to_string(), "http://10.0.0.5:8081/base/app/x?y=1");
    }
}
