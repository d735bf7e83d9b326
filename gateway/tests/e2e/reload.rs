//! Live reload: a configuration changed under load applies without a failed request and
//! without an IdP request for credentials whose middleware did not change; an invalid one keeps
//! the running one; SIGHUP and file changes both reload; a secret file's change is picked up.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use testkit::{EchoUpstream, FakeIdp};

use crate::support::{Node, basic, client, eventually, get_json};

/// Two application-level middlewares (`creds` and `scoped`) and routes to `upstream`: `/stay`
/// and `/scoped` always, then `extra`.
fn config(idp: &FakeIdp, up: &EchoUpstream, scoped_scopes: &str, extra: &str) -> String {
    format!(
        r#"
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
middlewares:
  creds: {{ clientCredentials: {{ url: "{token}", scopes: [read] }} }}
  scoped: {{ clientCredentials: {{ url: "{token}", scopes: {scoped_scopes} }} }}
routes:
  - {{ name: stay, match: {{ pathPrefix: /stay }}, middlewares: [creds], upstream: {{ urls: ["{u}"] }} }}
  - {{ name: scoped, match: {{ pathPrefix: /scoped }}, middlewares: [scoped], upstream: {{ urls: ["{u}"] }} }}
{extra}"#,
        token = idp.token_url(),
        u = up.url(),
    )
}

async fn status(node: &Node, path: &str) -> u16 {
    client()
        .get(node.url(path))
        .header("authorization", basic("svc-a", "s3cret"))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// IdP token requests that asked for `scope`.
fn fetches_with_scope(idp: &FakeIdp, scope: &str) -> usize {
    idp.seen()
        .iter()
        .filter(|r| r.params.iter().any(|(k, v)| k == "scope" && v == scope))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_applies_under_load_without_a_failed_request_and_a_bad_one_changes_nothing() {
    let idp = FakeIdp::start().await;
    idp.register("svc-a", "s3cret");
    idp.set_token_lifetime(Duration::from_secs(3600));
    let up = EchoUpstream::start().await;
    let old_route = format!(
        "  - {{ name: old, match: {{ pathPrefix: /old }}, upstream: {{ urls: [\"{}\"] }} }}\n",
        up.url()
    );
    let node = Arc::new(Node::start(
        &config(&idp, &up, "[read]", &old_route),
        &[("TOKENGATE_WATCH_INTERVAL", "100ms")],
    ));
    assert_eq!(status(&node, "/stay").await, 200);
    assert_eq!(status(&node, "/scoped").await, 200);
    assert_eq!(status(&node, "/old").await, 200);
    assert_eq!(
        fetches_with_scope(&idp, "read"),
        1,
        "the same credential and scopes share one token"
    );

    // An open-loop driver: a request every 5 ms whatever the answers take, to the routes that
    // stay, through the reload.
    let (sent, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop = Arc::new(AtomicBool::new(false));
    let driver = {
        let (node, sent, failed, stop) = (
            Arc::clone(&node),
            Arc::clone(&sent),
            Arc::clone(&failed),
            Arc::clone(&stop),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(5));
            let mut inflight = tokio::task::JoinSet::new();
            while !stop.load(Ordering::Relaxed) {
                tick.tick().await;
                let (node, failed) = (Arc::clone(&node), Arc::clone(&failed));
                let n = sent.fetch_add(1, Ordering::Relaxed);
                inflight.spawn(async move {
                    let path = if n % 2 == 0 { "/stay/x" } else { "/scoped/x" };
                    if status(&node, path).await != 200 {
                        failed.fetch_add(1, Ordering::Relaxed);
                    }
                });
            }
            inflight.join_all().await;
        })
    };
    // The driver is under way before the reload, and still after it.
    let under_way = async |more: u64| {
        let from = sent.load(Ordering::Relaxed);
        eventually("the driver sends", Duration::from_secs(10), async || {
            sent.load(Ordering::Relaxed) >= from + more
        })
        .await;
    };
    under_way(50).await;

    // Adds /new, changes `scoped`'s scopes, removes /old.
    let new_route = format!(
        "  - {{ name: new, match: {{ pathPrefix: /new }}, upstream: {{ urls: [\"{}\"] }} }}\n",
        up.url()
    );
    node.rewrite_config(&config(&idp, &up, "[read, write]", &new_route));
    eventually(
        "the new route is served",
        Duration::from_secs(10),
        async || status(&node, "/new").await == 200,
    )
    .await;
    assert_eq!(
        status(&node, "/old").await,
        404,
        "the removed route is gone"
    );
    under_way(50).await;
    stop.store(true, Ordering::Relaxed);
    driver.await.unwrap();
    assert!(sent.load(Ordering::Relaxed) > 50);
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "no request failed across the reload"
    );
    assert_eq!(
        fetches_with_scope(&idp, "read"),
        1,
        "the unchanged middleware's token was not fetched again"
    );
    assert_eq!(
        fetches_with_scope(&idp, "read write"),
        1,
        "the changed one's was"
    );
    let status_json = get_json(format!("http://{}/config", node.admin)).await;
    assert_eq!(status_json["lastReload"]["outcome"], "ok");
    assert_eq!(status_json["restartNeeded"], serde_json::json!([]));

    // An invalid file keeps the running configuration, and says so.
    node.rewrite_config(&config(&idp, &up, "[read, write]", &new_route).replace("/new", "new"));
    eventually(
        "the failed reload is reported",
        Duration::from_secs(10),
        async || {
            get_json(format!("http://{}/config", node.admin)).await["lastReload"]["outcome"]
                == "failed"
        },
    )
    .await;
    let status_json = get_json(format!("http://{}/config", node.admin)).await;
    let problems = status_json["lastReload"]["problems"].to_string();
    assert!(
        problems.contains("routes[2].match.pathPrefix: must start with /"),
        "{problems}"
    );
    assert_eq!(
        status(&node, "/new").await,
        200,
        "the running configuration stays"
    );
    let ready = get_json(format!("http://{}/readyz", node.admin)).await;
    assert_eq!(ready["status"], "ready");
    assert_eq!(ready["config"], "last reload failed");

    // A change only a restart applies is reported, and the rest applies.
    let moved = config_text_with_listen(&config(&idp, &up, "[read, write]", ""));
    node.rewrite_config(&moved);
    eventually(
        "the restart-only change is reported",
        Duration::from_secs(10),
        async || {
            get_json(format!("http://{}/config", node.admin)).await["restartNeeded"]
                == serde_json::json!(["listen"])
        },
    )
    .await;
    assert_eq!(
        status(&node, "/new").await,
        404,
        "the route removed with it is gone"
    );
}

