//! Rate limits: per client identity across a fleet sharing Redis, per address on one node, and
//! what happens when the store that keeps them is down.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use testkit::{EchoUpstream, FakeIdp};

use crate::redis::FLEET_KEY;
use crate::support::{Node, RedisServer, basic, client};

/// Requests a second, and at once.
const AVERAGE: u64 = 20;

fn config(idp: &FakeIdp, up: &EchoUpstream, store: &str, limit: &str) -> String {
    format!(
        r#"
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
fleetKey: env:FLEET_KEY
store: {store}
middlewares:
  creds: {{ clientCredentials: {{ url: "{token}" }} }}
  limit: {{ rateLimit: {limit} }}
  closed: {{ rateLimit: {{ average: 5, period: 1m, failureModeDeny: true }} }}
routes:
  - {{ name: api, match: {{ pathPrefix: /api }}, middlewares: [creds, limit], upstream: {{ urls: ["{u}"] }} }}
  - {{ name: closed, match: {{ pathPrefix: /closed }}, middlewares: [closed], upstream: {{ urls: ["{u}"] }} }}
"#,
        token = idp.token_url(),
        u = up.url(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_per_client_holds_across_three_gateways_sharing_redis() {
    let idp = FakeIdp::start().await;
    idp.register("busy", "s1");
    idp.register("quiet", "s2");
    let up = EchoUpstream::start().await;
    let redis = RedisServer::start();
    let store = format!(r#"{{ redis: {{ endpoints: ["{}"] }} }}"#, redis.endpoint());
    let limit = format!("{{ average: {AVERAGE}, sourceCriterion: {{ clientId: true }} }}");
    let yaml = config(&idp, &up, &store, &limit);
    let nodes: Arc<Vec<Node>> = Arc::new(
        (0..3)
            .map(|_| Node::start(&yaml, &[("FLEET_KEY", FLEET_KEY)]))
            .collect(),
    );

    // Twelve callers share one client's credentials, spread over the three gateways, for three
    // seconds.
    let (passed, limited) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let started = Instant::now();
    let callers: Vec<_> = (0..12)
        .map(|i| {
            let (nodes, passed, limited, stop) = (
                Arc::clone(&nodes),
                Arc::clone(&passed),
                Arc::clone(&limited),
                Arc::clone(&stop),
            );
            tokio::spawn(async move {
                let http = client();
                let mut retry_after = true;
                while !stop.load(Ordering::Relaxed) {
                    let resp = http
                        .get(nodes[i % 3].url("/api/x"))
                        .header("authorization", basic("busy", "s1"))
                        .send()
                        .await
                        .unwrap();
                    match resp.status().as_u16() {
                        200 => passed.fetch_add(1, Ordering::Relaxed),
                        429 => {
                            retry_after &= resp.headers().contains_key("retry-after");
                            limited.fetch_add(1, Ordering::Relaxed)
                        }
                        other => panic!("unexpected {other}"),
                    };
                }
                retry_after
            })
        })
        .collect();
    // Time is the property here: the count that passes is measured over these seconds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    // Another client has its own allowance, whatever the busy one does.
    let quiet = client()
        .get(nodes[1].url("/api/x"))
        .header("authorization", basic("quiet", "s2"))
        .send()
        .await
        .unwrap();
    assert_eq!(quiet.status(), 200);
    stop.store(true, Ordering::Relaxed);
    for c in callers {
        assert!(c.await.unwrap(), "every 429 carries Retry-After");
    }
    let elapsed = started.elapsed().as_secs_f64();
    let passed = passed.load(Ordering::Relaxed) as f64;
    // The burst (the average by default) and then the average per second. The count is
    // exact up to the moments the window opens and closes: half a second at the start (the
    // callers' first requests include the token fetch) and one request.
    let most = AVERAGE as f64 * (1.0 + elapsed) + 1.0;
    let least = AVERAGE as f64 * (1.0 + elapsed - 0.5);
    println!("{passed} passed in {elapsed:.2} s (allowed {least:.0} to {most:.0})");
    assert!(
        (least..=most).contains(&passed),
        "{passed} passed in {elapsed:.2} s; expected {least:.0} to {most:.0}"
    );
    assert!(limited.load(Ordering::Relaxed) > 0);
    assert_eq!(
        up.seen().len() as f64,
        passed + 1.0,
        "refused requests never reach the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_store_down_a_limit_lets_requests_pass_unless_told_to_refuse() {
    let idp = FakeIdp::start().await;
    idp.register("busy", "s1");
    let up = EchoUpstream::start().await;
    let mut redis = RedisServer::start();
    let store = format!(
        r#"{{ redis: {{ endpoints: ["{}"], timeout: 300ms }} }}"#,
        redis.endpoint()
    );
    let node = Node::start(
        &config(&idp, &up, &store, "{ average: 1000 }"),
        &[("FLEET_KEY", FLEET_KEY)],
    );
    let http = client();
    let get = async |path: &str| {
        http.get(node.url(path))
            .header("authorization", basic("busy", "s1"))
            .send()
            .await
            .unwrap()
    };
    assert_eq!(get("/api/x").await.status(), 200);
    assert_eq!(get("/closed/x").await.status(), 200);
    redis.kill();
    assert_eq!(
        get("/api/x").await.status(),
        200,
        "failureModeDeny: false lets it pass"
    );
    let resp = get("/closed/x").await;
    assert_eq!(resp.status(), 503, "failureModeDeny: true refuses");
    assert_eq!(resp.headers()["retry-after"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_shared_store_the_limit_is_the_nodes_own() {
    let idp = FakeIdp::start().await;
    let up = EchoUpstream::start().await;
    let node = Node::start(
        &config(&idp, &up, "{ memory: {} }", "{ average: 1 }"),
        &[("FLEET_KEY", FLEET_KEY)],
    );
    let http = client();
    let burst = async || -> Vec<u16> {
        let sent = (0..4).map(|_| async { http.get(node.url("/closed/x")).send().await.unwrap() });
        let answers = futures_util::future::join_all(sent).await;
        answers.iter().map(|r| r.status().as_u16()).collect()
    };
    // `closed` allows 5 at once per caller address, then one every 12 s.
    assert_eq!(burst().await, [200; 4]);
    let more = burst().await;
    assert_eq!(more.iter().filter(|s| **s == 429).count(), 3, "{more:?}");
}
