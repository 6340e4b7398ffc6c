//! Fixtures for the protocol and adversarial suites: an echo upstream that speaks HTTP/1.1
//! and HTTP/2 (by ALPN), reflects headers and bodies (plain, gzip, trailers), streams SSE
//! under test control and answers redirects; plus HTTP/2 and raw clients.
#![allow(dead_code)]

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::Notify;

use crate::common::*;

pub const SECRET: &str = "sk-live-REAL-0123456789abcdef";

/// One request as the echo upstream saw it.
#[derive(Debug, Clone)]
pub struct Got {
    pub version: String,
    pub method: String,
    pub target: String,
    pub authority: Option<String>,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Got {
    pub fn header(&self, name: &str) -> Option<&str> {
        header_in(&self.headers, name)
    }
}

/// The echo upstream.
pub struct Echo {
    pub addr: SocketAddr,
    pub got: Arc<Mutex<Vec<Got>>>,
    /// `/sse` sends its second event and ends when notified.
    pub sse_release: Arc<Notify>,
}

impl Echo {
    pub fn requests(&self) -> Vec<Got> {
        self.got.lock().unwrap().clone()
    }
}

type UpBody = BoxBody<Bytes, Infallible>;

fn full(b: impl Into<Bytes>) -> UpBody {
    Full::new(b.into()).boxed()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

/// TLS server config for `names` signed by `pki`'s CA, offering `alpn`.
pub fn server_with_alpn(pki: &TestPki, alpn: &[&[u8]]) -> Arc<rustls::ServerConfig> {
    let mut cfg = (*pki.server).clone();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

/// Spawns the echo upstream (TLS with `tls`, HTTP/1.1 or HTTP/2 as negotiated).
pub async fn spawn_echo(tls: Arc<rustls::ServerConfig>) -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let got: Arc<Mutex<Vec<Got>>> = Arc::default();
    let sse_release = Arc::new(Notify::new());
    let (got2, rel2) = (got.clone(), sse_release.clone());
    tokio::spawn(async move {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let (got, rel, tls) = (got2.clone(), rel2.clone(), tls.clone());
            tokio::spawn(async move {
                let Ok(s) = tokio_rustls::TlsAcceptor::from(tls).accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req| {
                    let (got, rel) = (got.clone(), rel.clone());
                    async move { Ok::<_, Infallible>(answer(req, &got, &rel).await) }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    Echo {
        addr,
        got,
        sse_release,
    }
}

async fn answer(
    mut req: Request<Incoming>,
    got: &Mutex<Vec<Got>>,
    rel: &Arc<Notify>,
) -> Response<UpBody> {
    let ws = (req.uri().path() == "/ws" && req.headers().contains_key("upgrade"))
        .then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let g = Got {
        version: format!("{:?}", parts.version),
        method: parts.method.to_string(),
        target: parts
            .uri
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        authority: parts.uri.authority().map(|a| a.to_string()),
        headers: header_pairs(&parts.headers),
        body: body.to_vec(),
    };
    got.lock().unwrap().push(g);
    let auth = parts
        .headers
        .get("authorization")
        .map(|v| v.as_bytes().to_vec())
        .unwrap_or_default();
    // Everything the upstream saw that could carry a value, reflected.
    let mut reflected = auth.clone();
    reflected.extend_from_slice(b"\n");
    reflected.extend_from_slice(parts.uri.query().unwrap_or("").as_bytes());
    reflected.extend_from_slice(b"\n");
    reflected.extend_from_slice(&body);
    let version = format!("{:?}", parts.version);
    if let Some(on) = ws {
        // A WebSocket message echo after a 101 (the broker parses frames on both sides).
        tokio::spawn(async move {
            use futures_util::{SinkExt, StreamExt};
            use tokio_tungstenite::tungstenite::{protocol::Role, Message};
            let Ok(up) = on.await else { return };
            let io = TokioIo::new(up);
            let mut ws =
                tokio_tungstenite::WebSocketStream::from_raw_socket(io, Role::Server, None).await;
            while let Some(Ok(m)) = ws.next().await {
                if matches!(m, Message::Text(_) | Message::Binary(_)) && ws.send(m).await.is_err() {
                    return;
                }
            }
        });
        let mut r = Response::new(full(""));
        *r.status_mut() = http::StatusCode::SWITCHING_PROTOCOLS;
        r.headers_mut()
            .insert("upgrade", "websocket".parse().unwrap());
        r.headers_mut()
            .insert("connection", "upgrade".parse().unwrap());
        if let Ok(v) = http::HeaderValue::from_bytes(&auth) {
            r.headers_mut().insert("x-echo-authorization", v);
        }
        return r;
    }
    let path = parts.uri.path();
    if path == "/sink" {
        return Response::new(full(body.len().to_string()));
    }
    if let Some(n) = path.strip_prefix("/gzbulk/") {
        // n bytes of text, gzip-compressed (bench: cost of decode + scrub).
        // Compressed once per size, so the upstream's compression cost is not measured.
        static CACHE: Mutex<Vec<(usize, Bytes)>> = Mutex::new(Vec::new());
        let n: usize = n.parse().unwrap_or(0);
        let cached = CACHE
            .lock()
            .unwrap()
            .iter()
            .find(|(k, _)| *k == n)
            .map(|(_, b)| b.clone());
        let z = cached.unwrap_or_else(|| {
            let line = b"the quick brown fox jumps over the lazy dog 0123456789\n";
            let text: Vec<u8> = line.iter().copied().cycle().take(n).collect();
            let z = Bytes::from(gzip(&text));
            CACHE.lock().unwrap().push((n, z.clone()));
            z
        });
        let mut r = Response::new(full(z));
        r.headers_mut()
            .insert("content-encoding", "gzip".parse().unwrap());
        return r;
    }
    let mut resp = match path {
        "/gzip" => {
            let mut r = Response::new(full(gzip(&reflected)));
            r.headers_mut()
                .insert("content-encoding", "gzip".parse().unwrap());
            r
        }
        "/br" => {
            let mut r = Response::new(full(reflected.clone()));
            r.headers_mut()
                .insert("content-encoding", "br".parse().unwrap());
            r
        }
        "/trailer" => {
            let mut trailers = http::HeaderMap::new();
            if let Ok(v) = http::HeaderValue::from_bytes(&auth) {
                trailers.insert("x-echo-trailer", v);
            }
            let frames: Vec<Result<Frame<Bytes>, Infallible>> = vec![
                Ok(Frame::data(Bytes::from_static(b"body-before-trailers"))),
                Ok(Frame::trailers(trailers)),
            ];
            Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed())
        }
        "/sse" => {
            let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
            let _ = tx.try_send(Ok(Frame::data(Bytes::from(format!(
                "data: first {}\n\n",
                String::from_utf8_lossy(&auth)
            )))));
            let rel = rel.clone();
            // notify_one stores a permit, so a release before this task waits is kept.
            tokio::spawn(async move {
                rel.notified().await;
                let _ = tx
                    .send(Ok(Frame::data(Bytes::from_static(b"data: second\n\n"))))
                    .await;
            });
            let stream = futures_util::stream::unfold(rx, |mut rx| async move {
                rx.recv().await.map(|f| (f, rx))
            });
            let mut r = Response::new(StreamBody::new(stream).boxed());
            r.headers_mut()
                .insert("content-type", "text/event-stream".parse().unwrap());
            r
        }
        "/redirect" => {
            let mut r = Response::new(full(""));
            *r.status_mut() = http::StatusCode::FOUND;
            r.headers_mut()
                .insert("location", "https://other.test/landing".parse().unwrap());
            r
        }
        _ => {
            let mut r = Response::new(full(reflected.clone()));
            if let Ok(v) = http::HeaderValue::from_bytes(&auth) {
                r.headers_mut().insert("x-echo-authorization", v);
            }
            r
        }
    };
    resp.headers_mut()
        .insert("x-upstream-version", version.parse().unwrap());
    resp
}

/// A client TLS config trusting `ca_pem`, offering `alpn`.
pub fn client_alpn(ca_pem: &str, alpn: &[&[u8]]) -> Arc<rustls::ClientConfig> {
    let mut cfg = (*client_trusting(ca_pem)).clone();
    cfg.alpn_protocols = alpn.iter().map(|a| a.to_vec()).collect();
    Arc::new(cfg)
}

/// CONNECT + TLS (with `alpn`) through the broker; returns the stream and negotiated ALPN.
pub async fn tunnel_tls(
    h: &Harness,
    target: &str,
    sni: &str,
    alpn: &[&[u8]],
) -> std::io::Result<(ClientTls, Option<Vec<u8>>)> {
    let (status, head, s) = connect_via(h.proxy, target).await;
    assert_eq!(status, 200, "CONNECT {target}: {head}");
    let name = rustls::pki_types::ServerName::try_from(sni.to_owned()).unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_alpn(&h.vm_ca_pem, alpn))
        .connect(name, s)
        .await?;
    let alpn = tls.get_ref().1.alpn_protocol().map(|a| a.to_vec());
    Ok((tls, alpn))
}

pub type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// An HTTP/2 client over an intercepted tunnel to `host:port`.
pub async fn h2_client(h: &Harness, host: &str, port: u16) -> H2 {
    let (tls, alpn) = tunnel_tls(h, &format!("{host}:{port}"), host, &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(alpn.as_deref(), Some(&b"h2"[..]), "broker must offer h2");
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

/// A response, collected: (status, headers, body, trailers).
pub struct Answer {
    pub status: u16,
    pub headers: http::HeaderMap,
    pub body: Vec<u8>,
    pub trailers: Option<http::HeaderMap>,
}

impl Answer {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
    pub fn reason(&self) -> String {
        self.headers
            .get("x-sluice-reason")
            .map(|v| v.to_str().unwrap_or("").to_owned())
            .unwrap_or_default()
    }
}

pub async fn collect(resp: Response<Incoming>) -> Answer {
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let c = tokio::time::timeout(WAIT, resp.into_body().collect())
        .await
        .unwrap()
        .unwrap();
    let trailers = c.trailers().cloned();
    Answer {
        status,
        headers,
        body: c.to_bytes().to_vec(),
        trailers,
    }
}

/// Waits (bounded) for the response of a request being sent, and collects it.
async fn answer_of(
    sending: impl std::future::Future<Output = hyper::Result<Response<Incoming>>>,
) -> Answer {
    let resp = tokio::time::timeout(WAIT, sending).await.unwrap().unwrap();
    collect(resp).await
}

/// Sends `req` on an HTTP/2 sender.
pub async fn h2_send(s: &mut H2, req: Request<Full<Bytes>>) -> Answer {
    s.ready().await.unwrap();
    answer_of(s.send_request(req)).await
}

/// Sends `req` on an HTTP/1.1 sender.
pub async fn h1_send(
    s: &mut hyper::client::conn::http1::SendRequest<Full<Bytes>>,
    req: Request<Full<Bytes>>,
) -> Answer {
    s.ready().await.unwrap();
    answer_of(s.send_request(req)).await
}

/// `GET uri` carrying the placeholder in Authorization ([`PLACEHOLDER_AUTH`]), no body.
pub fn get_with_placeholder(uri: &str) -> Request<Full<Bytes>> {
    req("GET", uri, &[PLACEHOLDER_AUTH], b"")
}

/// Asserts that the upstream got the real value (substituted) in Authorization.
#[track_caller]
pub fn assert_real_auth(g: &Got) {
    assert_eq!(
        g.header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
}

/// CONNECT `host:443` and intercepted TLS offering HTTP/1.1 only: a raw stream for tests
/// that write the request bytes themselves.
pub async fn raw_h1_tls(h: &Harness, host: &str) -> ClientTls {
    let (tls, _) = tunnel_tls(h, &format!("{host}:443"), host, &[b"http/1.1"])
        .await
        .unwrap();
    tls
}

/// Writes `chunks` as a chunked body, each chunk flushed on its own, then the last chunk.
pub async fn write_chunked_body(tls: &mut ClientTls, chunks: &[&[u8]]) {
    use tokio::io::AsyncWriteExt;
    for c in chunks {
        tls.write_all(format!("{:x}\r\n", c.len()).as_bytes())
            .await
            .unwrap();
        tls.write_all(c).await.unwrap();
        tls.write_all(b"\r\n").await.unwrap();
        tls.flush().await.unwrap();
    }
    tls.write_all(b"0\r\n\r\n").await.unwrap();
    tls.flush().await.unwrap();
}

/// Everything the broker sends until it closes the stream (bounded by [`WAIT`]), as text.
pub async fn read_until_close(tls: &mut ClientTls) -> String {
    use tokio::io::AsyncReadExt;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, tls.read_to_end(&mut out))
        .await
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

pub fn req(method: &str, uri: &str, headers: &[(&str, &str)], body: &[u8]) -> Request<Full<Bytes>> {
    let mut b = Request::builder().method(method).uri(uri);
    for (n, v) in headers {
        b = b.header(*n, *v);
    }
    b.body(Full::new(Bytes::copy_from_slice(body))).unwrap()
}

/// The standard world: `api.test` (credential host) and `other.test` (allowed, no
/// credential) both served by one echo upstream offering `upstream_alpn`.
pub struct World {
    pub h: Harness,
    pub echo: Echo,
}

/// `credentials` is the JSON of the `credentials` object; `extra` more top-level fields.
pub async fn world(upstream_alpn: &[&[u8]], credentials: &str, extra: &str) -> World {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "echo", &["api.test", "other.test", "127.0.0.1"]);
    let echo = spawn_echo(server_with_alpn(&pki, upstream_alpn)).await;
    let policy = format!(
        r#"{{
        "egress": {{"default": "deny",
            "allow": [{{"hosts": ["api.test", "other.test"]}}, {{"cidrs": ["127.0.0.1/32"]}}]}},
        "credentials": {credentials},
        "resolve": {{"api.test": "{a}", "other.test": "{a}"}}
        {extra}
    }}"#,
        a = echo.addr
    );
    let h = harness_with_key(dir, &policy, SECRET, &pki).await;
    World { h, echo }
}

/// API_KEY for api.test, substituted in headers, query and body.
pub const CRED_ALL: &str = r#"{"API_KEY": {"source": {"env": "API_KEY"}, "hosts": ["api.test"], "in": ["headers", "query", "body"]}}"#;
/// API_KEY for api.test, headers only (the default).
pub const CRED_HEADERS: &str =
    r#"{"API_KEY": {"source": {"env": "API_KEY"}, "hosts": ["api.test"]}}"#;
