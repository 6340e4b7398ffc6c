//! Transparent egress: every TCP connection and DNS question leaving the guest reaches the
//! broker, whether or not the client honours proxy variables.
//!
//! Mechanism (see docs/architecture.md, "Transparent capture"): the agent owns a TUN device
//! (`sluice0`) carrying the default IPv4 and IPv6 routes, and runs a user-space TCP/IP stack
//! (smoltcp, through netstack-smoltcp) on it. The guest still has no NIC: packets written to
//! the TUN never leave the agent. Each TCP connection the stack accepts becomes its own
//! vsock stream ([`tcp`]) carrying the original destination; UDP datagrams to port 53 are
//! answered by the agent's resolver ([`crate::dns`]); every other datagram (QUIC included)
//! is dropped, so clients fall back to TCP. Loopback stays local: the kernel's local routes
//! win over the default route.

pub mod fake_ip;
mod tcp;
mod tun;

use std::net::SocketAddr;
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use netstack_smoltcp::StackBuilder;
use tracing::{debug, info, warn, Instrument};

use crate::dns::Resolver;
use crate::endpoint::Endpoint;

pub use tun::{CaptureError, DEVICE_NAME};

/// MTU of the capture device: larger than Ethernet's so bulk transfers take fewer packets
/// through the user-space stack.
const MTU: u16 = 9000;
/// Per-connection TCP window of the user-space stack (each direction).
const TCP_WINDOW: u32 = 256 * 1024;

/// Creates the capture device and serves it until the task is dropped.
///
/// Returns once the device, its addresses and routes exist, so the caller can start the
/// workload knowing egress is captured.
pub async fn start(broker: Arc<Endpoint>, resolver: Arc<Resolver>) -> Result<(), CaptureError> {
    let device = tun::create(MTU)?;
    info!(
        device = DEVICE_NAME,
        v4 = %fake_ip::interface_v4(),
        v6 = %fake_ip::interface_v6(),
        "transparent capture on: default routes through {DEVICE_NAME}"
    );
    let (stack, runner, udp, tcp) = StackBuilder::default()
        .enable_tcp(true)
        .enable_udp(true)
        .mtu(MTU as usize)
        .tcp_recv_buffer_size(TCP_WINDOW)
        .tcp_send_buffer_size(TCP_WINDOW)
        .build()
        .map_err(CaptureError::Stack)?;
    let (runner, udp, mut tcp) = match (runner, udp, tcp) {
        (Some(r), Some(u), Some(t)) => (r, u, t),
        _ => {
            return Err(CaptureError::Stack(std::io::Error::other(
                "netstack built without TCP or UDP",
            )))
        }
    };
    let device = Arc::new(device);
    tokio::spawn(async move {
        let (mut stack_sink, mut stack_stream) = stack.split();
        let (mut udp_rx, mut udp_tx) = udp.split();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(async move {
            if let Err(e) = runner.await {
                warn!("capture stack stopped: {e}");
            }
        });
        // Stack -> TUN.
        let out = device.clone();
        tasks.spawn(async move {
            while let Some(pkt) = stack_stream.next().await {
                match pkt {
                    Ok(pkt) => {
                        if let Err(e) = out.send(&pkt).await {
                            debug!("writing to {DEVICE_NAME}: {e}");
                        }
                    }
                    Err(e) => debug!("capture stack output: {e}"),
                }
            }
        });
        // TUN -> stack.
        let input = device.clone();
        tasks.spawn(async move {
            let mut buf = vec![0u8; MTU as usize + 64];
            loop {
                match input.recv(&mut buf).await {
                    Ok(0) => continue,
                    Ok(n) => {
                        if let Err(e) = stack_sink.send(buf[..n].to_vec()).await {
                            warn!("capture stack input closed: {e}");
                            return;
                        }
                    }
                    Err(e) => {
                        warn!("reading {DEVICE_NAME}: {e}");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                }
            }
        });
        // UDP: DNS is answered here; nothing else leaves the guest.
        let dns = resolver.clone();
        tasks.spawn(async move {
            let (answers_tx, mut answers_rx) =
                tokio::sync::mpsc::channel::<(Vec<u8>, SocketAddr, SocketAddr)>(256);
            let writer = tokio::spawn(async move {
                while let Some(msg) = answers_rx.recv().await {
                    if let Err(e) = udp_tx.send(msg).await {
                        debug!("capture UDP answer: {e}");
                    }
                }
            });
            while let Some((payload, src, dst)) = udp_rx.next().await {
                if dst.port() != 53 {
                    debug!(%src, %dst, "dropping captured UDP datagram: only DNS leaves the guest");
                    continue;
                }
                let dns = dns.clone();
                let tx = answers_tx.clone();
                tokio::spawn(async move {
                    if let Some(answer) = dns.answer(&payload).await {
                        // Reply from the address the guest asked, to the port it asked from.
                        let _ = tx.send((answer, dst, src)).await;
                    }
                });
            }
            writer.abort();
        });
        // TCP: one broker stream per connection.
        tasks.spawn(async move {
            while let Some((stream, src, dst)) = tcp.next().await {
                // netstack-smoltcp yields (stream, guest source, original destination).
                let span = tracing::debug_span!("captured", %src, %dst);
                tokio::spawn(
                    tcp::relay(stream, dst, broker.clone(), resolver.clone()).instrument(span),
                );
            }
        });
        while tasks.join_next().await.is_some() {}
    });
    Ok(())
}
