//! Where guest streams arrive: per-VM hybrid-vsock Unix listeners, and kernel AF_VSOCK.
//!
//! Both transports yield an [`Accepted`] stream tagged with what identifies its VM on the
//! host side (the socket it arrived on, or the peer CID). Nothing the guest sends is used to
//! decide which VM a stream belongs to.

pub mod unix;
pub mod vsock;

use tokio::io::{AsyncRead, AsyncWrite};

/// A byte stream from a guest, whatever carried it.
pub trait GuestIo: AsyncRead + AsyncWrite + Send + Unpin + std::fmt::Debug {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + std::fmt::Debug> GuestIo for T {}

/// A boxed guest stream.
pub type BoxedIo = Box<dyn GuestIo>;

/// Who sent a stream, as established by the host.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// Arrived on the VM's own `<socket>_<port>` listener.
    HybridSocket,
    /// Arrived on the AF_VSOCK listener from this peer CID.
    Cid(u32),
}

/// One accepted guest stream.
#[derive(Debug)]
pub struct Accepted {
    pub io: BoxedIo,
    pub origin: Origin,
}

/// A guest-facing listener (either transport), behind one type.
#[derive(Debug)]
pub enum Listener {
    Unix(unix::HybridListener),
    Vsock(vsock::CidListener),
}

impl Listener {
    /// Waits for the next stream.
    pub async fn accept(&self) -> std::io::Result<Accepted> {
        match self {
            Listener::Unix(l) => l.accept().await,
            Listener::Vsock(l) => l.accept().await,
        }
    }
}

/// Errors setting up a listener.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("cannot listen on {path}: {source}")]
    Bind {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot listen on AF_VSOCK port {port}: {source}")]
    Vsock {
        port: u32,
        #[source]
        source: std::io::Error,
    },
}
