//! The request edge, attacked as an attacker would: every request here is written byte for byte
//! on a raw socket (no HTTP client to tidy it up), and each case asserts what the upstream saw
//! (nothing, or exactly the verified token and the canonical path) and that valid callers are
//! still served.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use testkit::{EchoUpstream, FakeIdp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Node, basic, eventually, get_json, metrics_text, now};

struct Edge {
    idp: FakeIdp,
    upstream: EchoUpstream,
    node: Node,
}

/// Routes: `/public` (open), `/admin` (a `jwt` that forwards the verified token), `/files`
/// (open, encoded slashes allowed), `/app` (application-level client credentials).
fn config(idp: &FakeIdp, upstream: &EchoUpstream, transport: &str, extra: &str) -> String {
    format!(
        r#"
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
transport: {transport}
http2: {{ maxConcurrentStreams: 7 }}
{extra}
middlewares:
  verify:
    jwt:
      jwksUrl: {jwks}
      issuer: {iss}
      audience: orders
      forwardAuthorization: true
      tokenSource: {{ header: Authorization, headerAuthScheme: Bearer, query: access_token }}
  app-creds:
    clientCredentials:
      url: {token_url}
routes:
  - name: public
    match: {{ pathPrefix: /public }}
    upstream: {{ urls: [{up}] }}
  - name: admin
    match: {{ pathPrefix: /admin }}
    middlewares: [verify]
    upstream: {{ urls: [{up}] }}
  - name: files
    match: {{ pathPrefix: /files }}
    encodedCharacters: {{ allowEncodedSlash: true }}
    upstream: {{ urls: [{up}] }}
  - name: app
    match: {{ pathPrefix: /app }}
    middlewares: [app-creds]
    upstream: {{ urls: [{up}] }}
"#,
        jwks = idp.jwks_url(),
        iss = idp.issuer(),
        token_url = idp.token_url(),
        up = upstream.url(),
    )
}

/// Short timeouts, so slow and idle clients are shed within the test.
const QUICK: &str =
    "{ maxConnections: 20, respondingTimeouts: { readHeaderTimeout: 1s, idleTimeout: 2s } }";

async fn start(extra: &str) -> Edge {
    start_with(QUICK, extra).await
}

async fn start_with(transport: &str, extra: &str) -> Edge {
    let idp = FakeIdp::start().await;
    let upstream = EchoUpstream::start().await;
    idp.register("svc-a", "s3cret");
    let node = Node::start(&config(&idp, &upstream, transport, extra), &[]);
    Edge {
        idp,
        upstream,
        node,
    }
}

/// Writes `request` and reads until the server closes (or 10 s pass): the raw answer.
async fn exchange(addr: SocketAddr, request: &[u8]) -> String {
    exchange_from([127, 0, 0, 1], addr, request).await
}

