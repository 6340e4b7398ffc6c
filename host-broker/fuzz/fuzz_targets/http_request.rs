//! Arbitrary bytes as the guest's side of one proxy stream, through the broker's real proxy
//! path: one broker (one tokio runtime) for the whole run, one registered VM on a hybrid
//! socket, its `<socket>_7070` proxy listener reached the way the guest agent reaches it
//! (Proxy stream header, then `TunnelStream` chunks), toward a loopback upstream that records
//! every byte it reads, plain or TLS, and echoes each request (line, headers, body) back.
//!
//! Input: first byte `0x01` = the rest is sent inside intercepted TLS to `api.test` (the
//! credential's host: substitution allowed), `0x02` = the same to `other.test` (egress
//! allowed, not a credential host); anything else = the whole input is the raw proxy stream
//! (absolute-form `http://` requests, CONNECT, pipelining, garbage).
//!
//! Must hold, for every input:
//! - no panic (in the broker, on any task: a panicking task is a crash here too);
//! - after the guest has sent its bytes and closed its side, the broker closes the stream
//!   within `CLOSE_BOUND`;
//! - the real value (raw, or in any form the response scrubber covers: base64 standard /
//!   unpadded / URL-safe at any alignment, percent) never appears in what the guest
//!   receives;
//! - the real value (raw, percent, or base64 at any alignment, as in a re-encoded `Basic`
//!   payload) reaches the upstream only inside TLS whose SNI is `api.test`: never over plain
//!   HTTP, never to `other.test`.
#![no_main]

use std::convert::Infallible;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::Duration;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use bytes::Bytes;
use host_broker::policy::Policy;
use host_broker::secrets::MapEnv;
use host_broker::{Broker, BrokerConfig, VmSpec, VmTransport};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use libfuzzer_sys::fuzz_target;
use rustls::pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer, ServerName};
use shared_proto::{write_stream_header, StreamHeader, StreamKind, TunnelStream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream, UnixStream};

/// The real value of `API_KEY` (a canary: it must never reach the guest).
const REAL: &str = "sk-fuzz-REAL-7f3a9c0d1e2b4a6f";
/// Bound for the broker to close the stream after the guest closed its side.
const CLOSE_BOUND: Duration = Duration::from_secs(5);
/// How long to wait for the end marker (the answer to the request appended after the
/// input) before closing the guest's side anyway.
const MARK_WAIT: Duration = Duration::from_millis(60);
/// The upstream answers this path with `END_MARK`; every input is followed by a request
/// for it, so a complete answer means every earlier pipelined answer has arrived.
const END_PATH: &str = "/__fuzz_end";
const END_MARK: &[u8] = b"FUZZ-END-7c41";
/// At most this much of the guest's answer is kept (and checked).
const MAX_ANSWER: usize = 4 << 20;

fn policy_json(upstream: SocketAddr) -> String {
    // Host rules only plus `private_networks: allow` for the loopback override: a name the
    // fuzzer makes up is refused before any DNS query, an IP literal by `default: deny`.
    format!(
        r#"{{
        "egress": {{"default": "deny", "private_networks": "allow",
            "allow": [{{"hosts": ["api.test", "other.test"]}}]}},
        "credentials": {{"API_KEY": {{"source": {{"env": "API_KEY"}}, "hosts": ["api.test"],
            "in": ["headers", "query", "body"]}}}},
        "resolve": {{"api.test": "{upstream}", "other.test": "{upstream}"}},
        "max_inspected_body": 1048576
    }}"#
    )
}

/// What one upstream connection read, in order.
struct ConnLog {
    tls: Mutex<Option<bool>>,
    sni: Mutex<Option<String>>,
    bytes: Mutex<Vec<u8>>,
}

struct Fixture {
    rt: tokio::runtime::Runtime,
    _dir: tempfile::TempDir,
    _broker: Broker,
    listen: PathBuf,
    guest_tls: Arc<rustls::ClientConfig>,
    conns: Arc<Mutex<Vec<Arc<ConnLog>>>>,
    /// Forms of the real value that must never reach the guest.
    to_guest: Vec<Vec<u8>>,
    /// Forms that must never reach the upstream outside TLS to `api.test`.
    to_upstream: Vec<Vec<u8>>,
    /// `HTTP_REQUEST_FUZZ_VERBOSE=1`: print each answer and what the upstream read (to see
    /// what a seed or a crashing input does).
    verbose: bool,
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let dir = tempfile::tempdir().expect("tempdir");
        let (broker, listen, guest_tls, conns) = rt.block_on(setup(&dir));
        Fixture {
            rt,
            _dir: dir,
            _broker: broker,
            listen,
            guest_tls,
            conns,
            // Every form, base64 at any alignment included (threat-model row 96: the
            // broker's own Basic re-encoding, echoed in a body, once got through).
            to_guest: {
                let mut f = guest_forms(REAL.as_bytes());
                f.extend(upstream_forms(REAL.as_bytes()));
                f
            },
            to_upstream: upstream_forms(REAL.as_bytes()),
            verbose: std::env::var_os("HTTP_REQUEST_FUZZ_VERBOSE").is_some(),
        }
    })
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

