//! TLS material of the gateway's outbound connections, with the files already read and parsed
//! at load: towards IdP endpoints ([`HttpTls`]) and towards the shared store, Redis or the
//! cache service ([`StoreTls`]).

use std::fmt;
use std::time::Duration;

use crate::secret::Secret;

/// TLS options of an HTTP client, with the files already read and parsed.
#[derive(Debug, Clone, Default)]
pub struct HttpTls {
    /// Extra trusted CA certificates (added to the system roots).
    pub ca: Vec<reqwest::Certificate>,
    /// Client certificate and key (mutual TLS).
    pub identity: Option<reqwest::Identity>,
    /// Skip server verification. For tests only.
    pub insecure_skip_verify: bool,
}

/// An HTTP client towards an IdP endpoint.
#[derive(Debug, Clone)]
pub struct HttpClientConfig {
    /// One attempt's timeout.
    pub timeout: Duration,
    /// Retries after the first attempt (transport errors, 5xx, 429).
    pub retries: u32,
    /// TLS options.
    pub tls: HttpTls,
}

impl HttpClientConfig {
    /// Builds the client. Fails only on TLS material the TLS library rejects at build time.
    pub fn build(&self) -> reqwest::Result<reqwest::Client> {
        let mut b =
            super::client_builder().danger_accept_invalid_certs(self.tls.insecure_skip_verify);
        for ca in &self.tls.ca {
            b = b.add_root_certificate(ca.clone());
        }
        if let Some(id) = &self.tls.identity {
            b = b.identity(id.clone());
        }
        b.build()
    }
}

/// TLS towards the store (Redis, or the cache service's nodes), with the files already read.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreTls {
    /// PEM CA bundle; `None` trusts the system roots.
    pub ca: Option<Vec<u8>>,
    /// PEM client certificate and key, for mutual TLS.
    pub client: Option<(Vec<u8>, Secret)>,
    /// Skip server certificate verification.
    pub insecure_skip_verify: bool,
}

impl fmt::Debug for StoreTls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoreTls")
            .field("custom_ca", &self.ca.is_some())
            .field("client_certificate", &self.client.is_some())
            .field("insecure_skip_verify", &self.insecure_skip_verify)
            .finish()
    }
}
