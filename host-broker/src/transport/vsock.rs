//! Kernel AF_VSOCK (vhost-vsock hosts, e.g. QEMU with `vhost-vsock-pci`, Firecracker is not
//! this): one broker-wide listener on `VMADDR_CID_ANY:<port>`; the peer CID the kernel reports
//! identifies the VM.

use tokio_vsock::{VsockAddr, VsockListener, VMADDR_CID_ANY};

use super::{Accepted, Origin, TransportError};

/// The AF_VSOCK listener.
#[derive(Debug)]
pub struct CidListener {
    listener: VsockListener,
}

impl CidListener {
    pub fn bind(port: u32) -> Result<CidListener, TransportError> {
        Self::bind_cid(VMADDR_CID_ANY, port)
    }

    /// Binds a specific local CID (tests bind the loopback CID 1).
    pub fn bind_cid(cid: u32, port: u32) -> Result<CidListener, TransportError> {
        let listener = VsockListener::bind(VsockAddr::new(cid, port))
            .map_err(|source| TransportError::Vsock { port, source })?;
        Ok(CidListener { listener })
    }

    pub async fn accept(&self) -> std::io::Result<Accepted> {
        let (stream, peer) = self.listener.accept().await?;
        Ok(Accepted {
            io: Box::new(stream),
            origin: Origin::Cid(peer.cid()),
        })
    }
}
