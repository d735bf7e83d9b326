//! Forwarding a request to an upstream: header hygiene and the target URI.

use std::net::IpAddr;

use http::header::{
    CONNECTION, HeaderName, PROXY_AUTHENTICATE, PROXY_AUTHORIZATION, TE, TRAILER, UPGRADE,
};
use http::{HeaderMap, HeaderValue, Uri};
use ipnet::IpNet;
use url::Url;

/// Headers that describe one connection, not the message (RFC 9110 §7.6.1); never forwarded.
const HOP_BY_HOP: [HeaderName; 8] = [
    CONNECTION,
    HeaderName::from_static("keep-alive"),
    HeaderName::from_static("proxy-connection"),
    PROXY_AUTHENTICATE,
    PROXY_AUTHORIZATION,
    TE,
    TRAILER,
    UPGRADE,
];

/// Removes hop-by-hop headers, including any the `Connection` header names.
/// `Transfer-Encoding` is left to hyper, which re-frames bodies itself.
///
/// Runs twice per request (on the request and on the answer), so it looks before it removes:
/// most messages carry none of these fields, or a `Connection: keep-alive` alone.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    if !headers.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    // Named by `Connection`, other than the fields removed below anyway.
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !HOP_BY_HOP
                .iter()
                .any(|h| h.as_str().eq_ignore_ascii_case(t))
        })
        .filter_map(|name| HeaderName::from_bytes(name.as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    while let Some(name) = headers.keys().find(|k| HOP_BY_HOP.contains(k)).cloned() {
        headers.remove(name);
    }
}

/// `forwardedHeaders`: the peers whose forwarding headers are believed (Traefik's `trustedIPs`).
#[derive(Debug, Clone, Default)]
pub struct ForwardedHeaders {
    /// Trusted peers.
    pub trusted: Vec<IpNet>,
    /// Trust every peer.
    pub insecure: bool,
}

/// Headers through which a proxy tells the next hop about the original request. From a peer
/// that is not trusted, every one of them is a forgery and is dropped before ours are set.
const FORWARDING: [&str; 3] = ["forwarded", "x-real-ip", "x-forwarded-for"];

const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");

/// Whether a caller's header named `name` claims to be a proxy's forwarding header.
fn is_forwarding(name: &HeaderName) -> bool {
    name.as_str().starts_with("x-forwarded-") || FORWARDING.contains(&name.as_str())
}

/// An address as a header value.
fn address_value(address: IpAddr) -> HeaderValue {
    HeaderValue::try_from(address.to_string()).expect("an IP address is a valid value")
}

impl ForwardedHeaders {
    /// Whether `peer` may tell us about the original request.
    pub fn trusts(&self, peer: IpAddr) -> bool {
        self.insecure || self.trusted.iter().any(|n| n.contains(&peer))
    }

    /// The caller's address: the peer's, or, from a trusted peer, the right-most address of
    /// `X-Forwarded-For` that is not itself a trusted proxy (the left-most entries are whatever
    /// the client wrote).
    pub fn caller(&self, headers: &HeaderMap, peer: IpAddr) -> IpAddr {
        if !self.trusts(peer) {
            return peer;
        }
        let entries: Vec<&str> = headers
            .get_all(X_FORWARDED_FOR)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        // From the right: each trusted hop vouches for the entry before it. An entry that is
        // not an address ends the walk: nothing to its left is vouched for.
        let mut caller = peer;
        for entry in entries.iter().rev() {
            let Ok(address) = entry.parse::<IpAddr>() else {
                break;
            };
            caller = address;
            if !self.trusts(address) {
                break;
            }
        }
        caller
    }

    /// Writes the forwarding headers of a request from `peer`, on behalf of `caller`, received
    /// over TLS if `secure`.
    ///
    /// From a trusted peer, `X-Forwarded-For` is appended to and the peer's `X-Forwarded-Proto`,
    /// `X-Forwarded-Host` and `Forwarded` are kept. From anyone else, every `X-Forwarded-*`,
    /// `Forwarded` and `X-Real-IP` the peer sent is dropped and ours replace them. Either way
    /// `X-Real-IP` is the caller.
    pub fn apply(
        &self,
        headers: &mut HeaderMap,
        peer: IpAddr,
        caller: IpAddr,
        host: Option<&HeaderValue>,
        secure: bool,
    ) {
        let peer_value = address_value(peer);
        if self.trusts(peer) {
            let chain: Vec<&str> = headers
                .get_all(X_FORWARDED_FOR)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .collect();
            let value = if chain.is_empty() {
                Ok(peer_value.clone())
            } else {
                HeaderValue::try_from(format!("{}, {peer}", chain.join(", ")))
            };
            if let Ok(v) = value {
                headers.insert(X_FORWARDED_FOR, v);
            }
        } else {
            if headers.keys().any(is_forwarding) {
                let forged: Vec<HeaderName> = headers
                    .keys()
                    .filter(|k| is_forwarding(k))
                    .cloned()
                    .collect();
                for name in forged {
                    headers.remove(name);
                }
            }
            headers.insert(X_FORWARDED_FOR, peer_value.clone());
        }
        if !headers.contains_key(X_FORWARDED_HOST)
            && let Some(h) = host
        {
            headers.insert(X_FORWARDED_HOST, h.clone());
        }
        if !headers.contains_key(X_FORWARDED_PROTO) {
            headers.insert(
                X_FORWARDED_PROTO,
                HeaderValue::from_static(if secure { "https" } else { "http" }),
            );
        }
        let caller_value = if caller == peer {
            peer_value
        } else {
            address_value(caller)
        };
        headers.insert(X_REAL_IP, caller_value);
    }
}

/// An upstream server's URL, split once into the parts every request's target is made of.
#[derive(Debug, Clone)]
pub struct Base {
    scheme: http::uri::Scheme,
    authority: http::uri::Authority,
    /// The URL's path without its trailing `/` (empty for the root).
    path: String,
}

impl Base {
    /// The parts of `url`; an error if they do not make an HTTP target.
    pub fn of(url: &Url) -> Result<Self, http::Error> {
        let authority = match url.port() {
            Some(p) => format!("{}:{p}", url.host_str().unwrap_or_default()),
            None => url.host_str().unwrap_or_default().to_owned(),
        };
        Ok(Self {
            scheme: url.scheme().parse().map_err(http::Error::from)?,
            authority: authority.parse().map_err(http::Error::from)?,
            path: url.path().trim_end_matches('/').to_owned(),
        })
    }
}

/// The upstream URI: the upstream's base URL with the request's path and query appended.
pub fn target(base: &Base, uri: &Uri) -> Result<Uri, http::Error> {
    let path_and_query = match (base.path.is_empty(), uri.path_and_query()) {
        (true, Some(p)) => p.clone(),
        (true, None) => http::uri::PathAndQuery::from_static("/"),
        (false, p) => format!("{}{}", base.path, p.map_or("/", |p| p.as_str()))
            .parse()
            .map_err(http::Error::from)?,
    };
    let mut parts = http::uri::Parts::default();
    parts.scheme = Some(base.scheme.clone());
    parts.authority = Some(base.authority.clone());
    parts.path_and_query = Some(path_and_query);
    Ok(Uri::from_parts(parts)?)
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
        // Named in any case, in several values; every value of a hop-by-hop field goes.
        let mut h = HeaderMap::new();
        h.append(CONNECTION, HeaderValue::from_static("Close"));
        h.append(CONNECTION, HeaderValue::from_static(" X-Other ,TE"));
        h.append(TE, HeaderValue::from_static("trailers"));
        h.append(UPGRADE, HeaderValue::from_static("a"));
        h.append(UPGRADE, HeaderValue::from_static("b"));
        h.insert("close", HeaderValue::from_static("named too"));
        h.insert("x-other", HeaderValue::from_static("1"));
        h.insert("x-kept", HeaderValue::from_static("1"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.keys().map(|k| k.as_str()).collect::<Vec<_>>(), ["x-kept"]);
        // Nothing to remove: left as it was.
        let mut h = HeaderMap::new();
        h.insert("x-kept", HeaderValue::from_static("1"));
        h.insert(http::header::HOST, HeaderValue::from_static("a"));
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    fn caller_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            "x-forwarded-for",
            HeaderValue::from_static("10.9.9.9, 203.0.113.5"),
        );
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        h.insert("x-forwarded-host", HeaderValue::from_static("evil.example"));
        h.insert("x-forwarded-prefix", HeaderValue::from_static("/admin"));
        h.insert("forwarded", HeaderValue::from_static("for=10.9.9.9"));
        h.insert("x-real-ip", HeaderValue::from_static("10.9.9.9"));
        h
    }

    #[test]
    fn forwarding_headers_from_untrusted_peers_are_replaced() {
        let fwd = ForwardedHeaders::default();
        let peer: IpAddr = "198.51.100.7".parse().unwrap();
        let mut h = caller_headers();
        assert_eq!(fwd.caller(&h, peer), peer);
        fwd.apply(
            &mut h,
            peer,
            peer,
            Some(&HeaderValue::from_static("api.local")),
            false,
        );
        assert_eq!(h["x-forwarded-for"], "198.51.100.7");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["x-forwarded-host"], "api.local");
        assert_eq!(h["x-real-ip"], "198.51.100.7");
        assert!(h.get("forwarded").is_none() && h.get("x-forwarded-prefix").is_none());
        // Over TLS, the forged "https" is replaced by ours, which says the same truthfully.
        let mut tls = caller_headers();
        tls.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        fwd.apply(&mut tls, peer, peer, None, true);
        assert_eq!(tls["x-forwarded-proto"], "https");
    }

    #[test]
    fn forwarding_headers_from_trusted_proxies_are_extended() {
        let fwd = ForwardedHeaders {
            trusted: vec![
                "198.51.100.0/24".parse().unwrap(),
                "203.0.113.5/32".parse().unwrap(),
            ],
            insecure: false,
        };
        let peer: IpAddr = "198.51.100.7".parse().unwrap();
        let mut h = caller_headers();
        // 203.0.113.5 is a trusted proxy too; the client is the next one to the left.
        let caller = fwd.caller(&h, peer);
        assert_eq!(caller, "10.9.9.9".parse::<IpAddr>().unwrap());
        fwd.apply(
            &mut h,
            peer,
            caller,
            Some(&HeaderValue::from_static("api.local")),
            true,
        );
        assert_eq!(h["x-forwarded-for"], "10.9.9.9, 203.0.113.5, 198.51.100.7");
        assert_eq!(h["x-forwarded-proto"], "https");
        assert_eq!(h["x-forwarded-host"], "evil.example");
        assert_eq!(h["x-real-ip"], "10.9.9.9");
        // A malformed entry ends the walk: the client-written left part is not believed.
        let mut odd = HeaderMap::new();
        odd.insert(
            "x-forwarded-for",
            HeaderValue::from_static("6.6.6.6, unknown, 203.0.113.5"),
        );
        assert_eq!(
            fwd.caller(&odd, peer),
            "203.0.113.5".parse::<IpAddr>().unwrap(),
            "the last trusted hop, not the forged address left of the garbage"
        );
    }

    #[test]
    fn target_keeps_base_path_and_query() {
        let base = Base::of(&"http://10.0.0.5:8081/base/".parse().unwrap()).unwrap();
        let t = target(&base, &"/app/x?y=1".parse().unwrap()).unwrap();
        assert_eq!(t.to_string(), "http://10.0.0.5:8081/base/app/x?y=1");
        let root = Base::of(&"https://[2001:db8::5]".parse().unwrap()).unwrap();
        let t = target(&root, &"/app/x?y=1".parse().unwrap()).unwrap();
        assert_eq!(t.to_string(), "https://[2001:db8::5]/app/x?y=1");
        let t = target(&root, &"/".parse().unwrap()).unwrap();
        assert_eq!(t.to_string(), "https://[2001:db8::5]/");
    }
}