async fn setup(
    dir: &tempfile::TempDir,
) -> (
    Broker,
    PathBuf,
    Arc<rustls::ClientConfig>,
    Arc<Mutex<Vec<Arc<ConnLog>>>>,
) {
    // The upstream's PKI: a CA (given to the broker as an extra root) and one certificate
    // for both names.
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        rcgen::KeyUsagePurpose::KeyCertSign,
        rcgen::KeyUsagePurpose::DigitalSignature,
    ];
    let ca = ca_params.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["api.test".to_owned(), "other.test".to_owned()])
            .unwrap();
    let cert = params.signed_by(&key, &ca, &ca_key).unwrap();
    let ca_path = dir.path().join("upstream-ca.pem");
    std::fs::write(&ca_path, ca.pem()).unwrap();
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

    let conns: Arc<Mutex<Vec<Arc<ConnLog>>>> = Arc::default();
    let upstream = spawn_upstream(Arc::new(server), conns.clone()).await;

    let broker = Broker::start(BrokerConfig {
        state_dir: dir.path().join("state"),
        vsock_port: shared_proto::DEFAULT_VSOCK_PORT,
        upstream_extra_roots: vec![ca_path],
        listener_access: Default::default(),
    })
    .await
    .expect("broker");
    let sock = dir.path().join("vm.vsock");
    broker
        .register_vm_with_env(
            VmSpec {
                id: "vm".into(),
                transport: VmTransport::HybridSocket(sock),
                policy: Policy::from_json_str(&policy_json(upstream)).expect("policy"),
            },
            &MapEnv::from_pairs([("API_KEY", REAL)]),
        )
        .await
        .expect("register");
    let listen = broker.listen_path("vm").expect("listen path");
    let vm_ca = broker.ca_pem("vm").expect("vm ca");
    let mut roots = rustls::RootCertStore::empty();
    use rustls::pki_types::pem::PemObject;
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(vm_ca.as_bytes()) {
        roots.add(c.unwrap()).unwrap();
    }
    let mut guest = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    guest.alpn_protocols = vec![b"http/1.1".to_vec()];
    (broker, listen, Arc::new(guest), conns)
}

/// Tees every byte read into the connection's log.
struct Recorded<S> {
    inner: S,
    log: Arc<ConnLog>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Recorded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if r.is_ready() {
            let new = &buf.filled()[before..];
            self.log.bytes.lock().unwrap().extend_from_slice(new);
        }
        r
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Recorded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// One port for plain and TLS (both names resolve to it): the first byte decides. The
/// plain-side log sees the raw TCP bytes; the TLS side logs decrypted bytes and the SNI.
async fn spawn_upstream(
    server: Arc<rustls::ServerConfig>,
    conns: Arc<Mutex<Vec<Arc<ConnLog>>>>,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let log = Arc::new(ConnLog {
                tls: Mutex::new(None),
                sni: Mutex::new(None),
                bytes: Mutex::new(Vec::new()),
            });
            conns.lock().unwrap().push(log.clone());
            tokio::spawn(serve_upstream(tcp, server.clone(), log));
        }
    });
    addr
}

async fn serve_upstream(tcp: TcpStream, server: Arc<rustls::ServerConfig>, log: Arc<ConnLog>) {
    let mut first = [0u8; 1];
    let Ok(n) = tcp.peek(&mut first).await else {
        return;
    };
    let builder = hyper::server::conn::http1::Builder::new();
    let svc =
        service_fn(|req: Request<Incoming>| async move { Ok::<_, Infallible>(echo(req).await) });
    if n == 1 && first[0] == 0x16 {
        *log.tls.lock().unwrap() = Some(true);
        // Record the ClientHello and handshake too (a value in the SNI would show up).
        let Ok(tls) = tokio_rustls::TlsAcceptor::from(server)
            .accept(Recorded {
                inner: tcp,
                log: log.clone(),
            })
            .await
        else {
            return;
        };
        *log.sni.lock().unwrap() = tls.get_ref().1.server_name().map(str::to_owned);
        // The broker's cleartext, from here on (the handshake bytes stay logged).
        let io = Recorded {
            inner: tls,
            log: log.clone(),
        };
        let _ = builder.serve_connection(TokioIo::new(io), svc).await;
    } else {
        *log.tls.lock().unwrap() = Some(false);
        let io = Recorded {
            inner: tcp,
            log: log.clone(),
        };
        let _ = builder.serve_connection(TokioIo::new(io), svc).await;
    }
}

