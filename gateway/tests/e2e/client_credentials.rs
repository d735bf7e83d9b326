//! The `clientCredentials` middleware, both modes, against the fake IdP.

use std::time::Duration;

use jsonwebtoken::{Algorithm, Validation};
use testkit::{EchoUpstream, FakeIdp};

use crate::support::{
    GW_SECRET, Node, basic, client, echo, eventually, get_as, header, two_modes_with,
};

struct Fleet {
    idp: FakeIdp,
    upstream: EchoUpstream,
    node: Node,
}

async fn start(cc_extra: &str) -> Fleet {
    start_with(cc_extra, "client_secret_post").await
}

async fn start_with(cc_extra: &str, gw_method: &str) -> Fleet {
    let idp = FakeIdp::start().await;
    let upstream = EchoUpstream::start().await;
    idp.register("gw id:+/%", GW_SECRET);
    let yaml = two_modes_with(&idp.token_url(), &upstream.url(), cc_extra, gw_method);
    let node = Node::start(&yaml, &[("GW_SECRET", GW_SECRET)]);
    Fleet {
        idp,
        upstream,
        node,
    }
}

fn claims(token: &str) -> serde_json::Value {
    let mut v = Validation::new(Algorithm::RS256);
    v.validate_aud = false;
    jsonwebtoken::decode::<serde_json::Value>(token, &FakeIdp::decoding_key(), &v)
        .expect("a valid IdP token")
        .claims
}

fn bearer(echo: &serde_json::Value) -> String {
    let auth = header(echo, "authorization");
    assert_eq!(
        auth.len(),
        1,
        "exactly one Authorization header upstream: {auth:?}"
    );
    auth[0]
        .strip_prefix("Bearer ")
        .expect("a bearer token upstream")
        .to_owned()
}

