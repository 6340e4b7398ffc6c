//! Shared bench setup: the machine-load line, percentiles, a verifying loopback TLS upstream
//! with incompressible bulk bodies, child processes for the proxies under test, and RSS.
//!
//! The upstream answers `401` unless the request's `Authorization` is exactly the real
//! value, so a bench that asserts `200` on every response proves every request reached the
//! upstream with the real credential (substituted by the MITM under test).
#![allow(dead_code)]

use std::convert::Infallible;
use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// `nproc` and `/proc/loadavg`, for the header of every bench's output.
pub fn machine_load() -> String {
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    format!("nproc {cores}, /proc/loadavg {}", load.trim())
}

/// The `p` quantile (0..=1) of sorted latencies.
pub fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// 1 MiB of xorshift bytes: bulk bodies are incompressible and, unlike a run of one byte,
/// make a scanner's prefilter behave as on real payloads.
pub fn random_block() -> Bytes {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut v = Vec::with_capacity(1 << 20);
    while v.len() < 1 << 20 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    Bytes::from(v)
}

/// Chunk size of the upstream's bulk bodies.
const CHUNK: usize = 64 << 10;

type Body = BoxBody<Bytes, Infallible>;

fn bulk_body(block: &Bytes, n: usize) -> Body {
    let block = block.clone();
    let chunks = (0..n.div_ceil(CHUNK)).map(move |i| {
        let off = (i * CHUNK) % block.len();
        let len = CHUNK.min(n - i * CHUNK).min(block.len() - off);
        Ok::<_, Infallible>(Frame::data(block.slice(off..off + len)))
    });
    StreamBody::new(futures_util::stream::iter(chunks)).boxed()
}

/// A loopback TLS (HTTP/1.1) upstream: `GET /small` answers `ok`, `GET /bulk/<n>` answers n
/// random bytes; for `Host: credential_host`, only when `Authorization` equals
/// `expected_auth`, else `401`.
pub async fn spawn_verifying_upstream(
    tls: Arc<rustls::ServerConfig>,
    credential_host: &'static str,
    expected_auth: String,
) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let expected: Arc<str> = expected_auth.into();
    let block = random_block();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let _ = tcp.set_nodelay(true);
            let (tls, expected, block) = (tls.clone(), expected.clone(), block.clone());
            tokio::spawn(async move {
                let Ok(s) = tokio_rustls::TlsAcceptor::from(tls).accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: Request<Incoming>| {
                    let h = req.headers();
                    let ok = h.get(http::header::HOST).map(|v| v.as_bytes())
                        != Some(credential_host.as_bytes())
                        || h.get(http::header::AUTHORIZATION)
                            .is_some_and(|v| v.as_bytes() == expected.as_bytes());
                    let resp = if !ok {
                        let mut r = Response::new(Full::from("real credential missing").boxed());
                        *r.status_mut() = http::StatusCode::UNAUTHORIZED;
                        r
                    } else if let Some(n) = req.uri().path().strip_prefix("/bulk/") {
                        Response::new(bulk_body(&block, n.parse().unwrap_or(0)))
                    } else {
                        Response::new(Full::from("ok").boxed())
                    };
                    async move { Ok::<_, Infallible>(resp) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

/// A child process (this bench binary re-run in another role); killed on drop.
#[derive(Debug)]
pub struct ChildRole {
    pub child: Child,
    /// The words after `READY` on the child's first stdout line.
    pub ready: Vec<String>,
}

impl ChildRole {
    /// Runs the current executable with `MITM_BENCH_ROLE=role` and `env`, and waits for its
    /// `READY ...` line.
    pub fn spawn(role: &str, env: &[(&str, String)]) -> ChildRole {
        let mut cmd = Command::new(std::env::current_exe().unwrap());
        cmd.env("MITM_BENCH_ROLE", role)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().unwrap();
        let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        let words: Vec<String> = line.split_whitespace().map(str::to_owned).collect();
        assert_eq!(
            words.first().map(String::as_str),
            Some("READY"),
            "{role}: {line:?}"
        );
        ChildRole {
            child,
            ready: words[1..].to_vec(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildRole {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Resident set size of `pid` in KiB (`VmRSS`).
/// Nanoseconds process `pid` (0: this process) has run on a CPU, all threads summed (from
/// `/proc/<pid>/task/*/schedstat`); 0 when it cannot be read.
pub fn cpu_ns(pid: u32) -> u64 {
    let dir = if pid == 0 {
        "/proc/self/task".to_string()
    } else {
        format!("/proc/{pid}/task")
    };
    let Ok(tasks) = std::fs::read_dir(dir) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

pub fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
