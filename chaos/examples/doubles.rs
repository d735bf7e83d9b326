//! Runs the fake IdP on 127.0.0.1:4444 and echo upstreams on :8081 and :8082, the addresses of
//! `deploy/gateway.example.yaml`, until Ctrl-C. Registered clients:
//!
//! - `demo-app` / `demo-secret`: for the application-level route (`/app`);
//! - `gateway` / the value of `GW_SECRET` (default `example-secret`): the gateway-level route.

use chaos::{EchoUpstream, FakeIdp};

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let idp = FakeIdp::start_on(([127, 0, 0, 1], 4444).into()).await?;
    idp.register("demo-app", "demo-secret");
    idp.register(
        "gateway",
        &std::env::var("GW_SECRET").unwrap_or_else(|_| "example-secret".into()),
    );
    let _a = EchoUpstream::start_on(([127, 0, 0, 1], 8081).into()).await?;
    let _b = EchoUpstream::start_on(([127, 0, 0, 1], 8082).into()).await?;
    println!(
        "fake IdP at {} (clients: demo-app/demo-secret, gateway/$GW_SECRET)",
        idp.token_url()
    );
    println!("echo upstreams at http://127.0.0.1:8081 and http://127.0.0.1:8082; Ctrl-C stops");
    tokio::signal::ctrl_c().await
}
