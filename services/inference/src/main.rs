//! `inference` binary: parses configuration and runs [`inference::serve`].

use anyhow::Context;
use clap::Parser;
use inference::InferenceConfig;

#[tokio::main]
async fn main() -> Result<(), shared::report::Report> {
    let config = InferenceConfig::parse();
    let _telemetry = shared::telemetry::init("inference", &config.telemetry, &config.tls)?;
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    inference::serve(listener, config, shared::shutdown::signal()).await?;
    Ok(())
}
