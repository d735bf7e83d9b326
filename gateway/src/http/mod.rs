//! HTTP plumbing shared by every server in the binary (the proxy, the issuer, the demo's echo
//! upstream, the admin listeners, the cache node's metrics): the boxed body type, the answers
//! the gateway writes itself, and the accept loop with its connection bounds and graceful
//! shutdown.
//!
//! This is a leaf: it knows nothing of routes, middlewares or tokens. Errors of the layers above
//! become responses through [`IntoResponse`].

pub mod body;
mod peer;
pub mod response;
pub mod serve;
pub mod tls;

pub use body::{BoxBody, BoxError, full};
pub use response::IntoResponse;
pub use serve::{
    ConnectionSlot, Handler, Listeners, TransportLimits, serve, serve_on_workers, serve_with,
    worker, workers,
};

/// Whether a request with this method may be sent again without changing what it does (RFC 9110
/// §9.2.2).
pub fn idempotent(method: &::http::Method) -> bool {
    use ::http::Method;
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}
