//! The gateway as a token issuer: a real OAuth2 client library gets tokens from
//! `/oauth2/token`, the RFC 6749 §5.2 errors, RFC 7523 workload identity federation with the
//! fake IdP as the workload's identity provider, and a fleet of two nodes on Redis sharing the
//! signing key and the assertion replay records.

use std::process::Stdio;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{Algorithm, DecodingKey, Header, Validation};
use oauth2::basic::{BasicClient, BasicErrorResponse, BasicErrorResponseType, BasicTokenResponse};
use oauth2::{
    AuthType, ClientId, ClientSecret, HttpClientError, RequestTokenError, Scope, TokenResponse,
    TokenUrl,
};
use serde_json::{Value, json};
use testkit::{EchoUpstream, FakeIdp};

use crate::support::{Node, RedisServer, basic, client, echo, eventually, get_json, header, now};

const ISSUER: &str = "https://issuer.test";
const TOKEN_ENDPOINT: &str = "https://issuer.test/oauth2/token";
/// A secret with characters RFC 6749 §2.3.1's form-encoding must carry through Basic auth.
const ORDERS_SECRET: &str = "p@ss:w+rd/ü&=";
const WORKLOAD: &str = "repo:acme/deploy:ref:refs/heads/main";

/// An issuer with two clients (one by secret reference, one by `gateway hash-secret` hash, one
/// federated), a `gatewayIssuer` route `/api`, and `extra` top-level lines.
fn config(upstream: &EchoUpstream, trusted: &str, extra: &str) -> String {
    let hash = hash_secret("inventory-secret");
    format!(
        r#"
{extra}
issuer:
  url: {ISSUER}
  audience: orders-api
  tokenLifetime: 5m
  clients:
    orders:
      secret: env:ORDERS_SECRET
      scopes: [orders:read, orders:write]
      claims: {{ team: payments }}
    inventory:
      secretHash: "{hash}"
      scopes: [inventory:read]
      audience: inventory-api
      tokenLifetime: 1m
    deployer:
      scopes: [deploy]
      federatedIdentities:
        - {{ issuer: "{trusted}", subject: "{WORKLOAD}" }}
  trustedIssuers:
    - issuer: "{trusted}"
      jwksUrl: "{trusted}/jwks"
middlewares:
  own-tokens:
    jwt:
      gatewayIssuer: true
      audience: orders-api
      forwardHeaders: {{ X-Client-Id: client_id, X-Scope: scope, X-Team: team }}
routes:
  - name: api
    match: {{ pathPrefix: /api }}
    middlewares: [own-tokens]
    upstream: {{ urls: [{}] }}
"#,
        upstream.url()
    )
}

/// `printf secret | gateway hash-secret`.
fn hash_secret(secret: &str) -> String {
    use std::io::Write;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .arg("hash-secret")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{secret}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let hash = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    assert!(hash.starts_with("$argon2id$"), "{hash}");
    assert!(!hash.contains(secret));
    hash
}

const LOCAL: &str = "listen: 127.0.0.1:0\nadmin: { listen: 127.0.0.1:0 }";

type TokenResult = Result<
    BasicTokenResponse,
    RequestTokenError<HttpClientError<oauth2::reqwest::Error>, BasicErrorResponse>,
>;

