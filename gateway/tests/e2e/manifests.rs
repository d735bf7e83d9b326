//! Traefik Hub's own manifests, loaded from a directory as they are published and served: the
//! application-level and gateway-level client credentials middlewares, the M2M tutorial's
//! middleware and `IngressRoute`, and the introspection example (its `Deployment` and `Service`
//! skipped). Their hosts (`myidp`, `hydra.hydra.svc`, the Keycloak placeholder, the cluster DNS
//! name of `whoami`) resolve through the node's own `/etc/hosts`, as a pod's `hostAliases`
//! would make them, to test doubles on their own loopback addresses and the published ports.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use serde_json::json;
use testkit::tls::TlsFixture;
use testkit::{EchoUpstream, FakeIdp};

use crate::support::{Node, basic, client, gateway_command, is_root};

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/traefik-hub");

/// A directory holding the fixture `name` alone.
fn manifests(name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(Path::new(FIXTURES).join(name), dir.path().join(name)).unwrap();
    dir
}

fn config(manifests: &Path, rest: &str) -> String {
    format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\nmanifests: {{ directory: \"{}\" }}\n{rest}",
        manifests.display()
    )
}

/// A loopback address of its own for each test, so that published ports do not collide.
fn host(last: u8) -> IpAddr {
    [127, 0, 0, last].into()
}

macro_rules! root_only {
    () => {
        if !is_root() {
            eprintln!(
                "skipped: binds ports 80, 443 and 4444 and mounts /etc/hosts, which needs root"
            );
            return;
        }
    };
}

/// Routes everything to `upstream` through the middleware `middleware` of the manifests.
fn one_route(middleware: &str, upstream: &EchoUpstream) -> String {
    format!(
        "routes:\n  - {{ name: r, match: {{ pathPrefix: / }}, middlewares: [{middleware}], upstream: {{ urls: [\"{}\"] }} }}\n",
        upstream.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_application_level_middleware_exchanges_the_callers_credentials() {
    root_only!();
    let ip = host(21);
    let idp = FakeIdp::start_on(SocketAddr::new(ip, 4444)).await.unwrap();
    idp.register("app-1", "s3cret");
    let up = EchoUpstream::start().await;
    let dir = manifests("app-level.yaml");
    let node = Node::start_resolving(
        &config(dir.path(), &one_route("apps/oauth2-client-creds", &up)),
        &[],
        &[("myidp", ip)],
    );
    let resp = client()
        .get(node.url("/x"))
        .header("authorization", basic("app-1", "s3cret"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(up.seen()[0].bearer().is_some());
    assert_eq!(idp.seen()[0].client_id, "app-1");
    let resp = client().get(node.url("/x")).send().await.unwrap();
    assert_eq!(
        resp.status(),
        401,
        "application level: no credentials, no token"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_gateway_level_middleware_reads_its_credentials_from_a_mounted_secret() {
    root_only!();
    let ip = host(22);
    let idp = FakeIdp::start_on(SocketAddr::new(ip, 4444)).await.unwrap();
    idp.register("gateway-client", "from-a-secret");
    let up = EchoUpstream::start().await;
    let dir = manifests("gateway-level.yaml");
    // Kubernetes' secret volume layout: one file per key, under a directory per secret, under
    // one per namespace (the manifest is in `apps`, and reads only its own namespace's).
    let secrets = tempfile::tempdir().unwrap();
    let secret = secrets.path().join("apps").join("oauth-client-nologin");
    std::fs::create_dir_all(&secret).unwrap();
    std::fs::write(secret.join("client_id"), "gateway-client").unwrap();
    std::fs::write(secret.join("client_secret"), "from-a-secret\n").unwrap();
    let rest = format!(
        "secretsDir: \"{}\"\n{}",
        secrets.path().display(),
        one_route("apps/oauth2-client-creds", &up)
    );
    let node = Node::start_resolving(&config(dir.path(), &rest), &[], &[("myidp", ip)]);
    let resp = client().get(node.url("/x")).send().await.unwrap();
    assert_eq!(resp.status(), 200);
    assert!(up.seen()[0].bearer().is_some());
    assert_eq!(idp.seen()[0].client_id, "gateway-client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_m2m_tutorials_ingress_route_serves_whoami_with_the_callers_subject() {
    root_only!();
    let ip = host(23);
    let idp = FakeIdp::start_on(SocketAddr::new(ip, 4444)).await.unwrap();
    idp.register("4a3265b7-ac47-4f84-b7ad-dffa4f907ffb", "traefiklabs");
    let whoami = EchoUpstream::start_on(SocketAddr::new(ip, 80))
        .await
        .unwrap();
    let dir = manifests("whoami-app-oauth2.yaml");
    let node = Node::start_resolving(
        &config(dir.path(), ""),
        &[],
        &[("hydra.hydra.svc", ip), ("whoami.apps.svc", ip)],
    );
    let resp = client()
        .get(node.url("/"))
        .header("host", "whoami.docker.localhost")
        .header(
            "authorization",
            basic("4a3265b7-ac47-4f84-b7ad-dffa4f907ffb", "traefiklabs"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let seen = whoami.seen().pop().unwrap();
    assert_eq!(seen.header("host"), Some("whoami.docker.localhost"));
    assert_eq!(
        seen.header("sub"),
        Some("4a3265b7-ac47-4f84-b7ad-dffa4f907ffb")
    );
    assert!(seen.bearer().is_some());
    let params = &idp.seen()[0].params;
    assert!(params.contains(&("audience".to_owned(), "https://traefik.io".to_owned())));
    let other = client()
        .get(node.url("/"))
        .header("host", "other.docker.localhost")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), 404, "the rule names one host");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_introspection_example_serves_my_app_and_skips_the_deployment_and_service() {
    root_only!();
    let ip = host(24);
    let tls = TlsFixture::new();
    tls.issue("keycloak", None, "subjectAltName=DNS:your-keycloak-address");
    let idp = FakeIdp::start_tls_on(
        SocketAddr::new(ip, 443),
        tls.server_config("keycloak", &["http/1.1"], false),
    )
    .await
    .unwrap();
    idp.allow_anonymous_introspection();
    idp.register_opaque(
        "opaque-token-1",
        json!({ "sub": "svc-a", "client_id": "svc-a" }),
    );
    let whoami = EchoUpstream::start_on(SocketAddr::new(ip, 80))
        .await
        .unwrap();
    let dir = manifests("token-introspection.yaml");
    let yaml = config(dir.path(), "");
    // The placeholder host is served with a certificate from the test's CA, which the node
    // trusts as its system roots.
    let node = Node::start_resolving(
        &yaml,
        &[("SSL_CERT_FILE", tls.path("ca.crt").as_str())],
        &[("your-keycloak-address", ip), ("whoami.apps.svc", ip)],
    );
    let http = client();
    let resp = http
        .get(node.url("/my-app"))
        .header("authorization", "Bearer opaque-token-1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", node.log());
    assert_eq!(whoami.seen().len(), 1);
    let resp = http
        .get(node.url("/my-app"))
        .header("authorization", "Bearer unknown")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(whoami.seen().len(), 1);

    // `gateway convert` prints what was loaded, and says what it skipped.
    let (mut cmd, _dir) = gateway_command(&["convert"], &yaml, &[]);
    let out = cmd.output().unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for expected in [
        "# skipped (not a Traefik document): token-introspection.yaml#3 Deployment apps/whoami",
        "# skipped (not a Traefik document): token-introspection.yaml#4 Service apps/whoami",
        "apps/oauth2-token-introspection:\n    introspection:",
        "- name: apps/my-app\n  match:\n    rule: Path(`/my-app`)",
        "- url: http://whoami.apps.svc:80",
    ] {
        assert!(text.contains(expected), "missing {expected:?} in:\n{text}");
    }
    let (mut cmd, _dir) = gateway_command(&["check-config"], &text, &[]);
    assert!(
        cmd.output().unwrap().status.success(),
        "the converted configuration loads"
    );
}

#[test]
fn a_mistake_in_a_manifest_is_named_by_its_file_document_and_field() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("apps.yaml"),
        r#"apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: { name: creds, namespace: apps }
spec:
  plugin:
    oAuthClientCredentials:
      url: not-a-url
      clientID: svc
      clientSecret: urn:k8s:secret:oauth-client:client_secret
---
apiVersion: traefik.io/v1alpha1
kind: Middleware
metadata: { name: check, namespace: apps }
spec:
  plugin:
    oAuthIntrospection:
      clientConfig:
        url: https://idp.example/introspect
        headers: { Authorization: "Basic c3ZjOnMzY3JldA==" }
        tokenTypeHint: "two words"
"#,
    )
    .unwrap();
    let (mut cmd, _dir) = gateway_command(
        &["check-config", "--no-secrets"],
        &config(dir.path(), ""),
        &[],
    );
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    // Traefik Hub's spelling `clientID` is taken, and its Authorization header is the client
    // authentication it carries: the mistakes left are named where they were written.
    let problems: Vec<&str> = stderr.lines().skip(1).map(str::trim).collect();
    assert_eq!(
        problems,
        [
            "apps.yaml#2 (Middleware apps/check): spec.plugin.oAuthIntrospection.clientConfig.tokenTypeHint: must be a token type such as access_token",
            "apps.yaml#1 (Middleware apps/creds): spec.plugin.oAuthClientCredentials.url: not an http(s) URL",
        ],
        "{stderr}"
    );
}
