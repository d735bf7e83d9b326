//! TLS on every hop: HTTPS upstreams (private CA, mutual TLS, HTTP/2 by ALPN), the TLS
//! listener (SNI, certificates replaced on disk, mutual TLS callers), token endpoints behind a
//! private CA, and upgraded connections (WebSocket) through an authenticated route.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use http_body_util::{BodyExt, Empty};
use rustls::pki_types::{CertificateDer, ServerName};
use testkit::{EchoUpstream, FakeIdp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{Node, TlsFixture, basic, client, eventually, metrics_text};

fn config(body: &str) -> String {
    format!("listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\n{body}")
}

/// A TLS client trusting the fixture's CA, presenting `identity` (certificate, key) if given.
fn tls_client(tls: &TlsFixture, identity: Option<(&str, &str)>) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(tls.der("ca.crt")).unwrap();
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots);
    let config = match identity {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            use rustls::pki_types::PrivateKeyDer;
            use rustls::pki_types::pem::PemObject;
            let chain = vec![CertificateDer::from_pem_file(cert).unwrap()];
            builder
                .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap())
                .unwrap()
        }
    };
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Connects to the node's TLS listener naming `sni`; the certificate it was served, and an
/// HTTP/1.1 connection over it.
async fn connect(
    node: &Node,
    tls: &tokio_rustls::TlsConnector,
    sni: &str,
) -> (
    CertificateDer<'static>,
    hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>,
) {
    let tcp = TcpStream::connect(node.proxy).await.unwrap();
    let stream = tls
        .connect(ServerName::try_from(sni.to_owned()).unwrap(), tcp)
        .await
        .unwrap();
    let served = stream.get_ref().1.peer_certificates().unwrap()[0].clone();
    let (send, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    (served, send)
}

async fn get(
    send: &mut hyper::client::conn::http1::SendRequest<Empty<bytes::Bytes>>,
    host: &str,
    path: &str,
) -> (u16, serde_json::Value) {
    let req = http::Request::get(path)
        .header("host", host)
        .body(Empty::new())
        .unwrap();
    // A connection whose last exchange has just ended is ready a moment later.
    send.ready().await.expect("the connection stays open");
    let resp = send.send_request(req).await.unwrap();
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, serde_json::from_slice(&body).unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_upstream_behind_a_private_ca_is_reached_only_through_a_transport_trusting_it() {
    let tls = TlsFixture::new();
    let upstream = EchoUpstream::start_tls(tls.server_config("server", &["http/1.1"], false)).await;
    let node = Node::start(
        &config(&format!(
            r#"
serversTransports:
  private-ca: {{ rootCAs: ["{ca}"] }}
routes:
  - {{ name: trusted, match: {{ pathPrefix: /trusted }}, upstream: {{ urls: ["{u}"], serversTransport: private-ca }} }}
  - {{ name: default, match: {{ pathPrefix: /default }}, upstream: {{ urls: ["{u}"] }} }}
"#,
            ca = tls.path("ca.crt"),
            u = upstream.url(),
        )),
        &[],
    );
    let resp = client().get(node.url("/trusted/x")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(upstream.seen().len(), 1);
    assert_eq!(upstream.seen()[0].path, "/trusted/x");
    let resp = client().get(node.url("/default/x")).send().await.unwrap();
    assert_eq!(
        resp.status(),
        502,
        "the system roots do not trust the private CA"
    );
    assert_eq!(upstream.seen().len(), 1, "nothing reached it unverified");
    node.log_once("the upstream failure is logged", |l| {
        l.contains("upstream request failed")
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_and_http2_to_an_upstream_that_offers_them() {
    let tls = TlsFixture::new();
    let upstream =
        EchoUpstream::start_tls(tls.server_config("server", &["h2", "http/1.1"], true)).await;
    let node = Node::start(
        &config(&format!(
            r#"
serversTransports:
  mtls: {{ rootCAs: ["{ca}"], certificates: [{{ certFile: "{crt}", keyFile: "{key}" }}] }}
  mtls-h1: {{ rootCAs: ["{ca}"], certificates: [{{ certFile: "{crt}", keyFile: "{key}" }}], disableHTTP2: true }}
  anonymous: {{ rootCAs: ["{ca}"] }}
routes:
  - {{ name: h2, match: {{ pathPrefix: /h2 }}, upstream: {{ urls: ["{u}"], serversTransport: mtls }} }}
  - {{ name: h1, match: {{ pathPrefix: /h1 }}, upstream: {{ urls: ["{u}"], serversTransport: mtls-h1 }} }}
  - {{ name: anon, match: {{ pathPrefix: /anon }}, upstream: {{ urls: ["{u}"], serversTransport: anonymous }} }}
"#,
            ca = tls.path("ca.crt"),
            crt = tls.path("client.crt"),
            key = tls.path("client.key"),
            u = upstream.url(),
        )),
        &[],
    );
    for path in ["/h2/a", "/h1/b"] {
        let resp = client().get(node.url(path)).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    let seen = upstream.seen();
    assert_eq!(seen[0].version, http::Version::HTTP_2, "h2 chosen by ALPN");
    assert_eq!(
        seen[1].version,
        http::Version::HTTP_11,
        "disableHTTP2 keeps HTTP/1.1"
    );
    let client_der = tls.der("client.crt").to_vec();
    assert!(
        seen.iter()
            .all(|s| s.client_certificate.as_ref() == Some(&client_der)),
        "the transport presented its client certificate"
    );
    let resp = client().get(node.url("/anon/c")).send().await.unwrap();
    assert_eq!(resp.status(), 502, "the upstream requires a certificate");
    assert_eq!(upstream.seen().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_listener_chooses_certificates_by_sni_and_picks_up_replaced_files() {
    let tls = TlsFixture::new();
    let (alpha_crt, alpha_key) = tls.issue("alpha", None, "subjectAltName=DNS:alpha.test");
    let (beta_crt, beta_key) = tls.issue("beta", None, "subjectAltName=DNS:*.beta.test");
    let upstream = EchoUpstream::start().await;
    let node = Node::start(
        &config(&format!(
            r#"
tls:
  certificates:
    - {{ certFile: "{alpha_crt}", keyFile: "{alpha_key}" }}
    - {{ certFile: "{beta_crt}", keyFile: "{beta_key}" }}
  watchInterval: 100ms
routes:
  - {{ name: r, match: {{ pathPrefix: / }}, upstream: {{ urls: ["{u}"] }} }}
"#,
            u = upstream.url(),
        )),
        &[],
    );
    let connector = tls_client(&tls, None);
    let (served, mut alpha_conn) = connect(&node, &connector, "alpha.test").await;
    assert_eq!(served, tls.der("alpha.crt"));
    let (served, _) = connect(&node, &connector, "api.beta.test").await;
    assert_eq!(served, tls.der("beta.crt"), "the wildcard serves one label");
    let (status, echo) = get(&mut alpha_conn, "alpha.test", "/first").await;
    assert_eq!(status, 200);
    assert_eq!(echo["headers"]["x-forwarded-proto"][0], "https");

    // cert-manager's way: the new files replace the old ones.
    let _ = tls.issue("alpha2", None, "subjectAltName=DNS:alpha.test");
    for (from, to) in [("alpha2.key", &alpha_key), ("alpha2.crt", &alpha_crt)] {
        let staged = format!("{to}.new");
        std::fs::copy(tls.path(from), &staged).unwrap();
        std::fs::rename(&staged, to).unwrap();
    }
    let rotated = tls.der("alpha2.crt");
    eventually(
        "new handshakes get the replaced certificate",
        Duration::from_secs(10),
        async || connect(&node, &connector, "alpha.test").await.0 == rotated,
    )
    .await;
    let (status, _) = get(&mut alpha_conn, "alpha.test", "/second").await;
    assert_eq!(
        status, 200,
        "the connection made before the change still works"
    );
    assert!(
        metrics_text(node.admin)
            .await
            .contains("tokengate_tls_certificate_reloads_total{outcome=\"ok\"} 1")
    );

    // A half-written replacement does not load: the certificates in use stay.
    std::fs::write(&alpha_key, "-----BEGIN PRIVATE KEY-----\ntruncated").unwrap();
    a_reload_failed(&node).await;
    assert_eq!(connect(&node, &connector, "alpha.test").await.0, rotated);
}

/// Waits until the node reports one TLS file change that did not load.
async fn a_reload_failed(node: &Node) {
    eventually(
        "the broken file is reported",
        Duration::from_secs(10),
        async || {
            metrics_text(node.admin)
                .await
                .contains("tokengate_tls_certificate_reloads_total{outcome=\"error\"} 1")
        },
    )
    .await;
}

/// Whether a caller with `identity` gets a 200 from `node` on a connection of its own (a
/// refused certificate fails the handshake, or the first request under TLS 1.3).
async fn served_with(node: &Node, tls: &TlsFixture, identity: (&str, &str)) -> bool {
    let connector = tls_client(tls, Some(identity));
    let Ok(tcp) = TcpStream::connect(node.proxy).await else {
        return false;
    };
    let Ok(stream) = connector
        .connect(ServerName::try_from("gw.test").unwrap(), tcp)
        .await
    else {
        return false;
    };
    let Ok((mut send, conn)) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream)).await
    else {
        return false;
    };
    tokio::spawn(conn);
    let req = http::Request::get("/")
        .header("host", "gw.test")
        .body(Empty::<bytes::Bytes>::new())
        .unwrap();
    matches!(send.send_request(req).await, Ok(resp) if resp.status() == 200)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_client_certificate_is_refused_once_the_list_names_it() {
    let tls = TlsFixture::new();
    let alice = tls.issue("alice", None, "extendedKeyUsage=clientAuth");
    let bob = tls.issue("bob", None, "extendedKeyUsage=clientAuth");
    let (srv_crt, srv_key) = tls.issue("gw", None, "subjectAltName=DNS:gw.test");
    let crl = tls.crl("clients.crl", &[]);
    let upstream = EchoUpstream::start().await;
    let node = Node::start(
        &config(&format!(
            r#"
tls:
  certificates: [{{ certFile: "{srv_crt}", keyFile: "{srv_key}" }}]
  options:
    clientAuth: {{ caFiles: ["{ca}"], crlFiles: ["{crl}"] }}
  watchInterval: 100ms
routes:
  - {{ name: r, match: {{ pathPrefix: / }}, upstream: {{ urls: ["{u}"] }} }}
"#,
            ca = tls.path("ca.crt"),
            u = upstream.url(),
        )),
        &[],
    );
    let (alice, bob) = ((&*alice.0, &*alice.1), (&*bob.0, &*bob.1));
    assert!(served_with(&node, &tls, alice).await);
    assert!(served_with(&node, &tls, bob).await);
    // The CA revokes alice's certificate and publishes a new list, replacing the file.
    let revoked = tls.crl("revoked.crl", &["alice"]);
    let staged = format!("{crl}.new");
    std::fs::copy(&revoked, &staged).unwrap();
    std::fs::rename(&staged, &crl).unwrap();
    eventually(
        "the new list refuses alice",
        Duration::from_secs(10),
        async || !served_with(&node, &tls, alice).await,
    )
    .await;
    assert!(served_with(&node, &tls, bob).await, "bob is not revoked");
    // A list that does not parse keeps the one in use.
    std::fs::write(&crl, "-----BEGIN X509 CRL-----\ntruncated").unwrap();
    a_reload_failed(&node).await;
    assert!(!served_with(&node, &tls, alice).await);
    assert!(served_with(&node, &tls, bob).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_callers_are_authorised_by_their_certificate_subject() {
    let tls = TlsFixture::new();
    let (payments_crt, payments_key) = tls.issue(
        "payments",
        Some("/O=Example/CN=payments"),
        "extendedKeyUsage=clientAuth",
    );
    let (other_crt, other_key) = tls.issue("other", None, "extendedKeyUsage=clientAuth");
    let (srv_crt, srv_key) = tls.issue("gw", None, "subjectAltName=DNS:gw.test");
    let upstream = EchoUpstream::start().await;
    let node = Node::start(
        &config(&format!(
            r#"
tls:
  certificates: [{{ certFile: "{srv_crt}", keyFile: "{srv_key}" }}]
  options:
    clientAuth: {{ caFiles: ["{ca}"], clientAuthType: VerifyClientCertIfGiven }}
middlewares:
  by-cert:
    clientCertificate:
      claims: "Equals(`subject.commonName`, `payments`) && Equals(`subject.organization`, `Example`)"
      forwardHeaders: {{ X-Client-CN: subject.commonName }}
      usernameClaim: subject.commonName
routes:
  - {{ name: r, match: {{ pathPrefix: / }}, middlewares: [by-cert], upstream: {{ urls: ["{u}"] }} }}
"#,
            ca = tls.path("ca.crt"),
            u = upstream.url(),
        )),
        &[],
    );
    let mut payments = connect(
        &node,
        &tls_client(&tls, Some((&payments_crt, &payments_key))),
        "gw.test",
    )
    .await
    .1;
    let req = http::Request::get("/pay")
        .header("host", "gw.test")
        .header("x-client-cn", "forged")
        .body(Empty::new())
        .unwrap();
    let resp = payments.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        upstream.seen()[0].header("x-client-cn"),
        Some("payments"),
        "the certificate's name replaces the caller's header"
    );
    let mut other = connect(
        &node,
        &tls_client(&tls, Some((&other_crt, &other_key))),
        "gw.test",
    )
    .await
    .1;
    assert_eq!(get(&mut other, "gw.test", "/pay").await.0, 403);
    let mut anonymous = connect(&node, &tls_client(&tls, None), "gw.test").await.1;
    let (status, body) = get(&mut anonymous, "gw.test", "/pay").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (403, Some("certificate_required"))
    );
    assert_eq!(upstream.seen().len(), 1);

    let lines = node.access_lines(3).await;
    let first = lines
        .iter()
        .find(|l| l["path"] == "/pay" && l["status"] == 200)
        .unwrap();
    assert_eq!(first["tls_client"], "O=Example,CN=payments");
    assert_eq!(first["user"], "payments");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_behind_a_private_ca_with_a_client_certificate() {
    let tls = TlsFixture::new();
    let idp = FakeIdp::start_tls(tls.server_config("server", &["http/1.1"], true)).await;
    idp.register("app", "app-secret");
    idp.set_token_lifetime(Duration::from_secs(3));
    let upstream = EchoUpstream::start().await;
    let node = Node::start(
        &config(&format!(
            r#"
refresh: {{ interval: 100ms, leaseTtl: 2s }}
middlewares:
  trusted:
    clientCredentials:
      url: "{token}"
      clientConfig:
        tls: {{ caFile: "{ca}", certFile: "{crt}", keyFile: "{key}" }}
  untrusted:
    clientCredentials: {{ url: "{token}", clientConfig: {{ retries: 0 }} }}
routes:
  - {{ name: ok, match: {{ pathPrefix: /ok }}, middlewares: [trusted], upstream: {{ urls: ["{u}"] }} }}
  - {{ name: ko, match: {{ pathPrefix: /ko }}, middlewares: [untrusted], upstream: {{ urls: ["{u}"] }} }}
"#,
            token = idp.token_url(),
            ca = tls.path("ca.crt"),
            crt = tls.path("client.crt"),
            key = tls.path("client.key"),
            u = upstream.url(),
        )),
        &[],
    );
    let resp = client()
        .get(node.url("/ok/x"))
        .header("authorization", basic("app", "app-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(upstream.seen()[0].bearer().is_some());
    assert_eq!(idp.seen().len(), 1);
    // The refresher renews the entry through the same TLS settings, named by the refresh spec.
    eventually(
        "the refresher renews the token over TLS",
        Duration::from_secs(10),
        async || idp.seen().len() >= 2,
    )
    .await;
    let resp = client()
        .get(node.url("/ko/x"))
        .header("authorization", basic("app", "app-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503, "the system roots do not trust the IdP");
    assert_eq!(upstream.seen().len(), 1);
}

/// Opens a WebSocket to `node` at `/socket` on a connection of its own; the answer's status
/// and, on 101, the socket.
async fn websocket(node: &Node) -> (u16, Option<tokio_tungstenite::WebSocketStream<TcpStream>>) {
    let url = format!("ws://{}/socket", node.proxy);
    match tokio_tungstenite::client_async(
        url.as_str(),
        TcpStream::connect(node.proxy).await.unwrap(),
    )
    .await
    {
        Ok((ws, resp)) => (resp.status().as_u16(), Some(ws)),
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => (resp.status().as_u16(), None),
        Err(e) => panic!("websocket: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgraded_connections_keep_their_slot_and_have_a_bound_of_their_own() {
    let upstream = EchoUpstream::start().await;
    let route = format!(
        "routes:\n  - {{ name: ws, match: {{ pathPrefix: / }}, upstream: {{ urls: [\"{}\"] }} }}\n",
        upstream.url()
    );
    // Two tunnels at most.
    let node = Node::start(
        &config(&format!(
            "transport: {{ upgrades: {{ maxConnections: 2 }} }}\n{route}"
        )),
        &[],
    );
    let (a, ws_a) = websocket(&node).await;
    let (b, _ws_b) = websocket(&node).await;
    assert_eq!((a, b), (101, 101));
    let (c, _) = websocket(&node).await;
    assert_eq!(c, 503, "the third upgrade is refused");
    assert_eq!(upstream.seen().len(), 2, "before the upstream saw it");
    drop(ws_a);
    eventually(
        "a closed tunnel frees its place",
        Duration::from_secs(10),
        async || websocket(&node).await.0 == 101,
    )
    .await;

    // Tunnels hold their connection's slot of maxConnections: with two slots and two tunnels,
    // a third connection is not served until a tunnel closes.
    let node = Node::start(
        &config(&format!("transport: {{ maxConnections: 2 }}\n{route}")),
        &[],
    );
    let (_, ws_a) = websocket(&node).await;
    let (_, ws_b) = websocket(&node).await;
    let (ws_a, _ws_b) = (ws_a.unwrap(), ws_b.unwrap());
    let waiting = tokio::spawn({
        let url = node.url("/plain");
        async move { client().get(url).send().await.map(|r| r.status().as_u16()) }
    });
    // The wait is the property: a slot stays taken while its tunnel is open.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(!waiting.is_finished(), "served past maxConnections");
    drop(ws_a);
    let served = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("served once a tunnel closed")
        .unwrap();
    assert_eq!(served.unwrap(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_frames_cross_a_client_credentials_route_both_ways() {
    let idp = FakeIdp::start().await;
    idp.register("app", "app-secret");
    let upstream = EchoUpstream::start().await;
    let node = Node::start(
        &config(&format!(
            r#"
middlewares:
  creds: {{ clientCredentials: {{ url: "{token}" }} }}
routes:
  - {{ name: ws, match: {{ pathPrefix: / }}, middlewares: [creds], upstream: {{ urls: ["{u}"] }} }}
"#,
            token = idp.token_url(),
            u = upstream.url(),
        )),
        &[],
    );
    let url = format!("ws://{}/socket", node.proxy);
    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", basic("app", "app-secret").parse().unwrap());
    let (mut ws, resp) =
        tokio_tungstenite::client_async(req, TcpStream::connect(node.proxy).await.unwrap())
            .await
            .unwrap();
    assert_eq!(resp.status(), 101);
    for text in ["one", "two"] {
        ws.send(Message::text(text)).await.unwrap();
        let back = ws.next().await.unwrap().unwrap();
        assert_eq!(back, Message::text(text));
    }
    let seen = upstream.seen();
    assert_eq!(seen.len(), 1);
    assert!(seen[0].bearer().is_some(), "the upgrade carried the token");
    assert_eq!(seen[0].header("upgrade"), Some("websocket"));
    let metrics = metrics_text(node.admin).await;
    assert!(metrics.contains("tokengate_upgraded_connections_total 1"));
    assert!(metrics.contains("tokengate_upgraded_connections_open 1"));
    ws.close(None).await.unwrap();
    drop(ws);
    eventually(
        "the tunnel is closed",
        Duration::from_secs(10),
        async || {
            metrics_text(node.admin)
                .await
                .contains("tokengate_upgraded_connections_open 0")
        },
    )
    .await;

    // Without credentials the upgrade never reaches the upstream.
    let refused = tokio_tungstenite::client_async(
        url.as_str(),
        TcpStream::connect(node.proxy).await.unwrap(),
    )
    .await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status(), 401)
        }
        other => panic!("expected 401, got {other:?}"),
    }
    assert_eq!(upstream.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h2c_upgrade_is_refused_before_it_reaches_the_upstream() {
    let upstream = EchoUpstream::start().await;
    let node = Node::start(
        &config(&format!(
            "routes:\n  - {{ name: r, match: {{ pathPrefix: / }}, upstream: {{ urls: [\"{}\"] }} }}\n",
            upstream.url()
        )),
        &[],
    );
    let mut raw = TcpStream::connect(node.proxy).await.unwrap();
    raw.write_all(
        b"GET /admin HTTP/1.1\r\nHost: a\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
    )
    .await
    .unwrap();
    let mut head = vec![0u8; 12];
    raw.read_exact(&mut head).await.unwrap();
    assert_eq!(&head, b"HTTP/1.1 400");
    assert!(
        upstream.seen().is_empty(),
        "h2c smuggling never reaches an upstream"
    );
}

/// Reads until the server closes the connection or 10 s pass; whether it closed, and what it
/// sent.
async fn until_closed(s: &mut TcpStream) -> (bool, Vec<u8>) {
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out))
        .await
        .is_ok();
    (closed, out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_and_stalled_handshakes_are_closed_and_counted_while_others_are_served() {
    let tls = TlsFixture::new();
    let (crt, key) = tls.issue("alpha", None, "subjectAltName=DNS:alpha.test");
    let upstream = EchoUpstream::start().await;
    let node = Node::start(
        &config(&format!(
            r#"
transport: {{ respondingTimeouts: {{ readHeaderTimeout: 1s }} }}
tls:
  certificates: [{{ certFile: "{crt}", keyFile: "{key}" }}]
  options: {{ minVersion: VersionTLS13, sniStrict: true }}
routes:
  - {{ name: r, match: {{ pathPrefix: / }}, upstream: {{ urls: ["{u}"] }} }}
"#,
            u = upstream.url(),
        )),
        &[],
    );

    // A request in clear, and bytes that are no TLS record at all.
    for hostile in [
        &b"GET / HTTP/1.1\r\nHost: alpha.test\r\n\r\n"[..],
        &[0xff; 64][..],
    ] {
        let mut raw = TcpStream::connect(node.proxy).await.unwrap();
        raw.write_all(hostile).await.unwrap();
        let (closed, answer) = until_closed(&mut raw).await;
        assert!(closed, "the connection is closed");
        assert!(
            !String::from_utf8_lossy(&answer).contains("HTTP/1.1"),
            "nothing is answered in clear"
        );
    }

    // A handshake that stalls after a record header holds its connection until
    // readHeaderTimeout, and no one else waits for it.
    let mut stalled = TcpStream::connect(node.proxy).await.unwrap();
    stalled.write_all(&[0x16, 0x03, 0x01]).await.unwrap();
    let connector = tls_client(&tls, None);
    let (_, mut conn) = connect(&node, &connector, "alpha.test").await;
    assert_eq!(get(&mut conn, "alpha.test", "/served").await.0, 200);
    // sniStrict: a request on that connection for another host is misdirected (421), and the
    // upstream never sees it; the connection goes on serving its own host.
    let (status, body) = get(&mut conn, "beta.test", "/misdirected").await;
    assert_eq!(
        (status, body["error"].as_str()),
        (421, Some("misdirected_request"))
    );
    assert_eq!(get(&mut conn, "ALPHA.test:443", "/served").await.0, 200);
    let (closed, _) = until_closed(&mut stalled).await;
    assert!(closed, "the stalled handshake is shed");

    // sniStrict: an unknown name and no name at all (a client dialling an address sends no
    // SNI) are refused; minVersion: a TLS 1.2 client is refused.
    for name in ["other.test", "127.0.0.1"] {
        let tcp = TcpStream::connect(node.proxy).await.unwrap();
        let refused = connector
            .connect(ServerName::try_from(name.to_owned()).unwrap(), tcp)
            .await;
        assert!(refused.is_err(), "{name} is not served");
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(tls.der("ca.crt")).unwrap();
    let tls12 = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS12])
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = TcpStream::connect(node.proxy).await.unwrap();
    let refused = tokio_rustls::TlsConnector::from(Arc::new(tls12))
        .connect(ServerName::try_from("alpha.test").unwrap(), tcp)
        .await;
    assert!(refused.is_err(), "TLS 1.2 is below minVersion");

    assert_eq!(
        upstream.seen().len(),
        2,
        "only the served requests got through"
    );
    // Two hostile, one stalled, two names, one version.
    eventually(
        "every failed handshake is counted",
        Duration::from_secs(5),
        async || {
            let text = metrics_text(node.admin).await;
            text.lines()
                .any(|l| l == "tokengate_tls_handshake_failures_total 6")
        },
    )
    .await;
}