/// A client credentials grant made by the `oauth2` crate, as an application would.
async fn client_credentials(
    node: &Node,
    id: &str,
    secret: &str,
    auth: AuthType,
    scope: Option<&str>,
) -> TokenResult {
    let oauth = BasicClient::new(ClientId::new(id.into()))
        .set_client_secret(ClientSecret::new(secret.into()))
        .set_token_uri(TokenUrl::new(node.url("/oauth2/token")).unwrap())
        .set_auth_type(auth);
    let mut req = oauth.exchange_client_credentials();
    if let Some(s) = scope {
        req = req.add_scope(Scope::new(s.into()));
    }
    let http = oauth2::reqwest::Client::builder()
        .redirect(oauth2::reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    req.request_async(&http).await
}

/// The claims of `token`, verified against the node's published JWKS as any resource server
/// would (RFC 9068 §4: `typ` is `at+jwt`).
async fn verified_claims(node: &Node, token: &str, audience: &str) -> Value {
    let jwks: JwkSet =
        serde_json::from_value(get_json(node.url("/.well-known/jwks.json")).await).unwrap();
    let header = jsonwebtoken::decode_header(token).unwrap();
    assert_eq!(header.typ.as_deref(), Some("at+jwt"));
    let jwk = jwks
        .find(header.kid.as_deref().unwrap())
        .expect("kid is published");
    let mut v = Validation::new(header.alg);
    v.set_audience(&[audience]);
    v.set_issuer(&[ISSUER]);
    v.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
    jsonwebtoken::decode::<Value>(token, &DecodingKey::from_jwk(jwk).unwrap(), &v)
        .unwrap()
        .claims
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oauth2_library_gets_tokens_that_open_protected_routes() {
    let (idp, upstream) = (FakeIdp::start().await, EchoUpstream::start().await);
    let node = Node::start(
        &config(&upstream, &idp.issuer(), LOCAL),
        &[("ORDERS_SECRET", ORDERS_SECRET)],
    );
    // client_secret_basic, with a secret that needs form-encoding.
    let token = client_credentials(
        &node,
        "orders",
        ORDERS_SECRET,
        AuthType::BasicAuth,
        Some("orders:read"),
    )
    .await
    .expect("the token endpoint grants orders a token");
    assert_eq!(token.expires_in().unwrap().as_secs(), 300);
    assert_eq!(
        token
            .scopes()
            .unwrap()
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
        ["orders:read"]
    );
    let access = token.access_token().secret().clone();
    let claims = verified_claims(&node, &access, "orders-api").await;
    assert_eq!(claims["sub"], "orders");
    assert_eq!(claims["client_id"], "orders");
    assert_eq!(claims["scope"], "orders:read");
    assert_eq!(claims["team"], "payments");
    assert_eq!(
        claims["exp"].as_u64().unwrap() - claims["iat"].as_u64().unwrap(),
        300
    );
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));

    // The protected route takes it as a Bearer token and in X-Tokengate-Auth; neither header
    // reaches the upstream, and the caller cannot spoof a forwarded claim.
    let http2 = client();
    for (name, value) in [
        ("authorization", format!("Bearer {access}")),
        ("x-tokengate-auth", access.clone()),
    ] {
        let resp = http2
            .get(node.url("/api/orders"))
            .header(name, value)
            .header("x-client-id", "admin")
            .send()
            .await
            .unwrap();
        let seen = echo(resp).await;
        assert_eq!(header(&seen, "x-client-id"), ["orders"]);
        assert_eq!(header(&seen, "x-team"), ["payments"]);
        assert!(header(&seen, "authorization").is_empty());
        assert!(header(&seen, "x-tokengate-auth").is_empty());
    }

    // client_secret_post, a client whose secret is configured only as an argon2 hash; its
    // token is for another audience, so the route refuses it.
    let token = client_credentials(
        &node,
        "inventory",
        "inventory-secret",
        AuthType::RequestBody,
        None,
    )
    .await
    .expect("client_secret_post works");
    assert_eq!(token.expires_in().unwrap().as_secs(), 60);
    let resp = http2
        .get(node.url("/api/orders"))
        .bearer_auth(token.access_token().secret())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);

    // The library sees a wrong secret as RFC 6749 invalid_client.
    match client_credentials(&node, "orders", "nope", AuthType::BasicAuth, None).await {
        Err(RequestTokenError::ServerResponse(e)) => {
            assert_eq!(*e.error(), BasicErrorResponseType::InvalidClient)
        }
        other => panic!("expected invalid_client, got {other:?}"),
    }
    let log = node.settled_log().await;
    assert!(!log.contains(ORDERS_SECRET) && !log.contains(&access));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_issued_before_a_reload_keep_verifying_with_the_generated_key() {
    let (idp, upstream) = (FakeIdp::start().await, EchoUpstream::start().await);
    let yaml = config(&upstream, &idp.issuer(), LOCAL);
    let node = Node::start(
        &yaml,
        &[
            ("ORDERS_SECRET", ORDERS_SECRET),
            ("TOKENGATE_WATCH_INTERVAL", "100ms"),
        ],
    );
    let before = client_credentials(&node, "orders", ORDERS_SECRET, AuthType::BasicAuth, None)
        .await
        .expect("a token before the reload");
    let before = before.access_token().secret().clone();
    let kid = jsonwebtoken::decode_header(&before).unwrap().kid.unwrap();

    // The issuer changes (a new client), so it is rebuilt; its key was generated at start.
    let added = yaml.replace(
        "  clients:\n",
        "  clients:\n    billing:\n      secret: env:ORDERS_SECRET\n",
    );
    assert_ne!(added, yaml);
    node.rewrite_config(&added);
    eventually(
        "the new client is served",
        Duration::from_secs(10),
        async || {
            client_credentials(&node, "billing", ORDERS_SECRET, AuthType::BasicAuth, None)
                .await
                .is_ok()
        },
    )
    .await;
    let resp = client()
        .get(node.url("/api/orders"))
        .bearer_auth(&before)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        200,
        "a token from before the reload opens the route"
    );
    let after = client_credentials(&node, "orders", ORDERS_SECRET, AuthType::BasicAuth, None)
        .await
        .unwrap();
    let after = jsonwebtoken::decode_header(after.access_token().secret()).unwrap();
    assert_eq!(after.kid.unwrap(), kid, "the same key signs on");
    verified_claims(&node, &before, "orders-api").await;
}

