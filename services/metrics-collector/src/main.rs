//! `metrics-collector` binary: parses configuration and runs [`metrics_collector::serve`].

use clap::Parser;

/// mimalloc: decoding OTLP allocates and frees many small strings from several threads, where
/// glibc's allocator spent a third of the ingest time (measured with perf, see BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> Result<(), shared::report::Report> {
    let config = metrics_collector::Config::parse();
    let _telemetry = shared::telemetry::init("metrics-collector", &config.telemetry, &config.tls)?;
    let grpc = shared::listen::listen(config.listen).await?;
    let http = shared::listen::listen(config.http_listen).await?;
    metrics_collector::serve(grpc, http, config, shared::shutdown::signal()).await?;
    Ok(())
}
