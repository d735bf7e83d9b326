//! The admin listener: liveness and readiness for load balancers and orchestrators.
//!
//! - `GET /healthz`: 200 while the process serves at all.
//! - `GET /readyz`: 200 while the node should receive traffic; 503 once it is draining. The body
//!   says whether the shared store is reachable (a degraded store still serves from L1, so it
//!   does not make the node unready).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;

use crate::http::BoxBody;
use crate::http::response::json;
use crate::lifecycle::TokenCache;

/// Readiness state shared with the shutdown sequence.
pub struct Admin {
    cache: Arc<TokenCache>,
    draining: AtomicBool,
}

impl Admin {
    /// Admin endpoints over the node's cache.
    pub fn new(cache: Arc<TokenCache>) -> Arc<Self> {
        Arc::new(Self {
            cache,
            draining: AtomicBool::new(false),
        })
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
                json(
                    status,
                    format!(r#"{{"status":"{state}","store":"{store}"}}"#),
                )
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
