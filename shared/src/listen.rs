//! Opening a service's listening port.
//!
//! A port can be held for a moment by a socket that is on its way out: a connection that
//! happened to get it as its local port before it was reserved, closing. A service that
//! starts then waits for it, saying so, for up to [`BUSY_PATIENCE`], and if it stays held,
//! fails naming what holds it (on Linux, from `/proc/net/tcp`).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::time::Instant;

/// How long a service waits for its port to be given up.
pub const BUSY_PATIENCE: Duration = Duration::from_secs(10);

/// How long a service waits for its port while only connections on their way out hold it: a
/// closed connection whose local port it was stays in TIME_WAIT for 60 s on Linux (and a
/// listener cannot take the port from it), then surely gives it up.
pub const CLOSING_PATIENCE: Duration = Duration::from_secs(65);

/// Why a port could not be opened.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr}: {source}{held}")]
pub struct ListenError {
    addr: SocketAddr,
    source: std::io::Error,
    /// What holds the port, when known (with a leading separator).
    held: String,
}

/// Listens on `addr`; while another socket holds it, tries again every 250 ms for up to
/// [`BUSY_PATIENCE`], or [`CLOSING_PATIENCE`] while only closing connections hold it.
pub async fn listen(addr: SocketAddr) -> Result<TcpListener, ListenError> {
    let started = Instant::now();
    let mut warned = false;
    loop {
        match TcpListener::bind(addr).await {
            Ok(listener) => return Ok(listener),
            Err(err)
                if err.kind() == std::io::ErrorKind::AddrInUse
                    && started.elapsed() < patience(addr.port()) =>
            {
                if !warned {
                    tracing::warn!(
                        %addr,
                        held_by = holders(addr.port()).as_deref().unwrap_or("unknown"),
                        "port in use; trying again for up to {} s",
                        patience(addr.port()).as_secs()
                    );
                    warned = true;
                }
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(source) => {
                let held = if source.kind() == std::io::ErrorKind::AddrInUse {
                    holders(addr.port())
                        .map(|h| format!(" (held by {h})"))
                        .unwrap_or_default()
                } else {
                    String::new()
                };
                return Err(ListenError { addr, source, held });
            }
        }
    }
}

/// How long to wait for `port`: [`CLOSING_PATIENCE`] when every socket holding it is a
/// connection on its way out (TIME_WAIT and the other closing states), else
/// [`BUSY_PATIENCE`].
fn patience(port: u16) -> Duration {
    let held = held_by(port);
    let closing = [
        "FIN_WAIT1",
        "FIN_WAIT2",
        "TIME_WAIT",
        "CLOSE",
        "LAST_ACK",
        "CLOSING",
    ];
    let only_closing = !held.is_empty()
        && held.iter().all(|h| {
            closing
                .iter()
                .any(|state| h.ends_with(&format!("({state})")))
        });
    if only_closing {
        CLOSING_PATIENCE
    } else {
        BUSY_PATIENCE
    }
}

/// The TCP sockets with `port` as their local port, described as [`holder`] does.
fn held_by(port: u16) -> Vec<String> {
    let mut found = Vec::new();
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let Ok(text) = std::fs::read_to_string(table) else {
            continue;
        };
        found.extend(text.lines().skip(1).filter_map(|line| holder(line, port)));
    }
    found
}

/// The TCP sockets with `port` as their local port, from `/proc/net/tcp` and `tcp6`: "a
/// listener", or "a connection to 127.0.0.1:5432 (ESTABLISHED)"; `None` where unknown.
fn holders(port: u16) -> Option<String> {
    let mut found = held_by(port);
    found.sort();
    found.dedup();
    found.truncate(4);
    (!found.is_empty()).then(|| found.join(", "))
}

/// One line of `/proc/net/tcp`, described when its local port is `port`.
fn holder(line: &str, port: u16) -> Option<String> {
    let fields: Vec<&str> = line.split_whitespace().collect();
    let (local, remote, state) = (fields.get(1)?, fields.get(2)?, fields.get(3)?);
    let (_, local_port) = local.rsplit_once(':')?;
    if u16::from_str_radix(local_port, 16).ok()? != port {
        return None;
    }
    let state = match *state {
        "01" => "ESTABLISHED",
        "02" => "SYN_SENT",
        "03" => "SYN_RECV",
        "04" => "FIN_WAIT1",
        "05" => "FIN_WAIT2",
        "06" => "TIME_WAIT",
        "07" => "CLOSE",
        "08" => "CLOSE_WAIT",
        "09" => "LAST_ACK",
        "0A" => return Some("a listener".to_owned()),
        "0B" => "CLOSING",
        other => other,
    };
    Some(format!("a connection to {} ({state})", remote_addr(remote)))
}