/// Echoes the request line, headers and body as the body, the Authorization header as
/// `x-echo-authorization`; `END_PATH` answers `END_MARK`.
async fn echo(req: Request<Incoming>) -> Response<Full<Bytes>> {
    let (parts, body) = req.into_parts();
    if parts.uri.path() == END_PATH {
        let _ = body.collect().await;
        return Response::new(Full::new(Bytes::from_static(END_MARK)));
    }
    let mut out = format!("{} {}\r\n", parts.method, parts.uri).into_bytes();
    for (n, v) in &parts.headers {
        out.extend_from_slice(n.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(v.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
    if let Ok(b) = body.collect().await {
        out.extend_from_slice(&b.to_bytes());
    }
    let mut resp = Response::new(Full::new(Bytes::from(out)));
    if let Some(v) = parts.headers.get("authorization") {
        resp.headers_mut().insert("x-echo-authorization", v.clone());
    }
    resp
}

/// The forms the response scrubber promises to catch (docs/threat-model.md rows 16-17).
fn guest_forms(v: &[u8]) -> Vec<Vec<u8>> {
    let mut f = vec![v.to_vec()];
    for e in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        f.push(e.encode(v).into_bytes());
    }
    f.sort();
    f.dedup();
    f
}

/// The raw value, and for base64 (standard and URL-safe) at each of the three alignments
/// the characters that encode only bytes of the value (so a re-encoded `Basic user:value`
/// is caught too). The canary has no character that percent-encoding changes.
fn upstream_forms(v: &[u8]) -> Vec<Vec<u8>> {
    let mut f = vec![v.to_vec()];
    for k in 0..3usize {
        let mut buf = vec![0u8; k];
        buf.extend_from_slice(v);
        let bits_start = k * 8;
        let bits_end = (k + v.len()) * 8;
        let first = bits_start.div_ceil(6);
        let last = bits_end / 6;
        for e in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let enc = e.encode(&buf).into_bytes();
            f.push(enc[first..last].to_vec());
        }
    }
    f.sort();
    f.dedup();
    f
}

fn find(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The guest's side of one proxy stream: what the guest agent sends first.
async fn open_stream(f: &Fixture) -> TunnelStream<UnixStream> {
    let mut unix = UnixStream::connect(&f.listen)
        .await
        .expect("proxy listener");
    write_stream_header(
        &mut unix,
        &StreamHeader {
            kind: StreamKind::Proxy,
        },
    )
    .await
    .expect("stream header");
    TunnelStream::new(unix)
}

/// Sends `input` then the end-marker request, waits (briefly) for the marker, closes the
/// write side and reads until the broker closes. Returns what the guest received, or an
/// error string when the broker did not close within the bound.
async fn drive<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    input: &[u8],
    end_request: &[u8],
) -> Result<Vec<u8>, String> {
    let mut answer = Vec::new();
    // A broker that answers and closes early may make these writes fail: fine.
    if s.write_all(input).await.is_ok() && s.write_all(end_request).await.is_ok() {
        let _ = s.flush().await;
        let mut buf = vec![0u8; 16 * 1024];
        let deadline = tokio::time::Instant::now() + MARK_WAIT;
        loop {
            match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
                Err(_) => break,
                Ok(Ok(0)) | Ok(Err(_)) => return Ok(answer),
                Ok(Ok(n)) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.len() > MAX_ANSWER {
                        return Ok(answer);
                    }
                    if find(&answer, END_MARK) {
                        break;
                    }
                }
            }
        }
    }
    let _ = s.shutdown().await;
    let mut buf = vec![0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + CLOSE_BOUND;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => {
                return Err(format!(
                    "the broker neither closed nor finished answering within {CLOSE_BOUND:?} \
                     after the guest closed its side; got {} bytes: {:?}",
                    answer.len(),
                    String::from_utf8_lossy(&answer[..answer.len().min(2048)])
                ))
            }
            Ok(Ok(0)) | Ok(Err(_)) => return Ok(answer),
            Ok(Ok(n)) => {
                answer.extend_from_slice(&buf[..n]);
                if answer.len() > MAX_ANSWER {
                    return Ok(answer);
                }
            }
        }
    }
}

