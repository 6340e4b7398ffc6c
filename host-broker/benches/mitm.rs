//! `cargo bench -p host-broker --bench mitm`: Sluice next to a direct connection, a
//! pass-through CONNECT relay and a hudsucker MITM, in one run, each proxy in its own
//! process (so its RSS can be read):
//!
//! * direct: client -> loopback TLS upstream;
//! * relay: a tiny tokio CONNECT relay (no TLS interception; the client holds the real key);
//! * two relays: a TCP forwarder (current-thread, as the agent runs) in front of that relay:
//!   the floor for any design with Sluice's two hops, before any TLS or HTTP work;
//! * hudsucker: a MITM on the hudsucker crate swapping the placeholder in `Authorization`;
//! * sluice: client -> the guest agent's proxy code (`guest_agent::proxy`, its own process,
//!   current-thread runtime as in the VM) -> Unix socket -> a broker process (policy, leaf,
//!   per-request gates, substitution, response scrubbing, audit lines at `info` through the
//!   non-blocking writer `host-broker serve` uses) -> upstream.
//!
//! The upstream answers `401` unless it receives the real value, and every response is
//! asserted `200`: every MITM request carried the placeholder and arrived substituted.
//! Figures are printed, never asserted. Env:
//! - `MITM_SECS`: seconds per timed row (default 2);
//! - `MITM_TUNNELS`: idle tunnels held for the RSS row (default 1000);
//! - `MITM_ROWS`: a comma list of `keepalive`, `newconn`, `bulk`, `rss` to run only those,
//!   e.g. to profile one row (default all);
//! - `MITM_BULK_MIB`, `MITM_BULK_REPS`: size of each bulk download (default 100) and
//!   downloads per path and host, taking turns, median printed (default 3);
//! - `MITM_VM_THREADS=0`: the broker serves the VM on its own runtime, not a VM thread;
//! - `MITM_LOG`: the broker's log filter (default `info`, audit lines on; `warn` shows what
//!   they cost);
//! - `MITM_INTERCEPT=auto`: the VM's policy relays TLS to `plain.test` (no credentials)
//!   instead of intercepting it.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{connect_via, http1, make_pki, tls_over, ClientTls};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::rt::TokioIo;
use support::{machine_load, pct, rss_kib, ChildRole};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SECRET: &str = "bench-secret-value-0123456789";
const PLACEHOLDER: &str = "mock-API_KEY";
/// The host the credential belongs to; `plain.test` has none (no `Authorization` sent).
const CREDENTIAL_HOST: &str = "api.test";
const CONCURRENCY: usize = 16;
/// MiB per bulk download: `MITM_BULK_MIB` (default 100; larger gives a profiler time).
fn bulk_bytes() -> usize {
    std::env::var("MITM_BULK_MIB")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(100)
        << 20
}

type Sender = hyper::client::conn::http1::SendRequest<Full<Bytes>>;

/// The VM policy's `intercept` mode: `MITM_INTERCEPT` (default `always`).
fn intercept_mode() -> String {
    std::env::var("MITM_INTERCEPT").unwrap_or_else(|_| "always".into())
}

/// `MITM_VM_THREADS=0`: the VM on the broker's runtime instead of a thread of its own.
fn shared_runtime() -> bool {
    std::env::var("MITM_VM_THREADS").is_ok_and(|v| v == "0")
}

fn main() {
    match std::env::var("MITM_BENCH_ROLE").as_deref() {
        Ok("relay") => role_relay(),
        Ok("forward") => role_forward(),
        Ok("hudsucker") => role_hudsucker(),
        Ok("broker") => role_broker(),
        Ok("agent") => role_agent(),
        _ => driver(),
    }
}

fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} not set"))
}

fn multi_thread() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

// ---- roles (child processes) ----

/// A pass-through CONNECT relay: reads the request head, dials the upstream, answers 200 and
/// copies bytes both ways (what tinyproxy does, minus its process model).
fn role_relay() {
    let upstream: SocketAddr = env("MITM_UPSTREAM").parse().unwrap();
    multi_thread().block_on(async move {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!("READY {}", l.local_addr().unwrap());
        while let Ok((mut c, _)) = l.accept().await {
            tokio::spawn(async move {
                let _ = c.set_nodelay(true);
                let mut head = Vec::new();
                let mut b = [0u8; 512];
                while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match c.read(&mut b).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => head.extend_from_slice(&b[..n]),
                    }
                }
                if !head.starts_with(b"CONNECT ") {
                    return;
                }
                let Ok(mut u) = TcpStream::connect(upstream).await else {
                    return;
                };
                let _ = u.set_nodelay(true);
                if c.write_all(b"HTTP/1.1 200 Connection Established\r\n\r\n")
                    .await
                    .is_err()
                {
                    return;
                }
                let _ = tokio::io::copy_bidirectional(&mut c, &mut u).await;
            });
        }
    });
}

