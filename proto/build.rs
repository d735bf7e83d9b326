//! Compiles the `.proto` files with `protox` (a pure-Rust protobuf compiler), so building needs
//! no system `protoc`, then generates prost messages and tonic clients and servers.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let files = ["proto/cache.proto", "proto/raft.proto", "proto/admin.proto"];
    for f in &files {
        println!("cargo:rerun-if-changed={f}");
    }
    let fds = protox::compile(files, ["proto"])?;
    tonic_prost_build::configure().compile_fds(fds)?;
    Ok(())
}
