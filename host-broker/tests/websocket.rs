//! Issue 11: WebSocket relays are parsed, scrubbed, substituted and accounted for.
//!
//! A WebSocket upstream on loopback (HTTP/1.1 Upgrade, as the broker always uses toward the
//! upstream) records the handshake and every message it receives. On `/ws` it first sends
//! the handshake's Authorization (the real value after substitution) back to the guest as a
//! *fragmented* text message written one byte per write, then as a binary message, then
//! echoes whatever it receives. `/raw` records the raw bytes after the 101; `/deflate`
//! answers with `permessage-deflate` negotiated whatever was offered.

mod common;
mod proto;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

use common::*;
use proto::*;

type UpBody = BoxBody<Bytes, Infallible>;

/// What the WebSocket upstream saw.
#[derive(Default)]
struct Seen {
    handshakes: Vec<Vec<(String, String)>>,
    messages: Vec<Vec<u8>>,
    raw: Vec<u8>,
}

#[derive(Clone, Default)]
struct Rec(Arc<Mutex<Seen>>);

impl Rec {
    fn messages(&self) -> Vec<Vec<u8>> {
        self.0.lock().unwrap().messages.clone()
    }
    fn handshakes(&self) -> Vec<Vec<(String, String)>> {
        self.0.lock().unwrap().handshakes.clone()
    }
    fn raw(&self) -> Vec<u8> {
        self.0.lock().unwrap().raw.clone()
    }
}

/// An unmasked server frame (FIN bit `fin`, `opcode`), payload < 126 bytes.
fn frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    assert!(payload.len() < 126);
    let mut f = vec![(u8::from(fin) << 7) | opcode, payload.len() as u8];
    f.extend_from_slice(payload);
    f
}

async fn ws_answer(mut req: Request<Incoming>, rec: Rec) -> Response<UpBody> {
    let path = req.uri().path().to_owned();
    if !req.headers().contains_key("upgrade") {
        return Response::new(Full::new(Bytes::from_static(b"ok")).boxed());
    }
    rec.0
        .lock()
        .unwrap()
        .handshakes
        .push(header_pairs(req.headers()));
    let auth = req
        .headers()
        .get("authorization")
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    let on = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let Ok(up) = on.await else { return };
        let mut io = TokioIo::new(up);
        if path == "/raw" {
            let mut buf = [0u8; 4096];
            while let Ok(n) = io.read(&mut buf).await {
                if n == 0 {
                    return;
                }
                rec.0.lock().unwrap().raw.extend_from_slice(&buf[..n]);
            }
            return;
        }
        if path == "/ws" {
            // The value split across two fragments, each written a byte at a time.
            let text = [b"echo: ".as_slice(), &auth].concat();
            let (a, b) = text.split_at(text.len() / 2);
            let mut wire = frame(false, 0x1, a);
            wire.extend(frame(true, 0x0, b));
            wire.extend(frame(true, 0x2, &auth));
            for byte in wire {
                if io.write_all(&[byte]).await.is_err() || io.flush().await.is_err() {
                    return;
                }
            }
        }
        let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        while let Some(Ok(m)) = ws.next().await {
            let payload = match &m {
                Message::Text(t) => t.as_bytes().to_vec(),
                Message::Binary(b) => b.to_vec(),
                _ => continue,
            };
            rec.0.lock().unwrap().messages.push(payload);
            if ws.send(m).await.is_err() {
                return;
            }
        }
    });
    let mut r = Response::new(Full::new(Bytes::new()).boxed());
    *r.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
    let h = r.headers_mut();
    h.insert("upgrade", "websocket".parse().unwrap());
    h.insert("connection", "upgrade".parse().unwrap());
    if req.uri().path() == "/deflate" {
        h.insert(
            "sec-websocket-extensions",
            "permessage-deflate".parse().unwrap(),
        );
    }
    r
}