async fn assert_log_clean(node: &Node, secrets: &[&str]) {
    let log = node.settled_log().await;
    for s in secrets {
        assert!(!log.contains(s), "the log contains a secret or token");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_level_exchanges_the_callers_basic_credentials() {
    let f = start("").await;
    f.idp.register("svc-a", "s3cret");
    let http = client();
    let e = echo(get_as(&http, f.node.url("/app/hello"), "svc-a", "s3cret").await).await;
    let token = bearer(&e);
    assert_eq!(claims(&token)["sub"], "svc-a");
    assert_eq!(header(&e, "sub"), ["svc-a"]);
    assert_eq!(header(&e, "x-client"), ["svc-a"]);
    let seen = f.idp.seen();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        (seen[0].auth_method, seen[0].client_id.as_str()),
        ("basic", "svc-a")
    );
    for p in [
        ("grant_type", "client_credentials"),
        ("scope", "read"),
        ("resource", "https://api.example"),
    ] {
        assert!(
            seen[0].params.contains(&(p.0.into(), p.1.into())),
            "IdP got {p:?}: {:?}",
            seen[0].params
        );
    }
    // The second call is served from the cache with the same token.
    let e2 = echo(get_as(&http, f.node.url("/app/again"), "svc-a", "s3cret").await).await;
    assert_eq!(bearer(&e2), token);
    assert_eq!(f.idp.issued("svc-a"), 1);
    assert_log_clean(&f.node, &["s3cret", &token, GW_SECRET]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_level_uses_its_own_credentials_with_client_secret_post() {
    let f = start("").await;
    // A caller's own Authorization header is replaced, never passed on.
    let e = echo(get_as(&client(), f.node.url("/internal/x"), "caller", "pw").await).await;
    let token = bearer(&e);
    assert_eq!(claims(&token)["sub"], "gw id:+/%");
    let seen = f.idp.seen();
    assert_eq!(
        (seen[0].auth_method, seen[0].client_id.as_str()),
        ("post", "gw id:+/%")
    );
    assert!(
        seen[0]
            .params
            .contains(&("audience".into(), "https://api.example".into()))
    );
    assert_log_clean(&f.node, &[GW_SECRET, &token]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn awkward_ids_and_secrets_survive_both_auth_methods() {
    // A caller's Basic user-id cannot contain ':' (RFC 7617); its secret can.
    let (id, secret) = ("svc one+/%é", "p@ss:w+rd/%20&x=y é");
    for method in ["client_secret_basic", "client_secret_post"] {
        let f = start_with(&format!("authMethod: {method}"), method).await;
        f.idp.register(id, secret);
        let resp = get_as(&client(), f.node.url("/app"), id, secret).await;
        assert_eq!(resp.status(), 200, "{method}");
        assert_eq!(
            claims(&bearer(&echo(resp).await))["client_id"],
            id,
            "{method}"
        );
        // Gateway level: an id with ':' and a secret with every reserved character.
        let resp = client().get(f.node.url("/internal")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "gateway level, {method}");
        assert_eq!(
            claims(&bearer(&echo(resp).await))["client_id"],
            "gw id:+/%",
            "{method}"
        );
        assert_eq!(
            f.idp.seen().last().unwrap().auth_method,
            if method == "client_secret_basic" {
                "basic"
            } else {
                "post"
            }
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_claim_headers_are_replaced() {
    let f = start("").await;
    f.idp.register("svc-a", "s3cret");
    let resp = client()
        .get(f.node.url("/app"))
        .header("authorization", basic("svc-a", "s3cret"))
        .header("sub", "admin")
        .header("x-client", "root")
        .header("x-client", "root-again")
        .send()
        .await
        .unwrap();
    let e = echo(resp).await;
    assert_eq!(header(&e, "sub"), ["svc-a"]);
    assert_eq!(header(&e, "x-client"), ["svc-a"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_secret_never_gets_the_cached_token() {
    let f = start("").await;
    f.idp.register("svc-a", "right");
    let http = client();
    let ok = get_as(&http, f.node.url("/app"), "svc-a", "right").await;
    assert_eq!(ok.status(), 200);
    let bad = get_as(&http, f.node.url("/app"), "svc-a", "wrong").await;
    assert_eq!(bad.status(), 401);
    assert!(
        bad.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic realm=\"tokengate\"")
    );
    assert_eq!(
        bad.json::<serde_json::Value>().await.unwrap()["error"],
        "invalid_client"
    );
    assert_eq!(
        f.idp.seen().len(),
        2,
        "the wrong secret was checked at the IdP, not matched against the cache"
    );
    assert_eq!(
        f.upstream.seen().len(),
        1,
        "the refused request never reached the upstream"
    );
    assert_log_clean(&f.node, &["right", "wrong"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_or_malformed_credentials_get_a_basic_challenge() {
    let f = start("").await;
    let http = client();
    for auth in [
        None,
        Some("Basic !!!not-base64"),
        Some("Bearer abc"),
        Some("Basic Om5vLWlk"),
    ] {
        let mut req = http.get(f.node.url("/app"));
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{auth:?}");
        assert!(
            resp.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .starts_with("Basic realm="),
            "{auth:?}"
        );
        assert_eq!(
            resp.json::<serde_json::Value>().await.unwrap()["error"],
            "invalid_client"
        );
    }
    assert!(f.idp.seen().is_empty(), "nothing to ask the IdP");
    assert!(f.upstream.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_client_is_remembered_so_a_flood_stays_off_the_idp() {
    let f = start("").await;
    f.idp.register("svc-a", "right");
    let http = client();
    for _ in 0..20 {
        let resp = get_as(&http, f.node.url("/app"), "svc-a", "bad").await;
        assert_eq!(resp.status(), 401);
    }
    assert_eq!(f.idp.seen().len(), 1);
    // The right secret is a different key: not affected by the negative entry.
    let ok = get_as(&http, f.node.url("/app"), "svc-a", "right").await;
    assert_eq!(ok.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_callers_share_one_token_request() {
    let f = start("").await;
    f.idp.register("svc-a", "s3cret");
    f.idp.set_latency(Duration::from_millis(300));
    let http = client();
    let calls = (0..200).map(|i| {
        let req = http
            .get(f.node.url(&format!("/app/{i}")))
            .header("authorization", basic("svc-a", "s3cret"));
        async move { req.send().await.unwrap().status() }
    });
    let statuses = futures_util::future::join_all(calls).await;
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    assert_eq!(f.idp.issued("svc-a"), 1);
    assert_eq!(f.upstream.seen().len(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifetime_comes_from_the_jwt_when_expires_in_is_missing() {
    let f = start("defaultTokenLifetime: 1h").await;
    f.idp.register("svc-a", "s3cret");
    f.idp.omit_expires_in(true);
    f.idp.set_token_lifetime(Duration::from_secs(2));
    let http = client();
    let first = bearer(&echo(get_as(&http, f.node.url("/app"), "svc-a", "s3cret").await).await);
    // The 2 s JWT exp is honoured, not the 1 h default: a new token within seconds.
    let mut later = first.clone();
    eventually(
        "the gateway hands out a new token",
        Duration::from_secs(10),
        async || {
            later = bearer(&echo(get_as(&http, f.node.url("/app"), "svc-a", "s3cret").await).await);
            later != first
        },
    )
    .await;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    assert!(claims(&later)["exp"].as_u64().unwrap() > now);
}
