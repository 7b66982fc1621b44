//! `metrics-collector` binary: parses configuration and runs [`metrics_collector::serve`].

use anyhow::Context;
use clap::Parser;

/// mimalloc: decoding OTLP allocates and frees many small strings from several threads, where
/// glibc's allocator spent a third of the ingest time (measured with perf, see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), shared::report::Report> {
    let config = metrics_collector::Config::parse();
    let _telemetry = shared::telemetry::init("metrics-collector", &config.telemetry, &config.tls)?;
    let grpc = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let http = tokio::net::TcpListener::bind(config.http_listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.http_listen))?;
    metrics_collector::serve(grpc, http, config, shared::shutdown::signal()).await?;
    Ok(())
}
