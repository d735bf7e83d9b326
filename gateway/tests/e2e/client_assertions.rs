//! Signed client authentication towards the IdP: `private_key_jwt` and `client_secret_jwt`
//! (RFC 7523 §2.2, OpenID Connect Core §9) and `tls_client_auth` (RFC 8705 §2.1), against the
//! fake IdP, which verifies each assertion's signature, audience, issuer, expiry and `jti`.

use jsonwebtoken::Algorithm;
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey};
use serde_json::Value;
use testkit::tls::TlsFixture;
use testkit::{EchoUpstream, FakeIdp};

use crate::support::{Node, basic, client, echo, gateway_command};

/// A fresh P-256 key: its private PEM and its public PEM.
pub(crate) fn key_pair() -> (String, String) {
    let key = p256::SecretKey::random(&mut rand_core::OsRng);
    let private = key.to_pkcs8_pem(Default::default()).unwrap().to_string();
    let public = key
        .public_key()
        .to_public_key_pem(Default::default())
        .unwrap();
    (private, public)
}

/// A gateway whose `/internal` route takes tokens by `private_key_jwt` from `token_url`, with
/// the private key in a file.
fn signing_gateway(
    token_url: &str,
    upstream: &str,
    private_pem: &str,
) -> (Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("client.pem");
    std::fs::write(&key, private_pem).unwrap();
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
middlewares:
  signed:
    clientCredentials:
      url: {token_url}
      clientId: signer
      authMethod: private_key_jwt
      clientPrivateKey: file:{key}
      clientKeyId: k1
      clientConfig: {{ retries: 2 }}
routes:
  - name: internal
    match: {{ pathPrefix: /internal }}
    middlewares: [signed]
    upstream: {{ urls: [{upstream}] }}
"#,
        key = key.display()
    );
    (Node::start(&yaml, &[]), dir)
}

/// The client assertions the IdP was sent, in order.
fn assertions(idp: &FakeIdp) -> Vec<String> {
    idp.seen()
        .iter()
        .filter_map(|s| {
            s.params
                .iter()
                .find(|(k, _)| k == "client_assertion")
                .map(|(_, v)| v.clone())
        })
        .collect()
}

