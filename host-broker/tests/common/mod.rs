//! Shared fixtures for the broker's in-process tests: a test PKI, a recording HTTP(S)
//! upstream on loopback, a broker with one VM, a guest-agent-like bridge (loopback TCP ->
//! `<socket>_7070` with preface + Proxy header + TunnelStream), and small clients.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use host_broker::policy::Policy;
use host_broker::secrets::MapEnv;
use host_broker::{Broker, BrokerConfig, VmSpec, VmTransport};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose, SanType};
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use shared_proto::{
    read_message, write_message, write_stream_header, AgentHello, AgentMessage, BootMode,
    BrokerMessage, StreamHeader, StreamKind, TunnelStream, PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixStream};

/// Bound on every wait in these tests.
pub const WAIT: Duration = Duration::from_secs(20);

/// The guest's Authorization header: the placeholder of `API_KEY` as a bearer token.
pub const PLACEHOLDER_AUTH: (&str, &str) = ("authorization", "Bearer mock-API_KEY");

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A CA plus one server certificate for `names` (DNS names or IP literals).
pub struct TestPki {
    pub ca_pem: String,
    pub ca_path: PathBuf,
    pub server: Arc<rustls::ServerConfig>,
}

pub fn make_pki(dir: &Path, label: &str, names: &[&str]) -> TestPki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params
        .distinguished_name
        .push(DnType::CommonName, format!("test upstream CA {label}"));
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.subject_alt_names = names
        .iter()
        .map(|n| match n.parse() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName((*n).try_into().unwrap()),
        })
        .collect();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let server = server_config(&cert, &key);
    let ca_path = dir.join(format!("{label}-ca.pem"));
    std::fs::write(&ca_path, ca.pem()).unwrap();
    TestPki {
        ca_pem: ca.pem(),
        ca_path,
        server: Arc::new(server),
    }
}

/// A TLS server config presenting `cert` (key `key`), offering HTTP/1.1 by ALPN.
pub fn server_config(cert: &rcgen::Certificate, key: &KeyPair) -> rustls::ServerConfig {
    let mut server = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der())),
        )
        .unwrap();
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    server
}

/// The value of header `name` (any case) in `headers`, the first if repeated.
pub fn header_in<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers
        .iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

/// Every header of `map` as (name, value) text, in order.
pub fn header_pairs(map: &http::HeaderMap) -> Vec<(String, String)> {
    map.iter()
        .map(|(n, v)| {
            (
                n.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect()
}

/// One request as the upstream received it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub headers: Vec<(String, String)>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }
}

/// A recording upstream. `GET /bulk/<n>` answers n bytes; `/echo-body` answers the
/// Authorization header as the body; anything else answers `ok` and echoes the Authorization
/// header back as `x-echo-authorization` (to test scrubbing).
pub struct Upstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// TCP connections accepted (TLS or not), to prove "nothing reached it" is not vacuous.
    pub accepted: Arc<Mutex<usize>>,
}

impl Upstream {
    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

/// A loopback TLS listener that hands every accepted TLS stream to `serve` on its own task
/// (for upstreams that answer in their own way: canned bytes, a custom hyper service).
#[allow(dead_code)] // not every test binary uses it
pub async fn spawn_tls_listener<F, Fut>(tls: Arc<rustls::ServerConfig>, serve: F) -> SocketAddr
where
    F: Fn(tokio_rustls::server::TlsStream<tokio::net::TcpStream>) -> Fut + Clone + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (tls, serve) = (tls.clone(), serve.clone());
            tokio::spawn(async move {
                if let Ok(s) = tokio_rustls::TlsAcceptor::from(tls).accept(tcp).await {
                    serve(s).await;
                }
            });
        }
    });
    addr
}

pub async fn spawn_upstream(tls: Option<Arc<rustls::ServerConfig>>) -> Upstream {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
    let accepted: Arc<Mutex<usize>> = Arc::default();
    let (seen2, accepted2) = (seen.clone(), accepted.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let _ = tcp.set_nodelay(true);
            *accepted2.lock().unwrap() += 1;
            let seen = seen2.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let seen = seen.clone();
                    async move { Ok::<_, std::convert::Infallible>(answer(req, &seen).await) }
                });
                let builder = hyper::server::conn::http1::Builder::new();
                match tls {
                    Some(cfg) => {
                        let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await else {
                            return;
                        };
                        let _ = builder.serve_connection(TokioIo::new(s), svc).await;
                    }
                    None => {
                        let _ = builder.serve_connection(TokioIo::new(tcp), svc).await;
                    }
                }
            });
        }
    });
    Upstream {
        addr,
        seen,
        accepted,
    }
}

