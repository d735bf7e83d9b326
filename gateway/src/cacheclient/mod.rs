//! The client side of the Raft cache service, shared by everything that calls it: the `raft`
//! store backend (gateways), `cachectl`, and a cache node joining a cluster.
//!
//! - [`dial`]: channels to cache nodes (plain or TLS) and the per-role bearer secret.
//! - [`convert`]: the protobuf forms of keys and sealed entries, checked on the way in.
//! - Leader following: a follower refuses a write with `UNAVAILABLE` and names the leader in
//!   [`LEADER_METADATA`]; [`leader_hint`] reads it, and a client follows it only to an address it
//!   was configured with (or one whose certificate it verifies), so a credential never goes where
//!   a node, rather than the operator, pointed.

pub mod convert;
pub mod dial;

pub use dial::{Bearer, Dialer, bearer};

/// gRPC metadata naming the leader's address on a follower's `UNAVAILABLE` answer.
pub const LEADER_METADATA: &str = "tokengate-leader";

/// The leader a refusal names, if any.
pub fn leader_hint(status: &tonic::Status) -> Option<&str> {
    status
        .metadata()
        .get(LEADER_METADATA)
        .and_then(|v| v.to_str().ok())
}
