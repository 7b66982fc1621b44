//! `inference` binary: parses configuration and runs [`inference::serve`].

use clap::Parser;
use inference::InferenceConfig;

#[tokio::main]
async fn main() -> Result<(), shared::report::Report> {
    let config = InferenceConfig::parse();
    let _telemetry = shared::telemetry::init("inference", &config.telemetry, &config.tls)?;
    let listener = shared::listen::listen(config.listen).await?;
    inference::serve(listener, config, shared::shutdown::signal()).await?;
    Ok(())
}
