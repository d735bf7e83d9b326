//! The Redis store: its contract against a real server, and fleets of gateway processes sharing
//! tokens through it.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use gateway::store::{RedisConfig, RedisTopology};
use gateway::store::{RedisStore, conformance};
use testkit::{EchoUpstream, FakeIdp};

use crate::support::{Node, RedisServer, basic, client, echo, eventually, header};

pub(crate) const FLEET_KEY: &str = "fleet-key-for-tests-0123456789abcdef";

pub(crate) fn store_config(endpoint: &str, prefix: &str) -> RedisConfig {
    let (host, port) = endpoint.rsplit_once(':').unwrap();
    RedisConfig {
        endpoints: vec![(host.into(), port.parse().unwrap())],
        username: None,
        password: None,
        database: 0,
        key_prefix: prefix.into(),
        topology: RedisTopology::Standalone,
        pool_size: 4,
        timeout: Duration::from_secs(1),
        tls: None,
    }
}

/// A store on `cfg` whose event subscription is up.
pub(crate) async fn connected(cfg: &RedisConfig) -> RedisStore {
    let store = RedisStore::new(cfg).unwrap();
    assert!(
        store.subscribed(Duration::from_secs(10)).await,
        "event subscription up"
    );
    store
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_meets_the_contract() {
    let redis = RedisServer::start();
    let n = std::sync::atomic::AtomicUsize::new(0);
    conformance::run(async || {
        let prefix = format!(
            "conformance-{}",
            n.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        connected(&store_config(&redis.endpoint(), &prefix)).await
    })
    .await;
}

/// A fleet: the fake IdP, an echo upstream, one Redis and `n` gateway nodes.
pub(crate) struct Fleet {
    pub(crate) idp: FakeIdp,
    pub(crate) upstream: EchoUpstream,
    pub(crate) redis: RedisServer,
    pub(crate) nodes: Vec<Node>,
}

/// A gateway configuration with one application-level route, on the given `store` section.
pub(crate) fn node_config(
    idp: &FakeIdp,
    upstream: &EchoUpstream,
    store: &str,
    refresh: &str,
) -> String {
    format!(
        r#"
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
fleetKey: env:FLEET_KEY
store: {store}
refresh: {refresh}
middlewares:
  app-creds:
    clientCredentials:
      url: {url}
      scopes: [read]
      clientConfig: {{ timeout: 4s, retries: 1 }}
      # Tests revoke tokens seconds after they were issued.
      rejectedTokenMinAge: 0s
routes:
  - {{ name: app, match: {{ pathPrefix: / }}, middlewares: [app-creds], upstream: {{ urls: [{up}] }} }}
"#,
        url = idp.token_url(),
        up = upstream.url()
    )
}

pub(crate) async fn fleet(nodes: usize, lifetime: Duration, refresh: &str) -> Fleet {
    let idp = FakeIdp::start().await;
    let upstream = EchoUpstream::start().await;
    let redis = RedisServer::start();
    idp.set_token_lifetime(lifetime);
    for i in 0..20 {
        idp.register(&format!("client-{i}"), &format!("secret-{i}"));
    }
    let store = format!(r#"{{ redis: {{ endpoints: ["{}"] }} }}"#, redis.endpoint());
    let yaml = node_config(&idp, &upstream, &store, refresh);
    let nodes = (0..nodes)
        .map(|_| Node::start(&yaml, &[("FLEET_KEY", FLEET_KEY)]))
        .collect();
    Fleet {
        idp,
        upstream,
        redis,
        nodes,
    }
}

impl Fleet {
    /// `GET /` on node `node` with client `client`'s credentials.
    pub(crate) async fn call(&self, node: usize, client: usize) -> reqwest::Response {
        let req = crate::support::client()
            .get(self.nodes[node].url("/"))
            .header("authorization", creds(client));
        req.send().await.unwrap()
    }
}

pub(crate) fn creds(i: usize) -> String {
    basic(&format!("client-{}", i % 20), &format!("secret-{}", i % 20))
}

fn bearer(e: &serde_json::Value) -> String {
    header(e, "authorization")[0]
        .strip_prefix("Bearer ")
        .unwrap()
        .to_owned()
}

fn exp_of(token: &str) -> u64 {
    let mut v = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    v.validate_aud = false;
    v.validate_exp = false;
    let claims = jsonwebtoken::decode::<serde_json::Value>(token, &FakeIdp::decoding_key(), &v)
        .unwrap()
        .claims;
    claims["exp"].as_u64().unwrap()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// The index of the node holding the refresh lease, as Redis records it (`"<node id> <fence>"`),
/// matched against the node ids the gateways log.
async fn leader(redis: &RedisServer, nodes: &[Node]) -> usize {
    let mut found = None;
    eventually(
        "a node holds the refresh lease",
        Duration::from_secs(15),
        async || {
            let lease = redis.cli(&["GET", "{tokengate}:lease"]);
            let holder = lease.split_whitespace().next().unwrap_or("-").to_owned();
            found = nodes
                .iter()
                .position(|n| n.log().contains(&format!("\"node\":\"{holder}\"")));
            found.is_some()
        },
    )
    .await;
    found.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_nodes_ask_the_idp_once_per_credential() {
    let f = fleet(3, Duration::from_secs(300), "{ interval: 1s }").await;
    f.idp.set_latency(Duration::from_millis(300));
    one_idp_request_per_credential(&f.nodes, &f.idp, &f.upstream).await;
}

/// 300 concurrent requests for the 20 registered clients, spread over the nodes: all served,
/// with one token request per credential for the whole fleet.
pub(crate) async fn one_idp_request_per_credential(
    nodes: &[Node],
    idp: &FakeIdp,
    upstream: &EchoUpstream,
) {
    let http = client();
    let calls = (0..300).map(|i| {
        let req = http
            .get(nodes[i % nodes.len()].url(&format!("/r/{i}")))
            .header("authorization", creds(i));
        async move { req.send().await.unwrap().status() }
    });
    let statuses = futures_util::future::join_all(calls).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(
        idp.total_issued(),
        20,
        "one token request per credential for the whole fleet"
    );
    assert_eq!(upstream.seen().len(), 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_refreshes_each_token_once_per_lifetime_while_all_serve() {
    let f = fleet(3, Duration::from_secs(4), "{ interval: 100ms }").await;
    refresh_once_per_lifetime(&f.nodes, &f.idp).await;
}

/// Calls the nodes in turn for 11 s with 4 s tokens (the fleet must be configured so), checking
/// that no expired token reaches the upstream, that the credential's token was renewed about
/// once per lifetime, and that one node alone held the refresh lease.
pub(crate) async fn refresh_once_per_lifetime(nodes: &[Node], idp: &FakeIdp) {
    let http = client();
    let started = Instant::now();
    let mut served = 0;
    while started.elapsed() < Duration::from_secs(11) {
        let e = echo(
            http.get(nodes[served % nodes.len()].url("/x"))
                .header("authorization", creds(0))
                .send()
                .await
                .unwrap(),
        )
        .await;
        assert!(
            exp_of(&bearer(&e)) >= now_secs(),
            "an expired token reached the upstream"
        );
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // 4 s tokens (3 s servable) are refreshed every 2.25-2.4 s: 1 + at most 5 renewals in 11 s.
    // Three nodes each refreshing on their own would make about three times as many.
    let issued = idp.issued("client-0");
    assert!(
        (4..=6).contains(&issued),
        "{issued} tokens issued for one credential in 11 s"
    );
    let leaders = nodes
        .iter()
        .filter(|n| n.log().contains("became refresh leader"))
        .count();
    assert_eq!(leaders, 1, "exactly one node held the refresh lease");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_the_leader_hands_refreshing_to_another_node_without_failures() {
    let mut f = fleet(
        3,
        Duration::from_secs(4),
        "{ interval: 100ms, leaseTtl: 2s }",
    )
    .await;
    let http = client();
    assert_eq!(f.call(0, 0).await.status(), 200);
    let old = leader(&f.redis, &f.nodes).await;
    f.nodes[old].kill();
    let killed_at = Instant::now();
    let survivors: Vec<usize> = (0..3).filter(|i| *i != old).collect();
    let mut tokens = std::collections::BTreeSet::new();
    let mut new_leader_after = None;
    let mut served = 0;
    while killed_at.elapsed() < Duration::from_secs(10) {
        let node = &f.nodes[survivors[served % 2]];
        let resp = http
            .get(node.url("/"))
            .header("authorization", creds(0))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200, "request {served} after the leader died");
        let token = bearer(&echo(resp).await);
        assert!(exp_of(&token) >= now_secs());
        tokens.insert(token);
        if new_leader_after.is_none()
            && survivors
                .iter()
                .any(|i| f.nodes[*i].log().contains("became refresh leader"))
        {
            new_leader_after = Some(killed_at.elapsed());
        }
        served += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = new_leader_after.expect("a survivor took the lease");
    assert!(
        took < Duration::from_millis(2000 + 500),
        "lease taken over after {took:?} (lease TTL 2 s)"
    );
    assert!(
        tokens.len() >= 3,
        "refreshing went on after the kill: {} tokens",
        tokens.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_leader_that_wakes_up_cannot_overwrite_the_new_token() {
    let f = fleet(
        2,
        Duration::from_secs(20),
        "{ interval: 100ms, leaseTtl: 1s }",
    )
    .await;
    let first = bearer(&echo(f.call(0, 0).await).await);
    let old = leader(&f.redis, &f.nodes).await;
    // 20 s tokens are refreshed at 75-80 % of their 19 s servable life, leaving about 4 s for a
    // lease takeover (1 s) and an IdP round trip (1 s). Hold the leader's refresh at the IdP,
    // then freeze the leader while it waits.
    f.idp.set_latency(Duration::from_millis(1000));
    let before = f.idp.seen().len();
    eventually(
        "the leader asks the IdP for a refresh",
        Duration::from_secs(25),
        async || f.idp.seen().len() > before,
    )
    .await;
    f.nodes[old].signal("STOP");
    let other = 1 - old;
    let mut current = first.clone();
    eventually(
        "the other node takes the lease and serves its refreshed token",
        Duration::from_secs(10),
        async || {
            current = bearer(&echo(f.call(other, 0).await).await);
            current != first && f.nodes[other].log().contains("became refresh leader")
        },
    )
    .await;
    f.idp.set_latency(Duration::ZERO);
    f.nodes[old].signal("CONT");
    eventually(
        "the woken leader's late write is refused",
        Duration::from_secs(10),
        async || {
            f.nodes[old]
                .log()
                .contains("refresh result discarded: lease fenced off")
        },
    )
    .await;
    let after = bearer(&echo(f.call(other, 0).await).await);
    assert_eq!(
        after, current,
        "the new leader's token is still the fleet's token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_restarting_under_load_fails_no_request_while_tokens_are_valid() {
    let mut f = fleet(2, Duration::from_secs(60), "{ interval: 100ms }").await;
    for i in 0..8 {
        assert_eq!(f.call(i % 2, i / 2).await.status(), 200);
    }
    let issued = f.idp.total_issued();
    assert_eq!(issued, 4, "both nodes share each credential's token");
    f.redis.kill();
    let mut saw_degraded = false;
    for round in 0..40 {
        for i in 0..4 {
            let resp = f.call((round + i) % 2, i).await;
            assert_eq!(resp.status(), 200, "served from L1 while Redis is down");
        }
        let store = f.nodes[0].store_state().await;
        saw_degraded |= store == "degraded";
        if round == 20 {
            f.redis.restart();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(saw_degraded, "readiness reported the degraded store");
    eventually(
        "the store is healthy again",
        Duration::from_secs(10),
        async || {
            let store = f.nodes[0].store_state().await;
            store == "ok"
        },
    )
    .await;
    assert_eq!(
        f.idp.total_issued(),
        issued,
        "no token was fetched again: every node kept its L1"
    );
    // The nodes wrote their still-valid tokens back into the empty Redis.
    eventually(
        "tokens are back in Redis",
        Duration::from_secs(10),
        async || {
            f.redis
                .cli(&["--scan", "--pattern", "{tokengate}:e:*"])
                .lines()
                .count()
                == 4
        },
    )
    .await;
    let warnings = f.nodes[0]
        .log_once("the outage is logged", |l| {
            l.contains("serving from L1 and fetching per node")
        })
        .await
        .matches("serving from L1 and fetching per node")
        .count();
    assert_eq!(warnings, 1, "the outage is logged once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_entry_evicted_while_events_were_lost_stays_evicted_across_the_resync() {
    let f = fleet(1, Duration::from_secs(60), "{ interval: 100ms }").await;
    assert_eq!(f.call(0, 0).await.status(), 200);
    assert_eq!(f.idp.total_issued(), 1);
    // An operator's eviction whose event never reaches the node (deleted without the
    // announcement, as if published while the node's subscription was down)...
    let keys = f.redis.cli(&["--scan", "--pattern", "{tokengate}:e:*"]);
    let entry = keys
        .lines()
        .next()
        .expect("the entry is in Redis")
        .to_owned();
    f.redis.cli(&["DEL", &entry]);
    assert_eq!(
        f.call(0, 0).await.status(),
        200,
        "served from the L1 meanwhile"
    );
    assert_eq!(f.idp.total_issued(), 1);
    // ...then the subscription breaks and comes back: the node re-reads what it caches. Redis
    // kept its data (same epoch), so the missing entry was evicted: the node drops its copy
    // and fetches a new token, instead of writing the evicted one back.
    f.redis.cli(&["CLIENT", "KILL", "TYPE", "pubsub"]);
    eventually(
        "the node drops the evicted token and fetches a new one",
        Duration::from_secs(10),
        async || f.call(0, 0).await.status() == 200 && f.idp.total_issued() == 2,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_holds_ciphertext_only() {
    let f = fleet(1, Duration::from_secs(300), "{ interval: 1s }").await;
    let resp = client()
        .get(f.nodes[0].url("/"))
        .header("authorization", creds(7))
        .send()
        .await
        .unwrap();
    let token = bearer(&echo(resp).await);
    let mut dump = String::new();
    for key in f.redis.cli(&["--scan"]).lines() {
        dump.push_str(key);
        let kind = f.redis.cli(&["TYPE", key]);
        let value = match kind.trim() {
            "hash" => f.redis.cli(&["HGETALL", key]),
            "zset" => f.redis.cli(&["ZRANGE", key, "0", "-1", "WITHSCORES"]),
            _ => f.redis.cli(&["GET", key]),
        };
        dump.push_str(&value);
    }
    assert!(
        dump.contains("client-7"),
        "metadata is readable for operators: {dump}"
    );
    let payload = token.split('.').nth(1).unwrap();
    for secret in ["secret-7", token.as_str(), payload, FLEET_KEY] {
        assert!(
            !dump.contains(secret),
            "Redis holds a secret or token in clear"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_401_on_one_node_evicts_the_token_on_every_node() {
    let f = fleet(2, Duration::from_secs(300), "{ interval: 1s }").await;
    let http = client();
    let get = |n: usize| {
        http.get(f.nodes[n].url("/"))
            .header("authorization", creds(3))
            .send()
    };
    let t1 = bearer(&echo(get(0).await.unwrap()).await);
    assert_eq!(
        bearer(&echo(get(1).await.unwrap()).await),
        t1,
        "node 1 uses the fleet's token"
    );
    f.upstream.reject_token(&t1);
    let t2 = bearer(&echo(get(0).await.unwrap()).await);
    assert_ne!(t2, t1);
    eventually(
        "node 1 uses the replacement",
        Duration::from_secs(1),
        async || bearer(&echo(get(1).await.unwrap()).await) == t2,
    )
    .await;
    assert_eq!(
        f.idp.issued("client-3"),
        2,
        "node 1 picked the replacement up instead of fetching its own"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_fleet_key_costs_no_idp_request() {
    const NEW_KEY: &str = "the-next-fleet-key-0123456789abcdef";
    let f = fleet(1, Duration::from_secs(300), "{ interval: 1s }").await;
    let store = format!(
        r#"{{ redis: {{ endpoints: ["{}"] }} }}"#,
        f.redis.endpoint()
    );
    let yaml = node_config(&f.idp, &f.upstream, &store, "{ interval: 1s }");
    let rotated = format!("previousFleetKeys: [env:OLD_FLEET_KEY]\n{yaml}");
    let old_token = bearer(&echo(f.call(0, 0).await).await);

    let during = Node::start(
        &rotated,
        &[("FLEET_KEY", NEW_KEY), ("OLD_FLEET_KEY", FLEET_KEY)],
    );
    let req = client()
        .get(during.url("/"))
        .header("authorization", creds(0));
    assert_eq!(
        bearer(&echo(req.send().await.unwrap()).await),
        old_token,
        "found under the previous key"
    );
    // Re-sealed under the new key: a node that only knows the new key finds it too.
    let after = Node::start(&yaml, &[("FLEET_KEY", NEW_KEY)]);
    let req = client()
        .get(after.url("/"))
        .header("authorization", creds(0));
    assert_eq!(bearer(&echo(req.send().await.unwrap()).await), old_token);
    assert_eq!(f.idp.total_issued(), 1, "the rotation made no IdP request");
}

/// The ACL line the documentation's "Securing the cache" page gives, with `password`.
fn documented_acl(password: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../docs/reference/securing-the-cache.md"
    ))
    .unwrap();
    let line = readme
        .lines()
        .find(|l| l.starts_with("ACL SETUSER tokengate "))
        .expect("the documentation gives the ACL user");
    line.split_whitespace()
        .map(|w| w.replace(">CHANGE-ME", &format!(">{password}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fleet_works_under_the_documented_least_privilege_user_and_not_without_it() {
    let redis = RedisServer::start();
    let acl = documented_acl("acl-pass");
    let acl: Vec<&str> = acl.iter().map(String::as_str).collect();
    assert_eq!(redis.cli(&acl).trim(), "OK");
    // A co-tenant with rights elsewhere only.
    assert_eq!(
        redis
            .cli(&[
                "ACL",
                "SETUSER",
                "other",
                "on",
                ">other-pass",
                "~other:*",
                "&other:*",
                "+@all",
            ])
            .trim(),
        "OK"
    );
    let idp = FakeIdp::start().await;
    let upstream = EchoUpstream::start().await;
    for i in 0..20 {
        idp.register(&format!("client-{i}"), &format!("secret-{i}"));
    }
    let store = |user: &str, env: &str| {
        format!(
            r#"{{ redis: {{ endpoints: ["{}"], username: {user}, password: env:{env} }} }}"#,
            redis.endpoint()
        )
    };
    let env = [
        ("FLEET_KEY", FLEET_KEY),
        ("ACL_PASS", "acl-pass"),
        ("OTHER_PASS", "other-pass"),
    ];
    let yaml = node_config(
        &idp,
        &upstream,
        &store("tokengate", "ACL_PASS"),
        "{ interval: 1s }",
    );
    let nodes = [Node::start(&yaml, &env), Node::start(&yaml, &env)];
    for n in &nodes {
        eventually("the store answers", Duration::from_secs(10), async || {
            n.store_state().await == "ok"
        })
        .await;
    }
    one_idp_request_per_credential(&nodes, &idp, &upstream).await;
    // The refresh lease and the index live under the user's keys: the leader holds a fence.
    eventually("a refresh leader", Duration::from_secs(10), async || {
        !redis.cli(&["GET", "{tokengate}:lease"]).trim().is_empty()
    })
    .await;

    // The co-tenant cannot read, evict or take the lease.
    let other = |args: &[&str]| {
        let mut all = vec![
            "--user",
            "other",
            "--pass",
            "other-pass",
            "--no-auth-warning",
        ];
        all.extend_from_slice(args);
        redis.cli(&all)
    };
    assert!(other(&["ZRANGE", "{tokengate}:index", "0", "-1"]).contains("NOPERM"));
    assert!(other(&["DEL", "{tokengate}:lease"]).contains("NOPERM"));
    // And a gateway running as it is refused by Redis: it degrades, it does not share.
    let refused = Node::start(
        &node_config(
            &idp,
            &upstream,
            &store("other", "OTHER_PASS"),
            "{ interval: 1s }",
        ),
        &env,
    );
    let resp = client()
        .get(refused.url("/x"))
        .header("authorization", creds(0))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "served from its own IdP fetch");
    eventually(
        "the refused node reports its store degraded",
        Duration::from_secs(10),
        async || refused.store_state().await == "degraded",
    )
    .await;
    let metrics = crate::support::metrics_text(refused.admin).await;
    assert!(
        metrics.lines().any(|l| l == "tokengate_store_degraded 1"),
        "the alert's metric says so too"
    );
}
