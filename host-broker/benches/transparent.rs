//! `cargo bench -p host-broker --bench transparent`: the transparent path (a captured
//! connection: `Tcp` stream with its destination, TLS straight away) next to the explicit
//! proxy path (`Proxy` stream, `CONNECT`, then TLS) and a direct baseline, in one run.
//!
//! Both broker paths start at a loopback TCP bridge standing in for the guest agent (for
//! the transparent path it plays the agent's capture relay: one `Tcp` stream per accepted
//! connection), so they differ only in what the broker does. The guest's own user-space
//! TCP stack is not part of this figure: under TCG in-VM speeds mean nothing (see
//! docs/testing.md), so the broker is measured on the host.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::*;
use http_body_util::BodyExt;
use shared_proto::{StreamHeader, StreamKind, TcpReply, TcpTarget, TunnelStream};
use support::pct;
use tokio::net::{TcpListener, TcpStream, UnixStream};

const SMALL_REQUESTS: usize = 2000;
const CONCURRENT_CONNS: usize = 16;
const CONCURRENT_EACH: usize = 200;
const BULK_BYTES: usize = 64 << 20;

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>;

/// What the agent's capture relay does, minus the user-space stack: each loopback TCP
/// connection becomes one `Tcp` stream to `api.test:443`.
async fn spawn_capture_bridge(listen: PathBuf) -> SocketAddr {
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = tcp.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut client, _)) = tcp.accept().await {
            let _ = client.set_nodelay(true);
            let listen = listen.clone();
            tokio::spawn(async move {
                let mut unix = UnixStream::connect(&listen).await.unwrap();
                let header = StreamHeader {
                    kind: StreamKind::Tcp(TcpTarget {
                        host: "api.test".into(),
                        port: 443,
                    }),
                };
                shared_proto::write_stream_header(&mut unix, &header)
                    .await
                    .unwrap();
                let reply: TcpReply = shared_proto::read_message(&mut unix).await.unwrap();
                assert_eq!(reply, TcpReply::Open);
                let mut tunnel = TunnelStream::new(unix);
                let _ = tokio::io::copy_bidirectional(&mut client, &mut tunnel).await;
            });
        }
    });
    addr
}

#[derive(Clone, Copy)]
enum Path {
    Direct(SocketAddr),
    Proxy,
    Transparent(SocketAddr),
}

async fn client(path: Path, h: &Harness, ca_direct: &str) -> Sender {
    match path {
        Path::Direct(addr) => {
            let s = TcpStream::connect(addr).await.unwrap();
            s.set_nodelay(true).unwrap();
            http1(tls_over(s, "api.test", ca_direct).await.unwrap()).await
        }
        Path::Proxy => intercepted_client(h, "api.test", 443).await,
        Path::Transparent(bridge) => {
            let s = TcpStream::connect(bridge).await.unwrap();
            s.set_nodelay(true).unwrap();
            http1(tls_over(s, "api.test", &h.vm_ca_pem).await.unwrap()).await
        }
    }
}

const HEADERS: &[(&str, &str)] = &[
    ("host", "api.test"),
    ("authorization", "Bearer mock-API_KEY"),
];

async fn sequential(mut c: Sender) -> (f64, Duration, Duration) {
    for _ in 0..50 {
        get(&mut c, "/small", HEADERS).await;
    }
    let mut lat = Vec::with_capacity(SMALL_REQUESTS);
    let start = Instant::now();
    for _ in 0..SMALL_REQUESTS {
        let t = Instant::now();
        let (s, _, _) = get(&mut c, "/small", HEADERS).await;
        assert_eq!(s, 200);
        lat.push(t.elapsed());
    }
    let rps = SMALL_REQUESTS as f64 / start.elapsed().as_secs_f64();
    lat.sort();
    (rps, pct(&lat, 0.5), pct(&lat, 0.99))
}

async fn concurrent(path: Path, h: &Harness, ca_direct: &str) -> (f64, Duration) {
    let mut clients = Vec::new();
    for _ in 0..CONCURRENT_CONNS {
        clients.push(client(path, h, ca_direct).await);
    }
    let start = Instant::now();
    let tasks: Vec<_> = clients
        .into_iter()
        .map(|mut c| {
            tokio::spawn(async move {
                let mut lat = Vec::with_capacity(CONCURRENT_EACH);
                for _ in 0..CONCURRENT_EACH {
                    let t = Instant::now();
                    let (s, _, _) = get(&mut c, "/small", HEADERS).await;
                    assert_eq!(s, 200);
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
    lat.sort();
    (rps, pct(&lat, 0.99))
}

async fn bulk(mut c: Sender) -> f64 {
    let req = hyper::Request::get(format!("/bulk/{BULK_BYTES}"))
        .header("host", "api.test")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let start = Instant::now();
    let mut body = c.send_request(req).await.unwrap().into_body();
    let mut n = 0usize;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            n += d.len();
        }
    }
    assert_eq!(n, BULK_BYTES);
    BULK_BYTES as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let pki = make_pki(dir.path(), "bench", &["api.test"]);
        let up = spawn_upstream(Some(pki.server.clone())).await;
        let policy = format!(
            r#"{{"egress": {{"default": "deny", "allow": [{{"hosts": ["api.test"]}}, {{"cidrs": ["127.0.0.1/32"]}}]}},
                "credentials": {{"API_KEY": {{"source": {{"env": "API_KEY"}}, "hosts": ["api.test"]}}}},
                "resolve": {{"api.test": "{}"}}}}"#,
            up.addr
        );
        let h = harness_in(
            tempfile::tempdir().unwrap(),
            &policy,
            &[("API_KEY", "bench-secret-value-0123456789")],
            vec![pki.ca_path.clone()],
        )
        .await;
        let bridge = spawn_capture_bridge(h.listen.clone()).await;
        let paths = [
            ("direct", Path::Direct(up.addr)),
            ("proxy path (CONNECT)", Path::Proxy),
            ("transparent path (captured)", Path::Transparent(bridge)),
        ];
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        println!(
            "host-broker transparent bench (loopback, {} cores, load average {})",
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(0),
            load.split_whitespace().take(3).collect::<Vec<_>>().join(" ")
        );
        println!("every broker request carries the placeholder and is substituted");
        println!(
            "  {:<30} {:>12} {:>10} {:>10} {:>14} {:>10} {:>12}",
            "",
            "seq req/s",
            "p50",
            "p99",
            format!("{CONCURRENT_CONNS}-conn req/s"),
            "p99",
            "bulk MiB/s"
        );
        let mut base = None;
        for (name, path) in paths {
            let (rps, p50, p99) = sequential(client(path, &h, &pki.ca_pem).await).await;
            let (crps, cp99) = concurrent(path, &h, &pki.ca_pem).await;
            let mib = bulk(client(path, &h, &pki.ca_pem).await).await;
            println!(
                "  {:<30} {:>12.0} {:>10.2?} {:>10.2?} {:>14.0} {:>10.2?} {:>12.1}",
                name, rps, p50, p99, crps, cp99, mib
            );
            match base {
                None => base = Some((rps, crps, mib)),
                Some((b_rps, b_crps, b_mib)) => println!(
                    "  {:<30} {:>11.2}x {:>10} {:>10} {:>13.2}x {:>10} {:>11.2}x",
                    "  vs direct",
                    rps / b_rps,
                    "",
                    "",
                    crps / b_crps,
                    "",
                    mib / b_mib
                ),
            }
        }
    });
}
