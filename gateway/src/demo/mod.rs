//! `gateway demo`: the whole product in one process, with nothing else to install or run.
//!
//! It binds the gateway's listeners, starts an echo upstream (like traefik/whoami) on a free
//! loopback port, served over HTTPS with a certificate from a CA generated for the run (the
//! gateway trusts that CA for this upstream only, through a `serversTransports` entry), registers two clients with fresh random secrets at the gateway's own issuer,
//! and configures three routes, one per flow:
//!
//! - `/api`: tokens of the gateway's issuer, verified locally (`jwt` with `gatewayIssuer`);
//! - `/app`: application-level client credentials (the caller's Basic credentials are exchanged
//!   at the token endpoint, here the gateway's own);
//! - `/gateway`: gateway-level client credentials (the gateway's own client).
//!
//! It then prints the `curl` commands to try each flow, each with a line its output contains,
//! and serves until SIGINT/SIGTERM. The configuration is an ordinary one, printed with
//! `--print-config`, so what the demo does can be reproduced with `gateway run`.

pub mod echo;
mod pki;

use std::fmt::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures_util::FutureExt;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, ConfigError};
use crate::http::{Listeners, serve};

/// The demo's clients.
const APP_CLIENT: &str = "demo-app";
const GATEWAY_CLIENT: &str = "demo-gateway";

/// Why the demo could not start.
#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    /// A listener could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The generated configuration is invalid (a bug).
    #[error("the demo configuration is invalid: {0}")]
    Config(#[from] ConfigError),
    /// The node could not start.
    #[error(transparent)]
    Start(#[from] crate::node::StartError),
    /// The demo's CA could not be made.
    #[error("cannot make the demo's certificates: {0}")]
    Pki(Box<dyn std::error::Error + Send + Sync>),
}

/// One thing to try.
pub struct Step {
    /// What it shows.
    pub title: String,
    /// A shell command line.
    pub command: String,
    /// A line (or part of one) its output contains.
    pub expect: String,
}

/// A prepared demo: listeners bound, configuration and guide written.
pub struct Demo {
    listeners: Listeners,
    upstream: TcpListener,
    pki: pki::DemoPki,
    /// The gateway configuration the demo runs.
    pub config_yaml: String,
    config: Config,
    /// The commands to try.
    pub steps: Vec<Step>,
    base: String,
    admin: String,
    upstream_url: String,
}

impl Demo {
    /// Binds the listeners and prepares the configuration.
    pub async fn prepare(listen: SocketAddr, admin_listen: SocketAddr) -> Result<Self, DemoError> {
        let bind = |addr| async move {
            TcpListener::bind(addr)
                .await
                .map_err(|source| DemoError::Bind { addr, source })
        };
        let proxy = bind(listen).await?;
        let admin = bind(admin_listen).await?;
        let upstream = bind(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).await?;
        let addr = |l: &TcpListener| l.local_addr().expect("a bound socket has an address");
        let base = format!("http://{}", reachable(addr(&proxy)));
        let admin_url = format!("http://{}", reachable(addr(&admin)));
        let upstream_url = format!("https://{}", addr(&upstream));
        let pki = pki::DemoPki::generate().map_err(DemoError::Pki)?;
        let app_secret = random_secret();
        let gateway_secret = random_secret();
        let config_yaml = config_yaml(
            addr(&proxy),
            addr(&admin),
            &base,
            &upstream_url,
            &pki.ca_file(),
            &app_secret,
            &gateway_secret,
        );
        let config = Config::from_yaml(&config_yaml)?;
        let steps = steps(&base, &app_secret);
        Ok(Self {
            listeners: Listeners {
                proxy,
                admin,
                workers: 0,
                more_proxy: Vec::new(),
            },
            upstream,
            pki,
            config_yaml,
            config,
            steps,
            base,
            admin: admin_url,
            upstream_url,
        })
    }

    /// Keeps the run's CA certificate on disk after the demo ends, so that the printed
    /// configuration stays valid; its directory.
    pub fn keep_certificates(self) -> std::path::PathBuf {
        self.pki.dir.keep()
    }

    /// The text printed when the demo starts.
    pub fn guide(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "tokengate demo: a gateway, its own OAuth2 issuer and an echo upstream, in this one process.\n"
        );
        let _ = writeln!(
            out,
            "  gateway   {}   (admin {}/readyz)",
            self.base, self.admin
        );
        let _ = writeln!(
            out,
            "  issuer    {}/.well-known/oauth-authorization-server",
            self.base
        );
        let _ = writeln!(
            out,
            "  upstream  {}   (echoes what it receives; reached over TLS, trusting a CA made for this run)\n",
            self.upstream_url
        );
        let _ = writeln!(
            out,
            "Routes: /api needs a token of the issuer with scope orders:read; /app exchanges the"
        );
        let _ = writeln!(
            out,
            "caller's Basic credentials for a token; /gateway adds the gateway's own token."
        );
        let _ = writeln!(
            out,
            "Secrets are new on every run. Try these in another terminal (same shell, in order):\n"
        );
        for (i, s) in self.steps.iter().enumerate() {
            let _ = writeln!(out, "{}. {}", i + 1, s.title);
            let _ = writeln!(out, "   $ {}", s.command);
            if !s.expect.is_empty() {
                let _ = writeln!(out, "   expect: {}", s.expect);
            }
            let _ = writeln!(out);
        }
        let _ = writeln!(
            out,
            "Stop with Ctrl-C. The configuration behind this: gateway demo --print-config"
        );
        out
    }

    /// Serves until `shutdown`, then drains.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), DemoError> {
        let handler: crate::http::Handler = Arc::new(|req, remote| {
            let resp = echo::handle(&req, remote);
            async move { resp }.boxed()
        });
        let upstream_stop = CancellationToken::new();
        let upstream = tokio::spawn(serve(
            self.upstream,
            handler,
            upstream_stop.clone(),
            Duration::from_secs(1),
            Some(Arc::clone(&self.pki.upstream)),
        ));
        let result = crate::node::run(self.config, self.listeners, shutdown, None).await;
        upstream_stop.cancel();
        let _ = upstream.await;
        drop(self.pki);
        Ok(result?)
    }
}

