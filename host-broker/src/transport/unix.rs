//! Hybrid vsock (Cloud Hypervisor, Firecracker, vhost-device-vsock): a guest `connect(CID 2,
//! port P)` arrives as a Unix connection on `<vm socket>_<P>`. We listen there, one listener
//! per VM, so the listener a stream arrived on is the VM's identity.
//!
//! The socket file gets an explicit mode and group ([`SocketAccess`], default 0660 with the
//! broker's group), whatever the umask: the VMM process, possibly another user, must be able
//! to connect (connecting to a Unix socket needs write permission on it), and nobody else.

use std::path::{Path, PathBuf};

use tokio::net::UnixListener;

use super::{Accepted, Origin, TransportError};

/// `<socket>_<port>`: where the VMM delivers guest connections to host port `port`.
pub fn hybrid_listen_path(vmm_socket: &Path, port: u32) -> PathBuf {
    let mut s = vmm_socket.as_os_str().to_owned();
    s.push(format!("_{port}"));
    PathBuf::from(s)
}

/// Mode and group given to every VM listener socket right after it is bound.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketAccess {
    /// Permission bits (connecting needs `w`): default 0660, owner and group.
    pub mode: u32,
    /// Group to hand the socket to (the VMM's group); `None` keeps the broker's own.
    pub gid: Option<u32>,
}

impl Default for SocketAccess {
    fn default() -> Self {
        SocketAccess {
            mode: 0o660,
            gid: None,
        }
    }
}

impl SocketAccess {
    /// Applies the mode and group to the socket file at `path`.
    fn apply(&self, path: &Path) -> std::io::Result<()> {
        use std::os::unix::fs::PermissionsExt;
        if let Some(gid) = self.gid {
            nix::unistd::chown(path, None, Some(nix::unistd::Gid::from_raw(gid)))
                .map_err(std::io::Error::from)?;
        }
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(self.mode))
    }
}

/// A listener on `<socket>_<port>`; removes its socket file when dropped.
#[derive(Debug)]
pub struct HybridListener {
    listener: UnixListener,
    path: PathBuf,
}

impl HybridListener {
    /// Binds `path` with the default [`SocketAccess`] (0660, the broker's group).
    pub fn bind(path: &Path) -> Result<HybridListener, TransportError> {
        Self::bind_with(path, &SocketAccess::default())
    }

    /// Binds `path`, removing a stale socket file left by a previous run first (one that no
    /// listener answers on; a live one is an error), then gives it `access`.
    pub fn bind_with(path: &Path, access: &SocketAccess) -> Result<HybridListener, TransportError> {
        let err = |source| TransportError::Bind {
            path: path.to_path_buf(),
            source,
        };
        match std::fs::symlink_metadata(path) {
            Ok(meta) => {
                use std::os::unix::fs::FileTypeExt;
                if !meta.file_type().is_socket() {
                    return Err(err(std::io::Error::new(
                        std::io::ErrorKind::AlreadyExists,
                        "exists and is not a socket; refusing to remove it",
                    )));
                }
                // Never take a socket over from a live listener (another broker): only a
                // socket nobody answers on is stale.
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Err(err(std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        "a live listener answers on it (another broker?); refusing to replace it",
                    )));
                }
                std::fs::remove_file(path).map_err(err)?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(err(e)),
        }
        let listener = UnixListener::bind(path).map_err(err)?;
        let listener = HybridListener {
            listener,
            path: path.to_path_buf(),
        };
        // On failure the listener is dropped, which removes the socket file again.
        access.apply(path).map_err(err)?;
        Ok(listener)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Closes the listener without removing the file at its path (which may by now be
    /// another listener's socket).
    pub fn disown_path(mut self) {
        self.path = PathBuf::new();
    }

    pub async fn accept(&self) -> std::io::Result<Accepted> {
        let (stream, _) = self.listener.accept().await?;
        Ok(Accepted {
            io: Box::new(stream),
            origin: Origin::HybridSocket,
        })
    }
}

impl Drop for HybridListener {
    fn drop(&mut self) {
        if self.path.as_os_str().is_empty() {
            return;
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_appends_port() {
        assert_eq!(
            hybrid_listen_path(Path::new("/run/vm/a.vsock"), 7070),
            PathBuf::from("/run/vm/a.vsock_7070")
        );
    }

    #[tokio::test]
    async fn stale_socket_replaced_and_regular_file_kept() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s_7070");
        let first = std::os::unix::net::UnixListener::bind(&p).unwrap();
        drop(first); // leaves a stale socket file
        let l = HybridListener::bind(&p).unwrap();
        drop(l);
        assert!(!p.exists(), "listener removes its socket on drop");
        std::fs::write(&p, b"not a socket").unwrap();
        assert!(HybridListener::bind(&p).is_err());
        assert!(p.exists());
    }

    #[tokio::test]
    async fn a_socket_a_live_listener_answers_on_is_never_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("s_7070");
        let live = HybridListener::bind(&p).unwrap();
        let err = HybridListener::bind(&p).unwrap_err().to_string();
        assert!(err.contains("live listener"), "{err}");
        // The first listener still owns the path and accepts.
        assert!(tokio::net::UnixStream::connect(&p).await.is_ok());
        drop(live);
    }
}
