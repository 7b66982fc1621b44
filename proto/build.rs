//! Compiles the project's `.proto` files with `protox` (pure Rust, no `protoc` needed) and
//! generates the tonic/prost code, plus an encoded descriptor set for server reflection.

use std::{env, fs, path::PathBuf};

use prost::Message;

const PROTOS: &[&str] = &[
    "inference/grpc_service.proto",
    "inference/model_config.proto",
    "serving/inference/v1/tasks.proto",
    "ecommerce/gateway/v1/gateway.proto",
    "monitoring/metrics/v1/metrics.proto",
    "monitoring/alerts/v1/alerts.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for proto in PROTOS {
        println!("cargo:rerun-if-changed={proto}");
    }
    let fds = protox::compile(PROTOS, ["."])?;
    let out = PathBuf::from(env::var("OUT_DIR")?);
    fs::write(out.join("descriptor.bin"), fds.encode_to_vec())?;
    tonic_prost_build::configure()
        // Tensor payloads are large: keep them as reference-counted `Bytes`, not `Vec<u8>`.
        .bytes(".inference")
        .compile_fds(fds)?;
    Ok(())
}
