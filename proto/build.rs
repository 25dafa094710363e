//! Generates the gRPC code and the file descriptor set (served by reflection) with a vendored
//! protoc, so building needs no system protoc.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // tonic-prost-build runs the protoc that PROTOC names.
    std::env::set_var("PROTOC", protoc);
    let out = PathBuf::from(std::env::var("OUT_DIR")?);
    let protos = [
        "baton/v1/market.proto",
        "baton/v1/admin.proto",
        "baton/v1/audit.proto",
    ];
    for p in &protos {
        println!("cargo:rerun-if-changed={p}");
    }
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .file_descriptor_set_path(out.join("baton_v1_descriptor.bin"))
        .compile_protos(&protos, &["."])?;
    Ok(())
}