fn claims(jwt: &str) -> Value {
    jsonwebtoken::dangerous::insecure_decode::<Value>(jwt)
        .unwrap()
        .claims
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_key_jwt_signs_a_fresh_assertion_per_attempt_that_the_idp_verifies() {
    let idp = FakeIdp::start().await;
    let upstream = EchoUpstream::start().await;
    let (private, public) = key_pair();
    idp.register_key("signer", &public);
    // The first attempt meets a 503: its retry must carry an assertion of its own.
    idp.fail_next(1);
    let (node, _dir) = signing_gateway(&idp.token_url(), &upstream.url(), &private);
    let answer = client().get(node.url("/internal/x")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let seen = echo(answer).await;
    let token = crate::support::header(&seen, "authorization")[0]
        .strip_prefix("Bearer ")
        .unwrap()
        .to_owned();
    assert_eq!(claims(&token)["sub"], "signer");

    let sent = idp.seen();
    assert_eq!(sent.len(), 2, "the failed attempt and its retry");
    for s in &sent {
        assert_eq!(
            (s.auth_method, s.client_id.as_str()),
            ("private_key_jwt", "signer")
        );
        let param = |name: &str| {
            s.params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        assert_eq!(
            param("client_assertion_type"),
            Some("urn:ietf:params:oauth:client-assertion-type:jwt-bearer")
        );
        assert_eq!(param("client_secret"), None);
    }
    let jwts = assertions(&idp);
    let header = jsonwebtoken::decode_header(&jwts[1]).unwrap();
    assert_eq!(
        (header.alg, header.kid.as_deref()),
        (Algorithm::ES256, Some("k1"))
    );
    let (first, second) = (claims(&jwts[0]), claims(&jwts[1]));
    assert_ne!(first["jti"], second["jti"], "a retry is never a replay");
    assert_eq!(second["iss"], "signer");
    assert_eq!(second["sub"], "signer");
    assert_eq!(second["aud"], idp.token_url().as_str());
    let lifetime = second["exp"].as_u64().unwrap() - second["iat"].as_u64().unwrap();
    assert!(lifetime <= 60, "a short-lived assertion: {lifetime} s");

    // The IdP refuses the same assertion a second time.
    let replayed = reqwest::Client::new()
        .post(idp.token_url())
        .form(&[
            ("grant_type", "client_credentials"),
            ("client_id", "signer"),
            (
                "client_assertion_type",
                "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
            ),
            ("client_assertion", jwts[1].as_str()),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(replayed.status(), 401);
    assert_eq!(idp.assertion_refusals(), ["jti replayed"]);

    // Neither the key nor an assertion is ever logged.
    let log = node.settled_log().await;
    let key_body = private.lines().nth(1).unwrap();
    for secret in jwts.iter().map(String::as_str).chain([key_body]) {
        assert!(!log.contains(secret), "the log holds a key or an assertion");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_idp_refuses_another_key_and_another_audience_and_the_gateway_keeps_the_assertion_to_itself()
 {
    let idp = FakeIdp::start().await;
    let upstream = EchoUpstream::start().await;
    let (private, _) = key_pair();
    let (_, someone_elses) = key_pair();
    idp.register_key("signer", &someone_elses);
    let (node, _dir) = signing_gateway(&idp.token_url(), &upstream.url(), &private);
    let answer = client().get(node.url("/internal/x")).send().await.unwrap();
    assert_ne!(answer.status(), 200);
    assert_eq!(upstream.seen().len(), 0, "nothing reached the upstream");
    assert_eq!(idp.assertion_refusals(), ["signature"]);
    let body = answer.text().await.unwrap();
    let jwts = assertions(&idp);
    assert!(!body.contains(&jwts[0]), "the answer holds no assertion");

    // The right key, signing for another audience: the token URL by another name.
    let (private, public) = key_pair();
    idp.register_key("signer", &public);
    let elsewhere = idp.token_url().replace("127.0.0.1", "localhost");
    let (other, _dir) = signing_gateway(&elsewhere, &upstream.url(), &private);
    let answer = client().get(other.url("/internal/x")).send().await.unwrap();
    assert_ne!(answer.status(), 200);
    assert_eq!(idp.assertion_refusals(), ["signature", "audience"]);
    for node in [&node, &other] {
        let log = node.settled_log().await;
        assert!(
            log.contains("gateway credentials rejected"),
            "the refusal is reported"
        );
        for jwt in assertions(&idp) {
            assert!(!log.contains(&jwt), "the log holds an assertion");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_secret_jwt_at_application_level_signs_with_the_callers_secret() {
    let idp = FakeIdp::start().await;
    let upstream = EchoUpstream::start().await;
    idp.register("svc-a", "a-secret-long-enough-for-hs256-keys!");
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
middlewares:
  app:
    clientCredentials:
      url: {token_url}
      authMethod: client_secret_jwt
routes:
  - name: app
    match: {{ pathPrefix: /app }}
    middlewares: [app]
    upstream: {{ urls: [{upstream}] }}
"#,
        token_url = idp.token_url(),
        upstream = upstream.url()
    );
    let node = Node::start(&yaml, &[]);
    let http = client();
    let ok = http
        .get(node.url("/app/x"))
        .header(
            "authorization",
            basic("svc-a", "a-secret-long-enough-for-hs256-keys!"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(ok.status(), 200);
    let seen = idp.seen();
    assert_eq!(
        (seen[0].auth_method, seen[0].client_id.as_str()),
        ("client_secret_jwt", "svc-a")
    );
    let header = jsonwebtoken::decode_header(&assertions(&idp)[0]).unwrap();
    assert_eq!(header.alg, Algorithm::HS256);
    // A wrong secret signs an assertion the IdP cannot verify: the caller is refused.
    let refused = http
        .get(node.url("/app/x"))
        .header("authorization", basic("svc-a", "not-the-secret"))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    assert!(
        refused.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    assert_eq!(idp.assertion_refusals(), ["signature"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_client_auth_presents_the_certificate_and_names_the_client() {
    let tls = TlsFixture::new();
    let idp = FakeIdp::start_tls(tls.server_config("server", &["http/1.1"], true)).await;
    let upstream = EchoUpstream::start().await;
    idp.register_tls_client("mtls-client");
    let yaml = |cert: &str| {
        format!(
            r#"
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
middlewares:
  mtls:
    clientCredentials:
      url: {token_url}
      clientId: mtls-client
      authMethod: tls_client_auth
      clientConfig:
        retries: 0
        tls: {{ caFile: {ca}{cert} }}
routes:
  - name: internal
    match: {{ pathPrefix: /internal }}
    middlewares: [mtls]
    upstream: {{ urls: [{upstream}] }}
"#,
            token_url = idp.token_url(),
            ca = tls.path("ca.crt"),
            upstream = upstream.url()
        )
    };
    let with_cert = format!(
        ", certFile: {}, keyFile: {}",
        tls.path("client.crt"),
        tls.path("client.key")
    );
    let node = Node::start(&yaml(&with_cert), &[]);
    let answer = client().get(node.url("/internal/x")).send().await.unwrap();
    assert_eq!(answer.status(), 200);
    let seen = idp.seen();
    assert_eq!(
        (seen[0].auth_method, seen[0].client_id.as_str()),
        ("tls_client_auth", "mtls-client")
    );
    assert_eq!(
        seen[0]
            .params
            .iter()
            .filter(|(k, _)| k.starts_with("client_"))
            .count(),
        1,
        "the client id, nothing else: {:?}",
        seen[0].params
    );
    // Without its certificate the configuration is refused before anything is sent.
    let (mut check, _dir) = gateway_command(&["check-config"], &yaml(""), &[]);
    let out = check.output().unwrap();
    let refused = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        refused.contains("middlewares.mtls.clientCredentials.clientConfig.tls: authMethod tls_client_auth needs certFile and keyFile"),
        "{refused}"
    );
}
