//! Issue 11: HTTP/1.0 guests. A scrubbed body loses its `Content-Length`, and HTTP/1.0 has
//! no chunked encoding, so it used to go close-delimited: an upstream abort mid-body looked
//! complete. Now such bodies get a `Content-Length` or a `502` with a reason. And
//! `curl --http1.0` (which offers ALPN `http/1.0` only) works through the broker.

mod common;
mod proto;

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use common::*;
use proto::*;

/// `/abort`: a chunked body holding the real value, then the connection closes before the
/// last chunk. `/whole`: the same body, complete.
async fn answer_raw<S: AsyncRead + AsyncWrite + Unpin>(mut s: S) {
    let Some(path) = read_request_path(&mut s).await else {
        return;
    };
    let chunk = format!("value={SECRET}\n");
    let mut out = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    out.extend(format!("{:x}\r\n{chunk}\r\n", chunk.len()).as_bytes());
    if !path.ends_with("/abort") {
        out.extend(b"0\r\n\r\n");
    }
    let _ = s.write_all(&out).await;
    let _ = s.flush().await;
    // `/abort`: close without the last chunk (no TLS close_notify either).
}

async fn spawn_raw(tls: Option<Arc<rustls::ServerConfig>>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let tls = tls.clone();
            tokio::spawn(async move {
                match tls {
                    Some(cfg) => {
                        if let Ok(s) = tokio_rustls::TlsAcceptor::from(cfg).accept(tcp).await {
                            answer_raw(s).await;
                        }
                    }
                    None => answer_raw(tcp).await,
                }
            });
        }
    });
    addr
}

async fn raw_world() -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "raw", &["api.test"]);
    let tls_addr = spawn_raw(Some(server_with_alpn(&pki, &[b"http/1.1"]))).await;
    let plain_addr = spawn_raw(None).await;
    let policy = format!(
        r#"{{
        "egress": {{"default": "deny",
            "allow": [{{"hosts": ["api.test", "plain.test"]}}, {{"cidrs": ["127.0.0.1/32"]}}]}},
        "credentials": {CRED_HEADERS},
        "resolve": {{"api.test": "{tls_addr}", "plain.test": "{plain_addr}"}}
    }}"#
    );
    harness_with_key(dir, &policy, SECRET, &pki).await
}

/// An HTTP/1.0 request on an intercepted tunnel, read until the broker closes.
async fn h10_tunnel(h: &Harness, path: &str) -> String {
    let mut tls = raw_h1_tls(h, "api.test").await;
    let req = format!("GET {path} HTTP/1.0\r\nHost: api.test\r\n\r\n");
    tls.write_all(req.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    read_until_close(&mut tls).await
}

/// An HTTP/1.0 absolute-form request on the proxy port (plain http), read until close.
async fn h10_plain(h: &Harness, path: &str) -> String {
    let mut s = TcpStream::connect(h.proxy).await.unwrap();
    let req = format!("GET http://plain.test{path} HTTP/1.0\r\nHost: plain.test\r\n\r\n");
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn an_upstream_abort_is_visible_to_an_http10_guest() {
    let h = raw_world().await;
    for (what, raw) in [
        ("tunnel", h10_tunnel(&h, "/abort").await),
        ("plain", h10_plain(&h, "/abort").await),
    ] {
        assert!(
            !raw.contains(SECRET),
            "{what}: the real value reached the guest"
        );
        let status = raw.lines().next().unwrap_or_default();
        assert!(status.contains(" 502 "), "{what}: {status}");
        assert!(
            raw.contains("x-sluice-reason: upstream response body ended early"),
            "{what}: {raw}"
        );
    }
}

#[tokio::test]
async fn a_complete_scrubbed_body_reaches_an_http10_guest_with_its_length() {
    let h = raw_world().await;
    for (what, raw) in [
        ("tunnel", h10_tunnel(&h, "/whole").await),
        ("plain", h10_plain(&h, "/whole").await),
    ] {
        assert!(
            !raw.contains(SECRET),
            "{what}: the real value reached the guest"
        );
        let lower = raw.to_ascii_lowercase();
        assert!(
            lower.starts_with("http/1.0 200") || lower.starts_with("http/1.1 200"),
            "{what}: {raw}"
        );
        let body = "value=mock-API_KEY\n";
        assert!(
            lower.contains(&format!("content-length: {}\r\n", body.len())),
            "{what}: {raw}"
        );
        assert!(raw.ends_with(&format!("\r\n\r\n{body}")), "{what}: {raw}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_http10_through_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "good", &["api.test"]);
    let up = spawn_upstream(Some(pki.server.clone())).await;
    let policy = format!(
        r#"{{
        "egress": {{"default": "deny", "allow": [{{"hosts": ["api.test"]}}, {{"cidrs": ["127.0.0.1/32"]}}]}},
        "credentials": {{"API_KEY": {{"source": {{"env": "API_KEY"}}, "hosts": ["api.test"]}}}},
        "resolve": {{"api.test": "{a}"}}
    }}"#,
        a = up.addr
    );
    let h = harness_with_key(dir, &policy, SECRET, &pki).await;
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "15", "--http1.0"])
            .args(["--proxy", &format!("http://{}", h.proxy)])
            .args(["--cacert", h.vm_ca_path.to_str().unwrap()])
            .args(["-H", "Authorization: Bearer mock-API_KEY"])
            .args(["-w", " %{http_code}\n", "https://api.test/echo-body"])
            .output(),
    )
    .await
    .unwrap()
    .expect("curl is installed");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(!stdout.contains(SECRET) && !stderr.contains(SECRET));
    // The upstream echoes the Authorization it got as the body: scrubbed on the way back.
    assert_eq!(stdout, "Bearer mock-API_KEY 200\n", "stderr: {stderr}");
    let seen = up.requests();
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
}
