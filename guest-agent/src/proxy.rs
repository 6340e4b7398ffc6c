//! The local egress proxy: every accepted TCP connection becomes its own broker stream.
//!
//! The agent does not parse HTTP. It writes the stream preface and a `Proxy` header, then
//! relays bytes with [`TunnelStream`], whose in-band EOF chunks carry half-close across
//! vsock backends that drop it. Each connection is its own task, so a stalled or dead
//! stream never blocks the others.

use std::net::SocketAddr;
use std::sync::Arc;

use shared_proto::{StreamHeader, StreamKind, TunnelStream};
use tokio::net::{TcpListener, TcpStream};
use tracing::{debug, info, warn, Instrument};

use crate::endpoint::Endpoint;

/// The default listen port (overridden by `GuestConfig::proxy_port` when non-zero).
pub const DEFAULT_PORT: u16 = 3128;

/// Listener setup failures.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

/// Binds the default loopback listeners on `port`: 127.0.0.1 must work; [::1] may fail on
/// a guest without IPv6, which is logged and tolerated.
pub async fn bind_loopback(port: u16) -> Result<Vec<TcpListener>, ProxyError> {
    let v4: SocketAddr = ([127, 0, 0, 1], port).into();
    let v6: SocketAddr = (std::net::Ipv6Addr::LOCALHOST, port).into();
    let mut out = vec![bind(v4).await?];
    match bind(v6).await {
        Ok(l) => out.push(l),
        Err(e) => warn!("{e}; continuing with IPv4 only"),
    }
    Ok(out)
}

/// Binds one listener.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, ProxyError> {
    TcpListener::bind(addr)
        .await
        .map_err(|source| ProxyError::Bind { addr, source })
}

/// Accepts on every listener until the task is dropped.
pub async fn serve(listeners: Vec<TcpListener>, broker: Endpoint) {
    let broker = Arc::new(broker);
    let mut tasks = tokio::task::JoinSet::new();
    for l in listeners {
        if let Ok(addr) = l.local_addr() {
            info!("proxy listening on {addr}, relaying to {broker}");
        }
        tasks.spawn(accept_loop(l, broker.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

async fn accept_loop(listener: TcpListener, broker: Arc<Endpoint>) {
    loop {
        match listener.accept().await {
            Ok((tcp, peer)) => {
                let broker = broker.clone();
                let span = tracing::debug_span!("conn", %peer);
                tokio::spawn(relay(tcp, broker).instrument(span));
            }
            Err(e) => {
                // EMFILE and friends: back off briefly instead of spinning.
                warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
    }
}

/// Relays one client connection over a new broker stream.
pub async fn relay(mut tcp: TcpStream, broker: Arc<Endpoint>) {
    let _ = tcp.set_nodelay(true);
    let mut stream = match broker.connect().await {
        Ok(s) => s,
        Err(e) => {
            warn!("cannot open a stream to the broker at {broker}: {e}");
            return;
        }
    };
    let header = StreamHeader {
        kind: StreamKind::Proxy,
    };
    if let Err(e) = shared_proto::write_stream_header(&mut stream, &header).await {
        warn!("writing the stream header to the broker: {e}");
        return;
    }
    let mut tunnel = TunnelStream::new(stream);
    match shared_proto::relay::copy_bidirectional(&mut tcp, &mut tunnel).await {
        Ok((up, down)) => debug!(up, down, "connection closed"),
        Err(e) => debug!("connection ended: {e}"),
    }
}
