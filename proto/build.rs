//! Compiles the Whistle contract with the vendored protoc, so no system protoc is needed.

use std::path::PathBuf;

const PROTOS: &[&str] = &[
    "whistle/types/v1/types.proto",
    "whistle/events/v1/events.proto",
    "whistle/intake/v1/intake.proto",
    "whistle/dispatch/v1/dispatch.proto",
    "whistle/gateway/v1/gateway.proto",
    "whistle/evaluation/v1/evaluation.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    let well_known_types = protoc_bin_vendored::include_path()?;
    let well_known_types = well_known_types
        .to_str()
        .ok_or("vendored protoc include path is not UTF-8")?;
    let includes = [".", well_known_types];
    tonic_prost_build::configure()
        // undecodable requests are INVALID_ARGUMENT naming the field, not INTERNAL (src/codec.rs)
        .codec_path("crate::codec::WhistleCodec")
        .file_descriptor_set_path(out_dir.join("whistle_descriptor.bin"))
        .compile_with_config(config, PROTOS, &includes)?;
    println!("cargo:rerun-if-changed=whistle");
    Ok(())
}
