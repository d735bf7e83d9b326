//! End-to-end tests: real gateway processes on loopback, with the `chaos` crate's fake IdP and
//! echo upstream as the parties around them.

mod cache_auth;
mod cachectl;
mod client_assertions;
mod client_credentials;
mod cluster;
mod config_cli;
mod demo;
mod deploy;
mod docs;
mod edge;
mod idp_guide;
mod introspection;
mod issuer;
mod jwt;
mod lifecycle;
mod manifests;
mod metrics;
mod proxy;
mod raft;
mod ratelimit;
mod redis;
mod redis_ha;
mod reload;
mod routing;
mod runbooks;
mod support;
mod tls;
mod traces;
mod upstreams;
