//! Helpers for tests that start services in-process.

use std::net::SocketAddr;

use tokio::net::TcpListener;

/// Binds `127.0.0.1:0` and returns the listener with the port the OS chose.
///
/// Tests hand the listener to a service's `serve`, so no port is ever guessed or raced for.
pub async fn ephemeral_listener() -> std::io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    Ok((listener, addr))
}
