//! The admin listener: liveness and readiness for load balancers and orchestrators.
//!
//! - `GET /healthz`: 200 while the process serves at all.
//! - `GET /readyz`: 200 while the node should receive traffic; 503 once it is draining. The body
//!   says whether the shared store is reachable (a degraded store still serves from L1, so it
//!   does not make the node unready) and whether the last configuration reload failed.
//! - `GET /config`: the loaded configuration's fingerprint and load time, the last reload's
//!   outcome and problems, and the changed settings that wait for a restart.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::http::BoxBody;
use crate::http::response::json;
use crate::lifecycle::TokenCache;
use crate::secret::Secret;
use crate::token::{UnixMillis, now_millis};

/// What the admin listener tells about the loaded configuration; the node updates it as it
/// reloads.
#[derive(Debug, Default)]
pub struct ConfigStatus(Mutex<Status>);

#[derive(Debug, Default)]
struct Status {
    /// Fingerprint of the configuration in use (its files' contents).
    hash: String,
    loaded_at: UnixMillis,
    /// The last reload: when, and the problems that kept it from applying (none: it applied).
    last_reload: Option<(UnixMillis, Vec<String>)>,
    /// Settings changed on disk that only a restart applies.
    restart_needed: Vec<&'static str>,
}

impl ConfigStatus {
    /// The status of a configuration loaded at start with this fingerprint.
    pub fn started(hash: String) -> Self {
        Self(Mutex::new(Status {
            hash,
            loaded_at: now_millis(),
            ..Status::default()
        }))
    }

    fn status(&self) -> std::sync::MutexGuard<'_, Status> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A configuration with fingerprint `hash` is in use now; `restart_needed` lists the
    /// changed settings it could not apply.
    pub fn reloaded(&self, hash: String, restart_needed: Vec<&'static str>) {
        let mut s = self.status();
        let now = now_millis();
        s.hash = hash;
        s.loaded_at = now;
        s.last_reload = Some((now, Vec::new()));
        s.restart_needed = restart_needed;
    }

    /// A reload failed for `problems`; the configuration in use stays.
    pub fn reload_failed(&self, problems: Vec<String>) {
        self.status().last_reload = Some((now_millis(), problems));
    }

    /// Whether the last reload failed.
    pub fn last_reload_failed(&self) -> bool {
        self.status()
            .last_reload
            .as_ref()
            .is_some_and(|(_, problems)| !problems.is_empty())
    }

    /// The status as JSON (`/config`): fingerprint, load time, last reload, pending restart.
    pub fn json(&self) -> serde_json::Value {
        let s = self.status();
        serde_json::json!({
            "hash": s.hash,
            "loadedAt": s.loaded_at,
            "lastReload": s.last_reload.as_ref().map(|(at, problems)| serde_json::json!({
                "at": at,
                "outcome": if problems.is_empty() { "ok" } else { "failed" },
                "problems": problems,
            })),
            "restartNeeded": s.restart_needed,
        })
    }
}

/// Readiness state shared with the shutdown sequence.
pub struct Admin {
    cache: Arc<TokenCache>,
    config: Arc<ConfigStatus>,
    draining: AtomicBool,
    token: Option<Secret>,
}

impl Admin {
    /// Admin endpoints over the node's cache and its configuration's status; `/metrics` and
    /// `/config` need `token` as a bearer token when one is given.
    pub fn new(
        cache: Arc<TokenCache>,
        config: Arc<ConfigStatus>,
        token: Option<Secret>,
    ) -> Arc<Self> {
        Arc::new(Self {
            cache,
            config,
            draining: AtomicBool::new(false),
            token,
        })
    }

    /// Whether `req` may read `/metrics` and `/config`: no token is configured, or it bears it
    /// (compared in constant time).
    fn authorised(&self, req: &Request<Incoming>) -> bool {
        use subtle::ConstantTimeEq;
        let Some(token) = &self.token else {
            return true;
        };
        req.headers()
            .get(http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                let (scheme, rest) = v.split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| rest.trim())
            })
            .is_some_and(|given| bool::from(given.as_bytes().ct_eq(token.expose().as_bytes())))
    }

    /// Marks the node as draining: `/readyz` answers 503 from now on.
    pub fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Serves one admin request.
    pub fn handle(&self, req: &Request<Incoming>) -> Response<BoxBody> {
        match (req.method(), req.uri().path()) {
            (&http::Method::GET | &http::Method::HEAD, "/healthz") => {
                json(StatusCode::OK, r#"{"status":"ok"}"#.into())
            }
            (&http::Method::GET | &http::Method::HEAD, "/readyz") => {
                let draining = self.draining.load(Ordering::Relaxed);
                let store = if self.cache.store_degraded() {
                    "degraded"
                } else {
                    "ok"
                };
                let (status, state) = if draining {
                    (StatusCode::SERVICE_UNAVAILABLE, "draining")
                } else {
                    (StatusCode::OK, "ready")
                };
                let config = if self.config.last_reload_failed() {
                    "last reload failed"
                } else {
                    "ok"
                };
                json(
                    status,
                    format!(r#"{{"status":"{state}","store":"{store}","config":"{config}"}}"#),
                )
            }
            (&http::Method::GET | &http::Method::HEAD, "/config" | "/metrics")
                if !self.authorised(req) =>
            {
                // RFC 6750 §3: the scheme and realm, no error code for a request without one.
                let mut resp = json(
                    StatusCode::UNAUTHORIZED,
                    r#"{"error":"invalid_token","error_description":"this endpoint needs the admin token"}"#
                        .into(),
                );
                resp.headers_mut().insert(
                    http::header::WWW_AUTHENTICATE,
                    http::HeaderValue::from_static("Bearer realm=\"tokengate-admin\""),
                );
                resp
            }
            (&http::Method::GET | &http::Method::HEAD, "/config") => {
                json(StatusCode::OK, self.config.json().to_string())
            }
            (&http::Method::GET | &http::Method::HEAD, "/metrics") => {
                let mut resp = json(
                    StatusCode::OK,
                    crate::telemetry::metrics::metrics().render(),
                );
                resp.headers_mut().insert(
                    http::header::CONTENT_TYPE,
                    http::HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
                );
                resp
            }
            _ => json(StatusCode::NOT_FOUND, r#"{"error":"not_found"}"#.into()),
        }
    }
}
