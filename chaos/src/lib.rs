//! tokengate's chaos and load harness.
//!
//! # Layout
//!
//! - [`idp`]: a fake OAuth2 identity provider (RFC 6749 token endpoint, RS256 JWTs, JWKS) with
//!   per-client counters and switchable latency, error and outage modes.
//! - [`upstream`]: an echo upstream that records every request it receives.
//! - [`otlp`]: an OTLP/gRPC trace receiver that keeps what it is sent, for tracing tests.
//! - `serve`: the small hyper accept loop both share, which records a server span per request
//!   once a double is given a tracer.
//!
//! These are test doubles: they run in the test's process, on loopback, on ports the OS picks.
//! The processes under test (gateway nodes) are real.

#![forbid(unsafe_code)]

pub mod idp;
pub mod otlp;
mod serve;
pub mod upstream;

pub use idp::{FakeIdp, IdpMode, Lies};
pub use upstream::EchoUpstream;
