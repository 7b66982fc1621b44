//! `gateway` binary: parses configuration and runs [`gateway::serve`].

use anyhow::Context;
use clap::Parser;
use gateway::GatewayConfig;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let config = GatewayConfig::parse();
    let _telemetry = shared::telemetry::init("gateway", &config.telemetry)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    gateway::serve(listener, config, shared::shutdown::signal()).await?;
    Ok(())
}
