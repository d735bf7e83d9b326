//! `docs/idp-guide.md`'s configurations, as written there, against a test IdP served at the
//! very host and path each names (resolved through the node's own `/etc/hosts` and trusted
//! through `SSL_CERT_FILE`): the client authenticates as each IdP expects and asks for its API
//! the way it names them.

use std::net::SocketAddr;

use testkit::tls::TlsFixture;
use testkit::{EchoUpstream, FakeIdp};

use crate::support::{Node, client, gateway_command, is_root};

/// The `yaml` blocks of the guide, in order.
fn guide_blocks() -> Vec<String> {
    let text =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/idp-guide.md"))
            .unwrap();
    text.split("```yaml\n")
        .skip(1)
        .map(|b| b.split("```").next().unwrap().to_owned())
        .collect()
}

/// `block`'s middleware (its only one) on a route to `upstream`.
fn config(block: &str, upstream: &EchoUpstream) -> (String, String) {
    let name = block
        .lines()
        .nth(1)
        .unwrap()
        .trim()
        .trim_end_matches(':')
        .to_owned();
    let yaml = format!(
        "listen: 127.0.0.1:0\nadmin: {{ listen: 127.0.0.1:0 }}\n{block}routes:\n  - {{ name: r, match: {{ pathPrefix: / }}, middlewares: [{name}], upstream: {{ urls: [\"{}\"] }} }}\n",
        upstream.url()
    );
    (name, yaml)
}

#[test]
fn every_configuration_of_the_guide_is_valid() {
    let blocks = guide_blocks();
    assert_eq!(blocks.len(), 3);
    for block in blocks {
        let yaml = format!("listen: 127.0.0.1:8080\nadmin: {{ listen: 127.0.0.1:9090 }}\n{block}");
        let (mut cmd, _dir) = gateway_command(&["check-config", "--no-secrets"], &yaml, &[]);
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{block}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_style_authenticates_and_names_its_api_as_its_idp_expects() {
    if !is_root() {
        eprintln!("skipped: binds port 443 and mounts /etc/hosts, which needs root");
        return;
    }
    let upstream = EchoUpstream::start().await;
    // (host, client id, secret variable, how the client authenticates, the parameter naming the
    // API and its value)
    let styles = [
        (
            "keycloak.example.com",
            "orders-gateway",
            "KEYCLOAK_CLIENT_SECRET",
            "basic",
            ("scope", "orders:read orders:write"),
        ),
        (
            "tenant.eu.auth0.com",
            "orders-gateway",
            "AUTH0_CLIENT_SECRET",
            "post",
            ("audience", "https://orders.example.com"),
        ),
        (
            "login.microsoftonline.com",
            "8f3a2c1e-0000-4000-8000-000000000001",
            "ENTRA_CLIENT_SECRET",
            "post",
            ("scope", "api://orders.example.com/.default"),
        ),
    ];
    for (i, (block, (host, client_id, variable, method, (param, value)))) in
        guide_blocks().iter().zip(styles).enumerate()
    {
        let ip = std::net::IpAddr::from([127, 0, 0, 31 + i as u8]);
        let tls = TlsFixture::new();
        tls.issue("idp", None, &format!("subjectAltName=DNS:{host}"));
        let idp = FakeIdp::start_tls_on(
            SocketAddr::new(ip, 443),
            tls.server_config("idp", &["http/1.1"], false),
        )
        .await
        .unwrap();
        idp.register(client_id, "the-secret");
        let (name, yaml) = config(block, &upstream);
        let node = Node::start_resolving(
            &yaml,
            &[
                (variable, "the-secret"),
                ("SSL_CERT_FILE", tls.path("ca.crt").as_str()),
            ],
            &[(host, ip)],
        );
        let resp = client().get(node.url("/x")).send().await.unwrap();
        assert_eq!(resp.status(), 200, "{name}: {}", node.log());
        let seen = &idp.seen()[0];
        assert_eq!(seen.client_id, client_id, "{name}");
        assert_eq!(seen.auth_method, method, "{name}");
        assert!(
            seen.params.contains(&(param.to_owned(), value.to_owned())),
            "{name}: {:?}",
            seen.params
        );
    }
}
