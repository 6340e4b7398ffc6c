//! A loopback HTTPS upstream standing in for a real API (`api.example.com`).
//!
//! It has its own test CA (made with rcgen), which only the broker trusts (through
//! `upstream_extra_roots`); the guest never sees it. It records every request's headers and
//! body so tests can check what really left the host, and answers 200 with a short body.
//! `GET /v1/echo-auth` additionally echoes the received `Authorization` header back in the
//! `x-echo-authorization` response header: the broker must scrub the real value from it.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;

use crate::error::HarnessError;

/// Host names the upstream's certificate is valid for.
pub const UPSTREAM_HOSTS: &[&str] = &["api.example.com", "other.example.com"];

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct RecordedRequest {
    /// TLS SNI the client sent.
    pub sni: Option<String>,
    pub method: String,
    pub path: String,
    /// Header names (lowercase) and values, in order.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RecordedRequest {
    /// The first value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Whether `needle` occurs anywhere in the request (headers, path or body).
    pub fn contains(&self, needle: &str) -> bool {
        self.path.contains(needle)
            || self
                .headers
                .iter()
                .any(|(k, v)| k.contains(needle) || v.contains(needle))
            || String::from_utf8_lossy(&self.body).contains(needle)
    }
}

#[derive(Debug, Default)]
struct Log {
    requests: Vec<RecordedRequest>,
}

/// A running upstream; stops when dropped.
#[derive(Debug)]
pub struct Upstream {
    addr: SocketAddr,
    /// A plain TCP echo service (a stand-in for a raw-TCP upstream such as a database).
    echo_addr: SocketAddr,
    echo_task: tokio::task::JoinHandle<()>,
    ca_pem_path: PathBuf,
    _dir: tempfile::TempDir,
    log: Arc<Mutex<Log>>,
    changed: watch::Receiver<usize>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
        self.echo_task.abort();
    }
}

/// Echoes every byte back on each connection.
async fn echo_loop(listener: TcpListener) {
    while let Ok((mut s, _)) = listener.accept().await {
        tokio::spawn(async move {
            let (mut r, mut w) = s.split();
            let _ = tokio::io::copy(&mut r, &mut w).await;
        });
    }
}

fn upstream_err(e: impl std::fmt::Display) -> HarnessError {
    HarnessError::Upstream(e.to_string())
}

impl Upstream {
    /// Mints a CA and a leaf for [`UPSTREAM_HOSTS`] and listens on 127.0.0.1 (random port).
    pub async fn start() -> Result<Upstream, HarnessError> {
        let ca_key = KeyPair::generate().map_err(upstream_err)?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(upstream_err)?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "Sluice e2e upstream test CA");
        let ca = ca_params.self_signed(&ca_key).map_err(upstream_err)?;
        let leaf_key = KeyPair::generate().map_err(upstream_err)?;
        let leaf_params = CertificateParams::new(
            UPSTREAM_HOSTS
                .iter()
                .map(|h| h.to_string())
                .collect::<Vec<_>>(),
        )
        .map_err(upstream_err)?;
        let leaf = leaf_params
            .signed_by(&leaf_key, &ca, &ca_key)
            .map_err(upstream_err)?;

        let dir = tempfile::tempdir().map_err(|e| HarnessError::file("tempdir", e))?;
        let ca_pem_path = dir.path().join("upstream-ca.pem");
        std::fs::write(&ca_pem_path, ca.pem()).map_err(|e| HarnessError::file(&ca_pem_path, e))?;

        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(leaf_key.serialize_der()));
        let chain: Vec<CertificateDer<'static>> = vec![leaf.der().clone(), ca.der().clone()];
        let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(upstream_err)?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(upstream_err)?;
        tls.alpn_protocols = vec![b"http/1.1".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(tls));

        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| HarnessError::file("127.0.0.1:0", e))?;
        let addr = listener
            .local_addr()
            .map_err(|e| HarnessError::file("upstream socket", e))?;
        let log = Arc::new(Mutex::new(Log::default()));
        let (tx, rx) = watch::channel(0usize);
        let tx = Arc::new(tx);
        let task = tokio::spawn(accept_loop(listener, acceptor, log.clone(), tx));
        let echo = TcpListener::bind("127.0.0.1:0")
            .await
            .map_err(|e| HarnessError::file("127.0.0.1:0", e))?;
        let echo_addr = echo
            .local_addr()
            .map_err(|e| HarnessError::file("echo socket", e))?;
        let echo_task = tokio::spawn(echo_loop(echo));
        tracing::info!(%addr, %echo_addr, "test upstream listening");
        Ok(Upstream {
            addr,
            echo_addr,
            echo_task,
            ca_pem_path,
            _dir: dir,
            log,
            changed: rx,
            task,
        })
    }

    /// Loopback address to put in the policy's `resolve` overrides.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the TCP echo service listens.
    pub fn echo_addr(&self) -> SocketAddr {
        self.echo_addr
    }

    /// PEM file of the upstream's CA, for the broker's extra roots.
    pub fn ca_pem_path(&self) -> &Path {
        &self.ca_pem_path
    }

    /// Everything received so far.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        lock(&self.log).requests.clone()
    }

    /// Waits until a request for `path` has been recorded.
    pub async fn wait_for_path(
        &self,
        path: &str,
        timeout: Duration,
    ) -> Result<RecordedRequest, HarnessError> {
        let deadline = Instant::now() + timeout;
        let mut rx = self.changed.clone();
        loop {
            if let Some(r) = self.requests().into_iter().find(|r| r.path == path) {
                return Ok(r);
            }
            if tokio::time::timeout_at(deadline, rx.changed())
                .await
                .is_err()
            {
                return Err(HarnessError::Timeout {
                    what: format!("the upstream to receive a request for {path}"),
                    timeout,
                });
            }
        }
    }
}

fn lock(m: &Mutex<Log>) -> std::sync::MutexGuard<'_, Log> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    log: Arc<Mutex<Log>>,
    tx: Arc<watch::Sender<usize>>,
) {
    loop {
        let Ok((tcp, peer)) = listener.accept().await else {
            continue;
        };
        let acceptor = acceptor.clone();
        let log = log.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::warn!(%peer, error = %e, "upstream TLS handshake failed");
                    return;
                }
            };
            let sni = tls.get_ref().1.server_name().map(str::to_string);
            let svc = hyper::service::service_fn(move |req| {
                handle(req, sni.clone(), log.clone(), tx.clone())
            });
            if let Err(e) = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tls), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "upstream connection ended");
            }
        });
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    sni: Option<String>,
    log: Arc<Mutex<Log>>,
    tx: Arc<watch::Sender<usize>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    let headers: Vec<(String, String)> = parts
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let path = parts.uri.path().to_string();
    let rec = RecordedRequest {
        sni,
        method: parts.method.to_string(),
        path: path.clone(),
        headers,
        body,
    };
    let echo = (path == "/v1/echo-auth")
        .then(|| rec.header("authorization").map(str::to_string))
        .flatten();
    let n = {
        let mut l = lock(&log);
        l.requests.push(rec);
        l.requests.len()
    };
    let _ = tx.send(n);
    let mut resp = Response::builder()
        .status(200)
        .header("content-type", "text/plain");
    if let Some(v) = echo {
        resp = resp.header("x-echo-authorization", v);
    }
    let body = format!("upstream-ok {path}\n");
    Ok(resp
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::from_static(b"upstream-ok\n")))))
}
