//! What routing and shaping cost on the cache-hit path: a release-built gateway with its one
//! route matching `/`, against one whose request is matched by a Traefik rule among 50 routes
//! (host, path, method and header conditions, the matching route tried last but one) and then
//! has its path stripped and rewritten and three header rules applied, and against one with
//! 10,000 routes (5,000 by host, 4,999 by path prefix, the driven one among them), driven as
//! `process` describes. All forward an application-level client credentials route to the same
//! echo upstream.
//!
//! Run with `cargo bench -p gateway --bench routing`.

mod process;

use std::fmt::Write as _;
use std::time::Duration;

use process::{CLIENTS, CONCURRENCY, Gateway, Mode};
use testkit::{EchoUpstream, FakeIdp};

/// Routes that do not match the driven request.
const OTHER_ROUTES: usize = 49;
/// Routes of the many-routes mode.
const MANY_ROUTES: usize = 10_000;

fn main() {
    process::runtime().block_on(async {
        let idp = FakeIdp::start().await;
        let upstream = EchoUpstream::start().await;
        upstream.verify_tokens(FakeIdp::decoding_key(), false);
        idp.set_token_lifetime(Duration::from_secs(3600));
        for c in 0..CLIENTS {
            idp.register(&format!("client-{c}"), &format!("secret-{c}"));
        }
        let (url, up) = (idp.token_url(), upstream.url());
        let plain = format!(
            "middlewares:\n  app: {{ clientCredentials: {{ url: {url} }} }}\nroutes:\n  - {{ name: app, match: {{ pathPrefix: / }}, middlewares: [app], upstream: {{ urls: [{up}] }} }}\n"
        );
        let mut shaped = format!(
            r#"middlewares:
  app: {{ clientCredentials: {{ url: {url} }} }}
  strip: {{ stripPrefix: {{ prefixes: [/v1] }} }}
  legacy: {{ replacePathRegex: {{ regex: "^/x$", replacement: /items/x }} }}
  shape: {{ headers: {{ customRequestHeaders: {{ X-Env: prod, X-Debug: "" }}, customResponseHeaders: {{ X-Frame-Options: DENY }} }} }}
routes:
"#
        );
        // Longer rules than the driven one's, so they are tried first.
        for i in 0..OTHER_ROUTES {
            writeln!(
                shaped,
                "  - {{ name: r{i}, match: {{ rule: \"Host(`svc{i}.example.com`) && PathPrefix(`/v1/orders/{i}`) && (Method(`GET`) || Method(`POST`)) && Header(`X-Tenant`, `t{i}`)\" }}, middlewares: [app], upstream: {{ urls: [{up}] }} }}"
            )
            .unwrap();
        }
        writeln!(
            shaped,
            "  - {{ name: app, match: {{ rule: \"PathPrefix(`/v1`) && Method(`GET`) && !Header(`X-Canary`, `1`)\" }}, middlewares: [app, strip, legacy, shape], upstream: {{ urls: [{up}] }} }}\n  - {{ name: rest, match: {{ pathPrefix: / }}, upstream: {{ urls: [{up}] }} }}"
        )
        .unwrap();
        // A multi-tenant fleet's table: half the routes by host, half by path prefix.
        let mut many = format!(
            "middlewares:\n  app: {{ clientCredentials: {{ url: {url} }} }}\nroutes:\n"
        );
        for i in 0..MANY_ROUTES / 2 {
            writeln!(
                many,
                "  - {{ name: h{i}, match: {{ host: svc{i}.example.com, pathPrefix: / }}, middlewares: [app], upstream: {{ urls: [{up}] }} }}"
            )
            .unwrap();
        }
        for i in 0..MANY_ROUTES / 2 - 1 {
            writeln!(
                many,
                "  - {{ name: p{i}, match: {{ pathPrefix: /svc{i}/ }}, middlewares: [app], upstream: {{ urls: [{up}] }} }}"
            )
            .unwrap();
        }
        writeln!(
            many,
            "  - {{ name: app, match: {{ pathPrefix: /x }}, middlewares: [app], upstream: {{ urls: [{up}] }} }}"
        )
        .unwrap();
        let mode = |name: &str, config: String, path: &'static str| Mode {
            name: name.to_owned(),
            start: Box::new(move || Gateway::start(&config, &[])),
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(CONCURRENCY)
                .build()
                .unwrap(),
            scheme: "http",
            path,
        };
        let modes = [
            mode("one route", plain, "/x"),
            mode("50 rule routes, rewrites, header rules", shaped, "/v1/x"),
            mode("10,000 routes", many, "/x"),
        ];
        process::rounds(&modes, Duration::from_secs(1)).await;
        let v = upstream.verdicts();
        assert!(v.checked > 0 && v.bad() == 0, "{v:?}");
    });
}
