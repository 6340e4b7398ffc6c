//! Issue 11: nothing real flows back to the guest through the parts of a response that are
//! not header values or bodies: the HTTP/1.1 reason phrase, header names, trailer names.
//! A "leaky" upstream (HTTP/1.1 and/or HTTP/2 by ALPN) puts the real value there on its own;
//! the guest (HTTP/1.1 read raw, or HTTP/2) must see at most the placeholder.

mod common;
mod proto;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use common::*;
use proto::*;

const H1_ONLY: &[&[u8]] = &[b"http/1.1"];
const H2_ONLY: &[&[u8]] = &[b"h2"];

type UpBody = BoxBody<Bytes, Infallible>;

fn lower_secret() -> String {
    SECRET.to_ascii_lowercase()
}

/// Panics (without printing the value) if `text` holds the real value in any letter case.
#[track_caller]
fn assert_no_secret(what: &str, text: &str) {
    assert!(
        !text.to_ascii_lowercase().contains(&lower_secret()),
        "{what}: the real value reached the guest"
    );
}

/// `/reason`: `200 OK <real value>`; `/names`: headers and trailers *named* after the real
/// value (HeaderName lowercases it), declared in `Trailer` so HTTP/1.1 sends them too.
async fn leaky_answer(mut req: Request<Incoming>) -> Response<UpBody> {
    let path = req.uri().path().to_owned();
    if path == "/ws" {
        // `101 Switching Protocols <real value>`, the value as a header name; the upgraded
        // stream is held open (nothing is sent on it). (An Upgrade token other than
        // `websocket` is refused outright: tests/websocket.rs.)
        let on = hyper::upgrade::on(&mut req);
        tokio::spawn(async move {
            if let Ok(up) = on.await {
                tokio::time::sleep(WAIT).await;
                drop(up);
            }
        });
        let mut r = Response::new(Full::new(Bytes::new()).boxed());
        *r.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        let reason = format!("Switching Protocols {SECRET}");
        r.extensions_mut()
            .insert(hyper::ext::ReasonPhrase::try_from(reason).unwrap());
        let h = r.headers_mut();
        h.insert("upgrade", "websocket".parse().unwrap());
        h.insert("connection", "upgrade".parse().unwrap());
        h.insert(
            http::HeaderName::from_bytes(SECRET.as_bytes()).unwrap(),
            "w".parse().unwrap(),
        );
        return r;
    }
    let _ = req.into_body().collect().await;
    if path == "/reason" {
        let mut r = Response::new(Full::new(Bytes::from_static(b"ok")).boxed());
        let reason = hyper::ext::ReasonPhrase::try_from(format!("OK {SECRET}")).unwrap();
        r.extensions_mut().insert(reason);
        return r;
    }
    let named = |n: &str| http::HeaderName::from_bytes(n.as_bytes()).unwrap();
    let mut trailers = http::HeaderMap::new();
    trailers.insert(named(SECRET), "t1".parse().unwrap());
    trailers.insert(named(&format!("x-trailer-{SECRET}")), "t2".parse().unwrap());
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
        Ok(Frame::data(Bytes::from_static(b"body"))),
        Ok(Frame::trailers(trailers)),
    ];
    let mut r = Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
    let h = r.headers_mut();
    h.insert(named(SECRET), "v1".parse().unwrap());
    h.insert(named(&format!("x-{SECRET}-id")), "v2".parse().unwrap());
    // A name that stays invalid after substitution would be dropped; this one is fine.
    h.insert("x-plain", "v3".parse().unwrap());
    h.insert(
        "trailer",
        format!("{SECRET}, x-trailer-{SECRET}").parse().unwrap(),
    );
    r
}

async fn spawn_leaky(tls: Arc<rustls::ServerConfig>) -> SocketAddr {
    spawn_tls_listener(tls, |s| async move {
        let svc = service_fn(|req| async { Ok::<_, Infallible>(leaky_answer(req).await) });
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection_with_upgrades(TokioIo::new(s), svc)
            .await;
    })
    .await
}

