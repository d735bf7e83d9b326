//! `/metrics` on the admin listener: the counters follow what the node did, the exposition
//! passes `promtool check metrics`, and no token or secret becomes a label.

use std::io::Write;
use std::process::{Command, Stdio};

use testkit::{EchoUpstream, FakeIdp};

use crate::cluster::Cluster;
use crate::support::{GW_SECRET, Node, client, get_as, two_modes};

/// `promtool check metrics` on `text`.
fn promtool(text: &str) {
    let mut promtool = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed (.ci/run installs Debian's prometheus package)");
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

/// The value of the sample `name` (with its labels, exactly as exposed).
fn sample(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no sample {name} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_and_token_layers_and_pass_promtool() {
    let (idp, upstream) = (FakeIdp::start().await, EchoUpstream::start().await);
    idp.register("demo-app", "demo-secret");
    let node = Node::start(
        &two_modes(&idp.token_url(), &upstream.url(), ""),
        &[("GW_SECRET", GW_SECRET)],
    );
    let http = client();
    for _ in 0..5 {
        let resp = get_as(&http, node.url("/app/x"), "demo-app", "demo-secret").await;
        assert_eq!(resp.status(), 200);
    }
    let resp = get_as(&http, node.url("/app/x"), "demo-app", "wrong").await;
    assert_eq!(resp.status(), 401);
    assert_eq!(
        http.get(node.url("/nowhere"))
            .send()
            .await
            .unwrap()
            .status(),
        404
    );

    let resp = http
        .get(format!("http://{}/metrics", node.admin))
        .send()
        .await
        .unwrap();
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain")
    );
    let text = resp.text().await.unwrap();
    assert_eq!(
        sample(
            &text,
            r#"tokengate_requests_total{route="app",status="200"}"#
        ),
        5.0
    );
    assert_eq!(
        sample(
            &text,
            r#"tokengate_requests_total{route="app",status="401"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"tokengate_requests_total{route="none",status="404"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &text,
            r#"tokengate_request_duration_seconds_count{route="app"}"#
        ),
        6.0
    );
    assert_eq!(
        sample(&text, r#"tokengate_tokens_served_total{layer="idp"}"#),
        1.0
    );
    assert_eq!(
        sample(&text, r#"tokengate_tokens_served_total{layer="l1"}"#),
        4.0
    );
    // The good credential's token request and the bad one's refusal.
    assert_eq!(
        sample(&text, r#"tokengate_idp_requests_total{outcome="ok"}"#),
        1.0
    );
    assert_eq!(
        sample(&text, r#"tokengate_idp_requests_total{outcome="error"}"#),
        1.0
    );
    assert_eq!(sample(&text, "tokengate_refresh_leader"), 1.0);
    assert!(sample(&text, "tokengate_refresh_lease_fence") >= 1.0);

    let token = upstream.seen()[0].bearer().unwrap().to_owned();
    for secret in [token.as_str(), "demo-secret", "demo-app", GW_SECRET] {
        assert!(!text.contains(secret), "{secret:?} in the metrics");
    }

    promtool(&text);
    every_alerted_metric_is_exposed(&text, |m| !m.starts_with("tokengate_cache_"));
}

/// The metric names `deploy/prometheus/alerts.yaml` uses that `keep` selects.
fn alerted_metrics(keep: impl Fn(&str) -> bool) -> Vec<String> {
    metric_names_in("deploy/prometheus/alerts.yaml", keep)
}

/// The metric names a file of `deploy/` uses that `keep` selects.
fn metric_names_in(path: &str, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let text =
        std::fs::read_to_string(format!("{}/../{path}", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let mut names: Vec<String> = text
        .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| w.starts_with("tokengate_") && keep(w))
        .map(str::to_owned)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Every metric the alert rules use (of those `keep` selects) is in this exposition: an alert
/// on a metric that does not exist never fires.
fn every_alerted_metric_is_exposed(text: &str, keep: impl Fn(&str) -> bool) {
    let names = alerted_metrics(keep);
    assert!(!names.is_empty());
    for name in names {
        assert!(
            text.contains(&format!("# TYPE {name} ")),
            "{name} is alerted on but not exposed"
        );
    }
}

#[test]
fn the_dashboard_and_the_alerts_use_only_metrics_that_exist() {
    let mut known: Vec<String> = gateway::telemetry::metrics::metrics().names().to_vec();
    known.extend(gateway::cachenode::metrics::RaftMetrics::new().names());
    assert!(known.len() > 30, "{known:?}");
    for path in [
        "deploy/grafana/tokengate.json",
        "deploy/prometheus/alerts.yaml",
    ] {
        let used = metric_names_in(path, |_| true);
        assert!(used.len() >= 8, "{path}: {used:?}");
        for name in used {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .filter(|b| known.iter().any(|k| k == b));
            assert!(
                known.contains(&name) || base.is_some(),
                "{path} uses {name}, which no gateway or cache node exposes"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cache_nodes_expose_their_raft_state() {
    let cluster = Cluster::start(3).await;
    let leader = cluster.leader(std::time::Duration::from_secs(10)).await;
    let store = cluster.store();
    let e = gateway::store::conformance::entry(1, 60_000, 120_000);
    let key = gateway::token::TokenKey::from_bytes([9; 32]);
    gateway::store::TokenStore::put(&store, &key, e, None)
        .await
        .unwrap();
    let mut leaders = 0.0;
    for n in &cluster.nodes {
        let text = client()
            .get(format!("http://{}/metrics", n.metrics_addr()))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        leaders += sample(&text, "tokengate_cache_raft_is_leader");
        assert_eq!(
            sample(&text, "tokengate_cache_raft_leader_id"),
            leader as f64
        );
        assert!(sample(&text, "tokengate_cache_raft_term") >= 1.0);
        assert!(sample(&text, "tokengate_cache_raft_last_log_index") >= 2.0);
        promtool(&text);
        every_alerted_metric_is_exposed(&text, |m| m.starts_with("tokengate_cache_"));
    }
    assert_eq!(leaders, 1.0, "exactly one node reports itself leader");

    // Readiness follows quorum: every node is ready while the cluster has a leader; a node
    // left alone is not.
    for n in &cluster.nodes {
        let ready = client()
            .get(format!("http://{}/readyz", n.metrics_addr()))
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), 200);
    }
    let mut cluster = cluster;
    let alone = cluster.nodes.iter().position(|n| n.id != leader).unwrap();
    for n in cluster.nodes.iter_mut().filter(|n| n.id == leader) {
        n.kill();
    }
    let others: Vec<usize> = (0..cluster.nodes.len())
        .filter(|i| *i != alone && cluster.nodes[*i].id != leader)
        .collect();
    for i in others {
        cluster.nodes[i].kill();
    }
    let addr = cluster.nodes[alone].metrics_addr();
    crate::support::eventually(
        "the node left alone is not ready",
        std::time::Duration::from_secs(15),
        async || {
            let resp = client()
                .get(format!("http://{addr}/readyz"))
                .send()
                .await
                .unwrap();
            resp.status() == 503
                && resp.json::<serde_json::Value>().await.unwrap()["status"] == "unready"
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_config_need_the_admin_token_and_the_probes_do_not() {
    let node = Node::start(
        "listen: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0, token: env:ADMIN_T }\n",
        &[("ADMIN_T", "the-admin-token")],
    );
    let http = client();
    let get = |path: &str, token: Option<&str>| {
        let mut req = http.get(format!("http://{}{path}", node.admin));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req.send()
    };
    for path in ["/metrics", "/config"] {
        for wrong in [None, Some("the-admin-toke"), Some("the-admin-token2")] {
            let resp = get(path, wrong).await.unwrap();
            assert_eq!(resp.status(), 401, "{path} with {wrong:?}");
            assert_eq!(
                resp.headers()["www-authenticate"],
                "Bearer realm=\"tokengate-admin\""
            );
            let body = resp.text().await.unwrap();
            assert!(!body.contains("tokengate_"), "{path}: {body}");
        }
        let resp = get(path, Some("the-admin-token")).await.unwrap();
        assert_eq!(resp.status(), 200, "{path}");
    }
    for probe in ["/healthz", "/readyz"] {
        assert_eq!(get(probe, None).await.unwrap().status(), 200, "{probe}");
    }
    assert!(!node.settled_log().await.contains("the-admin-token"));

    // Beyond loopback, the admin listener needs the token or an explicit opt-out.
    let (mut cmd, _dir) = crate::support::gateway_command(
        &["check-config"],
        "listen: 127.0.0.1:8080\nadmin: { listen: 0.0.0.0:9090 }\n",
        &[],
    );
    let out = cmd.output().unwrap();
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && said.contains("admin.token: is required when admin.listen"),
        "{said}"
    );
}