/// A TCP forwarder in front of the relay, on a current-thread runtime as the guest agent's
/// proxy runs: the "two relays" path is the floor for any design with Sluice's two hops
/// (agent, broker) and no TLS interception at all.
fn role_forward() {
    let next: SocketAddr = env("MITM_FORWARD_TO").parse().unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
            println!("READY {}", l.local_addr().unwrap());
            while let Ok((mut c, _)) = l.accept().await {
                tokio::spawn(async move {
                    let _ = c.set_nodelay(true);
                    let Ok(mut n) = TcpStream::connect(next).await else {
                        return;
                    };
                    let _ = n.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut c, &mut n).await;
                });
            }
        });
}

/// hudsucker's CA hook: one pre-minted leaf for the bench hosts.
struct FixedLeaf(Arc<rustls::ServerConfig>);

impl hudsucker::certificate_authority::CertificateAuthority for FixedLeaf {
    fn gen_server_config(
        &self,
        _authority: &http::uri::Authority,
    ) -> impl Future<Output = Arc<rustls::ServerConfig>> + Send {
        let c = self.0.clone();
        async move { c }
    }
}

/// hudsucker's upstream connector: TLS (ring, verified against the bench CA) to the bench
/// upstream whatever the host, TCP_NODELAY set.
#[derive(Clone)]
struct UpstreamConnector {
    addr: SocketAddr,
    tls: Arc<rustls::ClientConfig>,
}

struct UpstreamIo(TokioIo<ClientTls>);

impl Connection for UpstreamIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for UpstreamIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UpstreamIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

impl tower_service::Service<http::Uri> for UpstreamConnector {
    type Response = UpstreamIo;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = std::io::Result<UpstreamIo>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let (addr, tls) = (self.addr, self.tls.clone());
        Box::pin(async move {
            let tcp = TcpStream::connect(addr).await?;
            tcp.set_nodelay(true)?;
            let name = rustls::pki_types::ServerName::try_from(
                uri.host().unwrap_or("api.test").to_owned(),
            )
            .map_err(std::io::Error::other)?;
            let s = tokio_rustls::TlsConnector::from(tls)
                .connect(name, tcp)
                .await?;
            Ok(UpstreamIo(TokioIo::new(s)))
        })
    }
}

/// Swaps the placeholder in `Authorization` for the real value, as Sluice does.
#[derive(Clone)]
struct SwapHandler;

impl hudsucker::HttpHandler for SwapHandler {
    async fn handle_request(
        &mut self,
        _ctx: &hudsucker::HttpContext,
        mut req: http::Request<hudsucker::Body>,
    ) -> hudsucker::RequestOrResponse {
        let auth = http::header::AUTHORIZATION;
        if req.headers().get(&auth).map(|v| v.as_bytes())
            == Some(format!("Bearer {PLACEHOLDER}").as_bytes())
        {
            let real = http::HeaderValue::from_str(&format!("Bearer {SECRET}")).unwrap();
            req.headers_mut().insert(auth, real);
        }
        req.into()
    }
}

fn role_hudsucker() {
    let upstream: SocketAddr = env("MITM_UPSTREAM").parse().unwrap();
    let upstream_ca = std::fs::read_to_string(env("MITM_UPSTREAM_CA")).unwrap();
    let dir = PathBuf::from(env("MITM_DIR"));
    let pki = make_pki(&dir, "hudsucker", &["api.test", "plain.test"]);
    multi_thread().block_on(async move {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        println!(
            "READY {} {}",
            l.local_addr().unwrap(),
            pki.ca_path.display()
        );
        let proxy = hudsucker::Proxy::builder()
            .with_listener(l)
            .with_ca(FixedLeaf(pki.server.clone()))
            .with_http_connector(UpstreamConnector {
                addr: upstream,
                tls: common::client_trusting(&upstream_ca),
            })
            .with_http_handler(SwapHandler)
            .build()
            .unwrap();
        proxy.start().await.unwrap();
    });
}

