//! The `jwt` middleware: local validation against the fake IdP's published keys.

use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Value, json};
use testkit::{EchoUpstream, FakeIdp, IdpMode};

use crate::support::{Node, client, echo, eventually, get_as, header, now};

struct Fleet {
    idp: FakeIdp,
    upstream: EchoUpstream,
    node: Node,
}

/// One route `/api` behind a `jwt` middleware; `keys` names the key source (`jwksUrl: ...` or
/// `issuer: ...`), `extra` adds options.
fn config(upstream: &EchoUpstream, keys: &str, extra: &str) -> String {
    format!(
        r#"
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
middlewares:
  verify:
    jwt:
      {keys}
      audience: [orders, billing]
      leeway: 0s
      jwksMinRefreshInterval: 1s
      forwardHeaders: {{ X-Sub: sub, X-Roles: realm_access.roles }}
      usernameClaim: sub
      {extra}
routes:
  - name: api
    match: {{ pathPrefix: /api }}
    middlewares: [verify]
    upstream: {{ urls: [{}] }}
"#,
        upstream.url()
    )
}

async fn start(extra: &str) -> Fleet {
    let idp = FakeIdp::start().await;
    let upstream = EchoUpstream::start().await;
    let keys = format!(
        "jwksUrl: {}\n      issuer: {}",
        idp.jwks_url(),
        idp.issuer()
    );
    let node = Node::start(&config(&upstream, &keys, extra), &[]);
    Fleet {
        idp,
        upstream,
        node,
    }
}

fn claims(idp: &FakeIdp) -> Value {
    json!({
        "iss": idp.issuer(), "sub": "svc-orders", "aud": ["orders"],
        "iat": now(), "exp": now() + 60,
        "realm_access": { "roles": ["reader", "writer"] },
    })
}

async fn call(f: &Fleet, token: &str) -> reqwest::Response {
    client()
        .get(f.node.url("/api"))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
}

