//! `gateway` binary: parses configuration, builds the runtime and runs [`gateway::serve`].

use anyhow::Context;
use clap::Parser;
use gateway::GatewayConfig;

fn main() -> Result<(), shared::report::Report> {
    let config = GatewayConfig::parse();
    let threads = match config.worker_threads {
        0 => (std::thread::available_parallelism().map_or(1, |n| n.get()) / 2).max(1),
        n => n,
    };
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(threads)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?
        .block_on(run(config))
}

async fn run(config: GatewayConfig) -> Result<(), shared::report::Report> {
    let _telemetry = shared::telemetry::init("gateway", &config.telemetry, &config.tls)?;
    let listener = shared::listen::listen(config.listen).await?;
    gateway::serve(listener, config, shared::shutdown::signal()).await?;
    Ok(())
}
