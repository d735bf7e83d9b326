//! Route selection: by host (exact, case-insensitive) and path prefix.
//!
//! Precedence: a route naming the request's host beats any route without a host; among those,
//! the longest path prefix wins. Prefixes match as plain string prefixes, as Traefik's
//! `PathPrefix` does (`/app` matches `/app`, `/app/x` and `/apple`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use url::Url;

use super::path::EncodedCharacters;
use super::transport::UpstreamClients;
use crate::auth::Middleware;

/// A route, validated.
#[derive(Debug, Clone)]
pub struct RouteConfig {
    /// Name used in logs.
    pub name: String,
    /// Lower-cased host without port; `None` matches any host.
    pub host: Option<String>,
    /// Path prefix; `/` when omitted.
    pub path_prefix: String,
    /// Middleware names, checked to exist.
    pub middlewares: Vec<String>,
    /// Upstream base URLs, round robin.
    pub upstreams: Vec<Url>,
    /// The `serversTransports` entry its upstreams are reached through (checked to exist);
    /// `None`: the default transport.
    pub servers_transport: Option<String>,
    /// Ambiguous encoded characters allowed in this route's paths.
    pub encoded_characters: EncodedCharacters,
}

/// A route ready to serve.
pub struct Route {
    /// Name, for logs.
    pub name: String,
    host: Option<String>,
    prefix: String,
    /// Middlewares in order.
    pub middlewares: Vec<Arc<Middleware>>,
    upstreams: Vec<Url>,
    next: AtomicUsize,
    /// The clients of the route's transport.
    pub clients: UpstreamClients,
    encoded: EncodedCharacters,
}

impl Route {
    /// The path prefix the route matches.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// A route; `upstreams` must not be empty (configuration validation guarantees it).
    pub fn new(
        name: String,
        host: Option<String>,
        prefix: String,
        middlewares: Vec<Arc<Middleware>>,
        upstreams: Vec<Url>,
        clients: UpstreamClients,
    ) -> Self {
        assert!(!upstreams.is_empty(), "route {name} has no upstream");
        Self {
            name,
            host,
            prefix,
            middlewares,
            upstreams,
            next: AtomicUsize::new(0),
            clients,
            encoded: EncodedCharacters::default(),
        }
    }

    /// Allows the ambiguous encoded characters `encoded` in this route's paths.
    pub fn allowing(mut self, encoded: EncodedCharacters) -> Self {
        self.encoded = encoded;
        self
    }

    /// The ambiguous encoded characters this route's paths may contain.
    pub fn encoded_characters(&self) -> &EncodedCharacters {
        &self.encoded
    }

    /// Whether a middleware of this route attaches a token of the gateway's, so that an
    /// upstream 401 may be retried with a fresh one.
    pub fn attaches_tokens(&self) -> bool {
        self.middlewares
            .iter()
            .any(|m| matches!(**m, Middleware::ClientCredentials(_)))
    }

    /// The next upstream, round robin.
    pub fn next_upstream(&self) -> &Url {
        let i = self.next.fetch_add(1, Ordering::Relaxed);
        &self.upstreams[i % self.upstreams.len()]
    }
}

/// All routes, in precedence order.
pub struct Router {
    routes: Vec<Route>,
}

impl Router {
    /// Orders `routes` by precedence.
    pub fn new(mut routes: Vec<Route>) -> Self {
        routes.sort_by(|a, b| {
            b.host
                .is_some()
                .cmp(&a.host.is_some())
                .then(b.prefix.len().cmp(&a.prefix.len()))
        });
        Self { routes }
    }

    /// The route for a request; `host` is lower-case without port.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        self.routes.iter().find(|r| {
            r.host.as_deref().is_none_or(|h| Some(h) == host) && path.starts_with(&r.prefix)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::transport::ServersTransport;

    fn clients() -> UpstreamClients {
        ServersTransport::default().clients().unwrap()
    }

    fn route(name: &str, host: Option<&str>, prefix: &str) -> Route {
        Route::new(
            name.into(),
            host.map(Into::into),
            prefix.into(),
            vec![],
            vec!["http://u".parse().unwrap()],
            clients(),
        )
    }

    #[test]
    fn host_routes_first_then_longest_prefix() {
        let r = Router::new(vec![
            route("root", None, "/"),
            route("app", None, "/app"),
            route("app-v2", None, "/app/v2"),
            route("internal", Some("internal.localhost"), "/"),
        ]);
        let name = |h, p| r.find(h, p).map(|r| r.name.as_str());
        assert_eq!(name(None, "/app/v2/x"), Some("app-v2"));
        assert_eq!(name(None, "/app/v1"), Some("app"));
        assert_eq!(name(None, "/other"), Some("root"));
        assert_eq!(name(Some("internal.localhost"), "/app"), Some("internal"));
        assert_eq!(name(Some("else.localhost"), "/app"), Some("app"));
    }

    #[test]
    fn upstreams_rotate() {
        let r = Route::new(
            "r".into(),
            None,
            "/".into(),
            vec![],
            vec!["http://a".parse().unwrap(), "http://b".parse().unwrap()],
            clients(),
        );
        let picks: Vec<_> = (0..4)
            .map(|_| r.next_upstream().host_str().unwrap().to_owned())
            .collect();
        assert_eq!(picks, ["a", "b", "a", "b"]);
    }
}
