//! Compiles the protos in `proto/` with protox (no `protoc` needed) and writes
//! the descriptor set that the reflection service serves.

use std::path::PathBuf;

use prost::Message;

const PROTOS: &[&str] = &[
    "code_analyzer/v1/audit.proto",
    "code_analyzer/v1/common.proto",
    "code_analyzer/v1/crew.proto",
    "code_analyzer/v1/analysis.proto",
    "code_analyzer/v1/fix.proto",
    "code_analyzer/v1/log.proto",
    "code_analyzer/v1/stats.proto",
    "code_analyzer/v1/task.proto",
    "code_analyzer/v1/report.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    // The migrations are embedded into the crate, which cargo does not track
    // by itself: a new migration folder must rebuild it.
    println!("cargo:rerun-if-changed=migrations");

    let descriptors = protox::compile(PROTOS, ["proto"])?;
    let out_dir = PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(
        out_dir.join("code_analyzer_descriptor.bin"),
        descriptors.encode_to_vec(),
    )?;

    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(descriptors)?;
    Ok(())
}