/// The broker with one VM, logging (audit lines included) as `host-broker serve` does.
fn role_broker() {
    let upstream = env("MITM_UPSTREAM");
    let ca = PathBuf::from(env("MITM_UPSTREAM_CA"));
    let (writer, _guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("MITM_LOG").unwrap_or_else(|_| "info".into()),
        ))
        .with_ansi(false)
        .with_writer(writer)
        .init();
    // The daemon's default runtime (serve config `event_interval`); MITM_EVENT_INTERVAL sets
    // another value to compare.
    let event_interval = std::env::var("MITM_EVENT_INTERVAL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(host_broker::config::DEFAULT_EVENT_INTERVAL);
    let mut rt = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = std::env::var("MITM_WORKERS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        rt.worker_threads(n);
    }
    rt.event_interval(event_interval)
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
        // MITM_INTERCEPT=auto: TLS to a host without credentials is relayed, not intercepted.
        let intercept = intercept_mode();
        let policy = format!(
            r#"{{"egress": {{"default": "deny", "allow": [{{"hosts": ["api.test", "plain.test"]}}, {{"cidrs": ["127.0.0.1/32"]}}]}},
                "max_connections": 4096, "intercept": "{intercept}",
                "credentials": {{"API_KEY": {{"source": {{"env": "API_KEY"}}, "hosts": ["api.test"]}}}},
                "resolve": {{"api.test": "{upstream}", "plain.test": "{upstream}"}}}}"#
        );
        // MITM_VM_THREADS=0: the VM on the broker's runtime (`VmPlacement::Shared`) instead of
        // a thread of its own (the default), to compare in one sitting.
        let placement = if shared_runtime() {
            host_broker::VmPlacement::Shared
        } else {
            host_broker::VmPlacement::default()
        };
        let h = common::harness_placed(
            tempfile::tempdir().unwrap(),
            &policy,
            &[("API_KEY", SECRET)],
            vec![ca],
            placement,
        )
        .await;
        println!("READY {} {}", h.listen.display(), h.vm_ca_path.display());
        std::future::pending::<()>().await;
    });
}

/// The guest agent's proxy, as `guest-agent proxy --connect unix:PATH` runs it.
fn role_agent() {
    let endpoint: guest_agent::endpoint::Endpoint =
        format!("unix:{}", env("MITM_BROKER_SOCK")).parse().unwrap();
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async move {
            let l = guest_agent::proxy::bind(([127, 0, 0, 1], 0).into())
                .await
                .unwrap();
            println!("READY {}", l.local_addr().unwrap());
            guest_agent::proxy::serve(vec![l], endpoint).await;
        });
}

// ---- the driver ----

/// One way to reach the upstream.
struct Path {
    name: &'static str,
    /// The CONNECT proxy, if any.
    proxy: Option<SocketAddr>,
    /// The CA the client trusts for the host.
    ca_pem: String,
    /// What the client puts in `Authorization`.
    auth: String,
    /// Processes whose RSS is the proxy's.
    pids: Vec<u32>,
}

impl Path {
    async fn tls(&self, upstream: SocketAddr, host: &str) -> ClientTls {
        let s = match self.proxy {
            None => TcpStream::connect(upstream).await.unwrap(),
            Some(p) => {
                let (status, head, s) = connect_via(p, &format!("{host}:443")).await;
                assert_eq!(status, 200, "{}: CONNECT {host}: {head}", self.name);
                s
            }
        };
        s.set_nodelay(true).unwrap();
        tls_over(s, host, &self.ca_pem).await.unwrap()
    }

    async fn client(&self, upstream: SocketAddr, host: &str) -> Sender {
        http1(self.tls(upstream, host).await).await
    }

    fn request(&self, uri: &str, host: &str) -> http::Request<Full<Bytes>> {
        let mut b = hyper::Request::get(uri).header("host", host);
        if host == CREDENTIAL_HOST {
            b = b.header("authorization", &self.auth);
        }
        b.body(Full::new(Bytes::new())).unwrap()
    }
}

