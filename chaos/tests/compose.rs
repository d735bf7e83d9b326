//! The fleet of `docker-compose.yml`, as an operator starts it: the images that `scripts/images`
//! built, `up`, traffic through the load balancer from the host, `cachectl` inside a container,
//! the logs read for secrets, and `down`.
//!
//! These tests need Docker, a Compose tool and the images (`scripts/images`); `scripts/test`
//! runs them in a step of their own after building the images:
//!
//! ```sh
//! scripts/images && cargo test -p chaos --test compose -- --ignored --test-threads 1
//! ```

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use chaos::docker::{Compose, missing_images};
use jsonwebtoken::{Algorithm, Validation};
use serde_json::Value;
use testkit::FakeIdp;
use testkit::procs::free_port;

const IMAGES: &[&str] = &[
    "tokengate:dev",
    "tokengate-doubles:dev",
    "tokengate-lb:dev",
    "tokengate-redis:dev",
];

/// A fresh random secret, as an operator makes them (`openssl rand -hex 32`).
fn secret() -> String {
    use rand::RngCore;
    let mut b = [0u8; 32];
    rand::rng().fill_bytes(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The fleet's secrets and host ports, and the project that uses them.
struct Fleet {
    compose: Compose,
    secrets: Vec<String>,
    lb: String,
    idp: String,
}

impl Fleet {
    fn new(name: &str, store: &str) -> Self {
        let missing = missing_images(IMAGES);
        assert!(
            missing.is_empty(),
            "images missing: {missing:?}; build them with scripts/images"
        );
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let (lb, stats, idp) = (free_port(), free_port(), free_port());
        let secrets: Vec<(&str, String)> = vec![
            ("TOKENGATE_FLEET_KEY", secret()),
            ("CACHE_ADMIN_TOKEN", secret()),
            ("CACHE_PEER_TOKEN", secret()),
            ("CACHE_GATEWAY_TOKEN", secret()),
            ("REDIS_PASSWORD", secret()),
            ("GW_SECRET", secret()),
        ];
        let mut env: Vec<(String, String)> = secrets
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect();
        env.extend([
            ("TOKENGATE_STORE".into(), store.into()),
            ("TOKENGATE_HTTP_PORT".into(), lb.to_string()),
            ("TOKENGATE_LB_STATS_PORT".into(), stats.to_string()),
            ("TOKENGATE_IDP_PORT".into(), idp.to_string()),
        ]);
        if store == "redis" {
            env.push(("COMPOSE_PROFILES".into(), "redis".into()));
        }
        let project = format!("tgtest{}{name}", std::process::id());
        Self {
            compose: Compose::new(&project, &root.join("docker-compose.yml"), env),
            secrets: secrets.into_iter().map(|(_, v)| v).collect(),
            lb: format!("http://127.0.0.1:{lb}"),
            idp: format!("http://127.0.0.1:{idp}"),
        }
    }

    fn admin_token(&self) -> &str {
        &self.secrets[1]
    }
}

/// The claims of a token the upstream received, verified with the fake IdP's key.
fn claims(token: &str) -> Value {
    let mut v = Validation::new(Algorithm::RS256);
    v.validate_aud = false;
    jsonwebtoken::decode::<Value>(token, &FakeIdp::decoding_key(), &v)
        .unwrap_or_else(|e| panic!("the upstream got a token that does not verify: {e}"))
        .claims
}

/// What the echo upstream saw: the bearer token it was sent and the address it came from.
fn seen(body: &Value) -> (String, String) {
    let auth = body["headers"]["authorization"]
        .as_array()
        .unwrap_or_else(|| panic!("no Authorization upstream: {body}"));
    assert_eq!(auth.len(), 1, "one Authorization upstream: {body}");
    let token = auth[0]
        .as_str()
        .unwrap()
        .strip_prefix("Bearer ")
        .unwrap_or_else(|| panic!("not a bearer token upstream: {body}"))
        .to_owned();
    let remote = body["remote"].as_str().unwrap();
    let host = remote
        .rsplit_once(':')
        .map_or(remote, |(h, _)| h)
        .to_owned();
    (token, host)
}

async fn fleet_serves_through_the_balancer(store: &str) {
    let fleet = Fleet::new(store, store);
    let c = &fleet.compose;
    let up = std::time::Instant::now();
    c.run(&["up", "-d", "--no-build"]).unwrap();
    let services = if store == "redis" { 9 } else { 8 };
    c.wait_healthy(services, Duration::from_secs(120))
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", c.logs().unwrap_or_default()));
    println!(
        "{store}: every container healthy {:?} after up",
        up.elapsed()
    );

    let http = reqwest::Client::new();
    let (mut tokens, mut gateways) = (BTreeSet::new(), BTreeSet::new());
    // Application level: the caller's Basic credentials exchanged for a token; gateway level:
    // the gateway's own client.
    let calls = (0..60)
        .map(|i| (format!("/app/hello/{i}"), Some("demo-secret"), "demo-app"))
        .chain((0..30).map(|i| (format!("/internal/stock/{i}"), None, "gateway")));
    for (path, secret, client) in calls {
        let mut req = http.get(format!("{}{path}", fleet.lb));
        if let Some(secret) = secret {
            req = req.basic_auth("demo-app", Some(secret));
        }
        let r = req.send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let body: Value = r.json().await.unwrap();
        let (token, from) = seen(&body);
        assert_eq!(claims(&token)["client_id"], client, "{body}");
        if secret.is_some() {
            assert_eq!(body["headers"]["sub"][0], "demo-app", "{body}");
        }
        tokens.insert(token);
        gateways.insert(from);
    }
    // A wrong secret never reaches the upstream, nor costs a token.
    for _ in 0..3 {
        let r = http
            .get(format!("{}/app/hello", fleet.lb))
            .basic_auth("demo-app", Some("wrong"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401);
        assert!(r.headers().contains_key("www-authenticate"));
    }
    assert_eq!(
        gateways.len(),
        3,
        "the balancer used every gateway: {gateways:?}"
    );
    assert_eq!(tokens.len(), 2, "one token per credential fleet-wide");

    // One token request per credential however many gateways served it.
    let issued: Value = http
        .get(format!("{}/_issued", fleet.idp))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(issued["demo-app"], 1, "IdP token requests: {issued}");
    assert_eq!(issued["gateway"], 1, "IdP token requests: {issued}");

    // cachectl, in a cache node's container: with the operator token it lists both entries and
    // no token or secret; without it, it is refused.
    if store == "raft" {
        let env = format!("CACHECTL_TOKEN={}", fleet.admin_token());
        let out = c
            .output(&[
                "exec", "-T", "-e", &env, "cache-1", "cachectl", "ls", "-o", "json",
            ])
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "cachectl ls: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let list: Value = serde_json::from_str(&stdout).unwrap();
        let clients: BTreeSet<&str> = list
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| e["client_id"].as_str())
            .collect();
        assert_eq!(clients, BTreeSet::from(["demo-app", "gateway"]), "{stdout}");
        for t in &tokens {
            assert!(!stdout.contains(t.as_str()), "a token in cachectl's output");
        }
        let refused = c
            .output(&["exec", "-T", "cache-1", "cachectl", "ls"])
            .unwrap();
        assert!(
            !refused.status.success(),
            "cachectl without the operator token"
        );
        let err = String::from_utf8_lossy(&refused.stderr);
        assert!(
            err.contains("needs the operator credential"),
            "refused with a reason: {err}"
        );
    }

    // No secret and no token anywhere in the fleet's logs.
    let logs = c.logs().unwrap();
    assert!(logs.lines().count() > 20, "the fleet logged: {logs}");
    for s in &fleet.secrets {
        assert!(!logs.contains(s.as_str()), "a secret in `compose logs`");
    }
    for t in &tokens {
        assert!(!logs.contains(t.as_str()), "a token in `compose logs`");
        // A JWT's signature alone would do as well as the whole token.
        let signature = t.rsplit('.').next().unwrap();
        assert!(
            !logs.contains(signature),
            "a token's signature in `compose logs`"
        );
    }
    assert!(
        !logs.contains("demo-secret"),
        "a caller's secret in `compose logs`"
    );

    c.down().unwrap();
    assert!(c.containers().unwrap().is_empty(), "down left containers");
    let label = format!("label=com.docker.compose.project={}", c.project());
    let volumes = chaos::docker::docker(&["volume", "ls", "-q", "--filter", &label]).unwrap();
    assert!(volumes.is_empty(), "down -v left volumes: {volumes}");
    let networks = chaos::docker::docker(&["network", "ls", "-q", "--filter", &label]).unwrap();
    assert!(networks.is_empty(), "down left networks: {networks}");
}

#[tokio::test]
#[ignore = "needs Docker and the images: scripts/images, then --ignored (scripts/test does)"]
async fn compose_fleet_on_the_cache_service() {
    fleet_serves_through_the_balancer("raft").await;
}

#[tokio::test]
#[ignore = "needs Docker and the images: scripts/images, then --ignored (scripts/test does)"]
async fn compose_fleet_on_redis() {
    fleet_serves_through_the_balancer("redis").await;
}