/// [`exchange`] from source address `from` (every 127.0.0.0/8 address is this host's).
async fn exchange_from(from: [u8; 4], addr: SocketAddr, request: &[u8]) -> String {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket
        .bind((std::net::Ipv4Addr::from(from), 0).into())
        .unwrap();
    let mut s = socket.connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

/// The status codes of every response in a raw answer, in order.
fn statuses(answer: &str) -> Vec<u16> {
    answer
        .split("HTTP/1.1 ")
        .skip(1)
        .filter_map(|r| r.get(..3)?.parse().ok())
        .collect()
}

/// `GET target` with `Connection: close` and extra header lines.
fn get(target: &str, headers: &[&str]) -> Vec<u8> {
    let mut r = format!("GET {target} HTTP/1.1\r\nHost: gw.test\r\n");
    for h in headers {
        r.push_str(h);
        r.push_str("\r\n");
    }
    r.push_str("Connection: close\r\n\r\n");
    r.into_bytes()
}

fn token(idp: &FakeIdp, sub: &str) -> String {
    idp.mint(&json!({
        "iss": idp.issuer(), "sub": sub, "aud": "orders", "iat": now(), "exp": now() + 300,
    }))
}

/// A valid caller is served: the open route answers 200.
async fn still_served(e: &Edge) {
    let answer = exchange(e.node.proxy, &get("/public/ping", &[])).await;
    assert_eq!(statuses(&answer), [200], "{answer}");
}

fn paths_seen(e: &Edge) -> Vec<String> {
    e.upstream.seen().into_iter().map(|s| s.path).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dot_segments_are_resolved_before_routing_and_the_canonical_path_is_forwarded() {
    let e = start("").await;
    // Each of these is /admin/secret: the admin route's jwt answers, not the open route.
    for target in [
        "/public/../admin/secret",
        "/public/%2e%2e/admin/secret",
        "/public/%2E./admin/secret",
        "/public/./../admin/secret",
        "//admin/secret",
    ] {
        let answer = exchange(e.node.proxy, &get(target, &[])).await;
        assert_eq!(statuses(&answer), [401], "{target}: {answer}");
        assert!(
            answer.contains("WWW-Authenticate: Bearer")
                || answer
                    .to_ascii_lowercase()
                    .contains("www-authenticate: bearer"),
            "{answer}"
        );
    }
    assert!(paths_seen(&e).is_empty(), "{:?}", paths_seen(&e));

    // Within a route the upstream receives the canonical path, query untouched.
    let answer = exchange(e.node.proxy, &get("/public/a/./b/../c%7e?x=%2e%2e", &[])).await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    assert_eq!(paths_seen(&e), ["/public/a/c~?x=%2e%2e"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ambiguous_and_malformed_paths_are_refused_before_anything_is_forwarded() {
    let e = start("").await;
    for target in [
        "/public/..%2fadmin/secret",
        "/public/..%2Fadmin/secret",
        "/public/..%5cadmin/secret",
        "/public/a%00",
        "/public/a%zz",
        "/public/a%2",
        "/public/..;/admin/secret",
        "/..",
        "/public/../../admin",
        "/public\\..\\admin\\secret",
    ] {
        let answer = exchange(e.node.proxy, &get(target, &[])).await;
        assert_eq!(statuses(&answer), [400], "{target}: {answer}");
    }
    assert!(paths_seen(&e).is_empty(), "{:?}", paths_seen(&e));

    // A route that allows encoded slashes gets them, still encoded.
    let answer = exchange(e.node.proxy, &get("/files/a%2fb", &[])).await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    assert_eq!(paths_seen(&e), ["/files/a%2Fb"]);
    still_served(&e).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_one_verified_token_reaches_the_upstream() {
    let e = start("").await;
    let good = token(&e.idp, "svc-admin");
    let forged = "eyJhbGciOiJub25lIn0.eyJzdWIiOiJyb290In0.";
    let bearer = format!("Authorization: Bearer {good}");
    let forged_header = format!("Authorization: Bearer {forged}");
    for (why, headers, target) in [
        (
            "two Authorization headers",
            vec![bearer.as_str(), forged_header.as_str()],
            "/admin/x",
        ),
        (
            "a Basic beside the Bearer",
            vec![bearer.as_str(), "Authorization: Basic YTpi"],
            "/admin/x",
        ),
        (
            "header and query",
            vec![bearer.as_str()],
            "/admin/x?access_token=abc",
        ),
        (
            "the query twice",
            vec![],
            "/admin/x?access_token=abc&access_token=def",
        ),
    ] {
        let target = target.replace("abc", &good);
        let answer = exchange(e.node.proxy, &get(&target, &headers)).await;
        assert_eq!(statuses(&answer), [400], "{why}: {answer}");
        assert!(answer.contains("invalid_request"), "{why}: {answer}");
    }
    assert!(e.upstream.seen().is_empty());

    let answer = exchange(e.node.proxy, &get("/admin/x", &[&bearer])).await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    let seen = e.upstream.seen();
    let authorization: Vec<_> = seen[0].headers.get_all("authorization").iter().collect();
    assert_eq!(authorization, [format!("Bearer {good}").as_str()]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_credentials_cost_nothing_and_lock_nobody_out() {
    let e = start("").await;
    let huge = basic(&"x".repeat(20 * 1024), "whatever");
    for _ in 0..4 {
        let answer = exchange(
            e.node.proxy,
            &get("/app/x", &[&format!("Authorization: {huge}")]),
        )
        .await;
        assert_eq!(statuses(&answer), [401], "{answer}");
        assert!(answer.contains("invalid_client"), "{answer}");
    }
    assert!(e.idp.seen().is_empty(), "the IdP was never asked");
    // The next caller with valid, uncached credentials is served.
    let ok = format!("Authorization: {}", basic("svc-a", "s3cret"));
    let answer = exchange(e.node.proxy, &get("/app/x", &[&ok])).await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    assert_eq!(e.idp.issued("svc-a"), 1);
    // The log never carries the oversized id.
    assert!(!e.node.settled_log().await.contains(&"x".repeat(1024)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_credentials_is_bounded_by_the_miss_budget() {
    let e = start("idpMissBudget: { perAddress: { average: 1, period: 1h, burst: 3 } }").await;
    let mut answers = Vec::new();
    for i in 0..6 {
        let wrong = format!("Authorization: {}", basic(&format!("nobody-{i}"), "guess"));
        answers.push(exchange(e.node.proxy, &get("/app/x", &[&wrong])).await);
    }
    let codes: Vec<u16> = answers.iter().flat_map(|a| statuses(a)).collect();
    assert_eq!(codes, [401, 401, 401, 429, 429, 429]);
    assert!(
        answers[3].to_ascii_lowercase().contains("retry-after: "),
        "{}",
        answers[3]
    );
    assert_eq!(
        e.idp.seen().len(),
        3,
        "three misses reached the IdP, no more"
    );
    let metrics = metrics_text(e.node.admin).await;
    assert!(
        metrics.contains("tokengate_idp_miss_budget_exceeded_total{bucket=\"address\"} 3"),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guessing_another_clients_secret_never_spends_the_owners_budget() {
    let e = start("idpMissBudget: { perClientId: { average: 1, period: 1h, burst: 2 } }").await;
    // The attacker, at 127.0.0.2, guesses svc-a's secret until its budget for svc-a is spent.
    let mut codes = Vec::new();
    for i in 0..5 {
        let guess = format!("Authorization: {}", basic("svc-a", &format!("guess-{i}")));
        let answer = exchange_from([127, 0, 0, 2], e.node.proxy, &get("/app/x", &[&guess])).await;
        codes.extend(statuses(&answer));
    }
    assert_eq!(codes, [401, 401, 429, 429, 429]);
    // The owner, at 127.0.0.3, presents the right secret for the first time: served.
    let right = format!("Authorization: {}", basic("svc-a", "s3cret"));
    let answer = exchange_from([127, 0, 0, 3], e.node.proxy, &get("/app/x", &[&right])).await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    // The attacker's budget for svc-a stays spent, even with the right secret uncached for it
    // (a different secret is a different credential).
    let answer = exchange_from(
        [127, 0, 0, 2],
        e.node.proxy,
        &get(
            "/app/x",
            &[&format!("Authorization: {}", basic("svc-a", "guess-9"))],
        ),
    )
    .await;
    assert_eq!(statuses(&answer), [429], "{answer}");
    assert_eq!(e.idp.seen().len(), 3, "two guesses and the owner's request");
    let seen = e.upstream.seen();
    assert_eq!(seen.len(), 1, "only the owner's request went upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn smuggling_attempts_never_reach_a_protected_path() {
    let e = start("").await;
    let attempts: [(&str, &[u8], &[u16]); 6] = [
        (
            // CL.TE: the gateway frames by Transfer-Encoding and closes the connection after
            // answering (RFC 9112 §6.1), so what follows the empty chunked body is never read
            // as a request at all.
            "Content-Length with Transfer-Encoding",
            b"POST /public/a HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin/secret HTTP/1.1\r\nHost: gw.test\r\n\r\n",
            &[200],
        ),
        (
            "two different Content-Lengths",
            b"POST /public/a HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 0\r\nContent-Length: 44\r\n\r\nGET /admin/secret HTTP/1.1\r\nHost: gw.test\r\n\r\n",
            &[400],
        ),
        (
            "obs-fold",
            b"GET /public/a HTTP/1.1\r\nHost: gw.test\r\nX-A: 1\r\n Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n",
            &[400],
        ),
        (
            "absolute-form naming another host",
            b"GET http://upstream.internal/admin/secret HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n",
            &[400],
        ),
        (
            "two Host headers",
            b"GET /public/a HTTP/1.1\r\nHost: gw.test\r\nHost: other.test\r\nConnection: close\r\n\r\n",
            &[400],
        ),
        (
            "no Host on HTTP/1.1",
            b"GET /public/a HTTP/1.1\r\nConnection: close\r\n\r\n",
            &[400],
        ),
    ];
    for (why, bytes, expected) in attempts {
        let answer = exchange(e.node.proxy, bytes).await;
        assert_eq!(statuses(&answer), expected, "{why}: {answer}");
    }
    let seen = e.upstream.seen();
    assert!(
        seen.iter().all(|s| s.path == "/public/a"),
        "{:?}",
        paths_seen(&e)
    );
    let smuggled_body: Vec<u64> = seen.iter().map(|s| s.body_len).collect();
    assert_eq!(
        smuggled_body,
        [0],
        "the chunked body was empty, nothing more"
    );

    // Absolute-form naming the gateway's own host is served, forwarded in origin-form.
    let answer = exchange(
        e.node.proxy,
        b"GET http://gw.test/public/b/../c HTTP/1.1\r\nHost: gw.test\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    assert_eq!(paths_seen(&e).last().unwrap(), "/public/c");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_and_numerous_headers_are_431() {
    let e = start("").await;
    let big = format!("X-Big: {}", "a".repeat(40 * 1024));
    let answer = exchange(e.node.proxy, &get("/public/a", &[&big])).await;
    assert_eq!(statuses(&answer), [431], "{answer}");
    let many: Vec<String> = (0..150).map(|i| format!("X-H{i}: v")).collect();
    let many: Vec<&str> = many.iter().map(String::as_str).collect();
    let answer = exchange(e.node.proxy, &get("/public/a", &many)).await;
    assert_eq!(statuses(&answer), [431], "{answer}");
    assert!(e.upstream.seen().is_empty());
    still_served(&e).await;
}

/// `maxHeaders` is exact: a head with `limit` fields is read (no route takes the path, so the
/// gateway answers 404 itself, whatever the upstream's own limit), one with a field more is 431.
async fn max_headers_is_exactly(e: &Edge, limit: usize) {
    let fields = |n: usize| -> Vec<String> { (0..n).map(|i| format!("X-H{i}: v")).collect() };
    // `get` adds `Host` and `Connection`.
    let fit = fields(limit - 2);
    let fit: Vec<&str> = fit.iter().map(String::as_str).collect();
    let answer = exchange(e.node.proxy, &get("/nowhere/fit", &fit)).await;
    assert_eq!(statuses(&answer), [404], "{answer}");
    let over = fields(limit - 1);
    let over: Vec<&str> = over.iter().map(String::as_str).collect();
    let answer = exchange(e.node.proxy, &get("/nowhere/over", &over)).await;
    assert_eq!(statuses(&answer), [431], "{answer}");
    assert!(e.upstream.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_max_headers_is_the_limit() {
    max_headers_is_exactly(&start_with("{ maxHeaders: 12 }", "").await, 12).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_default_max_headers_is_100() {
    // Left to hyper's own default, which must be the documented one.
    max_headers_is_exactly(&start("").await, 100).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forwarding_headers_from_callers_are_replaced_not_appended() {
    let e = start("").await;
    let answer = exchange(
        e.node.proxy,
        &get(
            "/public/a",
            &[
                "X-Forwarded-For: 10.6.6.6",
                "X-Forwarded-Proto: https",
                "X-Forwarded-Prefix: /admin",
                "Forwarded: for=10.6.6.6;proto=https",
                "X-Real-IP: 10.6.6.6",
            ],
        ),
    )
    .await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    let seen = &e.upstream.seen()[0];
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-real-ip"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("forwarded"), None);
    assert_eq!(seen.header("x-forwarded-prefix"), None);

    // From a trusted proxy the chain is extended and the client it names is the caller.
    let trusted = start("forwardedHeaders: { trustedIPs: [127.0.0.1] }").await;
    let answer = exchange(
        trusted.node.proxy,
        &get(
            "/public/a",
            &["X-Forwarded-For: 203.0.113.9", "X-Forwarded-Proto: https"],
        ),
    )
    .await;
    assert_eq!(statuses(&answer), [200], "{answer}");
    let seen = &trusted.upstream.seen()[0];
    assert_eq!(
        seen.header("x-forwarded-for"),
        Some("203.0.113.9, 127.0.0.1")
    );
    assert_eq!(seen.header("x-real-ip"), Some("203.0.113.9"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("https"));
}

/// Opens a connection that sends a request head one byte at a time, forever; returns how long
/// until the gateway closed it.
async fn slowloris(addr: SocketAddr) -> Duration {
    trickle_head(TcpStream::connect(addr).await.unwrap()).await
}

/// Sends a request head on `slow` one byte at a time, forever; returns how long until the
/// gateway closed the connection.
async fn trickle_head(mut slow: TcpStream) -> Duration {
    slow.write_all(b"GET /public/a HTTP/1.1\r\nHost: gw.test\r\n")
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        if slow.write_all(b"X").await.is_err() {
            return started.elapsed();
        }
        // Closed by the server: the read sees EOF (after any 408 it wrote).
        match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return started.elapsed(),
            Ok(Ok(_)) | Err(_) => {}
        }
        assert!(started.elapsed() < Duration::from_secs(20), "never shed");
    }
}

async fn metric(e: &Edge, name: &str) -> Option<f64> {
    let text = metrics_text(e.node.admin).await;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_shed_by_the_header_timeout_while_others_are_served() {
    // readHeaderTimeout 1 s, idleTimeout long: hyper's head timer sheds the slow client.
    let e = start_with(
        "{ respondingTimeouts: { readHeaderTimeout: 1s, idleTimeout: 60s } }",
        "",
    )
    .await;
    let trickle = tokio::spawn(slowloris(e.node.proxy));
    for _ in 0..5 {
        still_served(&e).await;
    }
    let shed_after = trickle.await.unwrap();
    assert!(shed_after < Duration::from_secs(10), "{shed_after:?}");

    // The head timer starts at a head's first byte, not while a keep-alive connection waits:
    // one idle for longer than readHeaderTimeout is still open for its next request (closing
    // it would race a load balancer about to reuse it).
    let mut kept = TcpStream::connect(e.node.proxy).await.unwrap();
    let request = b"GET /public/a HTTP/1.1\r\nHost: gw.test\r\n\r\n";
    let mut buf = vec![0u8; 4096];
    kept.write_all(request).await.unwrap();
    assert!(kept.read(&mut buf).await.unwrap() > 0);
    // The idle time (past readHeaderTimeout) is the property.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    kept.write_all(request).await.unwrap();
    let n = kept.read(&mut buf).await.unwrap();
    assert_eq!(
        statuses(&String::from_utf8_lossy(&buf[..n])),
        [200],
        "the idle keep-alive connection was closed"
    );
    // And a connection that has served requests is held to the same rule for its next head.
    let shed_after = trickle_head(kept).await;
    assert!(shed_after < Duration::from_secs(10), "{shed_after:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_without_a_request_in_progress_are_closed_after_the_idle_timeout() {
    // idleTimeout 2 s, readHeaderTimeout long: the idle rule alone sheds a slow client (it
    // never completes a request) and an idle keep-alive connection.
    let e = start_with(
        "{ respondingTimeouts: { readHeaderTimeout: 60s, idleTimeout: 2s } }",
        "",
    )
    .await;
    let trickle = tokio::spawn(slowloris(e.node.proxy));
    still_served(&e).await;
    let shed_after = trickle.await.unwrap();
    assert!(shed_after < Duration::from_secs(10), "{shed_after:?}");

    let mut idle = TcpStream::connect(e.node.proxy).await.unwrap();
    idle.write_all(b"GET /public/a HTTP/1.1\r\nHost: gw.test\r\n\r\n")
        .await
        .unwrap();
    let mut out = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(15), idle.read_to_end(&mut out)).await;
    assert!(closed.is_ok(), "the idle connection was kept open");
    assert_eq!(statuses(&String::from_utf8_lossy(&out)), [200]);
    let closed = metric(&e, "tokengate_connections_idle_closed_total").await;
    assert!(closed >= Some(2.0), "{closed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_wait_for_a_free_slot() {
    // Long timeouts: the held connections must not be shed while the test looks.
    let e = start_with(
        "{ maxConnections: 20, respondingTimeouts: { readHeaderTimeout: 60s, idleTimeout: 60s } }",
        "",
    )
    .await;
    let mut held = Vec::new();
    for _ in 0..20 {
        held.push(TcpStream::connect(e.node.proxy).await.unwrap());
    }
    eventually(
        "20 connections are open",
        Duration::from_secs(5),
        async || {
            let m = reqwest::get(format!("http://{}/metrics", e.node.admin))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            m.contains("tokengate_connections_open 20")
        },
    )
    .await;
    let mut waiting = TcpStream::connect(e.node.proxy).await.unwrap();
    waiting.write_all(&get("/public/a", &[])).await.unwrap();
    let mut buf = [0u8; 64];
    assert!(
        tokio::time::timeout(Duration::from_millis(500), waiting.read(&mut buf))
            .await
            .is_err(),
        "the 21st connection was served while 20 were open"
    );
    drop(held);
    let mut out = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), waiting.read_to_end(&mut out))
        .await
        .expect("served once slots were free")
        .unwrap();
    let mut answer = String::from_utf8_lossy(&buf).into_owned();
    answer.push_str(&String::from_utf8_lossy(&out));
    assert_eq!(statuses(&answer), [200], "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http2_connections_announce_the_stream_limit() {
    let e = start("").await;
    let mut s = TcpStream::connect(e.node.proxy).await.unwrap();
    // h2c with prior knowledge: the preface, then an empty SETTINGS frame.
    s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00")
        .await
        .unwrap();
    let mut head = [0u8; 9];
    s.read_exact(&mut head).await.unwrap();
    assert_eq!(head[3], 4, "the server's first frame is SETTINGS");
    let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).await.unwrap();
    let settings: Vec<(u16, u32)> = payload
        .chunks(6)
        .map(|c| {
            (
                u16::from_be_bytes([c[0], c[1]]),
                u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
            )
        })
        .collect();
    assert!(
        settings.contains(&(3, 7)),
        "SETTINGS_MAX_CONCURRENT_STREAMS = 7 in {settings:?}"
    );
    // Frames between requests are not a slow request head: past readHeaderTimeout (1 s) the
    // connection still answers a PING. The wait is the property.
    tokio::time::sleep(Duration::from_millis(1300)).await;
    s.write_all(b"\x00\x00\x08\x06\x00\x00\x00\x00\x00tokengat")
        .await
        .unwrap();
    let ping_ack = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let mut head = [0u8; 9];
            s.read_exact(&mut head).await?;
            let len = usize::from(head[0]) << 16 | usize::from(head[1]) << 8 | usize::from(head[2]);
            let mut payload = vec![0u8; len];
            s.read_exact(&mut payload).await?;
            if head[3] == 6 && head[4] & 1 == 1 {
                return Ok::<_, std::io::Error>(payload);
            }
        }
    })
    .await
    .expect("an answer within 5 s")
    .expect("the connection is open");
    assert_eq!(ping_ack, b"tokengat");
    drop(s);
    still_served(&e).await;
    let ready = get_json(format!("http://{}/readyz", e.node.admin)).await;
    assert_eq!(ready["status"], "ready");
}