async fn spawn_ws_upstream(tls: Arc<rustls::ServerConfig>) -> (SocketAddr, Rec) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rec = Rec::default();
    let rec2 = rec.clone();
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (tls, rec) = (tls.clone(), rec2.clone());
            tokio::spawn(async move {
                let Ok(s) = tokio_rustls::TlsAcceptor::from(tls).accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req| {
                    let rec = rec.clone();
                    async move { Ok::<_, Infallible>(ws_answer(req, rec).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, rec)
}

/// `API_KEY` for api.test (headers and body), `OTHER_KEY` for other.test only.
const CREDS: &str = r#"{
    "API_KEY": {"source": {"env": "API_KEY"}, "hosts": ["api.test"], "in": ["headers", "body"]},
    "OTHER_KEY": {"source": {"env": "OTHER_KEY"}, "hosts": ["other.test"]}
}"#;

struct WsWorld {
    h: Harness,
    rec: Rec,
}

async fn ws_world(extra: &str) -> WsWorld {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "ws", &["api.test", "other.test"]);
    let (addr, rec) = spawn_ws_upstream(server_with_alpn(&pki, &[b"http/1.1"])).await;
    let policy = format!(
        r#"{{
        "egress": {{"default": "deny",
            "allow": [{{"hosts": ["api.test", "other.test"]}}, {{"cidrs": ["127.0.0.1/32"]}}]}},
        "credentials": {CREDS},
        "resolve": {{"api.test": "{addr}", "other.test": "{addr}"}}
        {extra}
    }}"#
    );
    let h = harness_in(
        dir,
        &policy,
        &[
            ("API_KEY", SECRET),
            ("OTHER_KEY", "other-REAL-fedcba9876543210"),
        ],
        vec![pki.ca_path.clone()],
    )
    .await;
    WsWorld { h, rec }
}

/// Raw HTTP/1.1 handshake on an intercepted stream; returns the response head and stream.
async fn handshake(h: &Harness, path: &str, upgrade: &str, extra: &str) -> (String, ClientTls) {
    let mut tls = raw_h1_tls(h, "api.test").await;
    let head = format!(
        "GET {path} HTTP/1.1\r\nHost: api.test\r\nConnection: Upgrade\r\nUpgrade: {upgrade}\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer mock-API_KEY\r\n{extra}\r\n"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    tls.flush().await.unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, tls.read(&mut b))
            .await
            .expect("response head within the wait")
            .unwrap();
        assert_eq!(n, 1, "closed inside the response head");
        got.push(b[0]);
    }
    (String::from_utf8_lossy(&got).into_owned(), tls)
}

async fn next_msg<S>(ws: &mut WebSocketStream<S>) -> Option<Message>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    match tokio::time::timeout(WAIT, ws.next()).await {
        Ok(Some(Ok(m))) => Some(m),
        Ok(_) => None,
        Err(_) => panic!("no WebSocket message within the wait"),
    }
}

fn payload(m: &Message) -> Vec<u8> {
    match m {
        Message::Text(t) => t.as_bytes().to_vec(),
        Message::Binary(b) => b.to_vec(),
        other => panic!("unexpected message kind {other:?}"),
    }
}

#[track_caller]
fn assert_no_secret(what: &str, bytes: &[u8]) {
    let s = String::from_utf8_lossy(bytes);
    assert!(
        !s.contains(SECRET),
        "{what}: the real value reached the guest"
    );
}