async fn run(f: &Fixture, data: &[u8]) -> Result<Vec<u8>, String> {
    let mut s = open_stream(f).await;
    let tls_host = match data.first() {
        Some(1) => Some("api.test"),
        Some(2) => Some("other.test"),
        _ => None,
    };
    let Some(host) = tls_host else {
        let end = format!("GET http://api.test{END_PATH} HTTP/1.1\r\nHost: api.test\r\n\r\n");
        return drive(s, data, end.as_bytes()).await;
    };
    // CONNECT and intercepted TLS, as a client does; these must work.
    s.write_all(format!("CONNECT {host}:443 HTTP/1.1\r\nHost: {host}:443\r\n\r\n").as_bytes())
        .await
        .expect("write CONNECT");
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(CLOSE_BOUND, s.read(&mut b))
            .await
            .expect("CONNECT answer in time")
            .expect("CONNECT answer");
        assert_eq!(n, 1, "closed inside the CONNECT answer: {head:?}");
        head.push(b[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "CONNECT {host}: {}",
        String::from_utf8_lossy(&head)
    );
    let tls = tokio::time::timeout(
        CLOSE_BOUND,
        tokio_rustls::TlsConnector::from(f.guest_tls.clone())
            .connect(ServerName::try_from(host.to_owned()).unwrap(), s),
    )
    .await
    .expect("TLS handshake in time")
    .expect("TLS with the VM CA");
    let end = format!("GET {END_PATH} HTTP/1.1\r\nHost: {host}\r\n\r\n");
    drive(tls, &data[1..], end.as_bytes()).await
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let started = std::time::Instant::now();
    let answer = f.rt.block_on(run(f, data));
    if f.verbose {
        eprintln!("input took {:?}", started.elapsed());
    }
    // Let the broker and upstream finish what this input started (pooled connections,
    // tunnels draining) before the logs are checked.
    f.rt.block_on(async {
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    });
    let answer = answer.unwrap_or_else(|e| panic!("{e}"));
    if f.verbose {
        eprintln!("guest got: {:?}", String::from_utf8_lossy(&answer));
        for c in f.conns.lock().unwrap().iter() {
            eprintln!(
                "upstream conn (tls {:?}, sni {:?}) read: {:?}",
                c.tls.lock().unwrap(),
                c.sni.lock().unwrap(),
                String::from_utf8_lossy(&c.bytes.lock().unwrap())
            );
        }
    }
    // A guest that sends a form itself (libFuzzer lifts them from the comparisons the
    // scrubber makes) already holds those bytes: the broker echoing them back, as a
    // refusal's reason quotes the request authority, or forwarding them reveals nothing.
    let guest_sent = |form: &[u8]| find(data, form);
    for form in f.to_guest.iter().filter(|form| !guest_sent(form)) {
        assert!(
            !find(&answer, form),
            "a form of the real value reached the guest: {:?}",
            String::from_utf8_lossy(&answer[..answer.len().min(4096)])
        );
    }
    let mut conns = f.conns.lock().unwrap();
    for c in conns.iter() {
        let tls = *c.tls.lock().unwrap();
        let sni = c.sni.lock().unwrap().clone();
        let mut bytes = c.bytes.lock().unwrap();
        let allowed = tls == Some(true) && sni.as_deref() == Some("api.test");
        if !allowed {
            for form in f.to_upstream.iter().filter(|form| !guest_sent(form)) {
                assert!(
                    !find(&bytes, form),
                    "a form of the real value reached the upstream (tls: {tls:?}, sni: {sni:?}): {:?}",
                    String::from_utf8_lossy(&bytes[..bytes.len().min(4096)])
                );
            }
        }
        // Keep a value-sized tail so a value split across two inputs is still seen.
        // When this input carried a form itself, nothing is kept: the next input must not
        // be blamed for bytes this one's guest sent.
        let keep = if f.to_upstream.iter().any(|form| guest_sent(form)) {
            bytes.len()
        } else {
            bytes.len().saturating_sub(REAL.len() * 2)
        };
        bytes.drain(..keep);
    }
    // Connections the upstream finished (only the registry holds them) are dropped.
    conns.retain(|c| Arc::strong_count(c) > 1);
});
