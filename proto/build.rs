//! Compiles `proto/lockstep/v1/*.proto` into tonic clients and servers.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/lockstep/v1/common.proto",
        "proto/lockstep/v1/agent.proto",
        "proto/lockstep/v1/coordinator.proto",
        "proto/lockstep/v1/control.proto",
    ];
    for proto in protos {
        println!("cargo:rerun-if-changed={proto}");
    }
    // Smaller per-call buffers: see src/codec.rs.
    tonic_prost_build::configure()
        .codec_path("crate::codec::LeanCodec")
        .compile_protos(&protos, &["proto"])?;
    Ok(())
}
