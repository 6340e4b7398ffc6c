//! `cargo bench -p host-broker`: direct-to-upstream vs through-the-broker figures, side by
//! side, in one run. Everything is in-process on loopback (the same fixtures as the tests):
//! the "guest" path is client -> loopback TCP bridge -> `<socket>_7070` (preface + Proxy
//! header + TunnelStream) -> broker (policy, interception, substitution) -> rustls upstream.

#[path = "../tests/common/mod.rs"]
mod common;
mod support;

use std::time::{Duration, Instant};

use common::*;
use http_body_util::BodyExt;
use support::pct;
use tokio::net::TcpStream;

const SMALL_REQUESTS: usize = 3000;
const BULK_BYTES: usize = 64 << 20;
const NEW_CONNS: usize = 300;

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>;

async fn direct(up: &Upstream, ca_pem: &str) -> Sender {
    let s = TcpStream::connect(up.addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    http1(tls_over(s, "api.test", ca_pem).await.unwrap()).await
}

async fn through(h: &Harness) -> Sender {
    intercepted_client(h, "api.test", 443).await
}

async fn small(mut c: Sender, auth: bool) -> (f64, Duration, Duration) {
    let headers: &[(&str, &str)] = if auth {
        &[
            ("host", "api.test"),
            ("authorization", "Bearer mock-API_KEY"),
        ]
    } else {
        &[("host", "api.test")]
    };
    for _ in 0..100 {
        get(&mut c, "/small", headers).await;
    }
    let mut lat = Vec::with_capacity(SMALL_REQUESTS);
    let start = Instant::now();
    for _ in 0..SMALL_REQUESTS {
        let t = Instant::now();
        let (s, _, _) = get(&mut c, "/small", headers).await;
        assert_eq!(s, 200);
        lat.push(t.elapsed());
    }
    let rps = SMALL_REQUESTS as f64 / start.elapsed().as_secs_f64();
    lat.sort();
    (rps, pct(&lat, 0.5), pct(&lat, 0.99))
}

async fn bulk(mut c: Sender) -> f64 {
    let req = hyper::Request::get(format!("/bulk/{BULK_BYTES}"))
        .header("host", "api.test")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let start = Instant::now();
    let resp = c.send_request(req).await.unwrap();
    let mut body = resp.into_body();
    let mut n = 0usize;
    while let Some(f) = body.frame().await {
        if let Ok(d) = f.unwrap().into_data() {
            n += d.len();
        }
    }
    assert_eq!(n, BULK_BYTES);
    BULK_BYTES as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64()
}

async fn new_conns_direct(up: &Upstream, ca_pem: &str) -> f64 {
    let start = Instant::now();
    for _ in 0..NEW_CONNS {
        let mut c = direct(up, ca_pem).await;
        get(&mut c, "/small", &[("host", "api.test")]).await;
    }
    NEW_CONNS as f64 / start.elapsed().as_secs_f64()
}

async fn new_conns_through(h: &Harness) -> f64 {
    let start = Instant::now();
    for _ in 0..NEW_CONNS {
        let mut c = through(h).await;
        get(&mut c, "/small", &[("host", "api.test")]).await;
    }
    NEW_CONNS as f64 / start.elapsed().as_secs_f64()
}

async fn harness_for(up: &Upstream, ca_path: std::path::PathBuf, with_credential: bool) -> Harness {
    let creds = if with_credential {
        r#""API_KEY": {"source": {"env": "API_KEY"}, "hosts": ["api.test"]}"#
    } else {
        ""
    };
    let policy = format!(
        r#"{{"egress": {{"default": "deny", "allow": [{{"hosts": ["api.test"]}}, {{"cidrs": ["127.0.0.1/32"]}}]}},
            "credentials": {{{creds}}}, "resolve": {{"api.test": "{}"}}}}"#,
        up.addr
    );
    harness_in(
        tempfile::tempdir().unwrap(),
        &policy,
        &[("API_KEY", "bench-secret-value-0123456789")],
        vec![ca_path],
    )
    .await
}

fn main() {
    // `cargo bench` passes --bench; nothing to filter.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let pki = make_pki(dir.path(), "bench", &["api.test"]);
        let up = spawn_upstream(Some(pki.server.clone())).await;
        let with = harness_for(&up, pki.ca_path.clone(), true).await;
        let without = harness_for(&up, pki.ca_path.clone(), false).await;

        println!(
            "host-broker proxy bench (loopback): {}",
            support::machine_load()
        );
        println!(
            "small HTTPS GETs, one keep-alive connection, {SMALL_REQUESTS} sequential requests:"
        );
        let (d_rps, d50, d99) = small(direct(&up, &pki.ca_pem).await, false).await;
        let (t_rps, t50, t99) = small(through(&with).await, true).await;
        println!("  {:<40} {:>10} {:>12} {:>12}", "", "req/s", "p50", "p99");
        println!(
            "  {:<40} {:>10.0} {:>12?} {:>12?}",
            "direct", d_rps, d50, d99
        );
        println!(
            "  {:<40} {:>10.0} {:>12?} {:>12?}",
            "through broker (placeholder substituted)", t_rps, t50, t99
        );

        println!("bulk download of {} MiB:", BULK_BYTES >> 20);
        let d = bulk(direct(&up, &pki.ca_pem).await).await;
        let t_plain = bulk(through(&without).await).await;
        let t_scrub = bulk(through(&with).await).await;
        println!("  {:<40} {:>10.1} MiB/s", "direct", d);
        println!(
            "  {:<40} {:>10.1} MiB/s",
            "through broker (no credentials)", t_plain
        );
        println!(
            "  {:<40} {:>10.1} MiB/s",
            "through broker (body scrubbing on)", t_scrub
        );

        println!("new connections ({NEW_CONNS} sequential, TLS handshake + 1 request):");
        let d = new_conns_direct(&up, &pki.ca_pem).await;
        let t = new_conns_through(&with).await;
        println!("  {:<40} {:>10.0} conn/s", "direct", d);
        println!(
            "  {:<40} {:>10.0} conn/s",
            "through broker (intercepted)", t
        );
    });
}
