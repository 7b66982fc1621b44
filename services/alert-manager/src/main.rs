//! `alert-manager` binary: parses configuration and runs [`alert_manager::serve`].

use anyhow::Context;
use clap::Parser;

#[tokio::main]
async fn main() -> Result<(), shared::report::Report> {
    let config = alert_manager::Config::parse();
    let _telemetry = shared::telemetry::init("alert-manager", &config.telemetry, &config.tls)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    alert_manager::serve(listener, config, shared::shutdown::signal()).await?;
    Ok(())
}
