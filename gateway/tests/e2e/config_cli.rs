//! `gateway check-config` and `gateway run` with bad configuration.

use std::process::Stdio;

use crate::support::gateway_command;

#[test]
fn check_config_lists_every_problem_with_its_key_path() {
    let yaml = r#"
listen: 127.0.0.1:8080
admin: { listen: 127.0.0.1:9090 }
middlewares:
  app-creds:
    clientCredentials: { url: "not a url" }
  gw-creds:
    clientCredentials: { url: "http://idp/token", clientId: gw, clientSecret: "env:TOKENGATE_TEST_UNSET_SECRET", authMethod: client_secret_digest }
routes:
  - { name: app, match: { pathPrefix: app }, middlewares: [app-creds, missing], upstream: { urls: [] } }
"#;
    let (mut cmd, _dir) = gateway_command(&["check-config"], yaml, &[]);
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    for expected in [
        "middlewares.app-creds.clientCredentials.url: not an http(s) URL",
        "middlewares.gw-creds.clientCredentials.clientSecret: environment variable TOKENGATE_TEST_UNSET_SECRET is not set",
        "middlewares.gw-creds.clientCredentials.authMethod: must be client_secret_basic, client_secret_post, client_secret_jwt, private_key_jwt or tls_client_auth, not \"client_secret_digest\"",
        "routes[0].match.pathPrefix: must start with /",
        "routes[0].middlewares[1]: no middleware named \"missing\"",
        "routes[0].upstream.urls: needs at least one URL",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }
}

#[test]
fn secrets_never_appear_in_config_errors() {
    let yaml =
        "listen: 127.0.0.1:8080\nadmin: { listen: 127.0.0.1:9090 }\nfleetKey: env:SHORT_KEY\n";
    let (mut cmd, _dir) = gateway_command(
        &["check-config"],
        yaml,
        &[("SHORT_KEY", "too-short-inline-secret")],
    );
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(
        stderr.contains("fleetKey: must be at least 32 bytes"),
        "{stderr}"
    );
    assert!(!stderr.contains("too-short-inline-secret"));
}

#[test]
fn credentials_typed_into_addresses_are_refused_and_never_echoed() {
    let yaml = r#"
listen: 127.0.0.1:8080
admin: { listen: 127.0.0.1:9090 }
fleetKey: env:FLEET_KEY
store: { redis: { endpoints: ["redis://:pa55word@redis:6379", "admin:pa55word@redis:6379"] } }
telemetry: { tracing: { otlp: { grpc: { endpoint: "user:pa55word@collector:4317" } } } }
middlewares:
  m: { clientCredentials: { url: "https://client:pa55word@idp.example/token" } }
"#;
    let (mut cmd, _dir) = gateway_command(
        &["check-config"],
        yaml,
        &[("FLEET_KEY", "k-k-k-k-k-k-k-k-k-k-k-k-k-k-k-k-k-k")],
    );
    let out = cmd.output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    for path in [
        "store.redis.endpoints[0]",
        "store.redis.endpoints[1]",
        "telemetry.tracing.otlp.grpc.endpoint",
        "middlewares.m.clientCredentials.url: must not carry credentials",
    ] {
        assert!(stderr.contains(path), "{path} in {stderr}");
    }
    assert!(!stderr.contains("pa55word"), "{stderr}");
}

#[test]
fn help_never_shows_a_secret_from_the_environment() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_gateway"))
        .args(["cache-node", "--help"])
        .env("TOKENGATE_ADMIN_TOKEN", "inline-admin-t0ken")
        .output()
        .unwrap();
    let help = String::from_utf8(out.stdout).unwrap();
    assert!(help.contains("--admin-token"), "{help}");
    assert!(!help.contains("inline-admin-t0ken"), "{help}");
}

#[test]
fn run_with_a_bad_config_exits_before_binding_anything() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let yaml = format!(
        "listen: 127.0.0.1:{port}\nadmin: {{ listen: 127.0.0.1:0 }}\nrequestTimeout: soon\n"
    );
    let (mut cmd, _dir) = gateway_command(&["run", "--config"], &yaml, &[]);
    let out = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(stderr.contains("requestTimeout:"), "{stderr}");
    assert!(!String::from_utf8(out.stdout).unwrap().contains("listening"));
}

#[test]
fn no_secrets_checks_references_without_reading_them_and_typos_never_pass() {
    let yaml = r#"
listen: 127.0.0.1:8080
admin: { listen: 127.0.0.1:9090 }
fleetKey: env:TOKENGATE_TEST_UNSET_FLEET_KEY
secretsDir: /nonexistent/secrets
store: { redis: { endpoints: ["127.0.0.1:6379"] } }
middlewares:
  gw:
    clientCredentials:
      url: http://idp.test/token
      clientId: "urn:k8s:secret:oauth-client-nologin:client_id"
      clientSecret: "urn:k8s:secret:oauth-client-nologin:client_secret"
  inline:
    clientCredentials: { url: http://idp.test/token, clientId: app, clientSecret: inline-s3cret }
routes:
  - { name: r, match: { pathPrefix: / }, middlewares: [gw], upstream: { urls: [http://127.0.0.1:8081] } }
"#;
    let (mut cmd, _dir) = gateway_command(&["check-config", "--no-secrets"], yaml, &[]);
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("middlewares.inline.clientCredentials.clientSecret: an inline secret sits in the configuration file"),
        "{stdout}"
    );
    assert!(!stdout.contains("inline-s3cret"));

    // Resolving, the same file names every secret it cannot read.
    let (mut cmd, _dir) = gateway_command(&["check-config"], yaml, &[]);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success());
    for expected in [
        "fleetKey: environment variable TOKENGATE_TEST_UNSET_FLEET_KEY is not set",
        "middlewares.gw.clientCredentials.clientId: Kubernetes secret oauth-client-nologin, key client_id: cannot read file /nonexistent/secrets/oauth-client-nologin/client_id",
        "middlewares.gw.clientCredentials.clientSecret: Kubernetes secret oauth-client-nologin, key client_secret",
    ] {
        assert!(
            stderr.contains(expected),
            "missing {expected:?} in:\n{stderr}"
        );
    }

    // A mistyped scheme is an error even without reading secrets, and an inline fleet key is
    // refused.
    let typo = yaml
        .replace(
            "env:TOKENGATE_TEST_UNSET_FLEET_KEY",
            "0123456789abcdef0123456789abcdef",
        )
        .replace(
            "urn:k8s:secret:oauth-client-nologin:client_secret",
            "ENV:GW_SECRET",
        );
    let (mut cmd, _dir) = gateway_command(&["check-config", "--no-secrets"], &typo, &[]);
    let out = cmd.output().unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert!(!out.status.success());
    assert!(stderr.contains("fleetKey: must be a reference"), "{stderr}");
    assert!(
        stderr.contains("middlewares.gw.clientCredentials.clientSecret: looks like a secret reference: write the scheme in lower case"),
        "{stderr}"
    );
    assert!(!stderr.contains("0123456789abcdef"));
}