#[tokio::test]
async fn fragmented_upstream_messages_are_scrubbed_and_guest_messages_substituted() {
    let w = ws_world("").await;
    let (head, tls) = handshake(&w.h, "/ws", "websocket", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut ws = WebSocketStream::from_raw_socket(tls, Role::Client, None).await;

    let text = next_msg(&mut ws).await.expect("text message");
    assert!(matches!(text, Message::Text(_)), "{text:?}");
    assert_no_secret("fragmented text message", &payload(&text));
    assert_eq!(payload(&text), b"echo: Bearer mock-API_KEY");
    let bin = next_msg(&mut ws).await.expect("binary message");
    assert_no_secret("binary message", &payload(&bin));
    assert_eq!(payload(&bin), b"Bearer mock-API_KEY");

    // Guest -> upstream: the placeholder becomes the value toward api.test (in: body) ...
    ws.send(Message::text("token=mock-API_KEY")).await.unwrap();
    let back = next_msg(&mut ws).await.expect("echo");
    assert_no_secret("echoed message", &payload(&back));
    assert_eq!(payload(&back), b"token=mock-API_KEY");
    let got = w.rec.messages();
    assert_eq!(got, vec![format!("token={SECRET}").into_bytes()]);
}

#[tokio::test]
async fn a_placeholder_for_another_host_closes_the_relay_with_a_reason() {
    let w = ws_world("").await;
    let (head, tls) = handshake(&w.h, "/echo", "websocket", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut ws = WebSocketStream::from_raw_socket(tls, Role::Client, None).await;
    ws.send(Message::binary(&b"k=mock-OTHER_KEY"[..]))
        .await
        .unwrap();
    match next_msg(&mut ws).await {
        Some(Message::Close(Some(f))) => {
            assert_eq!(u16::from(f.code), 1008, "policy violation");
            assert!(f.reason.as_str().starts_with("sluice: "), "{}", f.reason);
            assert!(f.reason.as_str().contains("OTHER_KEY"), "{}", f.reason);
        }
        other => panic!("expected a close with a reason, got {other:?}"),
    }
    assert!(w.rec.messages().is_empty(), "nothing reached the upstream");
}

#[tokio::test]
async fn non_websocket_upgrades_are_refused_with_a_reason() {
    let w = ws_world("").await;
    for token in ["h2c", "foo/1"] {
        let (head, _) = handshake(&w.h, "/ws", token, "").await;
        assert!(head.starts_with("HTTP/1.1 400"), "{token}: {head}");
        assert!(
            head.contains("x-sluice-reason: only WebSocket upgrades are relayed"),
            "{head}"
        );
    }
    assert!(
        w.rec.handshakes().is_empty(),
        "no upgrade reached the upstream"
    );
}

#[tokio::test]
async fn bytes_after_the_101_that_are_not_frames_never_reach_the_upstream() {
    let w = ws_world("").await;
    let (head, mut tls) = handshake(&w.h, "/raw", "websocket", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    tls.write_all(
        b"GET /x HTTP/1.1\r\nHost: other.test\r\nAuthorization: Bearer mock-API_KEY\r\n\r\n",
    )
    .await
    .unwrap();
    tls.flush().await.unwrap();
    // The relay answers a protocol error by closing; wait for that.
    let _ = read_until_close(&mut tls).await;
    assert!(
        w.rec.raw().is_empty(),
        "raw bytes reached the upstream: {:?}",
        String::from_utf8_lossy(&w.rec.raw())
    );
}

#[tokio::test]
async fn permessage_deflate_is_never_negotiated() {
    let w = ws_world("").await;
    let offer = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";
    let (head, _tls) = handshake(&w.h, "/echo", "websocket", offer).await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("sec-websocket-extensions"),
        "{head}"
    );
    let seen = w.rec.handshakes();
    assert!(
        header_in(&seen[0], "sec-websocket-extensions").is_none(),
        "the offer was stripped toward the upstream"
    );
    // An upstream that negotiates it anyway is refused.
    let (head, _) = handshake(&w.h, "/deflate", "websocket", offer).await;
    assert!(head.starts_with("HTTP/1.1 502"), "{head}");
    assert!(head.contains("cannot scrub through"), "{head}");
}

#[tokio::test]
async fn relays_count_against_max_connections_and_end_on_unregister() {
    let w = ws_world(r#", "max_connections": 1"#).await;
    let (head, tls) = handshake(&w.h, "/echo", "websocket", "").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    let mut ws = WebSocketStream::from_raw_socket(tls, Role::Client, None).await;
    ws.send(Message::text("hello")).await.unwrap();
    assert_eq!(payload(&next_msg(&mut ws).await.unwrap()), b"hello");
    // The relay holds the VM's only slot: a second stream is refused.
    let (status, head, _s) = connect_via(w.h.proxy, "api.test:443").await;
    assert_eq!(status, 503, "{head}");
    assert!(
        head.contains("per-VM connection limit (1) reached"),
        "{head}"
    );
    // Unregistering the VM ends the relay.
    w.h.broker.unregister_vm(&w.h.vm).await.unwrap();
    loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("relay ended within the wait")
        {
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
            Some(Ok(_)) => continue,
        }
    }
}

#[tokio::test]
async fn h2_extended_connect_messages_are_scrubbed() {
    let w = ws_world("").await;
    let mut c = h2_client(&w.h, "api.test", 443).await;
    // One ordinary request first, so the broker's SETTINGS (extended CONNECT) are in.
    let _ = h2_send(&mut c, req("GET", "https://api.test/plain", &[], b"")).await;
    let mut r = req(
        "CONNECT",
        "https://api.test/ws",
        &[PLACEHOLDER_AUTH, ("sec-websocket-version", "13")],
        b"",
    );
    *r.version_mut() = http::Version::HTTP_2;
    r.extensions_mut()
        .insert(hyper::ext::Protocol::from_static("websocket"));
    c.ready().await.unwrap();
    let resp = tokio::time::timeout(WAIT, c.send_request(r))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), 200);
    let up = tokio::time::timeout(WAIT, hyper::upgrade::on(resp))
        .await
        .unwrap()
        .unwrap();
    let mut ws = WebSocketStream::from_raw_socket(TokioIo::new(up), Role::Client, None).await;
    let text = next_msg(&mut ws).await.expect("text message");
    assert_no_secret("h2: fragmented text", &payload(&text));
    assert_eq!(payload(&text), b"echo: Bearer mock-API_KEY");
    let bin = next_msg(&mut ws).await.expect("binary message");
    assert_no_secret("h2: binary", &payload(&bin));
}
