//! tokengate's chaos and load harness.
//!
//! # Layout
//!
//! - [`idp`]: a fake OAuth2 identity provider (RFC 6749 token endpoint, RS256 JWTs, JWKS) with
//!   per-client counters and switchable latency, error and outage modes.
//! - [`upstream`]: an echo upstream that records every request it receives.
//! - `serve`: the small hyper accept loop both share.
//!
//! These are test doubles: they run in the test's process, on loopback, on ports the OS picks.
//! The processes under test (gateway nodes) are real.

#![forbid(unsafe_code)]

pub mod idp;
mod serve;
pub mod upstream;

pub use idp::{FakeIdp, IdpMode};
pub use upstream::EchoUpstream;