/// A token request with `client_secret_post` from `http`; the status.
async fn token_status(http: &reqwest::Client, node: &Node, id: &str, secret: &str) -> u16 {
    let form = format!("grant_type=client_credentials&client_id={id}&client_secret={secret}");
    match http
        .post(node.url("/oauth2/token"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
    {
        Ok(resp) => resp.status().as_u16(),
        Err(_) => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_random_secrets_from_other_addresses_does_not_starve_a_client() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    const CLIENTS: usize = 20;
    const FLOODERS: usize = 64;
    let upstream = EchoUpstream::start().await;
    let hash = hash_secret("legit-secret");
    let mut clients = String::new();
    for i in 0..CLIENTS {
        clients.push_str(&format!("    svc-{i}: {{ secretHash: \"{hash}\" }}\n"));
    }
    let node = Arc::new(Node::start(
        &format!(
            "{LOCAL}\nissuer:\n  url: {ISSUER}\n  clients:\n{clients}routes:\n  - {{ name: r, match: {{ pathPrefix: / }}, upstream: {{ urls: [{}] }} }}\n",
            upstream.url()
        ),
        &[],
    ));
    let from = |last: u8| {
        reqwest::Client::builder()
            .local_address(std::net::IpAddr::from([127, 0, 0, last]))
            .build()
            .unwrap()
    };
    // 64 callers on eight addresses (127.0.0.2-9), each sending random secrets for the
    // registered ids (every one a real hash unless refused first) and unknown ids, as fast as
    // they are answered.
    let stop = Arc::new(AtomicBool::new(false));
    let (flood_sent, flood_busy) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let flood: Vec<_> = (0..FLOODERS)
        .map(|t| {
            let (node, stop) = (Arc::clone(&node), Arc::clone(&stop));
            let (sent, busy) = (Arc::clone(&flood_sent), Arc::clone(&flood_busy));
            let http = from(2 + (t % 8) as u8);
            tokio::spawn(async move {
                let mut n = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    // Three in four for registered ids: each a real hash unless refused first.
                    let id = match n % 4 {
                        0 => format!("nobody-{t}-{n}"),
                        _ => format!("svc-{}", n as usize % CLIENTS),
                    };
                    let status = token_status(&http, &node, &id, &format!("guess-{t}-{n}")).await;
                    sent.fetch_add(1, Ordering::Relaxed);
                    if status == 429 || status == 503 {
                        busy.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    // Let the flood fill the queue before the client asks.
    eventually(
        "the flood is under way",
        Duration::from_secs(10),
        async || flood_sent.load(Ordering::Relaxed) >= FLOODERS as u64,
    )
    .await;
    // The client, from 127.0.0.10: each of its ids once (a real verification each), then each
    // again four times (remembered).
    let legit = from(10);
    let (mut statuses, mut cold) = (Vec::new(), Vec::new());
    for round in 0..5 {
        for i in 0..CLIENTS {
            let asked = std::time::Instant::now();
            statuses.push(token_status(&legit, &node, &format!("svc-{i}"), "legit-secret").await);
            if round == 0 {
                cold.push(asked.elapsed());
            }
        }
    }
    cold.sort();
    stop.store(true, Ordering::Relaxed);
    for f in flood {
        f.await.unwrap();
    }
    let ok = statuses.iter().filter(|s| **s == 200).count();
    // A figure for the record, not a bound: timing is the machine's.
    println!(
        "legit: {ok}/{} granted, first verifications median {:?} max {:?}; flood: {} requests, {} refused as busy",
        statuses.len(),
        cold[cold.len() / 2],
        cold[cold.len() - 1],
        flood_sent.load(Ordering::Relaxed),
        flood_busy.load(Ordering::Relaxed)
    );
    assert!(
        ok * 100 >= statuses.len() * 99,
        "a client starved by others' guesses: {statuses:?}"
    );
    assert!(
        flood_busy.load(Ordering::Relaxed) > 0,
        "the flood was held back"
    );
}

/// Posts a raw form to the token endpoint.
async fn post(
    node: &Node,
    auth: Option<&str>,
    content_type: &str,
    body: &str,
) -> (u16, reqwest::header::HeaderMap, Value) {
    let mut req = client()
        .post(node.url("/oauth2/token"))
        .header("content-type", content_type)
        .body(body.to_owned());
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.json().await.unwrap_or(Value::Null))
}

const FORM: &str = "application/x-www-form-urlencoded";

/// What a case shows, its `Authorization`, content type, body, status and error code.
type Case = (
    &'static str,
    Option<String>,
    &'static str,
    String,
    u16,
    &'static str,
);

/// `POST /oauth2/introspect` with `auth` and `token`: the status and the JSON answer.
async fn introspect(node: &Node, auth: Option<&str>, token: &str) -> (u16, Value) {
    let mut req = client()
        .post(node.url("/oauth2/introspect"))
        .form(&[("token", token), ("token_type_hint", "access_token")]);
    if let Some(a) = auth {
        req = req.header("authorization", a);
    }
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    assert_eq!(resp.headers()["cache-control"], "no-store");
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_upstream_that_speaks_only_introspection_can_check_the_issuers_tokens_rfc_7662() {
    let (idp, upstream) = (FakeIdp::start().await, EchoUpstream::start().await);
    let node = Node::start(
        &config(&upstream, &idp.issuer(), LOCAL),
        &[("ORDERS_SECRET", ORDERS_SECRET)],
    );
    let token = client_credentials(
        &node,
        "orders",
        ORDERS_SECRET,
        AuthType::BasicAuth,
        Some("orders:read"),
    )
    .await
    .unwrap()
    .access_token()
    .secret()
    .clone();
    // The resource server authenticates as a client of the issuer (here `inventory`).
    let rs = basic("inventory", "inventory-secret");
    let (status, answer) = introspect(&node, Some(&rs), &token).await;
    assert_eq!(status, 200);
    assert_eq!(answer["active"], true);
    assert_eq!(answer["client_id"], "orders");
    assert_eq!(answer["sub"], "orders");
    assert_eq!(answer["scope"], "orders:read");
    assert_eq!(answer["iss"], ISSUER);
    assert_eq!(answer["aud"], "orders-api");
    assert_eq!(answer["token_type"], "Bearer");
    assert!(answer["exp"].as_u64().unwrap() > now());

    // Anything but a valid token of this issuer is inactive, and says nothing more.
    let mut tampered = token.clone();
    tampered.insert(tampered.len() - 4, 'x');
    let foreign = idp.mint(&json!({ "iss": idp.issuer(), "sub": "orders", "exp": now() + 60 }));
    for other in [tampered.as_str(), foreign.as_str(), "not-a-token"] {
        assert_eq!(
            introspect(&node, Some(&rs), other).await,
            (200, json!({ "active": false }))
        );
    }
    // The caller must authenticate (RFC 7662 §2.1), as at the token endpoint.
    let (status, answer) = introspect(&node, None, &token).await;
    assert_eq!(
        (status, answer["error"].as_str()),
        (401, Some("invalid_client"))
    );
    let (status, _) = introspect(&node, Some(&basic("inventory", "wrong")), &token).await;
    assert_eq!(status, 401);
    // Hostile bodies get RFC 6749 §5.2 errors before any token is looked at.
    let raw = |body: String| {
        client()
            .post(node.url("/oauth2/introspect"))
            .header("authorization", &rs)
            .header("content-type", "application/x-www-form-urlencoded")
            .body(body)
            .send()
    };
    for (body, why) in [
        (String::new(), "no token"),
        (format!("token={token}&token=x"), "a repeated parameter"),
        (
            format!("token={}", "x".repeat(64 * 1024)),
            "an oversized body",
        ),
    ] {
        let resp = raw(body).await.unwrap();
        assert_eq!(resp.status(), 400, "{why}");
        let answer: Value = resp.json().await.unwrap();
        assert_eq!(answer["error"], "invalid_request", "{why}");
    }
    let (status, _) = introspect(&node, Some(&rs), "").await;
    assert_eq!(status, 400, "an empty token");
    // RFC 8414 names the endpoint.
    let metadata = get_json(node.url("/.well-known/oauth-authorization-server")).await;
    assert_eq!(
        metadata["introspection_endpoint"],
        format!("{ISSUER}/oauth2/introspect")
    );
    assert_eq!(
        metadata["introspection_endpoint_auth_methods_supported"],
        metadata["token_endpoint_auth_methods_supported"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_endpoint_errors_follow_rfc_6749() {
    let (idp, upstream) = (FakeIdp::start().await, EchoUpstream::start().await);
    let node = Node::start(
        &config(&upstream, &idp.issuer(), LOCAL),
        &[("ORDERS_SECRET", ORDERS_SECRET)],
    );
    let good = basic("orders", "p%40ss%3Aw%2Brd%2F%C3%BC%26%3D");
    let grant = "grant_type=client_credentials";
    let cases: Vec<Case> = vec![
        (
            "encoded Basic credentials",
            Some(good.clone()),
            FORM,
            grant.into(),
            200,
            "",
        ),
        (
            "wrong secret",
            Some(basic("orders", "wrong")),
            FORM,
            grant.into(),
            401,
            "invalid_client",
        ),
        (
            "unknown client",
            Some(basic("ghost", "x")),
            FORM,
            grant.into(),
            401,
            "invalid_client",
        ),
        (
            "no client authentication",
            None,
            FORM,
            format!("{grant}&client_id=orders"),
            401,
            "invalid_client",
        ),
        (
            "unsupported grant",
            Some(good.clone()),
            FORM,
            "grant_type=authorization_code&code=x".into(),
            400,
            "unsupported_grant_type",
        ),
        (
            "missing grant_type",
            Some(good.clone()),
            FORM,
            "scope=orders:read".into(),
            400,
            "invalid_request",
        ),
        (
            "JSON body",
            Some(good.clone()),
            "application/json",
            r#"{"grant_type":"client_credentials"}"#.into(),
            400,
            "invalid_request",
        ),
        (
            "repeated parameter",
            Some(good.clone()),
            FORM,
            format!("{grant}&{grant}"),
            400,
            "invalid_request",
        ),
        (
            "two authentication methods",
            Some(good.clone()),
            FORM,
            format!("{grant}&client_id=orders&client_secret=x"),
            400,
            "invalid_request",
        ),
        (
            "scope not registered",
            Some(good.clone()),
            FORM,
            format!("{grant}&scope=orders:read%20admin"),
            400,
            "invalid_scope",
        ),
        (
            "secret in the body, wrong",
            None,
            FORM,
            format!("{grant}&client_id=orders&client_secret=wrong"),
            401,
            "invalid_client",
        ),
    ];
    for (what, auth, content_type, body, status, code) in cases {
        let (got, headers, json) = post(&node, auth.as_deref(), content_type, &body).await;
        assert_eq!(got, status, "{what}: {json}");
        assert_eq!(headers["cache-control"], "no-store", "{what}");
        if status == 200 {
            assert_eq!(json["token_type"], "Bearer", "{what}");
            assert_eq!(headers["pragma"], "no-cache");
            continue;
        }
        assert_eq!(json["error"], code, "{what}");
        if auth.is_some() && status == 401 {
            // §5.2: a failed Basic authentication is answered with a Basic challenge.
            let challenge = headers["www-authenticate"].to_str().unwrap();
            assert!(challenge.starts_with("Basic realm="), "{what}: {challenge}");
        }
    }
    let resp = client()
        .get(node.url("/oauth2/token"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 405);
    assert_eq!(resp.headers()["allow"], "POST");

    let meta = get_json(node.url("/.well-known/oauth-authorization-server")).await;
    assert_eq!(meta["issuer"], ISSUER);
    assert_eq!(meta["token_endpoint"], TOKEN_ENDPOINT);
    assert_eq!(
        meta["jwks_uri"],
        "https://issuer.test/.well-known/jwks.json"
    );
    assert_eq!(meta["grant_types_supported"], json!(["client_credentials"]));
    assert_eq!(
        meta["token_endpoint_auth_methods_supported"],
        json!([
            "client_secret_basic",
            "client_secret_post",
            "private_key_jwt"
        ])
    );
    assert!(!node.settled_log().await.contains(ORDERS_SECRET));
}

/// An identity token of the workload, as its platform (CI, Kubernetes) would issue it.
fn assertion(idp: &FakeIdp, overrides: Value) -> String {
    let mut claims = json!({
        "iss": idp.issuer(),
        "sub": WORKLOAD,
        "aud": TOKEN_ENDPOINT,
        "iat": now(),
        "exp": now() + 120,
        "jti": format!("{:x}", rand::random::<u128>()),
    });
    for (k, v) in overrides.as_object().unwrap() {
        if v.is_null() {
            claims.as_object_mut().unwrap().remove(k);
        } else {
            claims[k] = v.clone();
        }
    }
    idp.mint(&claims)
}

fn assertion_form(jwt: &str) -> String {
    format!(
        "grant_type=client_credentials&client_assertion_type=urn%3Aietf%3Aparams%3Aoauth%3Aclient-assertion-type%3Ajwt-bearer&client_assertion={jwt}"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workload_identity_federation_rfc_7523() {
    let (idp, upstream) = (FakeIdp::start().await, EchoUpstream::start().await);
    let node = Node::start(
        &config(&upstream, &idp.issuer(), LOCAL),
        &[("ORDERS_SECRET", ORDERS_SECRET)],
    );
    let valid = assertion(&idp, json!({}));
    let (status, _, json) = post(&node, None, FORM, &assertion_form(&valid)).await;
    assert_eq!(status, 200, "{json}");
    let token = json["access_token"].as_str().unwrap();
    let claims = verified_claims(&node, token, "orders-api").await;
    assert_eq!(claims["sub"], "deployer");
    assert_eq!(claims["scope"], "deploy");

    let other = FakeIdp::start().await;
    let cases = [
        ("replayed jti", valid.clone()),
        (
            "expired",
            assertion(&idp, json!({"exp": now() - 60, "iat": now() - 120})),
        ),
        (
            "wrong audience",
            assertion(&idp, json!({"aud": "https://elsewhere.test/token"})),
        ),
        (
            "untrusted issuer",
            assertion(&other, json!({"iss": other.issuer()})),
        ),
        // The fake IdP publishes its EC key only once it rotates to it.
        (
            "signed by a key the issuer does not publish",
            idp.sign(
                &Header {
                    kid: Some(testkit::idp::EC_KID.into()),
                    ..Header::new(Algorithm::ES256)
                },
                &json!({
                    "iss": idp.issuer(), "sub": WORKLOAD, "aud": TOKEN_ENDPOINT,
                    "exp": now() + 60, "jti": "forged-1",
                }),
            ),
        ),
        (
            "subject bound to no client",
            assertion(&idp, json!({"sub": "repo:evil/x"})),
        ),
        ("no jti", assertion(&idp, json!({"jti": null}))),
        ("no exp", assertion(&idp, json!({"exp": null}))),
    ];
    for (what, jwt) in cases {
        let (status, headers, json) = post(&node, None, FORM, &assertion_form(&jwt)).await;
        assert_eq!(
            (status, json["error"].as_str()),
            (401, Some("invalid_client")),
            "{what}: {json}"
        );
        assert_eq!(headers["cache-control"], "no-store");
    }
    // The token endpoint also accepts the issuer URL as the assertion's audience (RFC 7523 §3).
    let to_issuer = assertion(&idp, json!({"aud": ISSUER}));
    let (status, _, _) = post(&node, None, FORM, &assertion_form(&to_issuer)).await;
    assert_eq!(status, 200);
    // A client_id naming another client than the assertion's is refused.
    let mismatch = format!(
        "{}&client_id=orders",
        assertion_form(&assertion(&idp, json!({})))
    );
    let (status, _, json) = post(&node, None, FORM, &mismatch).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (401, Some("invalid_client"))
    );
    assert!(!node.settled_log().await.contains(&valid));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_on_redis_shares_the_key_and_refuses_replays_on_every_node() {
    let (idp, upstream, redis) = (
        FakeIdp::start().await,
        EchoUpstream::start().await,
        RedisServer::start(),
    );
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("issuer.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-out",
        ])
        .arg(&key)
        .status()
        .unwrap();
    assert!(made.success());
    let shared = format!(
        "{LOCAL}\nfleetKey: env:FLEET_KEY\nstore: {{ redis: {{ endpoints: [\"{}\"] }} }}",
        redis.endpoint()
    );
    let yaml = config(&upstream, &idp.issuer(), &shared).replace(
        "  tokenLifetime: 5m\n",
        &format!(
            "  tokenLifetime: 5m\n  signingKey: {{ file: {} }}\n",
            key.display()
        ),
    );
    let env = [
        ("ORDERS_SECRET", ORDERS_SECRET),
        ("FLEET_KEY", "0123456789abcdef0123456789abcdef-issuer"),
    ];
    let (a, b) = (Node::start(&yaml, &env), Node::start(&yaml, &env));

    // A token from node a opens node b's route: both sign and verify with the file's key.
    let (status, _, json) = post(
        &a,
        Some(&basic("orders", "p%40ss%3Aw%2Brd%2F%C3%BC%26%3D")),
        FORM,
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(status, 200);
    let resp = client()
        .get(b.url("/api/x"))
        .bearer_auth(json["access_token"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(header(&echo(resp).await, "x-client-id"), ["orders"]);

    // An assertion spent at node a is a replay at node b.
    let jwt = assertion(&idp, json!({}));
    assert_eq!(post(&a, None, FORM, &assertion_form(&jwt)).await.0, 200);
    let (status, _, json) = post(&b, None, FORM, &assertion_form(&jwt)).await;
    assert_eq!(
        (status, json["error"].as_str()),
        (401, Some("invalid_client"))
    );
    // The replay record is keyed by an HMAC: the jti is nowhere in Redis.
    let keys = redis.cli(&["--scan"]);
    assert!(keys.contains(":once:"), "{keys}");
    let spent = jsonwebtoken::dangerous::insecure_decode::<Value>(&jwt).unwrap();
    assert!(!keys.contains(spent.claims["jti"].as_str().unwrap()));

    // Redis down: replay protection cannot be checked, so assertions are refused with 503
    // while secrets still work.
    drop(redis);
    let (status, headers, _) =
        post(&a, None, FORM, &assertion_form(&assertion(&idp, json!({})))).await;
    assert_eq!(status, 503);
    assert!(headers.contains_key("retry-after"));
    let by_secret = post(
        &b,
        Some(&basic("inventory", "inventory-secret")),
        FORM,
        "grant_type=client_credentials",
    )
    .await;
    assert_eq!(by_secret.0, 200);
}