/// An address a local `curl` can reach: a wildcard bind is reached over loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => {
            SocketAddr::from((Ipv4Addr::LOCALHOST, addr.port()))
        }
        IpAddr::V6(ip) if ip.is_unspecified() => {
            SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, addr.port()))
        }
        _ => addr,
    }
}

fn random_secret() -> String {
    let mut b = [0u8; 18];
    rand::RngCore::fill_bytes(&mut rand::rng(), &mut b);
    URL_SAFE_NO_PAD.encode(b)
}

fn config_yaml(
    listen: SocketAddr,
    admin: SocketAddr,
    base: &str,
    upstream: &str,
    upstream_ca: &str,
    app_secret: &str,
    gateway_secret: &str,
) -> String {
    format!(
        r#"# tokengate demo configuration (secrets are generated per run; use env:/file: references in production)
listen: "{listen}"
admin:
  listen: "{admin}"
log:
  level: info
issuer:
  url: {base}
  audience: demo-api
  tokenLifetime: 10m
  clients:
    {APP_CLIENT}:
      secret: "{app_secret}"
      scopes: [orders:read, orders:write]
      claims:
        team: payments
    {GATEWAY_CLIENT}:
      secret: "{gateway_secret}"
      scopes: [inventory:read]
middlewares:
  issuer-tokens:
    jwt:
      gatewayIssuer: true
      audience: demo-api
      claims: "SplitContains(`scope`, ` `, `orders:read`)"
      usernameClaim: client_id
      forwardHeaders:
        X-Client-Id: client_id
        X-Scope: scope
        X-Team: team
  app-credentials:
    clientCredentials:
      url: {base}/oauth2/token
      usernameClaim: client_id
      forwardHeaders:
        X-Client-Id: client_id
  gateway-credentials:
    clientCredentials:
      url: {base}/oauth2/token
      clientId: {GATEWAY_CLIENT}
      clientSecret: "{gateway_secret}"
      forwardHeaders:
        X-Client-Id: client_id
        X-Scope: scope
serversTransports:
  demo-upstream:
    rootCAs: ["{upstream_ca}"]   # the CA made for this run; the system roots stay trusted too
routes:
  - name: issuer-protected
    match: {{ pathPrefix: /api }}
    middlewares: [issuer-tokens]
    upstream: {{ urls: ["{upstream}"], serversTransport: demo-upstream }}
  - name: app-level
    match: {{ pathPrefix: /app }}
    middlewares: [app-credentials]
    upstream: {{ urls: ["{upstream}"], serversTransport: demo-upstream }}
  - name: gateway-level
    match: {{ pathPrefix: /gateway }}
    middlewares: [gateway-credentials]
    upstream: {{ urls: ["{upstream}"], serversTransport: demo-upstream }}
"#
    )
}

