//! Routing and shaping: Traefik rules and priorities, path and header rewriting after
//! authentication, `passHostHeader`, and CORS preflights answered before authentication.

use testkit::{EchoUpstream, FakeIdp};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::{Node, basic, client};

fn config(body: &str) -> String {
    format!("listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\n{body}")
}

/// Which upstream a request reached: its `x-upstream` answer header names it.
async fn reached(req: reqwest::RequestBuilder) -> (u16, Option<String>) {
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (
        status,
        resp.headers()
            .get("x-upstream")
            .map(|v| v.to_str().unwrap().to_owned()),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traefik_rules_native_matches_and_priorities_choose_the_route() {
    let up = EchoUpstream::start().await;
    // Each route tells itself apart by a response header.
    let route = |name: &str, matcher: &str, extra: &str| {
        format!(
            "  - {{ name: {name}, match: {matcher}, {extra} middlewares: [{name}], upstream: {{ urls: [\"{u}\"] }} }}\n",
            u = up.url()
        )
    };
    let tag = |name: &str| {
        format!("  {name}: {{ headers: {{ customResponseHeaders: {{ X-Upstream: {name} }} }} }}\n")
    };
    let names = [
        "api", "writes", "tenant", "wild", "exact", "regex", "pinned", "fallback",
    ];
    let body = format!(
        "middlewares:\n{}routes:\n{}{}{}{}{}{}{}{}",
        names.iter().map(|n| tag(n)).collect::<String>(),
        route(
            "api",
            "{ rule: \"Host(`api.test`) && PathPrefix(`/v1`)\" }",
            ""
        ),
        route(
            "writes",
            "{ rule: \"Host(`api.test`) && PathPrefix(`/v1`) && (Method(`POST`) || Method(`PUT`))\" }",
            ""
        ),
        route(
            "tenant",
            "{ host: api.test, pathPrefix: /v1, headers: { X-Tenant: blue } }",
            ""
        ),
        route("wild", "{ host: \"*.apps.test\" }", ""),
        route("exact", "{ path: /v1/health }", ""),
        route(
            "regex",
            "{ rule: \"HostRegexp(`^[a-z]+\\\\.regex\\\\.test$`) && !Query(`debug`)\" }",
            ""
        ),
        route("pinned", "{ pathPrefix: /v1/pinned }", "priority: 10000,"),
        route("fallback", "{ rule: \"PathPrefix(`/`)\" }", ""),
    );
    let node = Node::start(&config(&body), &[]);
    let http = client();
    let at = |host: &str, method: reqwest::Method, path: &str| {
        http.request(method, node.url(path)).header("host", host)
    };
    use reqwest::Method as M;
    let cases: Vec<(reqwest::RequestBuilder, &str)> = vec![
        (at("api.test", M::GET, "/v1/users"), "api"),
        (at("API.test:8443", M::GET, "/v1/users"), "api"),
        (at("api.test", M::POST, "/v1/users"), "writes"),
        (
            at("api.test", M::GET, "/v1/users").header("x-tenant", "blue"),
            "tenant",
        ),
        (
            at("api.test", M::GET, "/v1/users").header("x-tenant", "red"),
            "api",
        ),
        (at("eu.apps.test", M::GET, "/x"), "wild"),
        (at("a.eu.apps.test", M::GET, "/x"), "fallback"),
        (at("other.test", M::GET, "/v1/health"), "exact"),
        (at("other.test", M::GET, "/v1/health/x"), "fallback"),
        (at("abc.regex.test", M::GET, "/x?q=1"), "regex"),
        (at("abc.regex.test", M::GET, "/x?debug"), "fallback"),
        (at("abc1.regex.test", M::GET, "/x"), "fallback"),
        // `api`'s rule is the longer; the explicit priority wins.
        (at("api.test", M::GET, "/v1/pinned"), "pinned"),
    ];
    for (i, (req, want)) in cases.into_iter().enumerate() {
        assert_eq!(reached(req).await, (200, Some(want.to_owned())), "case {i}");
    }
}

/// An IdP knowing `svc-a`, an upstream, and a node whose one route runs `chain` (which may name
/// `creds`, an application-level `clientCredentials`, and the `middlewares` given).
async fn with_credentials(middlewares: &str, chain: &str) -> (FakeIdp, EchoUpstream, Node) {
    let idp = FakeIdp::start().await;
    idp.register("svc-a", "s3cret");
    let up = EchoUpstream::start().await;
    let node = Node::start(
        &config(&format!(
            "middlewares:\n  creds: {{ clientCredentials: {{ url: \"{token}\" }} }}\n{middlewares}routes:\n  - {{ name: r, match: {{ pathPrefix: / }}, middlewares: [{chain}], upstream: {{ urls: [\"{u}\"] }} }}\n",
            token = idp.token_url(),
            u = up.url(),
        )),
        &[],
    );
    (idp, up, node)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_and_headers_are_rewritten_after_authentication() {
    let (_idp, up, node) = with_credentials(
        r#"  strip: { stripPrefix: { prefixes: [/api/v1, /api] } }
  prefix: { addPrefix: { prefix: /internal } }
  legacy: { replacePathRegex: { regex: "^/internal/users/([0-9]+)$", replacement: "/internal/accounts/${1}" } }
  shape:
    headers:
      customRequestHeaders: { X-Debug: "", X-Env: prod }
      addRequestHeaders: { X-Via: tokengate }
      customResponseHeaders: { Server: "", X-Frame-Options: DENY }
"#,
        "strip, prefix, legacy, shape, creds",
    )
    .await;
    let http = client();
    let resp = http
        .get(node.url("/api/v1/users/42?full=1"))
        .header("authorization", basic("svc-a", "s3cret"))
        .header("x-debug", "1")
        .header("x-env", "dev")
        .header("x-via", "caller")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["x-frame-options"], "DENY");
    assert!(!resp.headers().contains_key("server"));
    let seen = up.seen().pop().unwrap();
    assert_eq!(seen.path, "/internal/accounts/42?full=1");
    assert_eq!(seen.header("x-forwarded-prefix"), Some("/api/v1"));
    assert_eq!(seen.header("x-replaced-path"), Some("/internal/users/42"));
    assert_eq!(seen.header("x-debug"), None);
    assert_eq!(seen.header("x-env"), Some("prod"));
    let via: Vec<_> = seen.headers.get_all("x-via").iter().collect();
    assert_eq!(via, ["caller", "tokengate"]);
    assert!(
        seen.bearer().is_some(),
        "listed first, the rewrites still ran after authentication"
    );

    // Without credentials nothing is rewritten or forwarded.
    let resp = http.get(node.url("/api/v1/users/42")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(up.seen().len(), 1);

    // `/api../admin` is one segment when routed; stripping `/api` would leave `/../admin`,
    // which an upstream resolves to `/admin`. Sent byte for byte, it is refused.
    let mut raw = TcpStream::connect(node.proxy).await.unwrap();
    raw.write_all(
        format!(
            "GET /api../admin HTTP/1.1\r\nHost: gw.test\r\nAuthorization: {}\r\nConnection: close\r\n\r\n",
            basic("svc-a", "s3cret")
        )
        .as_bytes(),
    )
    .await
    .unwrap();
    let mut answer = String::new();
    raw.read_to_string(&mut answer).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert_eq!(up.seen().len(), 1, "nothing reached the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pass_host_header_chooses_the_callers_host_or_the_upstreams() {
    let up = EchoUpstream::start().await;
    let node = Node::start(
        &config(&format!(
            r#"
routes:
  - {{ name: kept, match: {{ pathPrefix: /kept }}, upstream: {{ urls: ["{u}"] }} }}
  - {{ name: upstream, match: {{ pathPrefix: /upstream }}, upstream: {{ urls: ["{u}"], passHostHeader: false }} }}
"#,
            u = up.url(),
        )),
        &[],
    );
    let http = client();
    for path in ["/kept", "/upstream"] {
        let resp = http
            .get(node.url(path))
            .header("host", "api.example")
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 200);
    }
    let seen = up.seen();
    assert_eq!(seen[0].header("host"), Some("api.example"));
    assert_eq!(seen[1].header("host"), Some(up.addr().to_string().as_str()));
    assert_eq!(
        seen[1].header("x-forwarded-host"),
        Some("api.example"),
        "the caller's host still travels"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_preflights_are_answered_without_credentials_while_requests_still_need_them() {
    let (_idp, up, node) = with_credentials(
        r#"  cors:
    headers:
      accessControlAllowOriginList: [https://app.example]
      accessControlAllowOriginListRegex: ['https://[a-z]+\.preview\.example']
      accessControlAllowMethods: [GET, POST]
      accessControlAllowHeaders: [Authorization, Content-Type]
      accessControlAllowCredentials: true
      accessControlMaxAge: 600
"#,
        "creds, cors",
    )
    .await;
    let http = client();
    let preflight = |origin: &str| {
        http.request(reqwest::Method::OPTIONS, node.url("/orders"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization")
    };
    let resp = preflight("https://app.example").send().await.unwrap();
    assert_eq!(resp.status(), 200);
    let h = resp.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    assert_eq!(h["access-control-allow-methods"], "GET, POST");
    assert_eq!(
        h["access-control-allow-headers"],
        "Authorization, Content-Type"
    );
    assert_eq!(h["access-control-allow-credentials"], "true");
    assert_eq!(h["access-control-max-age"], "600");
    let resp = preflight("https://staging.preview.example")
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://staging.preview.example"
    );
    // A pattern matches the whole origin, never a part of it.
    for evil in [
        "https://evil.example",
        "https://staging.preview.example.evil.net",
        "https://evil.net/?https://staging.preview.example",
        "http://x.https://staging.preview.example",
    ] {
        let resp = preflight(evil).send().await.unwrap();
        assert_eq!(resp.status(), 200);
        assert!(
            !resp.headers().contains_key("access-control-allow-origin"),
            "{evil} allowed"
        );
    }
    assert!(up.seen().is_empty(), "preflights never reach the upstream");

    // The request itself still needs credentials; its refusal is readable by the page.
    let resp = http
        .post(node.url("/orders"))
        .header("origin", "https://app.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert!(resp.headers().contains_key("www-authenticate"));
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert!(up.seen().is_empty());
    let resp = http
        .post(node.url("/orders"))
        .header("origin", "https://app.example")
        .header("authorization", basic("svc-a", "s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    assert_eq!(resp.headers()["vary"], "Origin");
    assert_eq!(up.seen().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_header_rule_cannot_authenticate_a_caller() {
    // Listed before the credentials middleware, a rule that would write valid credentials
    // still runs after it: the caller without credentials is refused.
    let (_idp, up, node) = with_credentials(
        "  forge: { headers: { customRequestHeaders: { Authorization: \"Basic c3ZjLWE6czNjcmV0\" } } }\n",
        "forge, creds",
    )
    .await;
    let resp = client().get(node.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert!(up.seen().is_empty());
}