async fn assert_invalid(f: &Fleet, token: &str, why: &str) {
    let resp = call(f, token).await;
    assert_eq!(resp.status(), 401, "{why}");
    let c = resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(c.contains(r#"error="invalid_token""#), "{why}: {c}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_valid_token_passes_with_its_claims_forwarded_and_itself_removed() {
    let f = start("").await;
    let token = f.idp.mint(&claims(&f.idp));
    let resp = client()
        .get(f.node.url("/api"))
        .bearer_auth(&token)
        .header("x-sub", "root")
        .send()
        .await
        .unwrap();
    let e = echo(resp).await;
    assert_eq!(header(&e, "x-sub"), ["svc-orders"]);
    assert_eq!(header(&e, "x-roles"), ["reader,writer"]);
    assert!(header(&e, "authorization").is_empty());
    assert!(!f.node.settled_log().await.contains(&token));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_found_by_oidc_discovery() {
    let idp = FakeIdp::start().await;
    let upstream = EchoUpstream::start().await;
    let node = Node::start(
        &config(&upstream, &format!("issuer: {}", idp.issuer()), ""),
        &[],
    );
    let f = Fleet {
        idp,
        upstream,
        node,
    };
    let token = f.idp.mint(&claims(&f.idp));
    assert_eq!(call(&f, &token).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_foreign_and_tampered_tokens_are_invalid() {
    let f = start("").await;
    let base = claims(&f.idp);
    let with = |k: &str, v: Value| {
        let mut c = base.clone();
        c[k] = v;
        f.idp.mint(&c)
    };
    let mut no_exp = base.clone();
    no_exp.as_object_mut().unwrap().remove("exp");
    let good = f.idp.mint(&base);
    let (head, rest) = good.split_once('.').unwrap();
    let (_, sig) = rest.split_once('.').unwrap();
    let mut forged_claims = base.clone();
    forged_claims["sub"] = json!("admin");
    let forged = format!("{head}.{}.{sig}", B64URL.encode(forged_claims.to_string()));
    let cases = [
        (with("exp", json!(now() - 1)), "expired"),
        (with("nbf", json!(now() + 60)), "not yet valid"),
        (with("iss", json!("https://evil.example")), "another issuer"),
        (with("aud", json!(["payments"])), "another audience"),
        (f.idp.mint(&no_exp), "no exp"),
        (forged, "payload swapped under a valid signature"),
        ("a.b.c".to_owned(), "garbage"),
    ];
    for (token, why) in cases {
        assert_invalid(&f, &token, why).await;
    }
    assert!(f.upstream.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alg_none_and_hs256_key_confusion_are_rejected() {
    let f = start("").await;
    let body = B64URL.encode(claims(&f.idp).to_string());
    let none = format!(
        "{}.{body}.",
        B64URL.encode(r#"{"alg":"none","typ":"JWT","kid":"fake-idp-1"}"#)
    );
    assert_invalid(&f, &none, "alg none").await;

    // The classic confusion: HMAC "signed" with the RSA public key's published modulus.
    let jwks: Value = client()
        .get(f.idp.jwks_url())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let public = jwks["keys"][0]["n"].as_str().unwrap().to_owned();
    let mut hs = Header::new(Algorithm::HS256);
    hs.kid = Some("fake-idp-1".into());
    let confused = jsonwebtoken::encode(
        &hs,
        &claims(&f.idp),
        &EncodingKey::from_secret(public.as_bytes()),
    )
    .unwrap();
    assert_invalid(&f, &confused, "HS256 with the public key").await;

    // RS256 allowed but not for an EC key: a token claiming RS256 under the EC kid fails.
    f.idp.rotate_key();
    let mut rs_under_ec = Header::new(Algorithm::RS256);
    rs_under_ec.kid = Some(testkit::idp::EC_KID.into());
    let mismatched = f.idp.sign(&rs_under_ec, &claims(&f.idp));
    assert_invalid(&f, &mismatched, "RS256 under an EC key").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_key_is_accepted_after_one_refetch() {
    let f = start("").await;
    assert_eq!(call(&f, &f.idp.mint(&claims(&f.idp))).await.status(), 200);
    let before = f.idp.jwks_fetches();
    assert_eq!(
        before,
        1,
        "one fetch serves every request: {}",
        f.node.settled_log().await
    );
    f.idp.rotate_key();
    let rotated = f.idp.mint(&claims(&f.idp));
    assert_eq!(
        jsonwebtoken::decode_header(&rotated).unwrap().alg,
        Algorithm::ES256
    );
    // Unknown-kid refetches are at most one per jwksMinRefreshInterval (1 s here) after the
    // last fetch: the rotated key is accepted once that has passed, after one refetch.
    eventually(
        "the rotated key is accepted",
        Duration::from_secs(10),
        async || call(&f, &rotated).await.status() == 200,
    )
    .await;
    assert_eq!(call(&f, &rotated).await.status(), 200);
    assert_eq!(f.idp.jwks_fetches(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_unknown_kids_costs_the_idp_a_bounded_number_of_fetches() {
    let f = start("").await;
    assert_eq!(call(&f, &f.idp.mint(&claims(&f.idp))).await.status(), 200);
    let before = f.idp.jwks_fetches();
    let started = std::time::Instant::now();
    let mut sent = 0;
    let f = &f;
    while started.elapsed() < Duration::from_millis(2500) {
        let batch = (0..20).map(|i| {
            let mut h = Header::new(Algorithm::RS256);
            h.kid = Some(format!("random-{sent}-{i}"));
            let token = f.idp.sign(&h, &claims(&f.idp));
            async move { call(f, &token).await.status() }
        });
        for status in futures_util::future::join_all(batch).await {
            assert_eq!(status, 401);
        }
        sent += 20;
    }
    let refetches = f.idp.jwks_fetches() - before;
    let bound = 2 + started.elapsed().as_secs();
    assert!(
        sent >= 100 && refetches <= bound,
        "{sent} random kids caused {refetches} refetches (bound {bound})"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_keys_are_503_and_claims_are_enforced() {
    let f =
        start("claims: Contains(`realm_access.roles`, `admin`) || Equals(`sub`, `svc-root`)").await;
    let mut root = claims(&f.idp);
    root["sub"] = json!("svc-root");
    assert_eq!(call(&f, &f.idp.mint(&root)).await.status(), 200);
    let denied = call(&f, &f.idp.mint(&claims(&f.idp))).await;
    assert_eq!(denied.status(), 403);
    assert!(
        denied.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains(r#"error="insufficient_scope""#)
    );

    let idp = FakeIdp::start().await;
    idp.set_mode(IdpMode::Unreachable);
    let upstream = EchoUpstream::start().await;
    let keys = format!(
        "jwksUrl: {}\n      issuer: {}",
        idp.jwks_url(),
        idp.issuer()
    );
    let node = Node::start(
        &config(
            &upstream,
            &keys,
            "clientConfig: { retries: 0, timeout: 1s }",
        ),
        &[],
    );
    let resp = client()
        .get(node.url("/api"))
        .bearer_auth(idp.mint(&claims(&idp)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_credentials_tokens_are_held_to_the_claims_expression() {
    let idp = FakeIdp::start().await;
    let upstream = EchoUpstream::start().await;
    idp.register("allowed", "s1");
    idp.register("other", "s2");
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
middlewares:
  cc:
    clientCredentials:
      url: {}
      claims: OneOf(`client_id`, `allowed`, `ops`)
routes:
  - name: app
    match: {{ pathPrefix: / }}
    middlewares: [cc]
    upstream: {{ urls: [{}] }}
"#,
        idp.token_url(),
        upstream.url()
    );
    let node = Node::start(&yaml, &[]);
    let http = client();
    assert_eq!(
        get_as(&http, node.url("/"), "allowed", "s1").await.status(),
        200
    );
    let denied = get_as(&http, node.url("/"), "other", "s2").await;
    assert_eq!(denied.status(), 403);
    assert!(
        denied.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .contains("insufficient_scope")
    );
}

/// A token presented again is served from the remembered verification, but only until its
/// `exp`: then it is refused like any expired token.
#[tokio::test]
async fn a_remembered_token_is_refused_once_it_expires() {
    let f = start("").await;
    let mut c = claims(&f.idp);
    let exp = now() + 2;
    c["exp"] = json!(exp);
    let token = f.idp.mint(&c);
    for _ in 0..3 {
        assert_eq!(call(&f, &token).await.status(), 200);
    }
    while now() <= exp {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_invalid(&f, &token, "expired").await;
    // A fresh token still passes on the same keys.
    assert_eq!(call(&f, &f.idp.mint(&claims(&f.idp))).await.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_that_cannot_be_refreshed_for_too_long_stop_verifying() {
    let f = start(
        "jwksRefreshInterval: 1s\n      jwksMaxStaleness: 2s\n      clientConfig: { retries: 0, timeout: 1s }",
    )
    .await;
    let token = f.idp.mint(&claims(&f.idp));
    assert_eq!(call(&f, &token).await.status(), 200);
    // The IdP goes away: the keys in hand serve until they are 2 s old, then nothing verifies,
    // not even a token verified before.
    f.idp.set_mode(IdpMode::Unreachable);
    eventually(
        "stale keys stop verifying",
        Duration::from_secs(15),
        async || call(&f, &token).await.status() == 503,
    )
    .await;
    f.idp.set_mode(IdpMode::Healthy);
    eventually(
        "fresh keys verify again",
        Duration::from_secs(15),
        async || call(&f, &token).await.status() == 200,
    )
    .await;
}
