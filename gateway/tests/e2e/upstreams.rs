//! Upstream servers: weights, passive ejection and return, active health checks, a route
//! whose servers are all down, retries within their rules and budget, per-route timeouts.

use std::net::SocketAddr;
use std::time::Duration;

use http::StatusCode;
use testkit::EchoUpstream;

use crate::support::{Node, client, eventually, free_port, metrics_text};

fn config(body: &str) -> String {
    format!("listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\n{body}")
}

/// An address nothing listens on (until a test starts something there).
fn dead() -> SocketAddr {
    ([127, 0, 0, 1], free_port()).into()
}

/// The value of the metric line `series` (name and labels, as exposed); 0 when absent.
async fn metric(node: &Node, series: &str) -> f64 {
    exposed(node, series).await.unwrap_or(0.0)
}

/// The value of the metric line `series`, if the node exposes it.
async fn exposed(node: &Node, series: &str) -> Option<f64> {
    metrics_text(node.admin)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

/// Sends `n` GETs to `path`; the statuses.
async fn statuses(node: &Node, method: reqwest::Method, path: &str, n: usize) -> Vec<u16> {
    let http = client();
    let mut out = Vec::new();
    for _ in 0..n {
        let resp = http
            .request(method.clone(), node.url(path))
            .send()
            .await
            .unwrap();
        out.push(resp.status().as_u16());
    }
    out
}

/// Requests the upstream saw on paths other than its health endpoint.
fn served(up: &EchoUpstream) -> usize {
    up.seen().iter().filter(|s| s.path != "/health").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_server_is_ejected_its_share_moves_and_it_is_used_again_once_back() {
    let live = EchoUpstream::start().await;
    let gone = dead();
    let passive = "passiveHealthCheck: { maxFailedAttempts: 1, failureWindow: 1s }";
    let node = Node::start(
        &config(&format!(
            r#"
middlewares:
  retry: {{ retry: {{ attempts: 1 }} }}
routes:
  - {{ name: plain, match: {{ pathPrefix: /plain }}, upstream: {{ urls: ["http://{gone}", "{l}"], {passive} }} }}
  - {{ name: retried, match: {{ pathPrefix: /retried }}, middlewares: [retry], upstream: {{ urls: ["http://{gone}", "{l}"], {passive} }} }}
"#,
            l = live.url(),
        )),
        &[],
    );
    // Without retries, the one request that found the dead server fails; none after it does.
    let got = statuses(&node, reqwest::Method::GET, "/plain", 20).await;
    assert_eq!(got[0], 502, "{got:?}");
    assert!(got[1..].iter().all(|s| *s == 200), "{got:?}");
    // With a retry, not even that one does.
    let got = statuses(&node, reqwest::Method::GET, "/retried", 20).await;
    assert!(got.iter().all(|s| *s == 200), "{got:?}");
    let ejections =
        format!("tokengate_upstream_ejections_total{{route=\"plain\",upstream=\"http://{gone}\"}}");
    assert!(metric(&node, &ejections).await >= 1.0);
    assert_eq!(served(&live), 39);

    // The server comes back: once its ejection ends it takes requests again.
    let back = EchoUpstream::start_on(gone).await.unwrap();
    eventually(
        "the returned server is used again",
        Duration::from_secs(10),
        async || {
            statuses(&node, reqwest::Method::GET, "/plain", 2).await == [200, 200]
                && served(&back) > 0
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn servers_failing_their_health_check_take_no_requests_until_they_pass() {
    let (a, b) = (EchoUpstream::start().await, EchoUpstream::start().await);
    let node = Node::start(
        &config(&format!(
            r#"
routes:
  - {{ name: r, match: {{ pathPrefix: / }}, upstream: {{ servers: [{{ url: "{a}", weight: 3 }}, {{ url: "{b}" }}], healthCheck: {{ path: /health, interval: 100ms, timeout: 1s }} }} }}
"#,
            a = a.url(),
            b = b.url(),
        )),
        &[],
    );
    assert!(
        statuses(&node, reqwest::Method::GET, "/x", 8)
            .await
            .iter()
            .all(|s| *s == 200)
    );
    assert_eq!((served(&a), served(&b)), (6, 2), "weights 3 and 1");

    a.fail_with(Some(StatusCode::SERVICE_UNAVAILABLE));
    let health = format!(
        "tokengate_upstream_healthy{{route=\"r\",upstream=\"{}\"}}",
        a.url()
    );
    eventually(
        "a fails its health check",
        Duration::from_secs(10),
        async || metric(&node, &health).await == 0.0,
    )
    .await;
    let before = served(&a);
    assert!(
        statuses(&node, reqwest::Method::GET, "/x", 8)
            .await
            .iter()
            .all(|s| *s == 200)
    );
    assert_eq!(served(&a), before, "a takes nothing while down");
    assert_eq!(served(&b), 10);

    a.fail_with(None);
    eventually(
        "a passes again and takes requests",
        Duration::from_secs(10),
        async || {
            statuses(&node, reqwest::Method::GET, "/x", 4)
                .await
                .iter()
                .all(|s| *s == 200)
                && served(&a) > before
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_route_whose_servers_all_fail_their_health_check_answers_503_at_once() {
    let gone = dead();
    let node = Node::start(
        &config(&format!(
            "routes:\n  - {{ name: r, match: {{ pathPrefix: / }}, upstream: {{ urls: [\"http://{gone}\"], healthCheck: {{ path: /health, interval: 100ms, timeout: 1s }} }} }}\n"
        )),
        &[],
    );
    let health = format!("tokengate_upstream_healthy{{route=\"r\",upstream=\"http://{gone}\"}}");
    eventually(
        "the server fails its health check",
        Duration::from_secs(10),
        async || exposed(&node, &health).await == Some(0.0),
    )
    .await;
    let resp = client().get(node.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 503);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["error"], "no_upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passive_health_never_ejects_the_last_fit_server() {
    // One failure ejects a server, yet a route's only server keeps taking requests: ejecting
    // it would turn its failures (or failures a caller provokes) into a route that is down.
    let gone = dead();
    let node = Node::start(
        &config(&format!(
            "routes:\n  - {{ name: r, match: {{ pathPrefix: / }}, upstream: {{ urls: [\"http://{gone}\"], passiveHealthCheck: {{ maxFailedAttempts: 1, failureWindow: 1m }} }} }}\n"
        )),
        &[],
    );
    assert_eq!(
        statuses(&node, reqwest::Method::GET, "/x", 3).await,
        [502, 502, 502],
        "tried each time"
    );
    let ejections =
        format!("tokengate_upstream_ejections_total{{route=\"r\",upstream=\"http://{gone}\"}}");
    assert_eq!(exposed(&node, &ejections).await, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_idempotent_requests_are_retried_and_only_within_the_budget() {
    let live = EchoUpstream::start().await;
    let sick = EchoUpstream::start().await;
    sick.fail_with(Some(StatusCode::SERVICE_UNAVAILABLE));
    let gone = dead();
    let node = Node::start(
        &config(&format!(
            r#"
middlewares:
  retry: {{ retry: {{ attempts: 2, status: ["503"], budgetPercent: 1 }} }}
  generous: {{ retry: {{ attempts: 2, status: ["503"] }} }}
routes:
  - {{ name: budget, match: {{ pathPrefix: /budget }}, middlewares: [retry], upstream: {{ urls: ["http://{gone}", "{l}"] }} }}
  - {{ name: sick, match: {{ pathPrefix: /sick }}, middlewares: [generous], upstream: {{ urls: ["{s}", "{l}"] }} }}
  - {{ name: big, match: {{ pathPrefix: /big }}, middlewares: [generous], upstream: {{ urls: ["{s}", "{l}"] }} }}
"#,
            l = live.url(),
            s = sick.url(),
        )),
        &[],
    );
    // Round robin alternates between the dead server and the live one.
    let got = statuses(&node, reqwest::Method::POST, "/budget", 4).await;
    assert_eq!(got, [502, 200, 502, 200], "a POST is never sent twice");
    assert_eq!(
        metric(&node, "tokengate_upstream_retries_total{route=\"budget\"}").await,
        0.0
    );

    // The budget: 1% of the requests in the window, and at least 3 retries. The first three
    // GETs that meet the dead server are retried on the live one; after that the dead server's
    // 502 stands. A retry takes no turn of the rotation: the dead server still takes every
    // other first attempt, not all of them.
    let got = statuses(&node, reqwest::Method::GET, "/budget", 20).await;
    let mut expected = vec![200; 6];
    expected.extend([502, 200].repeat(7));
    assert_eq!(got, expected);
    assert_eq!(
        metric(&node, "tokengate_upstream_retries_total{route=\"budget\"}").await,
        3.0
    );

    // A listed status is retried on the next server: the sick one's 503 is never seen.
    let got = statuses(&node, reqwest::Method::PUT, "/sick", 3).await;
    assert_eq!(got, [200; 3]);
    // The sick server took the first and third requests' first attempts, the live one the
    // retries and the second request.
    assert_eq!((served(&sick), served(&live)), (2, 2 + 13 + 3));

    // A body too large to hold is streamed to the first server and never sent again.
    let resp = client()
        .put(node.url("/big"))
        .body(vec![b'x'; 100 * 1024])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert_eq!((served(&sick), served(&live)), (3, 18));
    let seen = sick.seen();
    assert_eq!(seen.last().unwrap().body_len, 100 * 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_routes_response_header_timeout_answers_504_while_others_wait() {
    let slow = EchoUpstream::start().await;
    slow.set_delay(Duration::from_millis(1500));
    let node = Node::start(
        &config(&format!(
            r#"
routes:
  - {{ name: impatient, match: {{ pathPrefix: /impatient }}, upstream: {{ urls: ["{u}"], forwardingTimeouts: {{ responseHeaderTimeout: 200ms }} }} }}
  - {{ name: patient, match: {{ pathPrefix: /patient }}, upstream: {{ urls: ["{u}"] }} }}
"#,
            u = slow.url(),
        )),
        &[],
    );
    assert_eq!(
        statuses(&node, reqwest::Method::GET, "/impatient", 1).await,
        [504]
    );
    assert_eq!(
        statuses(&node, reqwest::Method::GET, "/patient", 1).await,
        [200]
    );
}

/// Opens a raw connection and sends a POST head announcing a 100-byte body, then `part` of it.
async fn start_upload(node: &Node, part: &[u8]) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(node.proxy).await.unwrap();
    s.write_all(b"POST /up HTTP/1.1\r\nHost: gw.test\r\nContent-Length: 100\r\n\r\n")
        .await
        .unwrap();
    s.write_all(part).await.unwrap();
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caller_cannot_eject_servers_and_the_header_timeout_starts_once_the_body_is_sent() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (a, b) = (EchoUpstream::start().await, EchoUpstream::start().await);
    let node = Node::start(
        &config(&format!(
            r#"
routes:
  - {{ name: r, match: {{ pathPrefix: / }}, upstream: {{ urls: ["{a}", "{b}"], forwardingTimeouts: {{ responseHeaderTimeout: 300ms }}, passiveHealthCheck: {{ maxFailedAttempts: 1, failureWindow: 1m }} }} }}
"#,
            a = a.url(),
            b = b.url(),
        )),
        &[],
    );
    // Callers that stall mid-body for longer than the header timeout, then go away, and callers
    // that abort their body at once: four of each, more than enough to eject both servers if
    // their failures counted. The stall is the attack, so its length (past the timeout) is the
    // point of the wait.
    for _ in 0..4 {
        let stalled = start_upload(&node, b"0123456789").await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        drop(stalled);
        let mut aborted = start_upload(&node, b"01234").await;
        aborted.shutdown().await.unwrap();
        drop(aborted);
    }
    // A slow but complete upload: the server's 300 ms start once the body is all there. Its
    // pause (past the timeout) is the property.
    let mut slow = start_upload(&node, &[b'x'; 50]).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    slow.write_all(&[b'x'; 50]).await.unwrap();
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        let mut buf = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains("\r\n\r\n") {
            let n = slow.read(&mut buf).await.unwrap();
            if n == 0 {
                break;
            }
            answer.extend_from_slice(&buf[..n]);
        }
    })
    .await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");

    for up in [&a, &b] {
        let series = |name: &str| {
            format!(
                "tokengate_upstream_{name}_total{{route=\"r\",upstream=\"{}\"}}",
                up.url()
            )
        };
        assert_eq!(exposed(&node, &series("ejections")).await, Some(0.0));
        assert_eq!(exposed(&node, &series("failures")).await, Some(0.0));
    }
    let before = (served(&a), served(&b));
    assert_eq!(
        statuses(&node, reqwest::Method::GET, "/x", 4).await,
        [200, 200, 200, 200]
    );
    assert_eq!(
        (served(&a) - before.0, served(&b) - before.1),
        (2, 2),
        "both servers still take their share"
    );
}
