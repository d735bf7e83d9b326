//! The `introspection` middleware (RFC 7662) against the fake IdP's introspection endpoint.

use std::time::{Duration, Instant};

use serde_json::json;
use testkit::{EchoUpstream, FakeIdp, IdpMode};

use crate::redis::FLEET_KEY;
use crate::support::{
    Node, RedisServer, TlsFixture, client, echo, eventually, free_port, header, now,
};

const INTROSPECTOR: (&str, &str) = ("rs-gateway", "rs secret:+/%");

struct Fleet {
    idp: FakeIdp,
    upstream: EchoUpstream,
    node: Node,
}

/// A config whose `check` middleware introspects with Basic auth; `extra` goes into it. Routes:
/// `/in` (token removed), `/fwd` (a second middleware with `forwardAuthorization: true`).
fn config(idp: &FakeIdp, upstream: &EchoUpstream, extra: &str, store: &str) -> String {
    format!(
        r#"
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
{store}
middlewares:
  check:
    introspection:
      tokenSource: {{ header: Authorization, headerAuthScheme: Bearer, query: access_token, cookie: tg }}
      clientConfig:
        url: {url}
        auth: {{ kind: Basic, clientId: {id}, clientSecret: env:RS_SECRET }}
        tokenTypeHint: access_token
        headers: {{ X-Gateway: tokengate }}
        retries: 0
      forwardHeaders: {{ X-Sub: sub, X-Scope: scope }}
      usernameClaim: sub
      {extra}
  check-fwd:
    introspection:
      clientConfig:
        url: {url}
        auth: {{ kind: Post, clientId: {id}-post, clientSecret: env:RS_SECRET }}
      forwardAuthorization: true
routes:
  - name: in
    match: {{ pathPrefix: /in }}
    middlewares: [check]
    upstream: {{ urls: [{up}] }}
  - name: fwd
    match: {{ pathPrefix: /fwd }}
    middlewares: [check-fwd]
    upstream: {{ urls: [{up}] }}
"#,
        url = idp.introspection_url(),
        id = INTROSPECTOR.0,
        up = upstream.url(),
    )
}

async fn start(extra: &str) -> Fleet {
    let idp = FakeIdp::start().await;
    idp.register(INTROSPECTOR.0, INTROSPECTOR.1);
    idp.register(&format!("{}-post", INTROSPECTOR.0), INTROSPECTOR.1);
    let upstream = EchoUpstream::start().await;
    let yaml = config(&idp, &upstream, extra, "store: { memory: {} }");
    let node = Node::start(&yaml, &[("RS_SECRET", INTROSPECTOR.1)]);
    Fleet {
        idp,
        upstream,
        node,
    }
}

fn token(idp: &FakeIdp, sub: &str, lifetime: u64) -> String {
    idp.mint(&json!({
        "iss": idp.issuer(), "sub": sub, "client_id": "client-42", "scope": "read write",
        "iat": now(), "exp": now() + lifetime,
    }))
}

async fn get(url: String, bearer: &str) -> reqwest::Response {
    client().get(url).bearer_auth(bearer).send().await.unwrap()
}

