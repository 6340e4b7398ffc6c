//! Issue 11: an upstream that echoes the real value inside a JSON string, with some or all
//! of its characters escaped the way JSON encoders do (PHP `\/`, Go `\u003c\u0026\u003e`,
//! `\uXXXX` in either hex case, `\"`, `\\`), streamed in small frames so every escape and
//! the value itself are split across reads: the guest gets the placeholder, never the value
//! in any form. Failed before the JSON view (the escaped value reached the guest).

mod common;
mod proto;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};

use common::*;
use proto::*;

/// Has `/`, `+`, `"`, `\`, `<`, `&`, `>` (each escaped by some encoder).
const VALUE: &str = r#"real/Secret+Key<&>"q\0123456789abcdef"#;

/// The echoed JSON string body of each path (what goes between the quotes).
fn echoed(path: &str) -> String {
    let esc_php = VALUE
        .replace('\\', r"\\")
        .replace('"', r#"\""#)
        .replace('/', r"\/");
    match path {
        // PHP json_encode.
        "/php" => esc_php,
        // Go encoding/json.
        "/go" => VALUE
            .replace('\\', r"\\")
            .replace('"', r#"\""#)
            .replace('<', r"\u003c")
            .replace('&', r"\u0026")
            .replace('>', r"\u003e"),
        // Every character as \uXXXX, upper-case hex.
        "/all" => VALUE
            .chars()
            .map(|c| format!("\\u{:04X}", c as u32))
            .collect(),
        // A mixture: every third character escaped, lower-case hex.
        "/mixed" => VALUE
            .chars()
            .enumerate()
            .map(|(i, c)| match (i % 3, c) {
                (0, _) => format!("\\u{:04x}", c as u32),
                (_, '"') => r#"\""#.to_owned(),
                (_, '\\') => r"\\".to_owned(),
                _ => c.to_string(),
            })
            .collect(),
        // The base64 form with PHP's `\/`.
        _ => STANDARD.encode(VALUE).replace('/', r"\/"),
    }
}

type UpBody = BoxBody<Bytes, Infallible>;

async fn answer(req: Request<Incoming>) -> Response<UpBody> {
    let path = req.uri().path().to_owned();
    let _ = req.into_body().collect().await;
    let body = format!("{{\"echo\":\"{}\",\"n\":1}}", echoed(&path)).into_bytes();
    // 5-byte frames: the value and its escapes arrive split across reads.
    let frames: Vec<Result<Frame<Bytes>, Infallible>> = body
        .chunks(5)
        .map(|c| Ok(Frame::data(Bytes::copy_from_slice(c))))
        .collect();
    let mut r = Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
    r.headers_mut()
        .insert("content-type", "application/json".parse().unwrap());
    r
}

async fn spawn_echoing(tls: Arc<rustls::ServerConfig>) -> SocketAddr {
    spawn_tls_listener(tls, |s| async move {
        let svc = service_fn(|req| async { Ok::<_, Infallible>(answer(req).await) });
        let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
            .serve_connection(TokioIo::new(s), svc)
            .await;
    })
    .await
}

#[tokio::test]
async fn json_escaped_echo_of_the_real_value_is_scrubbed() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "jsonecho", &["api.test"]);
    let addr = spawn_echoing(server_with_alpn(&pki, &[b"h2", b"http/1.1"])).await;
    let policy = format!(
        r#"{{
        "egress": {{"default": "deny",
            "allow": [{{"hosts": ["api.test"]}}, {{"cidrs": ["127.0.0.1/32"]}}]}},
        "credentials": {CRED_HEADERS},
        "resolve": {{"api.test": "{addr}"}}
    }}"#
    );
    let h = harness_with_key(dir, &policy, VALUE, &pki).await;
    let mut c = h2_client(&h, "api.test", 443).await;
    for path in ["/php", "/go", "/all", "/mixed", "/base64"] {
        let a = h2_send(
            &mut c,
            get_with_placeholder(&format!("https://api.test{path}")),
        )
        .await;
        assert_eq!(a.status, 200, "{path}");
        let body = String::from_utf8(a.body.clone()).unwrap();
        // The guest's JSON parser sees the placeholder (in the echoed form), never the value.
        let v: serde_json::Value = serde_json::from_str(&body).expect("still valid JSON");
        let echo = v["echo"].as_str().unwrap();
        let want = if path == "/base64" {
            STANDARD.encode("mock-API_KEY")
        } else {
            "mock-API_KEY".to_owned()
        };
        // Never print the echo: on failure it is the real value.
        assert!(echo == want, "{path}: the echo was not replaced");
        assert!(
            !body.contains(&echoed(path)) && !echo.contains("Secret"),
            "{path}: the real value reached the guest"
        );
    }
}
