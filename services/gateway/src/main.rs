//! `gateway` binary: parses configuration and runs [`gateway::serve`].

use anyhow::Context;
use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = gateway::Config::parse();
    let _telemetry = shared::telemetry::init("gateway", &config.telemetry)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    gateway::serve(listener, config, shared::shutdown::signal()).await?;
    Ok(())
}
