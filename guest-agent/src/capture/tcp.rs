//! One captured TCP connection: a `Tcp` stream to the broker carrying the original
//! destination, the broker's verdict, then bytes both ways in tunnel chunks.
//!
//! The destination is the name when the guest dialed one of the agent's synthetic
//! addresses, else the IP literal it dialed. Nothing the agent sends here is trusted by the
//! broker more than a `CONNECT` would be: it judges the name or address itself.

use std::net::SocketAddr;
use std::sync::Arc;

use netstack_smoltcp::TcpStream;
use shared_proto::{StreamHeader, StreamKind, TcpReply, TcpTarget, TunnelStream};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::{debug, info};

use super::fake_ip;
use crate::dns::Resolver;
use crate::endpoint::Endpoint;

/// Relays one captured connection; returns when either side is done.
pub(super) async fn relay(
    guest: TcpStream,
    dst: SocketAddr,
    broker: Arc<Endpoint>,
    resolver: Arc<Resolver>,
) {
    if dst.port() == 53 {
        // DNS over TCP to any server address is answered locally, like UDP.
        return crate::dns_server::serve_tcp_conn(guest, resolver).await;
    }
    let host = match resolver.name_of(dst.ip()) {
        Some(name) => name,
        None if fake_ip::is_synthetic(dst.ip()) => {
            // A synthetic address whose slot was recycled (or never handed out): there is
            // no name to send, and its address means nothing to the broker.
            info!("refusing {dst}: not a current DNS answer of this agent");
            return;
        }
        None => dst.ip().to_string(),
    };
    let target = TcpTarget {
        host,
        port: dst.port(),
    };
    if let Err(e) = forward(guest, target, &broker).await {
        debug!("captured connection ended: {e}");
    }
}

async fn forward<G>(mut guest: G, target: TcpTarget, broker: &Endpoint) -> std::io::Result<()>
where
    G: AsyncRead + AsyncWrite + Unpin,
{
    let mut stream = broker.connect().await?;
    let what = format!("{}:{}", target.host, target.port);
    let header = StreamHeader {
        kind: StreamKind::Tcp(target),
    };
    shared_proto::write_stream_header(&mut stream, &header)
        .await
        .map_err(std::io::Error::other)?;
    match shared_proto::read_message::<_, TcpReply>(&mut stream).await {
        Ok(TcpReply::Open) => {}
        Ok(TcpReply::Refused { reason }) => {
            info!("broker refused {what}: {reason}");
            return Ok(());
        }
        Err(e) => return Err(std::io::Error::other(e)),
    }
    let mut tunnel = TunnelStream::new(stream);
    let (up, down) = shared_proto::relay::copy_bidirectional(&mut guest, &mut tunnel).await?;
    debug!(up, down, "{what}: closed");
    Ok(())
}