/// A broker whose VM holds `API_KEY` = [`SECRET`] for `api.test`, served by the leaky
/// upstream offering `alpn`.
async fn leaky_world(alpn: &[&[u8]]) -> Harness {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "leaky", &["api.test"]);
    let addr = spawn_leaky(server_with_alpn(&pki, alpn)).await;
    let policy = format!(
        r#"{{
        "egress": {{"default": "deny",
            "allow": [{{"hosts": ["api.test"]}}, {{"cidrs": ["127.0.0.1/32"]}}]}},
        "credentials": {CRED_HEADERS},
        "resolve": {{"api.test": "{addr}"}}
    }}"#
    );
    harness_with_key(dir, &policy, SECRET, &pki).await
}

/// An HTTP/1.1 request written raw, the answer read raw until the broker closes.
async fn raw_h1(h: &Harness, path: &str) -> String {
    let mut tls = raw_h1_tls(h, "api.test").await;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: api.test\r\nAuthorization: Bearer mock-API_KEY\r\n\
         TE: trailers\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    read_until_close(&mut tls).await
}

#[tokio::test]
async fn real_value_in_the_http1_reason_phrase_is_scrubbed() {
    let h = leaky_world(H1_ONLY).await;
    let raw = raw_h1(&h, "/reason").await;
    let status_line = raw.lines().next().unwrap_or_default().to_owned();
    assert_no_secret("status line", &raw);
    assert!(status_line.starts_with("HTTP/1.1 200 "), "{status_line}");
    assert_eq!(status_line, "HTTP/1.1 200 OK mock-API_KEY");
    assert!(raw.contains("ok"), "body forwarded");
}

#[tokio::test]
async fn real_value_in_a_101_reason_or_header_name_is_scrubbed() {
    let h = leaky_world(H1_ONLY).await;
    let mut tls = raw_h1_tls(&h, "api.test").await;
    tls.write_all(
        b"GET /ws HTTP/1.1\r\nHost: api.test\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .await
    .unwrap();
    tls.flush().await.unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, tls.read(&mut b))
            .await
            .expect("101 head within the wait")
            .unwrap();
        assert_eq!(n, 1, "stream closed inside the response head");
        head.push(b[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    assert_no_secret("101 head", &head);
    let lower = head.to_ascii_lowercase();
    assert!(
        head.starts_with("HTTP/1.1 101 Switching Protocols mock-API_KEY\r\n"),
        "status line"
    );
    assert!(
        lower.contains("\r\nupgrade: websocket\r\n"),
        "upgrade token"
    );
    assert!(lower.contains("\r\nmock-api_key: w\r\n"), "renamed header");
}

#[tokio::test]
async fn real_value_as_response_header_or_trailer_name_is_scrubbed() {
    for up in [H1_ONLY, H2_ONLY] {
        let h = leaky_world(up).await;
        let up_name = String::from_utf8_lossy(up[0]).into_owned();

        // HTTP/1.1 guest, read raw: names are not re-cased on the way, so compare in any case.
        let raw = raw_h1(&h, "/names").await;
        assert_no_secret(&format!("upstream {up_name}, h1 guest"), &raw);
        let lower = raw.to_ascii_lowercase();
        assert!(lower.contains("\r\nmock-api_key: v1\r\n"), "renamed header");
        assert!(
            lower.contains("\r\nx-mock-api_key-id: v2\r\n"),
            "renamed header"
        );
        assert!(
            lower.contains("\r\nx-plain: v3\r\n"),
            "other headers untouched"
        );

        // HTTP/2 guest: headers and trailers.
        let mut c = h2_client(&h, "api.test", 443).await;
        let a = h2_send(&mut c, get_with_placeholder("https://api.test/names")).await;
        assert_eq!(a.status, 200);
        assert_eq!(a.text(), "body");
        let what = format!("upstream {up_name}, h2 guest");
        assert_no_secret(&what, &format!("{:?}", a.headers));
        assert_eq!(a.headers["mock-api_key"], "v1", "{what}");
        assert_eq!(a.headers["x-mock-api_key-id"], "v2", "{what}");
        assert_eq!(a.headers["x-plain"], "v3", "{what}");
        // An HTTP/1.1 upstream sends trailers only to a request with `TE: trailers`, which
        // the broker strips as hop-by-hop: trailers arrive from HTTP/2 upstreams only.
        if let Some(t) = &a.trailers {
            assert_no_secret(&what, &format!("{t:?}"));
        }
        if up == H2_ONLY {
            let t = a.trailers.expect("trailers forwarded");
            assert_eq!(t["mock-api_key"], "t1", "{what}");
            assert_eq!(t["x-trailer-mock-api_key"], "t2", "{what}");
        }
    }
}