/// `0100007F:1538` (IPv4, little-endian hex) as `127.0.0.1:5432`; IPv6 addresses as their
/// port only.
fn remote_addr(hex: &str) -> String {
    let Some((ip, port)) = hex.rsplit_once(':') else {
        return hex.to_owned();
    };
    let port = u16::from_str_radix(port, 16).unwrap_or(0);
    match u32::from_str_radix(ip, 16) {
        Ok(ip) if hex.len() == "0100007F:1538".len() => {
            // The kernel writes the address's bytes in memory order.
            format!("{}:{port}", std::net::Ipv4Addr::from(ip.to_ne_bytes()))
        }
        _ => format!("port {port}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_proc_net_tcp_line_names_the_connection_that_holds_a_port() {
        let established = "   3: 0100007F:C3A0 0100007F:1538 01 00000000:00000000 00:00000000 \
                           00000000     0        0 12345 1 0000000000000000 20 4 30 10 -1";
        assert_eq!(
            holder(established, 50080).as_deref(),
            Some("a connection to 127.0.0.1:5432 (ESTABLISHED)")
        );
        assert_eq!(holder(established, 50081), None);
        let listening = "   0: 0100007F:C3A0 00000000:0000 0A 00000000:00000000 00:00000000 \
                         00000000     0        0 1 1 0000000000000000 100 0 0 10 0";
        assert_eq!(holder(listening, 50080).as_deref(), Some("a listener"));
    }

    #[tokio::test]
    async fn a_port_held_by_a_listener_fails_after_the_wait_and_says_by_what() {
        let held = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = held.local_addr().unwrap();
        tokio::time::pause();
        let err = listen(addr).await.unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("cannot listen on {addr}: ")),
            "{message}"
        );
        if std::path::Path::new("/proc/net/tcp").exists() {
            assert!(message.ends_with("(held by a listener)"), "{message}");
        }
    }

    /// A port that was a closed connection's local port, in TIME_WAIT (Linux only).
    async fn port_in_time_wait() -> Option<SocketAddr> {
        let server = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = tokio::net::TcpSocket::new_v4().unwrap();
        client.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let port = client.local_addr().unwrap();
        let connection = client.connect(server.local_addr().unwrap()).await.unwrap();
        let (mut accepted, _) = server.accept().await.unwrap();
        // The client closes first, so its side waits in TIME_WAIT once the server closes.
        drop(connection);
        let mut rest = Vec::new();
        tokio::io::AsyncReadExt::read_to_end(&mut accepted, &mut rest)
            .await
            .unwrap();
        drop(accepted);
        for _ in 0..200 {
            if held_by(port.port())
                .iter()
                .any(|h| h.ends_with("(TIME_WAIT)"))
            {
                return Some(port);
            }
            tokio::task::yield_now().await;
            std::thread::sleep(Duration::from_millis(5));
        }
        None
    }

    #[tokio::test]
    async fn a_port_held_by_a_closing_connection_is_waited_for_until_it_must_be_free() {
        let Some(addr) = port_in_time_wait().await else {
            return; // no /proc/net/tcp to tell the state by
        };
        if TcpListener::bind(addr).await.is_ok() {
            return; // this kernel lets a listener take a port from TIME_WAIT
        }
        tokio::time::pause();
        let started = Instant::now();
        // With time paused, the wait runs its course at once; the connection is still there.
        let err = listen(addr).await.unwrap_err();
        assert!(
            started.elapsed() >= Duration::from_secs(60),
            "gave up after {:?} on a port that TIME_WAIT gives back within 60 s: {err}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_port_given_up_while_waiting_is_taken() {
        let held = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = held.local_addr().unwrap();
        tokio::time::pause();
        let waiting = tokio::spawn(listen(addr));
        // On this one-thread runtime the task runs until it waits: its first try failed.
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(held);
        let listener = waiting.await.unwrap().unwrap();
        assert_eq!(listener.local_addr().unwrap(), addr);
    }
}
