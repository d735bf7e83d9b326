//! tokengate's test kit: everything the gateway's tests, its benches and the chaos harness share,
//! written once.
//!
//! # Layout
//!
//! Doubles (in the test's own process, on loopback, on ports the OS picks):
//!
//! - [`idp`]: a fake OAuth2 identity provider (RFC 6749 token endpoint, RFC 7662
//!   introspection, RS256/ES256 JWTs, JWKS with rotation, OIDC discovery) with per-client
//!   counters and switchable latency, error, outage and lying modes.
//! - [`upstream`]: an echo upstream that records every request it receives.
//! - [`otlp`]: an OTLP/gRPC trace receiver that keeps what it is sent.
//! - `serve`: the small hyper accept loop the doubles share, which records a server span per
//!   request once a double is given a tracer.
//!
//! Plumbing:
//!
//! - [`procs`]: real processes under test (started, killed, paused, restarted, always killed
//!   when dropped), the ports they listen on, and sibling binaries of the workspace built once.
//! - [`relay`]: a TCP relay that can be cut (a partition); [`balancer`]: round-robin TCP.
//! - [`redis`]: a real `redis-server` or `redis-sentinel`; [`tls`]: a throw-away CA and
//!   certificates.
//! - [`wait`]: polling a condition with a deadline, instead of sleeping.

#![forbid(unsafe_code)]

pub mod balancer;
pub mod idp;
pub mod otlp;
pub mod procs;
pub mod redis;
pub mod relay;
mod serve;
pub mod tls;
pub mod upstream;
pub mod wait;

pub use idp::{FakeIdp, IdpMode, Lies};
pub use upstream::EchoUpstream;
pub use wait::eventually;
