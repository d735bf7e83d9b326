//! tokengate's chaos and load harness. The doubles it drives (the fake IdP, the echo upstream,
//! the OTLP receiver), the relays and balancer, and process handles come from the test kit
//! (`tokengate-testkit`), shared with the gateway's tests and benches.
//!
//! # Layout
//!
//! - [`fleet`]: a fleet of real processes (gateway nodes, Redis or three cache nodes) started
//!   from the built binaries, behind a round-robin TCP balancer, with a cuttable relay on each
//!   gateway's link to Redis;
//! - [`driver`]: open-loop load from many client identities, every outcome kept;
//! - [`fill`]: the shared cache at production size (`chaos fill`);
//! - [`scenario`]: the faults, [`run`]: one experiment and its invariants, [`report`]: the
//!   terminal table, JSON and the SVG timeline.
//!
//! The processes under test are real.

#![forbid(unsafe_code)]

pub mod docker;
pub mod driver;
pub mod fill;
pub mod fleet;
pub mod report;
pub mod run;
pub mod scenario;
