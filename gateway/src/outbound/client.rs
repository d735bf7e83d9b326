//! The node's client towards IdP endpoints: one pooled HTTP client, and every call run through
//! its endpoint's circuit breaker with bounded, jittered retries.

use std::collections::HashMap;
use std::future::Future;
use std::sync::RwLock;
use std::time::Duration;

use rand::Rng;

use super::IdpError;
use super::breaker::{BreakerConfig, Breakers};

/// First retry delay; doubled per attempt, with full jitter.
const RETRY_BASE: Duration = Duration::from_millis(100);
/// Longest single retry delay (also caps a server's `Retry-After`).
const RETRY_CAP: Duration = Duration::from_secs(2);

/// The node's client towards every configured IdP endpoint.
pub struct IdpClient {
    http: reqwest::Client,
    /// Clients of token endpoints with TLS settings of their own (`clientConfig.tls`), by the
    /// profile a refresh spec names them with.
    profiles: RwLock<HashMap<String, reqwest::Client>>,
    /// Client keys for `private_key_jwt`, by the profile a refresh spec names them with.
    keys: RwLock<HashMap<String, super::ClientKey>>,
    breakers: Breakers,
}

impl Default for IdpClient {
    fn default() -> Self {
        Self::new()
    }
}

impl IdpClient {
    /// A client with a shared connection pool and the default circuit breaker.
    pub fn new() -> Self {
        Self::with_breaker(&BreakerConfig::default())
    }

    /// A client whose per-endpoint circuit breaker opens after `cfg.failures` failed calls
    /// in a row and lets one trial call through after `cfg.cooldown`.
    pub fn with_breaker(cfg: &BreakerConfig) -> Self {
        let http = super::client_builder()
            .build()
            .expect("reqwest client builds with static options");
        Self {
            http,
            profiles: RwLock::new(HashMap::new()),
            keys: RwLock::new(HashMap::new()),
            breakers: Breakers::new(*cfg),
        }
    }

    /// The pooled HTTP client, for endpoints configured without TLS options of their own.
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// Makes `client` the one for token requests that name TLS profile `profile`.
    pub fn register(&self, profile: &str, client: reqwest::Client) {
        self.profiles
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(profile.to_owned(), client);
    }

    /// Makes `key` the one for refresh specs naming its profile (`private_key_jwt`).
    pub fn register_key(&self, key: &super::ClientKey) {
        self.keys
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .insert(key.profile().to_owned(), key.clone());
    }

    /// The client key a refresh spec names; `None` when this node has none of that profile.
    pub fn key_for(&self, profile: &str) -> Option<super::ClientKey> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(profile)
            .cloned()
    }

    /// The client for requests naming `profile` (`None`: the shared one); `None` when this node
    /// has no endpoint configured with that profile.
    pub fn http_for(&self, profile: Option<&str>) -> Option<reqwest::Client> {
        match profile {
            None => Some(self.http.clone()),
            Some(p) => self
                .profiles
                .read()
                .unwrap_or_else(|p| p.into_inner())
                .get(p)
                .cloned(),
        }
    }

    /// Whether `endpoint`'s circuit is open.
    pub fn is_open(&self, endpoint: &str) -> bool {
        self.breakers.is_open(endpoint)
    }

    /// Runs one call to an IdP endpoint (token, introspection, key set) through the endpoint's
    /// circuit breaker, retrying `attempt` up to `retries` times with jittered backoff when it
    /// fails retryably (it may return the server's `Retry-After`).
    pub async fn call<T, F, Fut>(
        &self,
        endpoint: &str,
        retries: u32,
        mut attempt: F,
    ) -> Result<T, IdpError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, (IdpError, Option<Duration>)>>,
    {
        let admitted = self.breakers.admit(endpoint)?;
        let mut tries = 0;
        let started = tokio::time::Instant::now();
        let result = loop {
            match attempt().await {
                Err((e, server_wait)) if e.is_retryable() && tries < retries => {
                    tracing::debug!(endpoint, error = %e, "IdP call failed; retrying");
                    let backoff = RETRY_BASE.saturating_mul(1 << tries.min(10)).min(RETRY_CAP);
                    let jittered = rand::rng().random_range(Duration::ZERO..=backoff);
                    tokio::time::sleep(server_wait.map_or(jittered, |w| w.min(RETRY_CAP))).await;
                    tries += 1;
                }
                other => break other.map_err(|(e, _)| e),
            }
        };
        admitted.record(result.as_ref().err());
        crate::telemetry::metrics::metrics()
            .idp_call(result.is_ok(), started.elapsed().as_secs_f64());
        result
    }
}