/// One GET, asserted 200 (= the upstream saw the real value); returns the body length.
async fn fetch(c: &mut Sender, req: http::Request<Full<Bytes>>, what: &str) -> usize {
    c.ready().await.unwrap();
    let resp = c.send_request(req).await.unwrap();
    if resp.status() != 200 {
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        panic!("{what}: {status} {}", String::from_utf8_lossy(&body));
    }
    let mut body = resp.into_body();
    let mut n = 0;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            n += d.len();
        }
    }
    n
}

/// What one keep-alive row measured.
struct KeepAlive {
    rps: f64,
    p50: Duration,
    p99: Duration,
    /// CPU time per request, microseconds: this process (client and upstream), then each
    /// of the path's processes (the proxy).
    cpu_us: Vec<f64>,
}

/// `CONCURRENCY` keep-alive connections sending small GETs for `secs`.
async fn keep_alive(p: &Arc<Path>, up: SocketAddr, secs: Duration) -> KeepAlive {
    let mut clients = Vec::new();
    for _ in 0..CONCURRENCY {
        let mut c = p.client(up, "api.test").await;
        fetch(&mut c, p.request("/small", "api.test"), p.name).await;
        clients.push(c);
    }
    let cpu = || {
        std::iter::once(0)
            .chain(p.pids.iter().copied())
            .map(support::cpu_ns)
            .collect::<Vec<_>>()
    };
    let cpu_before = cpu();
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            let p = p.clone();
            tokio::spawn(async move {
                let mut lat = Vec::new();
                while start.elapsed() < secs {
                    let t = Instant::now();
                    fetch(&mut c, p.request("/small", "api.test"), p.name).await;
                    lat.push(t.elapsed());
                }
                lat
            })
        })
        .collect();
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    let rps = lat.len() as f64 / start.elapsed().as_secs_f64();
    let cpu_us = cpu()
        .iter()
        .zip(&cpu_before)
        .map(|(a, b)| a.saturating_sub(*b) as f64 / 1e3 / lat.len().max(1) as f64)
        .collect();
    lat.sort();
    KeepAlive {
        rps,
        p50: pct(&lat, 0.5),
        p99: pct(&lat, 0.99),
        cpu_us,
    }
}