/// `yaml` listening on another (free) address.
fn config_text_with_listen(yaml: &str) -> String {
    yaml.replacen("listen: 127.0.0.1:0", "listen: 127.0.0.2:0", 1)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_and_a_changed_secret_file_is_picked_up() {
    let idp = FakeIdp::start().await;
    idp.register("gateway", "first-secret");
    let up = EchoUpstream::start().await;
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "first-secret\n").unwrap();
    let yaml = |extra: &str| {
        format!(
            r#"
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
middlewares:
  gw: {{ clientCredentials: {{ url: "{token}", clientId: gateway, clientSecret: "file:{s}" }} }}
routes:
  - {{ name: gw, match: {{ pathPrefix: /gw }}, middlewares: [gw], upstream: {{ urls: ["{u}"] }} }}
{extra}"#,
            token = idp.token_url(),
            s = secret.display(),
            u = up.url(),
        )
    };
    // Files are not watched here: only the signal reloads.
    let node = Node::start(&yaml(""), &[("TOKENGATE_WATCH_INTERVAL", "0s")]);
    let get = async |path: &str| client().get(node.url(path)).send().await.unwrap().status();
    assert_eq!(get("/gw").await, 200);
    let added = format!(
        "  - {{ name: added, match: {{ pathPrefix: /added }}, upstream: {{ urls: [\"{}\"] }} }}\n",
        up.url()
    );
    node.rewrite_config(&yaml(&added));
    assert_eq!(get("/added").await, 404, "not watched, not reloaded");
    node.signal("HUP");
    eventually(
        "SIGHUP applies the change",
        Duration::from_secs(10),
        async || get("/added").await == 200,
    )
    .await;

    // The IdP rotates the client's secret and the secret file follows: the next reload uses it.
    let before = idp.seen().len();
    idp.register("gateway", "second-secret");
    std::fs::write(&secret, "second-secret\n").unwrap();
    node.signal("HUP");
    eventually(
        "a token is fetched with the new secret",
        Duration::from_secs(10),
        async || get("/gw").await == 200 && idp.seen().len() > before,
    )
    .await;
}
