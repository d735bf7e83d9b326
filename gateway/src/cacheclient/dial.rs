//! Dialing cache nodes: plain gRPC or TLS, and the per-role bearer secret sent as metadata.

use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};

use crate::outbound::StoreTls;
use crate::secret::Secret;

/// `authorization: Bearer <secret>` as gRPC metadata.
pub type Bearer = tonic::metadata::MetadataValue<tonic::metadata::Ascii>;

/// The metadata value for `secret`; `None` without one (or one that cannot be a header).
pub fn bearer(secret: Option<&Secret>) -> Option<Bearer> {
    secret.and_then(|s| format!("Bearer {}", s.expose()).parse().ok())
}

/// How a process dials cache nodes: plain gRPC, or TLS (server verified against a CA bundle or
/// the webpki roots, and a client certificate when the nodes require one). Gateways, cachectl
/// and the nodes themselves (towards their peers) dial the same way.
#[derive(Clone)]
pub struct Dialer {
    tls: Option<ClientTlsConfig>,
    patience: Duration,
}

impl Default for Dialer {
    fn default() -> Self {
        Self {
            tls: None,
            patience: DEFAULT_PATIENCE,
        }
    }
}

/// How long a connection attempt, or an HTTP/2 ping on an open connection, may go unanswered
/// before the connection is given up and the next call dials again.
pub const DEFAULT_PATIENCE: Duration = Duration::from_secs(1);

impl Dialer {
    /// Dials plain gRPC, or TLS as `tls` says.
    pub fn new(tls: Option<&StoreTls>) -> Self {
        let tls = tls.map(|t| {
            let cfg = ClientTlsConfig::new();
            let cfg = match &t.ca {
                Some(ca) => cfg.ca_certificate(Certificate::from_pem(ca)),
                None => cfg.with_webpki_roots(),
            };
            match &t.client {
                Some((cert, key)) => cfg.identity(Identity::from_pem(cert, key.expose())),
                None => cfg,
            }
        });
        Self {
            tls,
            patience: DEFAULT_PATIENCE,
        }
    }

    /// Gives up a connection attempt, or an open connection whose HTTP/2 ping goes unanswered,
    /// after `patience` (pinged every `patience`, idle or not). A node that dies takes its
    /// connections with it without a reset, and one that comes back at the same address does
    /// not know them: without pings, calls on such a connection go unanswered until TCP's
    /// retransmissions, seconds apart, reach the new node and draw a reset.
    pub fn patience(mut self, patience: Duration) -> Self {
        self.patience = patience;
        self
    }

    /// How long it waits on a connection attempt or a ping ([`Dialer::patience`]).
    pub fn patience_of(&self) -> Duration {
        self.patience
    }

    /// Whether servers are verified by certificate (TLS): a server dialed by name proves it
    /// holds that name.
    pub fn verifies_servers(&self) -> bool {
        self.tls.is_some()
    }

    /// A lazily connected gRPC channel to `addr` (`host:port`). The server's certificate must
    /// name the host as given (a DNS name, or an IP address in its subjectAltName).
    pub fn channel(&self, addr: &str) -> Result<Channel, tonic::transport::Error> {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        let mut endpoint = tonic::transport::Endpoint::from_shared(format!("{scheme}://{addr}"))?
            .connect_timeout(self.patience)
            .http2_keep_alive_interval(self.patience)
            .keep_alive_timeout(self.patience)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true);
        if let Some(tls) = &self.tls {
            endpoint = endpoint.tls_config(tls.clone())?;
        }
        Ok(endpoint.connect_lazy())
    }
}
