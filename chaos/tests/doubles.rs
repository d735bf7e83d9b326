//! `chaos doubles`: the fake IdP and echo upstream as a process, as docker-compose.yml and the
//! README's example run them.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

// Kills the process even when an assertion fails.
use testkit::procs::Owned;

#[tokio::test]
async fn doubles_serve_under_the_public_url_until_sigterm() {
    let mut child = Owned(
        Command::new(env!("CARGO_BIN_EXE_chaos"))
            .args([
                "doubles",
                "--idp-listen",
                "127.0.0.1:0",
                "--idp-url",
                "http://idp.test:4444/",
                "--upstream-listen",
                "127.0.0.1:0",
                "--client",
                "svc=env:SVC_SECRET",
                "--token-lifetime",
                "90s",
            ])
            .env("SVC_SECRET", "s3cret")
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut lines = BufReader::new(child.0.stdout.take().unwrap()).lines();
    let mut next = || lines.next().unwrap().unwrap();
    let idp_line = next();
    let upstream_line = next();
    let idp = idp_line
        .strip_prefix("fake IdP listening on ")
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("{idp_line}"))
        .to_owned();
    assert!(
        idp_line.contains("as http://idp.test:4444 (clients: svc)"),
        "{idp_line}"
    );
    assert!(!idp_line.contains("s3cret"));
    let upstream = upstream_line
        .strip_prefix("echo upstream listening on ")
        .unwrap_or_else(|| panic!("{upstream_line}"))
        .to_owned();

    let http = reqwest::Client::new();
    let get_json = async |url: String| -> serde_json::Value {
        http.get(url).send().await.unwrap().json().await.unwrap()
    };
    let discovery = get_json(format!("http://{idp}/.well-known/openid-configuration")).await;
    assert_eq!(discovery["issuer"], "http://idp.test:4444");
    assert_eq!(discovery["token_endpoint"], "http://idp.test:4444/token");

    let form = [("grant_type", "client_credentials")];
    let token = |secret: &'static str| {
        http.post(format!("http://{idp}/token"))
            .basic_auth("svc", Some(secret))
            .form(&form)
            .send()
    };
    assert_eq!(token("wrong").await.unwrap().status(), 401);
    let answer: serde_json::Value = token("s3cret").await.unwrap().json().await.unwrap();
    assert_eq!(answer["expires_in"], 90);
    let jwt = answer["access_token"].as_str().unwrap();
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::RS256);
    validation.set_issuer(&["http://idp.test:4444"]);
    validation.validate_aud = false;
    jsonwebtoken::decode::<serde_json::Value>(jwt, &testkit::FakeIdp::decoding_key(), &validation)
        .expect("a token issued as the public URL");

    let echoed = get_json(format!("{upstream}/hello")).await;
    assert_eq!(echoed["path"], "/hello");

    let pid = child.0.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let mut status = None;
    testkit::wait::wait_until("it exits after SIGTERM", Duration::from_secs(5), || {
        status = child.0.try_wait().unwrap();
        status.is_some()
    });
    let status = status.unwrap();
    assert!(status.success(), "{status}");
}

#[test]
fn a_client_secret_from_a_missing_variable_is_a_usage_error() {
    let out = Command::new(env!("CARGO_BIN_EXE_chaos"))
        .args(["doubles", "--client", "svc=env:TOKENGATE_TEST_UNSET"])
        .env_remove("TOKENGATE_TEST_UNSET")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("client svc: TOKENGATE_TEST_UNSET is not set"),
        "{err}"
    );
}
