//! What TLS costs on the cache-hit path: proxy throughput of a release-built `gateway run`
//! process with plain HTTP on both sides, TLS on the listener, HTTPS to the upstream, and both,
//! driven as `process` describes. Every mode serves an application-level client credentials
//! route (tokens from the fake IdP, memory store, access log on) to the same echo upstream,
//! plain or HTTPS.
//!
//! The listener and the HTTPS upstream present ECDSA P-256 certificates from a CA made for the
//! run. The keep-alive modes measure the steady state, where each connection's handshake is
//! paid once; the "new connection per request" modes pay a TCP connection and a handshake
//! (TLS 1.3, resumed from the driver's session cache where the gateway's cache still holds the
//! session) on every request, once with an RSA 2048 certificate, cert-manager's default.
//!
//! Run with `cargo bench -p gateway --bench tls`.

mod process;

use std::time::Duration;

use process::{CLIENTS, CONCURRENCY, Gateway, Mode};
use testkit::tls::TlsFixture;
use testkit::{EchoUpstream, FakeIdp};

/// Lets the sockets of the last mode's connections close before the next.
const SETTLE: Duration = Duration::from_secs(1);

/// How the driver's connections behave.
#[derive(Clone, Copy)]
enum Caller {
    /// Kept alive, HTTP/1.1: one connection per request in flight.
    KeepAlive,
    /// HTTP/2 by ALPN: the requests in flight share one connection.
    H2,
    /// A new connection for every request.
    NewConnection,
}

fn main() {
    process::runtime().block_on(async {
        let tls = TlsFixture::new();
        let (ecdsa_crt, ecdsa_key) = tls.issue("ecdsa", None, "subjectAltName=IP:127.0.0.1");
        let (rsa_crt, rsa_key) = (tls.path("server.crt"), tls.path("server.key"));
        let ca = tls.path("ca.crt");
        let idp = FakeIdp::start().await;
        let plain = EchoUpstream::start().await;
        let https = EchoUpstream::start_tls(tls.server_config("ecdsa", &["h2", "http/1.1"], false)).await;
        let https_h1 = EchoUpstream::start_tls(tls.server_config("ecdsa", &["http/1.1"], false)).await;
        for upstream in [&plain, &https, &https_h1] {
            // Every token checked against the IdP's key, no request kept.
            upstream.verify_tokens(FakeIdp::decoding_key(), false);
        }
        idp.set_token_lifetime(Duration::from_secs(3600));
        for c in 0..CLIENTS {
            idp.register(&format!("client-{c}"), &format!("secret-{c}"));
        }
        let root = reqwest::Certificate::from_pem(&std::fs::read(&ca).unwrap()).unwrap();
        let mode = |name: &str, listener: Option<(&str, &str)>, upstream: &EchoUpstream, caller: Caller| {
            let listener = listener.map_or_else(String::new, |(crt, key)| {
                format!("tls: {{ certificates: [{{ certFile: \"{crt}\", keyFile: \"{key}\" }}] }}\n")
            });
            let config = format!(
                r#"{listener}serversTransports:
  bench: {{ rootCAs: ["{ca}"] }}
middlewares:
  app:
    clientCredentials: {{ url: {url}, scopes: [read] }}
routes:
  - {{ name: app, match: {{ pathPrefix: / }}, middlewares: [app], upstream: {{ urls: [{up}], serversTransport: bench }} }}
"#,
                url = idp.token_url(),
                up = upstream.url(),
            );
            let scheme = if listener.is_empty() { "http" } else { "https" };
            let client = reqwest::Client::builder().add_root_certificate(root.clone());
            let client = match caller {
                Caller::KeepAlive => client.http1_only().pool_max_idle_per_host(CONCURRENCY),
                Caller::H2 => client,
                Caller::NewConnection => client.http1_only().pool_max_idle_per_host(0),
            };
            Mode {
                name: name.to_owned(),
                start: Box::new(move || Gateway::start(&config, &[])),
                client: client.build().unwrap(),
                scheme,
                path: "/x",
            }
        };
        let ecdsa = Some((ecdsa_crt.as_str(), ecdsa_key.as_str()));
        let rsa = Some((rsa_crt.as_str(), rsa_key.as_str()));
        let modes = [
            mode("plain", None, &plain, Caller::KeepAlive),
            mode("TLS listener", ecdsa, &plain, Caller::KeepAlive),
            mode("TLS listener, h2 caller", ecdsa, &plain, Caller::H2),
            mode("HTTPS upstream (h2)", None, &https, Caller::KeepAlive),
            mode("HTTPS upstream (HTTP/1.1)", None, &https_h1, Caller::KeepAlive),
            mode("TLS both ways", ecdsa, &https, Caller::KeepAlive),
            mode("plain, new connection per request", None, &plain, Caller::NewConnection),
            mode("TLS listener, new connection per request", ecdsa, &plain, Caller::NewConnection),
            mode("TLS listener (RSA 2048), new connection per request", rsa, &plain, Caller::NewConnection),
        ];
        process::rounds(&modes, SETTLE).await;
        for upstream in [&plain, &https, &https_h1] {
            let v = upstream.verdicts();
            assert!(v.checked > 0 && v.bad() == 0, "{}: {v:?}", upstream.url());
        }
    });
}
