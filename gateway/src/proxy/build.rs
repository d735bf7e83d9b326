//! Building the gateway from its settings: routes, middlewares, pools and their health
//! checks; rebuilding it on reload.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::router::{Route, Router};
use super::{BuildError, Gateway, ProxySettings, middleware, ratelimit, transport, upgrade};
use crate::auth::limits::{Guards, MissBudget};
use crate::auth::{Build, Middleware, MiddlewareConfig};
use crate::issuer::Issuer;
use crate::lifecycle::TokenCache;

impl Gateway {
    /// Builds the proxy from a validated configuration, serving `issuer`'s endpoints if given.
    /// Fails only if the TLS library rejects a middleware's TLS material (the files were parsed
    /// at load).
    pub fn new(
        config: ProxySettings<'_>,
        cache: &Arc<TokenCache>,
        issuer: Option<Arc<Issuer>>,
    ) -> Result<Self, BuildError> {
        Self::build(config, cache, issuer, None)
    }

    /// The proxy of a reloaded configuration. Authentication middlewares whose configuration
    /// did not change are this one's, with their state (cached introspection answers, fetched
    /// keys, budgets); upgraded connections stay tracked for the drain.
    pub fn rebuild(
        &self,
        config: ProxySettings<'_>,
        cache: &Arc<TokenCache>,
        issuer: Option<Arc<Issuer>>,
    ) -> Result<Self, BuildError> {
        Self::build(config, cache, issuer, Some(self))
    }

    fn build(
        config: ProxySettings<'_>,
        cache: &Arc<TokenCache>,
        issuer: Option<Arc<Issuer>>,
        previous: Option<&Self>,
    ) -> Result<Self, BuildError> {
        let budget = match previous {
            Some(p) if p.guards.budget.config() == &config.edge.miss_budget => {
                Arc::clone(&p.guards.budget)
            }
            _ => MissBudget::new(&config.edge.miss_budget),
        };
        let guards = Guards {
            limits: config.edge.caller_limits,
            budget,
        };
        let same_issuer = match (previous.map(|p| &p.issuer), &issuer) {
            (Some(Some(a)), Some(b)) => Arc::ptr_eq(a, b),
            (Some(None), None) => true,
            _ => false,
        };
        let with = Build {
            cache,
            guards: &guards,
            issuer_keys: issuer.as_ref().map(|i| i.jwks()),
        };
        let middlewares: BTreeMap<String, (MiddlewareConfig, Arc<Middleware>)> = config
            .middlewares
            .iter()
            .map(|(name, m)| {
                // A middleware holds its guards and, for `jwks: gateway`, the issuer's keys.
                let kept = previous
                    .filter(|p| {
                        p.guards.limits == guards.limits
                            && Arc::ptr_eq(&p.guards.budget, &guards.budget)
                    })
                    .and_then(|p| p.middlewares.get(name))
                    .filter(|(was, _)| was == m && (same_issuer || !m.uses_issuer_keys()));
                if let Some((was, built)) = kept {
                    return Ok((name.clone(), (Arc::clone(was), Arc::clone(built))));
                }
                let built = Middleware::build(name, &**m, &with)?;
                Ok((name.clone(), (Arc::clone(m), Arc::new(built))))
            })
            .collect::<Result<_, reqwest::Error>>()?;
        let transports = transport::Transports::new(config.servers_transports)?;
        for r in config.routes {
            let clear = r.upstream.servers.iter().map(|(u, _)| u).find(|u| {
                u.scheme() == "http"
                    && !matches!(u.host(), Some(url::Host::Domain("localhost")))
                    && !matches!(u.host(), Some(url::Host::Ipv4(ip)) if ip.is_loopback())
                    && !matches!(u.host(), Some(url::Host::Ipv6(ip)) if ip.is_loopback())
            });
            if let Some(u) = clear
                && !r.middlewares.is_empty()
            {
                // Not refused: a sidecar or a private network may be what the operator means.
                tracing::warn!(route = %r.name, upstream = %u, "the route's middlewares send credentials to an http:// upstream in clear; prefer https://");
            }
        }
        let shaping: BTreeMap<&str, Arc<middleware::HttpMiddleware>> = config
            .http_middlewares
            .iter()
            .map(|(name, m)| (name.as_str(), Arc::new(m.clone())))
            .collect();
        let routes = config
            .routes
            .iter()
            .map(|r| {
                let auth = r
                    .middlewares
                    .iter()
                    .filter_map(|m| middlewares.get(m.as_str()).map(|(_, b)| Arc::clone(b)))
                    .collect();
                let http = r
                    .middlewares
                    .iter()
                    .filter_map(|m| shaping.get(m.as_str()).map(Arc::clone))
                    .collect();
                let mut route = Route::new(
                    r,
                    auth,
                    http,
                    transports.get(r.servers_transport.as_deref(), r.timeouts)?,
                );
                route.rate_limits = r
                    .middlewares
                    .iter()
                    .filter_map(|m| match shaping.get(m.as_str()).map(|s| &**s) {
                        Some(middleware::HttpMiddleware::RateLimit(policy)) => Some(
                            ratelimit::RouteRateLimit::new(&r.name, m, policy.clone(), cache),
                        ),
                        _ => None,
                    })
                    .collect();
                Ok(route)
            })
            .collect::<Result<_, rustls::Error>>()?;
        Ok(Self {
            router: Router::new(routes),
            issuer,
            middlewares,
            guards,
            tunnels: previous.map_or_else(
                || Arc::new(upgrade::Tunnels::new(&config.edge.transport)),
                |p| Arc::clone(&p.tunnels),
            ),
            request_timeout: config.request_timeout,
            paths: config.edge.paths,
            forwarded: config.edge.forwarded.clone(),
            trust_caller_sampling: config.trust_caller_sampling,
            sni_strict: config.sni_strict,
        })
    }

    /// Starts the routes' active health checks (`healthCheck`), which run until `stop`.
    pub fn spawn_health_checks(
        &self,
        stop: &tokio_util::sync::CancellationToken,
    ) -> tokio::task::JoinSet<()> {
        let mut tasks = tokio::task::JoinSet::new();
        for route in self.router.routes() {
            route.pool.spawn_health_checks(
                route.clients.pooled().clone(),
                &mut tasks,
                stop.clone(),
            );
        }
        tasks
    }

    /// Lets upgraded connections run for at most `drain` after the listener stopped, then
    /// closes them.
    pub async fn drain_upgrades(&self, drain: Duration) {
        self.tunnels.drain(drain).await;
    }
}
