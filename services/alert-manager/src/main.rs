//! `alert-manager` binary: parses configuration and runs [`alert_manager::serve`].

use clap::Parser;

#[tokio::main]
async fn main() -> Result<(), shared::report::Report> {
    let config = alert_manager::Config::parse();
    let _telemetry = shared::telemetry::init("alert-manager", &config.telemetry, &config.tls)?;
    let listener = shared::listen::listen(config.listen).await?;
    alert_manager::serve(listener, config, shared::shutdown::signal()).await?;
    Ok(())
}
