//! The gRPC contracts of tokengate's Raft cache service, generated from `proto/*.proto`.
//!
//! - [`cache`]: `TokenCache`, what gateway nodes (and `cachectl`) call: entries, leases,
//!   the change stream.
//! - [`raft`]: the Raft transport between cache nodes. Its messages carry openraft's own
//!   request and response types, serialized with serde, so the wire follows openraft's
//!   definitions instead of a hand-kept copy of them.
//! - [`admin`]: cluster status and membership, for operators; every call needs a bearer token.

#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::all)]

/// `tokengate.cache.v1`.
pub mod cache {
    tonic::include_proto!("tokengate.cache.v1");
}

/// `tokengate.raft.v1`.
pub mod raft {
    tonic::include_proto!("tokengate.raft.v1");
}

/// `tokengate.admin.v1`.
pub mod admin {
    tonic::include_proto!("tokengate.admin.v1");
}
