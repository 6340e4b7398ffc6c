//! The guest's resolver endpoint: UDP and TCP on 127.0.0.1:53 (and [::1]:53 where IPv6 is
//! up), named by the /etc/resolv.conf the agent writes. Questions go to [`Resolver`].

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tracing::{debug, warn};

use crate::dns::Resolver;

/// Where the resolver listens.
pub const LISTEN_V4: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 53);
pub const LISTEN_V6: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V6(std::net::Ipv6Addr::LOCALHOST), 53);
/// A TCP client must send its whole question within this time.
const TCP_IDLE: Duration = Duration::from_secs(10);

/// What /etc/resolv.conf says: only the agent's resolver, no search domains.
pub const RESOLV_CONF: &str =
    "# Written by the Sluice guest agent: every lookup is decided by the host broker.\n\
nameserver 127.0.0.1\n";

/// Binds the loopback listeners ([::1] is optional) and serves them in background tasks.
pub async fn start(resolver: Arc<Resolver>) -> std::io::Result<()> {
    for (addr, required) in [(LISTEN_V4, true), (LISTEN_V6, false)] {
        let bound = async {
            let udp = UdpSocket::bind(addr).await?;
            let tcp = TcpListener::bind(addr).await?;
            Ok::<_, std::io::Error>((udp, tcp))
        }
        .await;
        match bound {
            Ok((udp, tcp)) => {
                tokio::spawn(serve_udp(udp, resolver.clone()));
                tokio::spawn(serve_tcp(tcp, resolver.clone()));
            }
            Err(e) if required => return Err(e),
            Err(e) => warn!("DNS on {addr}: {e}; continuing without it"),
        }
    }
    Ok(())
}

async fn serve_udp(socket: UdpSocket, resolver: Arc<Resolver>) {
    let socket = Arc::new(socket);
    let mut buf = vec![0u8; 4096];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                debug!("DNS UDP receive: {e}");
                continue;
            }
        };
        let query = buf[..n].to_vec();
        let (socket, resolver) = (socket.clone(), resolver.clone());
        tokio::spawn(async move {
            if let Some(answer) = resolver.answer(&query).await {
                let _ = socket.send_to(&answer, peer).await;
            }
        });
    }
}

async fn serve_tcp(listener: TcpListener, resolver: Arc<Resolver>) {
    loop {
        match listener.accept().await {
            Ok((conn, _)) => {
                tokio::spawn(serve_tcp_conn(conn, resolver.clone()));
            }
            Err(e) => {
                warn!("DNS TCP accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// DNS over TCP (RFC 7766): length-prefixed messages, answered in order, until the client
/// closes or idles.
pub async fn serve_tcp_conn<S>(mut conn: S, resolver: Arc<Resolver>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let mut len = [0u8; 2];
        match tokio::time::timeout(TCP_IDLE, conn.read_exact(&mut len)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let mut query = vec![0u8; u16::from_be_bytes(len) as usize];
        match tokio::time::timeout(TCP_IDLE, conn.read_exact(&mut query)).await {
            Ok(Ok(_)) => {}
            _ => return,
        }
        let Some(answer) = resolver.answer(&query).await else {
            return;
        };
        let Ok(n) = u16::try_from(answer.len()) else {
            return;
        };
        let mut out = n.to_be_bytes().to_vec();
        out.extend_from_slice(&answer);
        if conn.write_all(&out).await.is_err() || conn.flush().await.is_err() {
            return;
        }
    }
}

/// Points the root's /etc/resolv.conf at the agent's resolver. A symlink there (systemd-
/// resolved's stub file, say) is replaced by a regular file; a read-only root gets the file
/// bind-mounted over it from /run.
pub fn install_resolv_conf(root: &Path) -> std::io::Result<()> {
    let etc = crate::rootfs::resolve(root, Path::new("/etc"))?;
    let target = etc.join("resolv.conf");
    let write = || -> std::io::Result<()> {
        if std::fs::symlink_metadata(&target).is_ok_and(|m| m.file_type().is_symlink()) {
            std::fs::remove_file(&target)?;
        }
        std::fs::write(&target, RESOLV_CONF)
    };
    match write() {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(nix::libc::EROFS) => {
            let staged = Path::new("/run/sluice/resolv.conf");
            std::fs::create_dir_all("/run/sluice")?;
            std::fs::write(staged, RESOLV_CONF)?;
            nix::mount::mount(
                Some(staged),
                &target,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .map_err(std::io::Error::from)
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_replaces_a_stub_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("etc")).unwrap();
        std::fs::create_dir_all(root.join("run/systemd/resolve")).unwrap();
        std::fs::write(
            root.join("run/systemd/resolve/stub-resolv.conf"),
            "nameserver 127.0.0.53\n",
        )
        .unwrap();
        std::os::unix::fs::symlink(
            "../run/systemd/resolve/stub-resolv.conf",
            root.join("etc/resolv.conf"),
        )
        .unwrap();
        install_resolv_conf(root).unwrap();
        let meta = std::fs::symlink_metadata(root.join("etc/resolv.conf")).unwrap();
        assert!(meta.file_type().is_file());
        assert_eq!(
            std::fs::read_to_string(root.join("etc/resolv.conf")).unwrap(),
            RESOLV_CONF
        );
        assert_eq!(
            std::fs::read_to_string(root.join("run/systemd/resolve/stub-resolv.conf")).unwrap(),
            "nameserver 127.0.0.53\n",
            "the link's target is left alone"
        );
    }
}