fn challenge(resp: &reqwest::Response) -> String {
    resp.headers()["www-authenticate"]
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_token_source_works_and_the_token_never_reaches_the_upstream() {
    let f = start("").await;
    let t = token(&f.idp, "svc-a", 60);
    let http = client();

    let by_header = echo(get(f.node.url("/in/h"), &t).await).await;
    assert!(header(&by_header, "authorization").is_empty());
    assert_eq!(header(&by_header, "x-sub"), ["svc-a"]);

    let by_query = echo(
        http.get(f.node.url(&format!("/in/q?a=1&access_token={t}&b=2")))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(by_query["path"], "/in/q?a=1&b=2");

    let by_cookie = echo(
        http.get(f.node.url("/in/c"))
            .header("cookie", format!("theme=dark; tg={t}"))
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(header(&by_cookie, "cookie"), ["theme=dark"]);

    // forwardAuthorization: the upstream gets the caller's token as it came.
    let fwd = echo(get(f.node.url("/fwd"), &t).await).await;
    assert_eq!(
        header(&fwd, "authorization"),
        [format!("Bearer {t}").as_str()]
    );

    // The endpoint saw the configured auth and hint: one question per middleware (the result is
    // cached per endpoint and client, so the second middleware, another client, asked again).
    let seen = f.idp.introspection_seen();
    let by = |method| {
        seen.iter()
            .filter(|s| s.auth_method == method)
            .map(|s| s.client_id.as_str())
            .collect::<Vec<_>>()
    };
    assert_eq!(by("basic"), [INTROSPECTOR.0]);
    assert_eq!(by("post"), [format!("{}-post", INTROSPECTOR.0)]);
    assert!(seen.iter().any(|s| {
        s.params
            .contains(&("token_type_hint".into(), "access_token".into()))
    }));
    assert!(
        !f.node.settled_log().await.contains(&t),
        "the token reached a log line"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_inactive_revoked_and_expired_tokens_get_401_bearer_challenges() {
    let f = start("").await;
    let missing = client().get(f.node.url("/in")).send().await.unwrap();
    assert_eq!(missing.status(), 401);
    // RFC 6750 §3.1: no error code when the request carried no token at all.
    assert_eq!(challenge(&missing), r#"Bearer realm="tokengate""#);

    let revoked = token(&f.idp, "svc-r", 60);
    f.idp.revoke(&revoked);
    let expired = f.idp.mint(&json!({"sub": "svc-e", "exp": now() - 5}));
    for bad in [
        "not-a-token-anyone-issued",
        revoked.as_str(),
        expired.as_str(),
    ] {
        let resp = get(f.node.url("/in"), bad).await;
        assert_eq!(resp.status(), 401);
        let c = challenge(&resp);
        assert!(
            c.starts_with(r#"Bearer realm="tokengate", error="invalid_token""#),
            "{c}"
        );
    }
    assert!(f.upstream.seen().is_empty(), "nothing reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_active_result_is_cached_but_never_past_the_tokens_exp() {
    let f = start("maxCacheTtl: 60s").await;
    let t = token(&f.idp, "svc-short", 2);
    let minted = Instant::now();
    for _ in 0..5 {
        assert_eq!(get(f.node.url("/in"), &t).await.status(), 200);
    }
    assert_eq!(f.idp.introspections(), 1, "served from cache");
    // Once the token's exp passes the cached result lapses: the IdP is asked again, says
    // inactive, and that is remembered.
    eventually(
        "the token is refused",
        Duration::from_secs(10),
        async || get(f.node.url("/in"), &t).await.status() == 401,
    )
    .await;
    assert!(
        minted.elapsed() >= Duration::from_secs(1),
        "refused before its exp"
    );
    assert_eq!(
        f.idp.introspections(),
        2,
        "asked again once the cached result lapsed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inactive_results_are_remembered_briefly() {
    let f = start("inactiveCacheTtl: 1s").await;
    for _ in 0..5 {
        assert_eq!(get(f.node.url("/in"), "junk").await.status(), 401);
    }
    assert_eq!(f.idp.introspections(), 1);
    let remembered = Instant::now();
    eventually(
        "the IdP is asked again",
        Duration::from_secs(10),
        async || {
            assert_eq!(get(f.node.url("/in"), "junk").await.status(), 401);
            f.idp.introspections() == 2
        },
    )
    .await;
    assert!(
        remembered.elapsed() >= Duration::from_millis(900),
        "remembered for the inactiveCacheTtl (1 s), not {:?}",
        remembered.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_requests_with_one_token_share_one_introspection() {
    let f = start("").await;
    f.idp.set_latency(Duration::from_millis(300));
    let t = token(&f.idp, "svc-burst", 60);
    let calls = (0..20).map(|_| get(f.node.url("/in"), &t));
    for resp in futures_util::future::join_all(calls).await {
        assert_eq!(resp.status(), 200);
    }
    assert_eq!(f.idp.introspections(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_claim_headers_are_replaced_and_claims_are_enforced() {
    let f = start("claims: Equals(`sub`, `svc-ok`) && SplitContains(`scope`, ` `, `write`)").await;
    let ok = token(&f.idp, "svc-ok", 60);
    let resp = client()
        .get(f.node.url("/in"))
        .bearer_auth(&ok)
        .header("x-sub", "admin")
        .header("x-scope", "everything")
        .send()
        .await
        .unwrap();
    let e = echo(resp).await;
    assert_eq!(header(&e, "x-sub"), ["svc-ok"]);
    assert_eq!(header(&e, "x-scope"), ["read write"]);
    f.node
        .log_once("usernameClaim is in the access log", |l| {
            l.contains(r#""user":"svc-ok""#)
        })
        .await;

    let other = token(&f.idp, "svc-other", 60);
    let denied = get(f.node.url("/in"), &other).await;
    assert_eq!(denied.status(), 403);
    assert!(challenge(&denied).contains(r#"error="insufficient_scope""#));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_is_503_never_a_silent_allow() {
    let f = start("").await;
    let t = token(&f.idp, "svc-a", 60);
    f.idp.set_mode(IdpMode::Unreachable);
    let resp = get(f.node.url("/in"), &t).await;
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().contains_key("retry-after"));
    f.idp.set_mode(IdpMode::ServerError);
    assert_eq!(get(f.node.url("/in"), &t).await.status(), 503);
    assert!(f.upstream.seen().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_gateway_credentials_are_502_and_logged() {
    let idp = FakeIdp::start().await;
    idp.register(INTROSPECTOR.0, "the-real-secret");
    let upstream = EchoUpstream::start().await;
    let yaml = config(&idp, &upstream, "", "store: { memory: {} }");
    let node = Node::start(&yaml, &[("RS_SECRET", INTROSPECTOR.1)]);
    let t = token(&idp, "svc-a", 60);
    assert_eq!(get(node.url("/in"), &t).await.status(), 502);
    eventually(
        "the misconfiguration is logged",
        Duration::from_secs(5),
        async || node.log().contains("rejected the gateway's credentials"),
    )
    .await;
    assert!(!node.settled_log().await.contains(INTROSPECTOR.1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bearer_authenticated_endpoint_accepts_the_configured_token() {
    let idp = FakeIdp::start().await;
    idp.allow_introspection_bearer("rs-bearer-token");
    let upstream = EchoUpstream::start().await;
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
middlewares:
  check:
    introspection:
      clientConfig:
        url: {}
        auth: {{ kind: Bearer, token: env:RS_TOKEN }}
routes:
  - name: in
    match: {{ pathPrefix: / }}
    middlewares: [check]
    upstream: {{ urls: [{}] }}
"#,
        idp.introspection_url(),
        upstream.url()
    );
    let node = Node::start(&yaml, &[("RS_TOKEN", "rs-bearer-token")]);
    let t = token(&idp, "svc-a", 60);
    assert_eq!(get(node.url("/"), &t).await.status(), 200);
    assert_eq!(idp.introspection_seen()[0].auth_method, "bearer");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_verifies_the_gateways_signed_assertions() {
    let idp = FakeIdp::start().await;
    let upstream = EchoUpstream::start().await;
    let (private, public) = crate::client_assertions::key_pair();
    let dir = tempfile::tempdir().unwrap();
    let pem = dir.path().join("rs.pem");
    std::fs::write(&pem, private).unwrap();
    idp.register_key("rs-signer", &public);
    idp.register("rs-hmac", "a-secret-long-enough-for-hs256-keys!");
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
middlewares:
  signed:
    introspection:
      clientConfig:
        url: {url}
        auth: {{ kind: PrivateKeyJwt, clientId: rs-signer, privateKey: "file:{pem}", keyId: rs-1 }}
  hmac:
    introspection:
      clientConfig:
        url: {url}
        auth: {{ kind: ClientSecretJwt, clientId: rs-hmac, clientSecret: env:RS_HMAC }}
routes:
  - {{ name: signed, match: {{ pathPrefix: /signed }}, middlewares: [signed], upstream: {{ urls: [{up}] }} }}
  - {{ name: hmac, match: {{ pathPrefix: /hmac }}, middlewares: [hmac], upstream: {{ urls: [{up}] }} }}
"#,
        url = idp.introspection_url(),
        pem = pem.display(),
        up = upstream.url()
    );
    let node = Node::start(
        &yaml,
        &[("RS_HMAC", "a-secret-long-enough-for-hs256-keys!")],
    );
    let t = token(&idp, "svc-a", 60);
    assert_eq!(get(node.url("/signed/x"), &t).await.status(), 200);
    assert_eq!(get(node.url("/hmac/x"), &t).await.status(), 200);
    let seen = idp.introspection_seen();
    let methods: Vec<(&str, &str)> = seen
        .iter()
        .map(|s| (s.auth_method, s.client_id.as_str()))
        .collect();
    assert_eq!(
        methods,
        [
            ("private_key_jwt", "rs-signer"),
            ("client_secret_jwt", "rs-hmac")
        ]
    );
    assert!(idp.assertion_refusals().is_empty());
    // Another key for the signer: the endpoint refuses the gateway, which answers 502.
    idp.register_key("rs-signer", &crate::client_assertions::key_pair().1);
    let fresh = token(&idp, "svc-b", 60);
    assert_eq!(get(node.url("/signed/x"), &fresh).await.status(), 502);
    assert_eq!(idp.assertion_refusals(), ["signature"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn results_are_shared_fleet_wide_through_redis_as_ciphertext() {
    let redis = RedisServer::start();
    let idp = FakeIdp::start().await;
    idp.register(INTROSPECTOR.0, INTROSPECTOR.1);
    let upstream = EchoUpstream::start().await;
    let store = format!(
        "store: {{ redis: {{ endpoints: [\"{}\"] }} }}\nfleetKey: env:FLEET_KEY",
        redis.endpoint()
    );
    let yaml = config(&idp, &upstream, "", &store);
    let env = [("RS_SECRET", INTROSPECTOR.1), ("FLEET_KEY", FLEET_KEY)];
    let (a, b) = (Node::start(&yaml, &env), Node::start(&yaml, &env));
    for n in [&a, &b] {
        eventually("store connected", Duration::from_secs(10), async || {
            n.store_state().await == "ok"
        })
        .await;
    }
    let t = token(&idp, "svc-shared", 60);
    assert_eq!(get(a.url("/in"), &t).await.status(), 200);
    assert_eq!(get(b.url("/in"), &t).await.status(), 200);
    assert_eq!(idp.introspections(), 1, "node b used node a's result");

    let dump = redis.cli(&["--scan"]);
    let mut everything = dump.clone();
    for key in dump.lines().filter(|k| k.contains(":e:")) {
        everything.push_str(&redis.cli(&["HGETALL", key]));
    }
    assert!(everything.contains(":e:"), "the result is in Redis: {dump}");
    assert!(!everything.contains(&t) && !everything.contains("svc-shared"));
    // Not renewable: the refresher's work list never sees it.
    assert_eq!(redis.cli(&["ZCARD", "{tokengate}:due"]).trim(), "0");
}

/// `socat` terminating mutual TLS in front of a plain-HTTP address; killed on drop.
struct TlsTerminator {
    _socat: testkit::procs::Owned,
}

impl TlsTerminator {
    fn start(tls: &TlsFixture, port: u16, backend: &str) -> Self {
        let listen = format!(
            "OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={},key={},cafile={},verify=1",
            tls.path("server.crt"),
            tls.path("server.key"),
            tls.path("ca.crt"),
        );
        let child = std::process::Command::new("socat")
            .args([listen, format!("TCP:{backend}")])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("socat is installed");
        testkit::wait::wait_until("socat listens", Duration::from_secs(5), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        Self {
            _socat: testkit::procs::Owned(child),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_is_reached_over_mutual_tls_with_a_private_ca() {
    let tls = TlsFixture::new();
    let idp = FakeIdp::start().await;
    idp.register(INTROSPECTOR.0, INTROSPECTOR.1);
    let upstream = EchoUpstream::start().await;
    let port = free_port();
    let backend = idp.introspection_url();
    let backend = backend
        .trim_start_matches("http://")
        .trim_end_matches("/introspect");
    let _terminator = TlsTerminator::start(&tls, port, backend);
    let middleware = |name: &str, tls_options: &str| {
        format!(
            r#"
  {name}:
    introspection:
      clientConfig:
        url: https://127.0.0.1:{port}/introspect
        auth: {{ kind: Basic, clientId: {}, clientSecret: env:RS_SECRET }}
        retries: 0
        timeout: 2s
        tls: {{ {tls_options} }}"#,
            INTROSPECTOR.0
        )
    };
    let yaml = format!(
        r#"
listen: 127.0.0.1:0
admin: {{ listen: 127.0.0.1:0 }}
middlewares:{}{}
routes:
  - name: mtls
    match: {{ pathPrefix: /mtls }}
    middlewares: [mtls]
    upstream: {{ urls: [{up}] }}
  - name: nocert
    match: {{ pathPrefix: /nocert }}
    middlewares: [nocert]
    upstream: {{ urls: [{up}] }}
"#,
        middleware(
            "mtls",
            &format!(
                "caFile: {}, certFile: {}, keyFile: {}",
                tls.path("ca.crt"),
                tls.path("client.crt"),
                tls.path("client.key")
            )
        ),
        middleware("nocert", &format!("caFile: {}", tls.path("ca.crt"))),
        up = upstream.url(),
    );
    let node = Node::start(&yaml, &[("RS_SECRET", INTROSPECTOR.1)]);
    let t = token(&idp, "svc-tls", 60);
    assert_eq!(get(node.url("/mtls"), &t).await.status(), 200);
    // Without the client certificate the endpoint refuses the handshake: unavailable, not
    // allowed. (Another token: results are shared per endpoint and client.)
    let t2 = token(&idp, "svc-tls-2", 60);
    assert_eq!(get(node.url("/nocert"), &t2).await.status(), 503);
    assert_eq!(idp.introspections(), 1);
}
