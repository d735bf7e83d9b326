//! What tracing costs: proxy throughput of a release-built `gateway run` process with span
//! export off, at sampling 0.01 and at 1.0, exporting over OTLP/gRPC to an in-process receiver.
//!
//! Each mode gets its own gateway process (an application-level client credentials route to an
//! echo upstream, tokens from the fake IdP, memory store, access log on), driven as `process`
//! describes. At sampling 1.0 the receiver in this process decodes every span it is sent, on
//! the same cores as the gateway.
//!
//! Run with `cargo bench -p gateway --bench tracing`.

mod process;

use std::time::Duration;

use process::{CLIENTS, Gateway, Mode};
use testkit::otlp::Collector;
use testkit::{EchoUpstream, FakeIdp};

/// Lets the receiver take in the last exported batches before the next mode.
const SETTLE: Duration = Duration::from_secs(3);

fn main() {
    process::runtime().block_on(async {
        let (idp, upstream, collector) = (
            FakeIdp::start().await,
            EchoUpstream::start().await,
            Collector::start().await,
        );
        idp.set_token_lifetime(Duration::from_secs(3600));
        for c in 0..CLIENTS {
            idp.register(&format!("client-{c}"), &format!("secret-{c}"));
        }
        let endpoint = collector.endpoint();
        let traced = |rate: &str| {
            format!(
                "telemetry: {{ tracing: {{ sampleRate: {rate}, otlp: {{ grpc: {{ endpoint: \"{endpoint}\" }} }} }} }}"
            )
        };
        let mode = |name: &str, telemetry: String| {
            let config = format!(
                r#"{telemetry}
middlewares:
  app:
    clientCredentials: {{ url: {url}, scopes: [read] }}
routes:
  - {{ name: app, match: {{ pathPrefix: / }}, middlewares: [app], upstream: {{ urls: [{up}] }} }}
"#,
                url = idp.token_url(),
                up = upstream.url(),
            );
            Mode {
                name: name.to_owned(),
                start: Box::new(move || {
                    Gateway::start(&config, &[("OTEL_BSP_MAX_QUEUE_SIZE", "65536")])
                }),
                client: reqwest::Client::builder()
                    .pool_max_idle_per_host(process::CONCURRENCY)
                    .build()
                    .unwrap(),
                scheme: "http",
                path: "/x",
            }
        };
        let modes = [
            mode("off", String::new()),
            mode("sampling 0.01", traced("0.01")),
            mode("sampling 1.0", traced("1.0")),
        ];
        process::rounds(&modes, SETTLE).await;
        println!("spans received: {}", collector.spans().len());
    });
}
