//! `cargo bench -p host-broker --bench protocol`: HTTP/2 figures and the cost of body
//! substitution and response scrubbing, direct vs through the broker, side by side. In-process
//! on loopback with the protocol-test fixtures (h2-capable echo upstream).

#[path = "../tests/common/mod.rs"]
mod common;
#[path = "../tests/proto/mod.rs"]
mod proto;

use std::io::Read;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::{TokioExecutor, TokioIo};
use proto::*;

const H2_REQUESTS: usize = 3000;
const H2_PARALLEL: usize = 16;
const UPLOAD_BYTES: usize = 4 << 20;
const UPLOADS: usize = 8;
const GZ_BYTES: usize = 32 << 20;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

async fn h2_direct(echo: &Echo, ca_pem: &str) -> H2 {
    let s = tokio::net::TcpStream::connect(echo.addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let name = rustls::pki_types::ServerName::try_from("api.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_alpn(ca_pem, &[b"h2"]))
        .connect(name, s)
        .await
        .unwrap();
    let (c, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
        .await
        .unwrap();
    tokio::spawn(conn);
    c
}

fn small_req(auth: bool) -> hyper::Request<Full<Bytes>> {
    let h: &[(&str, &str)] = if auth {
        &[("authorization", "Bearer mock-API_KEY")]
    } else {
        &[]
    };
    req("GET", "https://api.test/small", h, b"")
}

/// Sequential requests: (req/s, p50, p99).
async fn h2_sequential(mut c: H2, auth: bool) -> (f64, Duration, Duration) {
    for _ in 0..100 {
        h2_send(&mut c, small_req(auth)).await;
    }
    let mut lat = Vec::with_capacity(H2_REQUESTS);
    let start = Instant::now();
    for _ in 0..H2_REQUESTS {
        let t = Instant::now();
        assert_eq!(h2_send(&mut c, small_req(auth)).await.status, 200);
        lat.push(t.elapsed());
    }
    let rps = H2_REQUESTS as f64 / start.elapsed().as_secs_f64();
    lat.sort();
    (rps, pct(&lat, 0.5), pct(&lat, 0.99))
}

/// `H2_PARALLEL` concurrent streams on one connection: req/s.
async fn h2_parallel(c: H2, auth: bool) -> f64 {
    let start = Instant::now();
    let per = H2_REQUESTS / H2_PARALLEL;
    let mut tasks = Vec::new();
    for _ in 0..H2_PARALLEL {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..per {
                assert_eq!(h2_send(&mut c, small_req(auth)).await.status, 200);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    (per * H2_PARALLEL) as f64 / start.elapsed().as_secs_f64()
}

/// Uploads of `UPLOAD_BYTES` (a placeholder in each): MiB/s.
async fn uploads(mut c: H2) -> f64 {
    let mut body = vec![b'x'; UPLOAD_BYTES];
    body[1000..1012].copy_from_slice(b"mock-API_KEY");
    let start = Instant::now();
    for _ in 0..UPLOADS {
        let a = h2_send(&mut c, req("POST", "https://api.test/sink", &[], &body)).await;
        assert_eq!(a.status, 200, "{}", a.text());
    }
    (UPLOADS * UPLOAD_BYTES) as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64()
}

/// A gzip download of `GZ_BYTES` decoded bytes, decoded by the client if still compressed:
/// MiB/s of content.
async fn gz_download(mut c: H2) -> f64 {
    let start = Instant::now();
    c.ready().await.unwrap();
    let resp = c
        .send_request(req(
            "GET",
            &format!("https://api.test/gzbulk/{GZ_BYTES}"),
            &[("accept-encoding", "gzip")],
            b"",
        ))
        .await
        .unwrap();
    let gz = resp.headers().get("content-encoding").is_some();
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let n = if gz {
        let mut out = Vec::new();
        flate2::read::MultiGzDecoder::new(&body[..])
            .read_to_end(&mut out)
            .unwrap();
        out.len()
    } else {
        body.len()
    };
    assert_eq!(n, GZ_BYTES);
    GZ_BYTES as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let both: &[&[u8]] = &[b"h2", b"http/1.1"];
        // One world with a credential substituting everywhere, one without credentials.
        let with = world(both, CRED_ALL, r#", "max_inspected_body": 16777216"#).await;
        let without = world(both, "{}", "").await;
        let up_ca = std::fs::read_to_string(with.h.dir.path().join("echo-ca.pem")).unwrap();

        println!("host-broker protocol bench (loopback, HTTP/2 both sides where used)");
        println!("small h2 GETs, one connection, {H2_REQUESTS} sequential:");
        println!("  {:<44} {:>10} {:>12} {:>12}", "", "req/s", "p50", "p99");
        let d = h2_sequential(h2_direct(&with.echo, &up_ca).await, false).await;
        let t = h2_sequential(h2_client(&with.h, "api.test", 443).await, true).await;
        println!("  {:<44} {:>10.0} {:>12?} {:>12?}", "direct", d.0, d.1, d.2);
        println!(
            "  {:<44} {:>10.0} {:>12?} {:>12?}",
            "through broker (h2 + h2, substituted)", t.0, t.1, t.2
        );
        println!("small h2 GETs, {H2_PARALLEL} concurrent streams on one connection:");
        h2_parallel(h2_direct(&with.echo, &up_ca).await, false).await; // warm-up
        let d = h2_parallel(h2_direct(&with.echo, &up_ca).await, false).await;
        let t = h2_parallel(h2_client(&with.h, "api.test", 443).await, true).await;
        println!("  {:<44} {:>10.0} req/s", "direct", d);
        println!("  {:<44} {:>10.0} req/s", "through broker (substituted)", t);

        println!(
            "h2 uploads, {UPLOADS} x {} MiB with a placeholder:",
            UPLOAD_BYTES >> 20
        );
        let d = uploads(h2_direct(&with.echo, &up_ca).await).await;
        let t_plain = uploads(h2_client(&without.h, "api.test", 443).await).await;
        let t_sub = uploads(h2_client(&with.h, "api.test", 443).await).await;
        println!("  {:<44} {:>10.1} MiB/s", "direct", d);
        println!(
            "  {:<44} {:>10.1} MiB/s",
            "through broker (no credentials: streamed)", t_plain
        );
        println!(
            "  {:<44} {:>10.1} MiB/s",
            "through broker (body buffered + substituted)", t_sub
        );

        println!(
            "gzip download, {} MiB of content (client decodes if still gzip):",
            GZ_BYTES >> 20
        );
        gz_download(h2_direct(&with.echo, &up_ca).await).await; // warm-up: upstream compresses once
        let d = gz_download(h2_direct(&with.echo, &up_ca).await).await;
        let t_plain = gz_download(h2_client(&without.h, "api.test", 443).await).await;
        let t_scrub = gz_download(h2_client(&with.h, "api.test", 443).await).await;
        println!("  {:<44} {:>10.1} MiB/s", "direct", d);
        println!(
            "  {:<44} {:>10.1} MiB/s",
            "through broker (no credentials: gzip passed)", t_plain
        );
        println!(
            "  {:<44} {:>10.1} MiB/s",
            "through broker (decoded + scrubbed, identity)", t_scrub
        );
    });
}
