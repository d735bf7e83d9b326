//! The reverse proxy without authentication: routing, header hygiene, streaming, failures,
//! graceful shutdown.

use std::time::Duration;

use testkit::EchoUpstream;

use crate::support::{Node, client, echo, header};

fn config(routes: &str, extra: &str) -> String {
    format!("listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\n{extra}\nroutes:\n{routes}")
}

/// A node whose only route sends everything to `upstream`.
fn one_route_to(upstream: &str, extra: &str) -> Node {
    let route = format!(
        "  - {{ name: r, match: {{ pathPrefix: / }}, upstream: {{ urls: [{upstream}] }} }}"
    );
    Node::start(&config(&route, extra), &[])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routes_by_host_then_longest_prefix_with_round_robin() {
    let (a, b) = (EchoUpstream::start().await, EchoUpstream::start().await);
    let routes = format!(
        r#"
  - {{ name: api, match: {{ pathPrefix: /api }}, upstream: {{ urls: [{a}, {b}] }} }}
  - {{ name: api-v2, match: {{ pathPrefix: /api/v2 }}, upstream: {{ urls: [{b}] }} }}
  - {{ name: internal, match: {{ host: Internal.Localhost }}, upstream: {{ urls: [{b}] }} }}
"#,
        a = a.url(),
        b = b.url()
    );
    let node = Node::start(&config(&routes, ""), &[]);
    let http = client();
    for i in 0..4 {
        assert_eq!(
            http.get(node.url(&format!("/api/{i}")))
                .send()
                .await
                .unwrap()
                .status(),
            200
        );
    }
    assert_eq!(
        (a.seen().len(), b.seen().len()),
        (2, 2),
        "round robin over two upstreams"
    );
    http.get(node.url("/api/v2/x")).send().await.unwrap();
    assert_eq!(
        b.seen().last().unwrap().path,
        "/api/v2/x",
        "longest prefix wins"
    );
    let resp = http
        .get(node.url("/api/1?q=1"))
        .header("host", "internal.localhost:8080")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        b.seen().last().unwrap().path,
        "/api/1?q=1",
        "host routes win over prefixes"
    );
    let missing = http.get(node.url("/nothing-here")).send().await.unwrap();
    assert_eq!(missing.status(), 404);
    assert_eq!(
        missing.json::<serde_json::Value>().await.unwrap()["error"],
        "not_found"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_gives_502_with_a_clear_body() {
    // Port 9 (discard) is closed on loopback: connections are refused.
    let node = one_route_to("http://127.0.0.1:9", "");
    let resp = client().get(node.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 502);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "bad_gateway");
    assert_eq!(
        body["error_description"],
        "the upstream service is unreachable"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hop_by_hop_headers_are_dropped_and_forwarded_headers_set() {
    let up = EchoUpstream::start().await;
    let node = one_route_to(&up.url(), "");
    let resp = client()
        .get(node.url("/h"))
        .header("connection", "x-hop")
        .header("x-hop", "1")
        .header("keep-alive", "timeout=5")
        .header("proxy-authorization", "Basic c2VjcmV0")
        .header("x-forwarded-for", "10.1.1.1")
        .header("x-forwarded-proto", "https")
        .header("x-forwarded-host", "spoofed.example")
        .header("x-end-to-end", "kept")
        .send()
        .await
        .unwrap();
    let e = echo(resp).await;
    for h in ["x-hop", "keep-alive", "proxy-authorization"] {
        assert!(header(&e, h).is_empty(), "{h} was forwarded");
    }
    assert_eq!(header(&e, "x-end-to-end"), ["kept"]);
    // The caller is not a trusted proxy: its forwarding headers are replaced, not extended.
    assert_eq!(header(&e, "x-forwarded-for"), ["127.0.0.1"]);
    assert_eq!(header(&e, "x-forwarded-proto"), ["http"]);
    assert_eq!(header(&e, "x-forwarded-host"), [node.proxy.to_string()]);
    assert_eq!(
        header(&e, "host"),
        [node.proxy.to_string()],
        "the caller's Host is passed on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_bodies_stream_both_ways() {
    let up = EchoUpstream::start().await;
    let node = one_route_to(&up.url(), "");
    const SIZE: usize = 8 * 1024 * 1024;
    let chunks = futures_util::stream::iter(
        (0..SIZE / 65536).map(|_| Ok::<_, std::io::Error>(vec![7u8; 65536])),
    );
    let resp = client()
        .post(node.url("/upload"))
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    assert_eq!(echo(resp).await["body_len"], SIZE);
    let download = client()
        .get(node.url(&format!("/bytes/{SIZE}")))
        .send()
        .await
        .unwrap();
    assert_eq!(download.bytes().await.unwrap().len(), SIZE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_upstream_gets_504_after_the_request_timeout() {
    let up = EchoUpstream::start().await;
    up.set_delay(Duration::from_secs(3));
    let node = one_route_to(&up.url(), "requestTimeout: 300ms");
    let resp = client().get(node.url("/slow")).send().await.unwrap();
    assert_eq!(resp.status(), 504);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests_and_exits_zero() {
    let up = EchoUpstream::start().await;
    up.set_delay(Duration::from_millis(1500));
    let mut node = one_route_to(&up.url(), "");
    let http = client();
    let in_flight = tokio::spawn(http.get(node.url("/slow")).send());
    crate::support::eventually(
        "the request reaches the upstream",
        Duration::from_secs(5),
        async || !up.seen().is_empty(),
    )
    .await;
    let ready = client()
        .get(format!("http://{}/readyz", node.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200);
    node.signal("TERM");
    let admin = format!("http://{}/readyz", node.admin);
    crate::support::eventually(
        "readiness reports draining",
        Duration::from_secs(2),
        async || {
            client()
                .get(&admin)
                .send()
                .await
                .is_ok_and(|r| r.status() == 503)
        },
    )
    .await;
    let resp = in_flight
        .await
        .unwrap()
        .expect("the in-flight request completes");
    assert_eq!(resp.status(), 200);
    let status = tokio::task::spawn_blocking(move || {
        let s = node.wait_exit(Duration::from_secs(10));
        (s, node)
    })
    .await
    .unwrap();
    assert!(
        status.0.success(),
        "exit status {:?}; log:\n{}",
        status.0,
        status.1.log()
    );
    assert!(status.1.log().contains("SIGTERM"));
    assert!(
        client().get(status.1.url("/after")).send().await.is_err(),
        "no longer accepting"
    );
}
