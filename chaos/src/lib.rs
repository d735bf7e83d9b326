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
//! The harness around them:
//!
//! - [`fleet`]: a fleet of real processes (gateway nodes, Redis or three cache nodes) started
//!   from the built binaries ([`procs`]), behind a round-robin TCP [`balancer`], with a cuttable
//!   [`relay`] on each gateway's link to Redis;
//! - [`driver`]: open-loop load from many client identities, every outcome kept;
//! - [`fill`]: the shared cache at production size (`chaos fill`);
//! - [`scenario`]: the faults, [`run`]: one experiment and its invariants, [`report`]: the
//!   terminal table, JSON and the SVG timeline.
//!
//! The doubles run in the harness's (or test's) process, on loopback, on ports the OS picks.
//! The processes under test are real.

#![forbid(unsafe_code)]

pub mod balancer;
pub mod driver;
pub mod fill;
pub mod fleet;
pub mod idp;
pub mod otlp;
pub mod procs;
pub mod relay;
pub mod report;
pub mod run;
pub mod scenario;
mod serve;
pub mod upstream;

pub use idp::{FakeIdp, IdpMode, Lies};
pub use upstream::EchoUpstream;
