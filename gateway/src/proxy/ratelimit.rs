//! The `rateLimit` middleware (Traefik's options, plus `clientId` and `failureModeDeny`): at
//! most `average` requests per `period` with bursts of `burst`, per route and per source
//! (the caller's client identity, its address, a header's value or the host), answered `429`
//! with `Retry-After` past it.
//!
//! The limit is kept by the configured store, so it holds for the fleet when the store is
//! shared (Redis, the cache service) and per node with the memory store. The source never
//! reaches the store in clear: the key is a hash of it under the fleet key, scoped to the
//! route and the middleware. When the store cannot answer, requests pass
//! (`failureModeDeny: false`, the default: a limiter should not take a service down with it)
//! or are refused with 503.

use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, StatusCode};
use prometheus::IntCounter;

use crate::http::BoxBody;
use crate::http::response::{self, with_retry_after};
use crate::lifecycle::TokenCache;
use crate::store::TokenStore;
use crate::store::rate::RateLimit;
use crate::token::KeyDeriver;

/// What a request is counted against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// The client identity the route's authentication established, else the caller's address.
    ClientId,
    /// The caller's address, as `forwardedHeaders.trustedIPs` resolves it (`ipStrategy`).
    ClientIp,
    /// A request header's value, else the caller's address (`requestHeaderName`).
    RequestHeader(HeaderName),
    /// The request's host (`requestHost`).
    RequestHost,
}

/// `rateLimit`, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimitPolicy {
    /// The limit.
    pub limit: RateLimit,
    /// What requests are counted against.
    pub source: Source,
    /// Refuse requests (503) when the store cannot answer, rather than let them pass.
    pub failure_mode_deny: bool,
}

/// What a request is counted as, once the route has authenticated it.
pub struct Subject<'a> {
    /// The client identity, if authentication established one.
    pub client: Option<&'a str>,
    /// The caller's address.
    pub address: std::net::IpAddr,
    /// The request's headers.
    pub headers: &'a http::HeaderMap,
    /// The request's host.
    pub host: Option<&'a str>,
}

/// One `rateLimit` middleware on one route.
pub struct RouteRateLimit {
    policy: RateLimitPolicy,
    keys: KeyDeriver,
    cache: Arc<TokenCache>,
    limited: IntCounter,
    store_errors: IntCounter,
}

impl RouteRateLimit {
    /// The limit `policy` of middleware `middleware` on route `route`, kept in `cache`'s store.
    pub fn new(
        route: &str,
        middleware: &str,
        policy: RateLimitPolicy,
        cache: &Arc<TokenCache>,
    ) -> Self {
        let metrics = crate::telemetry::metrics::metrics();
        Self {
            keys: KeyDeriver::labelled(
                cache.fleet(),
                "tokengate rate limit v1",
                &format!("{route}\u{0}{middleware}"),
            ),
            policy,
            cache: Arc::clone(cache),
            limited: metrics.rate_limited(route, "limited"),
            store_errors: metrics.rate_limited(route, "store_error"),
        }
    }

    /// Counts the request; the refusal if it is over the limit.
    pub async fn check(&self, subject: &Subject<'_>) -> Result<(), http::Response<BoxBody>> {
        let address = || subject.address.to_string();
        let source = match &self.policy.source {
            Source::ClientId => subject.client.map_or_else(address, str::to_owned),
            Source::ClientIp => address(),
            Source::RequestHeader(name) => subject.headers.get(name).map_or_else(address, |v| {
                String::from_utf8_lossy(v.as_bytes()).into_owned()
            }),
            Source::RequestHost => subject.host.unwrap_or_default().to_owned(),
        };
        let key = self.keys.token(&source);
        match self.cache.store().take_rate(&key, self.policy.limit).await {
            Ok(None) => Ok(()),
            Ok(Some(wait)) => {
                self.limited.inc();
                Err(with_retry_after(
                    response::error(
                        StatusCode::TOO_MANY_REQUESTS,
                        "rate_limited",
                        "too many requests; retry later",
                    ),
                    retry_after_secs(wait),
                ))
            }
            Err(error) => {
                self.store_errors.inc();
                tracing::debug!(%error, "rate limit not checked: the store did not answer");
                if self.policy.failure_mode_deny {
                    Err(with_retry_after(
                        response::error(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "temporarily_unavailable",
                            "the rate limit cannot be checked; retry later",
                        ),
                        1,
                    ))
                } else {
                    Ok(())
                }
            }
        }
    }
}

/// `Retry-After` in whole seconds, at least 1.
fn retry_after_secs(wait: Duration) -> u64 {
    (wait.as_secs_f64().ceil() as u64).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_rounds_up_to_whole_seconds() {
        assert_eq!(retry_after_secs(Duration::from_millis(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
    }
}
