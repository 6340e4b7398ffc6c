//! Upstream side: verified TLS towards the real server, and plain TCP for `http://`.
//!
//! Trust = the host's store (rustls-native-certs, which honours SSL_CERT_FILE/SSL_CERT_DIR)
//! plus the configured extra root PEM files. We always dial the exact `SocketAddr` the policy
//! approved and verify the certificate for the CONNECT host *name*: a failed verification
//! fails the handshake, before any request byte is written.

pub(crate) mod conn;
pub(crate) mod pool;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use rustls::{ClientConfig, RootCertStore};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// How long a TCP connect or TLS handshake to an upstream may take.
pub const UPSTREAM_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Errors building the upstream trust configuration.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("upstream_extra_roots: cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("upstream_extra_roots: {path} holds no PEM certificate")]
    Empty { path: PathBuf },
    #[error("upstream_extra_roots: {path}: {reason}")]
    Bad { path: PathBuf, reason: String },
    #[error("no upstream trust anchors: the host store is empty and no extra roots are set")]
    NoRoots,
    #[error("tls configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Failures reaching an upstream; the Display text goes to the guest in a 502.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("connecting to {addr} failed: {source}")]
    Connect {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("connecting to {addr} timed out")]
    Timeout { addr: SocketAddr },
    #[error("TLS with upstream {host} ({addr}) failed: {source}")]
    Tls {
        host: String,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("{host:?} is not a valid TLS server name")]
    BadName { host: String },
}

/// Builds the client config used for every upstream TLS connection.
pub fn client_config(extra_roots: &[PathBuf]) -> Result<Arc<ClientConfig>, TrustError> {
    let mut roots = RootCertStore::empty();
    let native = rustls_native_certs::load_native_certs();
    for e in &native.errors {
        tracing::warn!(error = %e, "skipping part of the host trust store");
    }
    let (added, ignored) = roots.add_parsable_certificates(native.certs);
    tracing::debug!(added, ignored, "host trust store loaded");
    for path in extra_roots {
        add_pem_file(&mut roots, path)?;
    }
    if roots.is_empty() {
        return Err(TrustError::NoRoots);
    }
    let mut cfg =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    // The upstream picks: h2 where it supports it, else HTTP/1.1 (no ALPN answer = 1.1).
    cfg.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(cfg))
}

fn add_pem_file(roots: &mut RootCertStore, path: &Path) -> Result<(), TrustError> {
    let data = std::fs::read(path).map_err(|source| TrustError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let mut n = 0;
    use rustls::pki_types::pem::PemObject;
    for cert in rustls::pki_types::CertificateDer::pem_slice_iter(&data) {
        let cert = cert.map_err(|e| TrustError::Bad {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        roots.add(cert).map_err(|e| TrustError::Bad {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        n += 1;
    }
    if n == 0 {
        return Err(TrustError::Empty {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// TCP connect to exactly `addr`, bounded.
pub async fn dial(addr: SocketAddr) -> Result<TcpStream, UpstreamError> {
    match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(s)) => {
            let _ = s.set_nodelay(true);
            Ok(s)
        }
        Ok(Err(source)) => Err(UpstreamError::Connect { addr, source }),
        Err(_) => Err(UpstreamError::Timeout { addr }),
    }
}

/// Dials `addr` and completes a TLS handshake verified for `host`.
pub async fn dial_tls(
    config: &Arc<ClientConfig>,
    host: &str,
    addr: SocketAddr,
) -> Result<TlsStream<TcpStream>, UpstreamError> {
    let name = ServerName::try_from(host.to_owned()).map_err(|_| UpstreamError::BadName {
        host: host.to_owned(),
    })?;
    let tcp = dial(addr).await?;
    let connector = TlsConnector::from(config.clone());
    match tokio::time::timeout(UPSTREAM_CONNECT_TIMEOUT, connector.connect(name, tcp)).await {
        Ok(Ok(s)) => Ok(s),
        Ok(Err(source)) => Err(UpstreamError::Tls {
            host: host.to_owned(),
            addr,
            source,
        }),
        Err(_) => Err(UpstreamError::Timeout { addr }),
    }
}