/// `CONCURRENCY` loops of connect (+ CONNECT) + TLS + one GET + close, for `secs`: req/s.
async fn new_conns(p: &Arc<Path>, up: SocketAddr, secs: Duration) -> f64 {
    let start = Instant::now();
    let tasks: Vec<_> = (0..CONCURRENCY)
        .map(|_| {
            let p = p.clone();
            tokio::spawn(async move {
                let mut n = 0u64;
                while start.elapsed() < secs {
                    let mut c = p.client(up, "api.test").await;
                    fetch(&mut c, p.request("/small", "api.test"), p.name).await;
                    n += 1;
                }
                n
            })
        })
        .collect();
    let mut n = 0;
    for t in tasks {
        n += t.await.unwrap();
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// Downloads per path and host (`MITM_BULK_REPS`, default 3); the median is printed.
fn bulk_reps() -> usize {
    std::env::var("MITM_BULK_REPS")
        .ok()
        .and_then(|s| s.parse::<usize>().ok())
        .unwrap_or(3)
        .max(1)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// One [`bulk_bytes`] download from `host`: MiB/s.
async fn bulk(p: &Path, up: SocketAddr, host: &str) -> f64 {
    let bytes = bulk_bytes();
    let mut c = p.client(up, host).await;
    let start = Instant::now();
    let uri = format!("/bulk/{bytes}");
    let n = fetch(&mut c, p.request(&uri, host), p.name).await;
    assert_eq!(n, bytes, "{}: bulk body length", p.name);
    bytes as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64()
}

/// Holds `n` idle tunnels (CONNECT + finished TLS handshake, no request): KiB of proxy RSS
/// each (RSS after - before, over every process of the proxy, divided by n). `held` gets the
/// absolute RSS (KiB) of each process while the `n` tunnels are held.
async fn rss_per_tunnel(
    p: &Path,
    up: SocketAddr,
    n: usize,
    held_rss: &mut Vec<u64>,
) -> Option<Vec<f64>> {
    if p.pids.is_empty() {
        return None;
    }
    let total = |p: &Path| p.pids.iter().map(|&pid| rss_kib(pid)).collect::<Vec<_>>();
    // Warm-up: leaf minted, caches and pools touched once.
    for _ in 0..20 {
        drop(p.tls(up, "api.test").await);
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before = total(p);
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(p.tls(up, "api.test").await);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = total(p);
    held_rss.clone_from(&after);
    drop(held);
    Some(
        after
            .iter()
            .zip(&before)
            .map(|(a, b)| a.saturating_sub(*b) as f64 / n as f64)
            .collect(),
    )
}

fn ratio(v: f64, base: f64) -> String {
    format!("({:.2}x)", v / base)
}

fn driver() {
    let secs = Duration::from_secs_f64(
        std::env::var("MITM_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(2.0),
    );
    let tunnels: usize = std::env::var("MITM_TUNNELS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    println!(
        "host-broker mitm bench: {}; sluice's VM {}, intercept {}",
        machine_load(),
        if shared_runtime() {
            "on the broker's runtime (MITM_VM_THREADS=0)"
        } else {
            "on a thread of its own (default)"
        },
        intercept_mode()
    );
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "upstream", &["api.test", "plain.test"]);
    let rt = multi_thread();
    let up = rt.block_on(support::spawn_verifying_upstream(
        pki.server.clone(),
        CREDENTIAL_HOST,
        format!("Bearer {SECRET}"),
    ));
    let base_env = vec![
        ("MITM_UPSTREAM", up.to_string()),
        ("MITM_UPSTREAM_CA", pki.ca_path.display().to_string()),
        ("MITM_DIR", dir.path().display().to_string()),
    ];
    let relay = ChildRole::spawn("relay", &base_env);
    let mut forward_env = base_env.clone();
    forward_env.push(("MITM_FORWARD_TO", relay.ready[0].clone()));
    let forward = ChildRole::spawn("forward", &forward_env);
    let hud = ChildRole::spawn("hudsucker", &base_env);
    let broker = ChildRole::spawn("broker", &base_env);
    let mut agent_env = base_env.clone();
    agent_env.push(("MITM_BROKER_SOCK", broker.ready[0].clone()));
    let agent = ChildRole::spawn("agent", &agent_env);
    // The agent at idle, before any load (issue 13: the agent's idle RSS <= 8 MiB).
    std::thread::sleep(Duration::from_millis(300));
    let agent_idle_kib = rss_kib(agent.pid());
    let mut agent_held_kib = 0;
    let real = format!("Bearer {SECRET}");
    let fake = format!("Bearer {PLACEHOLDER}");
    let read = |p: &str| std::fs::read_to_string(p).unwrap();
    let paths: Vec<Arc<Path>> = vec![
        Path {
            name: "direct",
            proxy: None,
            ca_pem: pki.ca_pem.clone(),
            auth: real.clone(),
            pids: vec![],
        },
        Path {
            name: "CONNECT relay",
            proxy: Some(relay.ready[0].parse().unwrap()),
            ca_pem: pki.ca_pem.clone(),
            auth: real.clone(),
            pids: vec![relay.pid()],
        },
        Path {
            name: "two relays",
            proxy: Some(forward.ready[0].parse().unwrap()),
            ca_pem: pki.ca_pem.clone(),
            auth: real.clone(),
            pids: vec![forward.pid(), relay.pid()],
        },
        Path {
            name: "hudsucker MITM",
            proxy: Some(hud.ready[0].parse().unwrap()),
            ca_pem: read(&hud.ready[1]),
            auth: fake.clone(),
            pids: vec![hud.pid()],
        },
        Path {
            name: "sluice",
            proxy: Some(agent.ready[0].parse().unwrap()),
            // Under MITM_INTERCEPT=auto the client sees plain.test's own certificate.
            ca_pem: if intercept_mode() == "auto" {
                format!("{}{}", read(&broker.ready[1]), pki.ca_pem)
            } else {
                read(&broker.ready[1])
            },
            auth: fake.clone(),
            pids: vec![broker.pid(), agent.pid()],
        },
    ]
    .into_iter()
    .map(Arc::new)
    .collect();
    println!(
        "every MITM request carries the placeholder; the upstream answers 401 unless it gets \
         the real value and every response is asserted 200. {CONCURRENCY} concurrent \
         connections, {:.1} s per timed row, {tunnels} idle tunnels for RSS.",
        secs.as_secs_f64()
    );
    let wanted = std::env::var("MITM_ROWS").unwrap_or_default();
    let want = |row: &str| wanted.is_empty() || wanted.split(',').any(|w| w.trim() == row);
    let mut rows: Vec<(String, Vec<String>)> = Vec::new();
    rt.block_on(async {
        if want("keepalive") {
            let mut ka = Vec::new();
            for p in &paths {
                ka.push(keep_alive(p, up, secs).await);
            }
            let base = ka[0].rps;
            rows.push((
                format!("keep-alive small GETs (c={CONCURRENCY}), req/s"),
                ka.iter()
                    .map(|r| format!("{:.0} {}", r.rps, ratio(r.rps, base)))
                    .collect(),
            ));
            rows.push((
                "  p50 / p99, ms".into(),
                ka.iter()
                    .map(|r| {
                        format!(
                            "{:.2} / {:.2}",
                            r.p50.as_secs_f64() * 1e3,
                            r.p99.as_secs_f64() * 1e3
                        )
                    })
                    .collect(),
            ));
            // Where a request's CPU goes: with every process on 2 shared cores, the rate is
            // about cores / (sum of these), so a proxy's own cost decides its ratio.
            rows.push((
                "  CPU us/request: client+upstream; proxy".into(),
                ka.iter()
                    .map(|r| {
                        let proxy: Vec<String> =
                            r.cpu_us[1..].iter().map(|v| format!("{v:.0}")).collect();
                        if proxy.is_empty() {
                            format!("{:.0}", r.cpu_us[0])
                        } else {
                            format!("{:.0}; {}", r.cpu_us[0], proxy.join("+"))
                        }
                    })
                    .collect(),
            ));
        }
        if want("newconn") {
            let mut nc = Vec::new();
            for p in &paths {
                nc.push(new_conns(p, up, secs).await);
            }
            rows.push((
                format!("new connection per request (c={CONCURRENCY}), req/s"),
                nc.iter()
                    .map(|r| format!("{r:.0} {}", ratio(*r, nc[0])))
                    .collect(),
            ));
        }
        if want("bulk") {
            let mib = bulk_bytes() >> 20;
            for (label, host) in [
                (
                    format!("{mib} MiB download, MiB/s (credential host: scrub on), median"),
                    "api.test",
                ),
                (
                    format!("{mib} MiB download, MiB/s (host without credentials), median"),
                    "plain.test",
                ),
            ] {
                // Paths take turns, rep by rep, so a change in machine load reaches all.
                let mut runs = vec![Vec::new(); paths.len()];
                for _ in 0..bulk_reps() {
                    for (p, r) in paths.iter().zip(runs.iter_mut()) {
                        r.push(bulk(p, up, host).await);
                    }
                }
                let b: Vec<f64> = runs.into_iter().map(median).collect();
                rows.push((
                    label,
                    b.iter()
                        .map(|r| format!("{r:.0} {}", ratio(*r, b[0])))
                        .collect(),
                ));
            }
        }
        if want("rss") {
            let mut mem = Vec::new();
            for p in &paths {
                let mut held_rss = Vec::new();
                let per_tunnel = rss_per_tunnel(p, up, tunnels, &mut held_rss).await;
                if p.pids.last() == Some(&agent.pid()) {
                    agent_held_kib = held_rss.last().copied().unwrap_or(0);
                }
                mem.push(match per_tunnel {
                    Some(k) if k.len() == 1 => format!("{:.1}", k[0]),
                    Some(k) => format!(
                        "{:.1} ({})",
                        k.iter().sum::<f64>(),
                        k.iter()
                            .map(|v| format!("{v:.0}"))
                            .collect::<Vec<_>>()
                            .join("+")
                    ),
                    None => "-".into(),
                });
            }
            rows.push((
                format!("RSS per idle tunnel ({tunnels} held), KiB (broker+agent)"),
                mem,
            ));
        }
    });
    let w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0);
    print!("{:<w$}", "");
    for p in &paths {
        print!(" | {:>16}", p.name);
    }
    println!();
    for (label, cells) in &rows {
        print!("{label:<w$}");
        for c in cells {
            print!(" | {c:>16}");
        }
        println!();
    }
    println!(
        "guest agent RSS (issue 13 goal: idle <= 8192 KiB): idle before any load {agent_idle_kib} \
         KiB, holding {tunnels} idle tunnels {agent_held_kib} KiB"
    );
    println!(
        "sluice RSS at end: broker {} KiB, agent {} KiB; {}",
        rss_kib(broker.pid()),
        rss_kib(agent.pid()),
        machine_load()
    );
}
