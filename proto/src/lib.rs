//! The gRPC contracts of tokengate's Raft cache service, generated from `proto/*.proto`.
//!
//! - [`cache`]: `TokenCache`, what gateway nodes (and `cachectl`) call: entries, leases,
//!   the change stream.
//! - [`raft`]: the Raft transport between cache nodes. Its messages carry openraft's own
//!   request and response types, serialized with serde, so the wire follows openraft's
//!   definitions instead of a hand-kept copy of them.
//! - [`admin`]: cluster status and membership, for operators; every call needs a bearer token.
//! - [`snapshot`]: the binary snapshot file a cache node keeps and streams to followers.

#![forbid(unsafe_code)]
#![allow(missing_docs, clippy::all)]

/// The generated code, nested as the protobuf packages are (so that one package's messages can
/// name another's); the modules below re-export each package under a short name.
#[allow(missing_docs)]
pub mod tokengate {
    pub mod cache {
        pub mod v1 {
            tonic::include_proto!("tokengate.cache.v1");
        }
    }
    pub mod raft {
        pub mod v1 {
            tonic::include_proto!("tokengate.raft.v1");
        }
    }
    pub mod admin {
        pub mod v1 {
            tonic::include_proto!("tokengate.admin.v1");
        }
    }
    pub mod snapshot {
        pub mod v1 {
            tonic::include_proto!("tokengate.snapshot.v1");
        }
    }
}

/// `tokengate.admin.v1`.
pub use tokengate::admin::v1 as admin;
/// `tokengate.cache.v1`.
pub use tokengate::cache::v1 as cache;
/// `tokengate.raft.v1`.
pub use tokengate::raft::v1 as raft;
/// `tokengate.snapshot.v1`: the records of a cache node's snapshot file.
pub use tokengate::snapshot::v1 as snapshot;

/// One RPC of a service, as the descriptors declare it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rpc {
    /// The HTTP/2 path of the call: `/<package>.<Service>/<Method>`.
    pub path: String,
    /// Whether the server answers with a stream.
    pub server_streaming: bool,
}

/// Every RPC of every service in the `.proto` files, read from the compiled descriptors: the
/// list a new RPC joins by being declared, so authorization can be checked against all of them.
pub fn rpcs() -> Vec<Rpc> {
    let set: prost_types::FileDescriptorSet =
        prost::Message::decode(&include_bytes!(concat!(env!("OUT_DIR"), "/descriptors.bin"))[..])
            .expect("descriptors written by build.rs decode");
    let mut all = Vec::new();
    for file in &set.file {
        for service in &file.service {
            for method in &service.method {
                all.push(Rpc {
                    path: format!("/{}.{}/{}", file.package(), service.name(), method.name()),
                    server_streaming: method.server_streaming(),
                });
            }
        }
    }
    all
}
