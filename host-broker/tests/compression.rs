//! Issue 11: every compressed form of a response body is seen through by the scrubber, or
//! refused -- never passed on unscrubbed.
//!
//! A raw HTTP/1.1 upstream on loopback (TLS) writes canned responses byte for byte, so the
//! test controls framing hyper would never produce itself (`Transfer-Encoding: gzip,
//! chunked`). Each body holds the real value; the guest must get the placeholder.

mod common;
mod proto;

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use common::*;
use proto::*;

fn gz(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn gunzip(data: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .read_to_end(&mut out)
        .unwrap();
    out
}

fn chunked(body: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for c in body.chunks(100) {
        out.extend(format!("{:x}\r\n", c.len()).as_bytes());
        out.extend(c);
        out.extend(b"\r\n");
    }
    out.extend(b"0\r\n\r\n");
    out
}

/// The canned raw response for `path`; the plain text is `value=<real value>`.
fn canned(path: &str) -> Vec<u8> {
    let plain = format!("value={SECRET}\n").repeat(20).into_bytes();
    let (head, body): (&str, Vec<u8>) = match path {
        "/te-gzip" => ("Transfer-Encoding: gzip, chunked\r\n", chunked(&gz(&plain))),
        "/te-br" => (
            "Transfer-Encoding: br, chunked\r\n",
            chunked(b"not really br"),
        ),
        "/gzip-gzip" => ("Content-Encoding: gzip, gzip\r\n", gz(&gz(&plain))),
        "/gzip-file" => ("Content-Type: application/gzip\r\n", gz(&plain)),
        "/gzip-file-gzip" => (
            "Content-Type: application/gzip\r\nContent-Encoding: gzip\r\n",
            gz(&gz(&plain)),
        ),
        _ => ("", b"ok".to_vec()),
    };
    let mut out = b"HTTP/1.1 200 OK\r\n".to_vec();
    out.extend(head.as_bytes());
    if !head.starts_with("Transfer-Encoding") {
        out.extend(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    }
    out.extend(b"Connection: close\r\n\r\n");
    out.extend(body);
    out
}

async fn spawn_raw(tls: Arc<rustls::ServerConfig>) -> SocketAddr {
    spawn_tls_listener(tls, |mut s| async move {
        let Some(path) = read_request_path(&mut s).await else {
            return;
        };
        let _ = s.write_all(&canned(&path)).await;
        let _ = s.shutdown().await;
    })
    .await
}

async fn raw_world() -> Harness {
    raw_world_with(CRED_HEADERS).await
}

async fn raw_world_with(credentials: &str) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "raw", &["api.test"]);
    let addr = spawn_raw(server_with_alpn(&pki, &[b"http/1.1"])).await;
    let policy = format!(
        r#"{{
        "egress": {{"default": "deny", "allow": [{{"hosts": ["api.test"]}}, {{"cidrs": ["127.0.0.1/32"]}}]}},
        "credentials": {credentials},
        "resolve": {{"api.test": "{addr}"}}
    }}"#
    );
    harness_with_key(dir, &policy, SECRET, &pki).await
}

/// GET `path` on a fresh intercepted HTTP/1.1 connection: (status, headers, raw body bytes).
async fn fetch(h: &Harness, path: &str) -> (u16, http::HeaderMap, Vec<u8>) {
    use http_body_util::BodyExt;
    let mut c = intercepted_client(h, "api.test", 443).await;
    let req = http::Request::get(format!("https://api.test{path}"))
        .header("host", "api.test")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    c.ready().await.unwrap();
    let resp = tokio::time::timeout(WAIT, c.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .unwrap()
        .map(|b| b.to_bytes().to_vec())
        .unwrap_or_default();
    (status, headers, body)
}

#[track_caller]
fn assert_scrubbed(what: &str, plain: &[u8]) {
    let text = String::from_utf8_lossy(plain);
    assert!(
        !text.contains(SECRET),
        "{what}: the real value reached the guest"
    );
    assert!(
        text.contains("value=mock-API_KEY\n"),
        "{what}: placeholder expected"
    );
}

#[tokio::test]
async fn transfer_encoding_gzip_chunked_is_decoded_and_scrubbed() {
    let h = raw_world().await;
    let (status, headers, body) = fetch(&h, "/te-gzip").await;
    assert_eq!(status, 200);
    assert!(headers.get("content-encoding").is_none());
    assert_scrubbed("TE gzip", &body);
}

#[tokio::test]
async fn gzip_inside_gzip_is_decoded_and_scrubbed() {
    let h = raw_world().await;
    let (status, headers, body) = fetch(&h, "/gzip-gzip").await;
    assert_eq!(status, 200);
    assert!(headers.get("content-encoding").is_none());
    assert_scrubbed("gzip, gzip", &body);
}

#[tokio::test]
async fn a_gzip_file_body_is_scrubbed_and_stays_a_gzip_file() {
    let h = raw_world().await;
    for path in ["/gzip-file", "/gzip-file-gzip"] {
        let (status, headers, body) = fetch(&h, path).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(headers["content-type"], "application/gzip", "{path}");
        assert!(headers.get("content-encoding").is_none(), "{path}");
        assert_scrubbed(path, &gunzip(&body));
    }
}

#[tokio::test]
async fn an_undecodable_transfer_coding_is_refused() {
    let h = raw_world().await;
    let (status, headers, _) = fetch(&h, "/te-br").await;
    assert_eq!(status, 502);
    let reason = headers["x-sluice-reason"].to_str().unwrap();
    assert!(reason.contains("br"), "{reason}");
}

#[tokio::test]
async fn without_credentials_a_transfer_coding_becomes_a_content_coding() {
    let h = raw_world_with("{}").await;
    let (status, headers, body) = fetch(&h, "/te-gzip").await;
    assert_eq!(status, 200);
    // Passed through untouched (no credentials, nothing to scrub), but labelled: the
    // Transfer-Encoding header is hop-by-hop and gone.
    assert_eq!(headers["content-encoding"], "gzip");
    let plain = String::from_utf8(gunzip(&body)).unwrap();
    assert!(plain.starts_with("value="), "decodable by the guest");
}