async fn answer(req: Request<Incoming>, seen: &Mutex<Vec<Seen>>) -> Response<Full<Bytes>> {
    let path = req.uri().path().to_owned();
    seen.lock().unwrap().push(Seen {
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers: header_pairs(req.headers()),
    });
    let echo = req.headers().get("authorization").cloned();
    let _ = req.into_body().collect().await;
    if path == "/echo-body" {
        let v = echo.map(|v| v.as_bytes().to_vec()).unwrap_or_default();
        return Response::new(Full::new(Bytes::from(v)));
    }
    if let Some(n) = path.strip_prefix("/bulk/") {
        let n: usize = n.parse().unwrap_or(0);
        return Response::new(Full::new(Bytes::from(vec![b'x'; n])));
    }
    let mut resp = Response::new(Full::new(Bytes::from_static(b"ok")));
    if let Some(v) = echo {
        resp.headers_mut().insert("x-echo-authorization", v);
    }
    resp
}

/// A broker with one hybrid-socket VM and a bridge standing in for the guest agent.
pub struct Harness {
    pub dir: tempfile::TempDir,
    pub broker: Broker,
    pub vm: String,
    /// `<socket>_7070`.
    pub listen: PathBuf,
    /// Loopback TCP address of the bridge ("the guest's 127.0.0.1:3128").
    pub proxy: SocketAddr,
    pub vm_ca_pem: String,
    pub vm_ca_path: PathBuf,
}

pub async fn start_broker(dir: &Path, extra_roots: Vec<PathBuf>) -> Broker {
    Broker::start(BrokerConfig {
        state_dir: dir.join("state"),
        vsock_port: shared_proto::DEFAULT_VSOCK_PORT,
        upstream_extra_roots: extra_roots,
        listener_access: Default::default(),
    })
    .await
    .unwrap()
}

pub async fn harness_in(
    dir: tempfile::TempDir,
    policy_json: &str,
    env: &[(&str, &str)],
    extra_roots: Vec<PathBuf>,
) -> Harness {
    harness_placed(
        dir,
        policy_json,
        env,
        extra_roots,
        host_broker::VmPlacement::default(),
    )
    .await
}

/// [`harness_in`] with the VM's streams served where `placement` says.
pub async fn harness_placed(
    dir: tempfile::TempDir,
    policy_json: &str,
    env: &[(&str, &str)],
    extra_roots: Vec<PathBuf>,
    placement: host_broker::VmPlacement,
) -> Harness {
    let broker = start_broker(dir.path(), extra_roots).await;
    broker.set_vm_placement(placement);
    let vm = "vm1".to_owned();
    let sock = dir.path().join("vm1.vsock");
    let policy = Policy::from_json_str(policy_json).unwrap();
    broker
        .register_vm_with_env(
            VmSpec {
                id: vm.clone(),
                transport: VmTransport::HybridSocket(sock.clone()),
                policy,
            },
            &MapEnv::from_pairs(env.iter().copied()),
        )
        .await
        .unwrap();
    let listen = dir.path().join("vm1.vsock_7070");
    assert!(listen.exists());
    let proxy = spawn_bridge(listen.clone()).await;
    let vm_ca_pem = broker.ca_pem(&vm).unwrap();
    let vm_ca_path = dir.path().join("vm-ca.pem");
    std::fs::write(&vm_ca_path, &vm_ca_pem).unwrap();
    Harness {
        dir,
        broker,
        vm,
        listen,
        proxy,
        vm_ca_pem,
        vm_ca_path,
    }
}

/// [`harness_in`] for the usual VM: `API_KEY` = `secret` in its environment, upstreams
/// verified against `pki`'s CA.
pub async fn harness_with_key(
    dir: tempfile::TempDir,
    policy_json: &str,
    secret: &str,
    pki: &TestPki,
) -> Harness {
    harness_in(
        dir,
        policy_json,
        &[("API_KEY", secret)],
        vec![pki.ca_path.clone()],
    )
    .await
}

/// What the guest agent does: each loopback TCP connection becomes one Proxy stream.
pub async fn spawn_bridge(listen: PathBuf) -> SocketAddr {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut client, _)) = tcp.accept().await else {
                return;
            };
            let _ = client.set_nodelay(true);
            let listen = listen.clone();
            tokio::spawn(async move {
                let mut unix = UnixStream::connect(&listen).await.unwrap();
                write_stream_header(
                    &mut unix,
                    &StreamHeader {
                        kind: StreamKind::Proxy,
                    },
                )
                .await
                .unwrap();
                let mut tunnel = TunnelStream::new(unix);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut tunnel).await;
            });
        }
    });
    addr
}