fn steps(base: &str, app_secret: &str) -> Vec<Step> {
    let token_url = format!("{base}/oauth2/token");
    let app = format!("{APP_CLIENT}:{app_secret}");
    let extract = r#"sed -E 's/.*"access_token":"([^"]+)".*/\1/'"#;
    let step = |title: &str, command: String, expect: &str| Step {
        title: title.into(),
        command,
        expect: expect.into(),
    };
    vec![
        step(
            "The issuer's metadata (RFC 8414):",
            format!("curl -s {base}/.well-known/oauth-authorization-server"),
            &format!(r#""token_endpoint":"{token_url}""#),
        ),
        step(
            "A token for demo-app (client credentials, RFC 6749 §4.4):",
            format!(
                "curl -s -u {app} -d grant_type=client_credentials -d scope=orders:read {token_url}"
            ),
            r#""token_type":"Bearer""#,
        ),
        step(
            "Keep one in $TOKEN:",
            format!(
                "TOKEN=$(curl -s -u {app} -d grant_type=client_credentials {token_url} | {extract})"
            ),
            "",
        ),
        step(
            "Call the route protected by the issuer's tokens; the upstream sees the verified claims:",
            format!(r#"curl -s -H "Authorization: Bearer $TOKEN" {base}/api/orders"#),
            "X-Client-Id: demo-app",
        ),
        step(
            "The same token in the gateway's own header:",
            format!(r#"curl -s -H "X-Tokengate-Auth: $TOKEN" {base}/api/orders"#),
            "X-Team: payments",
        ),
        step(
            "No token: 401 with an RFC 6750 challenge:",
            format!("curl -si {base}/api/orders"),
            r#"www-authenticate: Bearer realm="tokengate""#,
        ),
        step(
            "A token without scope orders:read: 403 insufficient_scope:",
            format!(
                r#"curl -s -H "Authorization: Bearer $(curl -s -u {app} -d grant_type=client_credentials -d scope=orders:write {token_url} | {extract})" {base}/api/orders"#
            ),
            r#""error":"insufficient_scope""#,
        ),
        step(
            "Application level: the gateway exchanges your Basic credentials for a token:",
            format!("curl -s -u {app} {base}/app/orders"),
            "Authorization: Bearer ey",
        ),
        step(
            "Gateway level: the gateway adds its own client's token:",
            format!("curl -s {base}/gateway/stock"),
            "X-Client-Id: demo-gateway",
        ),
        step(
            "The token crossed TLS: the upstream was reached over HTTPS (HTTP/2 by ALPN):",
            format!("curl -s {base}/gateway/stock"),
            "Received over: TLS",
        ),
        step(
            "A wrong secret: 401 invalid_client with a Basic challenge:",
            format!("curl -si -u {APP_CLIENT}:wrong -d grant_type=client_credentials {token_url}"),
            r#"www-authenticate: Basic realm="tokengate-issuer""#,
        ),
    ]
}