/// Starts a control conversation on `s` as the guest agent does: the Control stream header.
pub async fn open_control<S: AsyncWrite + Unpin>(s: &mut S) {
    write_stream_header(
        s,
        &StreamHeader {
            kind: StreamKind::Control,
        },
    )
    .await
    .unwrap();
}

/// Sends the agent's Hello on a control stream and waits (bounded) for the broker's answer.
pub async fn agent_hello<S: AsyncRead + AsyncWrite + Unpin>(
    s: &mut S,
    agent_version: &str,
    boot_mode: BootMode,
) -> BrokerMessage {
    write_message(
        s,
        &AgentMessage::Hello(AgentHello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: agent_version.into(),
            boot_mode,
        }),
    )
    .await
    .unwrap();
    tokio::time::timeout(WAIT, read_message(s))
        .await
        .unwrap()
        .unwrap()
}

/// Sends `CONNECT target` and reads the response head; returns (status, head, stream).
pub async fn connect_via(proxy: SocketAddr, target: &str) -> (u16, String, TcpStream) {
    let mut s = TcpStream::connect(proxy).await.unwrap();
    s.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (status, head, s)
}

/// Reads up to and including the blank line ending a response head.
pub async fn read_head(s: &mut TcpStream) -> String {
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, s.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert!(n == 1, "connection closed inside a response head: {head:?}");
        head.push(b[0]);
    }
    String::from_utf8(head).unwrap()
}

/// A client config trusting only `ca_pem`.
pub fn client_trusting(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Arc::new(cfg)
}

pub type ClientTls = tokio_rustls::client::TlsStream<TcpStream>;

/// TLS over an established tunnel, verifying against `ca_pem` for `name`.
pub async fn tls_over(s: TcpStream, name: &str, ca_pem: &str) -> std::io::Result<ClientTls> {
    let name = ServerName::try_from(name.to_owned()).unwrap();
    tokio_rustls::TlsConnector::from(client_trusting(ca_pem))
        .connect(name, s)
        .await
}

/// An HTTP/1.1 client on `io` (connection driven in a task).
pub async fn http1<T>(io: T) -> hyper::client::conn::http1::SendRequest<Full<Bytes>>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io))
        .await
        .unwrap();
    tokio::spawn(conn);
    sender
}

/// Sends a GET with `headers` and returns (status, headers, body).
pub async fn get(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    uri: &str,
    headers: &[(&str, &str)],
) -> (u16, http::HeaderMap, String) {
    let mut b = Request::get(uri);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    send(sender, b.body(Full::new(Bytes::new())).unwrap()).await
}

/// Sends `req` and returns (status, headers, body), bounded by [`WAIT`].
pub async fn send(
    sender: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> (u16, http::HeaderMap, String) {
    sender.ready().await.unwrap();
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    (status, headers, String::from_utf8_lossy(&body).into_owned())
}

/// Reads a request head byte by byte (raw test upstreams) and returns its path; `None` if
/// the stream ends first.
pub async fn read_request_path<S: tokio::io::AsyncRead + Unpin>(s: &mut S) -> Option<String> {
    use tokio::io::AsyncReadExt;
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        match s.read(&mut b).await {
            Ok(1) => head.push(b[0]),
            _ => return None,
        }
    }
    let line = String::from_utf8_lossy(&head).into_owned();
    Some(line.split_whitespace().nth(1).unwrap_or("/").to_owned())
}

/// Convenience: CONNECT + intercepted TLS + HTTP/1.1 client for `host:port`.
pub async fn intercepted_client(
    h: &Harness,
    host: &str,
    port: u16,
) -> hyper::client::conn::http1::SendRequest<Full<Bytes>> {
    let (status, head, s) = connect_via(h.proxy, &format!("{host}:{port}")).await;
    assert_eq!(status, 200, "CONNECT {host}: {head}");
    let tls = tls_over(s, host, &h.vm_ca_pem).await.unwrap();
    http1(tls).await
}

/// Handshake in memory: server uses `leaf`, client trusts only `ca_pem` and checks `name`.
pub async fn leaf_handshake(
    leaf: Arc<rustls::ServerConfig>,
    ca_pem: &str,
    name: &str,
) -> Result<(), String> {
    let (a, b) = tokio::io::duplex(64 * 1024);
    let server = tokio::spawn(async move {
        tokio_rustls::TlsAcceptor::from(leaf)
            .accept(b)
            .await
            .map(|_| ())
    });
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    let r = tokio_rustls::TlsConnector::from(client_trusting(ca_pem))
        .connect(name, a)
        .await
        .map(|_| ())
        .map_err(|e| e.to_string());
    drop(server);
    r
}
