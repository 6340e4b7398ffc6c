//! Protocol depth, end to end through the broker: HTTP/2 on both sides by ALPN, query and
//! body substitution, response scrubbing of gzip bodies and trailers, streaming (SSE),
//! redirects. Real echo upstream on loopback, real hyper clients and curl (--cacert).

mod common;
mod proto;

use common::*;
use proto::*;

const H2_ONLY: &[&[u8]] = &[b"h2"];
const H1_ONLY: &[&[u8]] = &[b"http/1.1"];
const BOTH: &[&[u8]] = &[b"h2", b"http/1.1"];

#[tokio::test]
async fn h2_guest_and_h2_upstream_substitute_and_scrub_per_stream() {
    let w = world(BOTH, CRED_HEADERS, "").await;
    let mut c = h2_client(&w.h, "api.test", 443).await;
    // Several concurrent streams on one connection, each gated and substituted on its own.
    let mut tasks = Vec::new();
    for i in 0..4 {
        let mut c = c.clone();
        tasks.push(tokio::spawn(async move {
            let r = get_with_placeholder(&format!("https://api.test/s{i}"));
            h2_send(&mut c, r).await
        }));
    }
    for t in tasks {
        let a = t.await.unwrap();
        assert_eq!(a.status, 200);
        assert_eq!(a.headers["x-upstream-version"], "HTTP/2.0");
        assert_eq!(a.headers["x-echo-authorization"], "Bearer mock-API_KEY");
        assert!(!a.text().contains(SECRET), "body: {}", a.text());
        assert!(a.text().contains("Bearer mock-API_KEY"));
    }
    let got = w.echo.requests();
    assert_eq!(got.len(), 4);
    for g in &got {
        assert_eq!(g.version, "HTTP/2.0");
        assert_eq!(g.authority.as_deref(), Some("api.test"));
        assert_real_auth(g);
    }
    // The connection is still usable afterwards.
    let a = h2_send(&mut c, req("GET", "https://api.test/again", &[], b"")).await;
    assert_eq!(a.status, 200);
}

#[tokio::test]
async fn h2_guest_with_http1_upstream_and_http1_guest_with_h2_upstream() {
    // Guest h2, upstream only HTTP/1.1.
    let w = world(H1_ONLY, CRED_HEADERS, "").await;
    let mut c = h2_client(&w.h, "api.test", 443).await;
    let a = h2_send(&mut c, get_with_placeholder("https://api.test/x")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.headers["x-upstream-version"], "HTTP/1.1");
    let g = &w.echo.requests()[0];
    assert_eq!(g.header("host"), Some("api.test"));
    assert_real_auth(g);

    // Guest HTTP/1.1, upstream only h2.
    let w = world(H2_ONLY, CRED_HEADERS, "").await;
    let mut c = intercepted_client(&w.h, "api.test", 443).await;
    let (status, headers, body) =
        get(&mut c, "/y", &[("host", "api.test"), PLACEHOLDER_AUTH]).await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-upstream-version"], "HTTP/2.0");
    assert!(!body.contains(SECRET));
    let g = &w.echo.requests()[0];
    assert_eq!(g.version, "HTTP/2.0");
    assert_eq!(g.authority.as_deref(), Some("api.test"));
    assert_real_auth(g);
}

#[tokio::test]
async fn h2_authority_switch_on_a_coalesced_connection_is_421() {
    let w = world(BOTH, CRED_HEADERS, "").await;
    let mut c = h2_client(&w.h, "api.test", 443).await;
    // other.test is allowed by egress and served by the same upstream (and its certificate
    // covers both names), which is exactly when a client coalesces connections.
    let a = h2_send(&mut c, get_with_placeholder("https://other.test/steal")).await;
    assert_eq!(a.status, 421, "{}", a.text());
    assert!(
        a.reason().contains("does not match the CONNECT host"),
        "{}",
        a.reason()
    );
    assert!(
        w.echo.requests().is_empty(),
        "a misdirected request reached the upstream"
    );
    // The next stream on the same connection, for the right authority, is served.
    let a = h2_send(&mut c, get_with_placeholder("https://api.test/ok")).await;
    assert_eq!(a.status, 200);
    assert_eq!(w.echo.requests().len(), 1);
}

#[tokio::test]
async fn query_substitution_is_opt_in_and_handles_percent_encoding() {
    let w = world(BOTH, CRED_ALL, "").await;
    let mut c = h2_client(&w.h, "api.test", 443).await;
    let a = h2_send(
        &mut c,
        req(
            "GET",
            "https://api.test/q?key=mock-API_KEY&b=mock%2DAPI%5FKEY&c=plain",
            &[],
            b"",
        ),
    )
    .await;
    assert_eq!(a.status, 200);
    // The echo reflects the query; scrubbing turns the real value back into the placeholder.
    assert!(!a.text().contains(SECRET));
    let g = &w.echo.requests()[0];
    assert_eq!(g.target, format!("/q?key={SECRET}&b={SECRET}&c=plain"));

    // Headers-only credential: the query is left alone (a placeholder to its own host leaks
    // nothing).
    let w = world(BOTH, CRED_HEADERS, "").await;
    let mut c = h2_client(&w.h, "api.test", 443).await;
    let a = h2_send(
        &mut c,
        req("GET", "https://api.test/q?key=mock-API_KEY", &[], b""),
    )
    .await;
    assert_eq!(a.status, 200);
    assert_eq!(w.echo.requests()[0].target, "/q?key=mock-API_KEY");
}

#[tokio::test]
async fn body_substitution_recomputes_length_for_content_length_chunked_and_h2() {
    let w = world(BOTH, CRED_ALL, "").await;
    let body = br#"{"key":"mock-API_KEY","form":"k=mock-API_KEY"}"#;
    // HTTP/1.1 with Content-Length.
    let mut c1 = intercepted_client(&w.h, "api.test", 443).await;
    let a = h1_send(
        &mut c1,
        req(
            "POST",
            "/cl",
            &[("host", "api.test"), ("content-type", "application/json")],
            body,
        ),
    )
    .await;
    assert_eq!(a.status, 200);
    assert!(!a.text().contains(SECRET));
    // HTTP/1.1 chunked, the placeholder split across two chunks written separately.
    let tls = raw_h1_tls(&w.h, "api.test").await;
    let raw = raw_chunked_post(tls, "api.test", &[b"{\"key\":\"mock-AP", b"I_KEY\"}"]).await;
    assert!(raw.starts_with("HTTP/1.1 200"), "{raw}");
    // HTTP/2 DATA frames.
    let mut c2 = h2_client(&w.h, "api.test", 443).await;
    let a = h2_send(&mut c2, req("POST", "https://api.test/h2", &[], body)).await;
    assert_eq!(a.status, 200);

    let got = w.echo.requests();
    assert_eq!(got.len(), 3);
    let want = format!(r#"{{"key":"{SECRET}","form":"k={SECRET}"}}"#);
    assert_eq!(String::from_utf8_lossy(&got[0].body), want);
    assert_eq!(
        got[0].header("content-length"),
        Some(want.len().to_string().as_str())
    );
    let want_split = format!(r#"{{"key":"{SECRET}"}}"#);
    assert_eq!(String::from_utf8_lossy(&got[1].body), want_split);
    assert_eq!(
        got[1].header("content-length"),
        Some(want_split.len().to_string().as_str())
    );
    assert_eq!(String::from_utf8_lossy(&got[2].body), want);
}

/// Writes a chunked POST by hand (chunks flushed separately) and returns the response text.
async fn raw_chunked_post(mut tls: ClientTls, host: &str, chunks: &[&[u8]]) -> String {
    use tokio::io::AsyncWriteExt;
    let head = format!(
        "POST /chunked HTTP/1.1\r\nHost: {host}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    write_chunked_body(&mut tls, chunks).await;
    read_until_close(&mut tls).await
}

#[tokio::test]
async fn body_larger_than_the_cap_is_refused_when_it_would_need_substitution() {
    let w = world(BOTH, CRED_ALL, r#", "max_inspected_body": 1024"#).await;
    let mut c = h2_client(&w.h, "api.test", 443).await;
    let big = vec![b'a'; 4096];
    let a = h2_send(&mut c, req("POST", "https://api.test/big", &[], &big)).await;
    assert_eq!(a.status, 413, "{}", a.text());
    assert!(a.reason().contains("max_inspected_body"), "{}", a.reason());
    assert!(w.echo.requests().is_empty());
    // Toward a host where no credential substitutes, a large body streams through.
    let mut c = h2_client(&w.h, "other.test", 443).await;
    let a = h2_send(&mut c, req("POST", "https://other.test/big", &[], &big)).await;
    assert_eq!(a.status, 200);
    assert_eq!(w.echo.requests()[0].body.len(), 4096);
}

#[tokio::test]
async fn gzip_response_body_is_decoded_and_scrubbed_br_is_not_accepted() {
    let w = world(BOTH, CRED_HEADERS, "").await;
    let mut c = h2_client(&w.h, "api.test", 443).await;
    let a = h2_send(
        &mut c,
        req(
            "GET",
            "https://api.test/gzip",
            &[PLACEHOLDER_AUTH, ("accept-encoding", "br, gzip")],
            b"",
        ),
    )
    .await;
    assert_eq!(a.status, 200);
    // Decoded for scrubbing, sent identity.
    assert!(a.headers.get("content-encoding").is_none());
    assert!(a.text().contains("Bearer mock-API_KEY"), "{}", a.text());
    assert!(!a.text().contains(SECRET));
    // br was removed from what the upstream was offered.
    assert_eq!(w.echo.requests()[0].header("accept-encoding"), Some("gzip"));
    // An upstream that sends br anyway gets a 502, never an unscrubbed body.
    let a = h2_send(&mut c, get_with_placeholder("https://api.test/br")).await;
    assert_eq!(a.status, 502);
    assert!(!a.text().contains(SECRET));
}

#[tokio::test]
async fn real_value_in_a_response_trailer_is_scrubbed() {
    let w = world(BOTH, CRED_HEADERS, "").await;
    let mut c = h2_client(&w.h, "api.test", 443).await;
    let a = h2_send(&mut c, get_with_placeholder("https://api.test/trailer")).await;
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), "body-before-trailers");
    let t = a.trailers.expect("trailers forwarded");
    assert_eq!(t["x-echo-trailer"], "Bearer mock-API_KEY");
    assert_real_auth(&w.echo.requests()[0]);
}

#[tokio::test]
async fn sse_first_event_arrives_before_the_response_ends() {
    use http_body_util::BodyExt;
    let w = world(BOTH, CRED_HEADERS, "").await;
    for h2 in [true, false] {
        let resp = if h2 {
            let mut c = h2_client(&w.h, "api.test", 443).await;
            c.ready().await.unwrap();
            c.send_request(get_with_placeholder("https://api.test/sse"))
                .await
                .unwrap()
        } else {
            let mut c = intercepted_client(&w.h, "api.test", 443).await;
            c.ready().await.unwrap();
            c.send_request(req(
                "GET",
                "/sse",
                &[("host", "api.test"), PLACEHOLDER_AUTH],
                b"",
            ))
            .await
            .unwrap()
        };
        assert_eq!(resp.status(), 200);
        let mut body = resp.into_body();
        // The upstream holds the stream open until released: the first event must arrive
        // (scrubbed) while it is still open.
        let mut first = Vec::new();
        while !first.ends_with(b"\n\n") {
            let f = tokio::time::timeout(WAIT, body.frame())
                .await
                .expect("first SSE event not delivered while the response is open")
                .unwrap()
                .unwrap();
            if let Ok(d) = f.into_data() {
                first.extend_from_slice(&d);
            }
        }
        assert_eq!(
            String::from_utf8_lossy(&first),
            "data: first Bearer mock-API_KEY\n\n"
        );
        w.echo.sse_release.notify_one();
        let rest = tokio::time::timeout(WAIT, body.collect())
            .await
            .unwrap()
            .unwrap()
            .to_bytes();
        assert_eq!(&rest[..], b"data: second\n\n");
    }
}

#[tokio::test]
async fn redirects_are_passed_to_the_guest_never_followed() {
    let w = world(BOTH, CRED_HEADERS, "").await;
    let mut c = h2_client(&w.h, "api.test", 443).await;
    let a = h2_send(&mut c, get_with_placeholder("https://api.test/redirect")).await;
    assert_eq!(a.status, 302);
    assert_eq!(a.headers["location"], "https://other.test/landing");
    assert_eq!(w.echo.requests().len(), 1, "the broker followed a redirect");
    // Following it is a new request that passes the gates on its own: toward other.test the
    // placeholder is refused.
    let mut c = h2_client(&w.h, "other.test", 443).await;
    let a = h2_send(&mut c, get_with_placeholder("https://other.test/landing")).await;
    assert_eq!(a.status, 403);
    assert_eq!(w.echo.requests().len(), 1);
}

#[tokio::test]
async fn curl_http2_through_the_broker() {
    let w = world(BOTH, CRED_ALL, "").await;
    let proxy = format!("http://{}", w.h.proxy);
    let cacert = w.h.vm_ca_path.display().to_string();
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new("curl")
            .args([
                "-sS",
                "--http2",
                "--proxy",
                &proxy,
                "--cacert",
                &cacert,
                "-H",
                "authorization: Bearer mock-API_KEY",
                "-w",
                "\n%{http_version} %{http_code}",
                "https://api.test/curl?key=mock-API_KEY",
            ])
            .output(),
    )
    .await
    .unwrap();
    let Ok(out) = out else {
        if matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1")) {
            panic!(
                "CI=true and curl is not installed (bootstrap.sh installs it); refusing to skip"
            );
        }
        return eprintln!("SKIP: curl not installed");
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.ends_with("\n2 200"),
        "stdout {stdout} stderr {stderr}"
    );
    assert!(!stdout.contains(SECRET));
    let g = &w.echo.requests()[0];
    assert_eq!(g.version, "HTTP/2.0");
    assert_eq!(g.target, format!("/curl?key={SECRET}"));
    assert_real_auth(g);
}

/// Sends a WebSocket upgrade for `host` with `auth` on a raw intercepted HTTP/1.1 stream;
/// returns the response head and the stream.
async fn ws_handshake(w: &World, host: &str, auth: &str) -> (String, ClientTls) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut tls = raw_h1_tls(&w.h, host).await;
    let head = format!(
        "GET /ws HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: {auth}\r\n\r\n"
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 1];
    while !got.ends_with(b"\r\n\r\n") {
        let n = tokio::time::timeout(WAIT, tls.read(&mut b))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(n, 1, "closed inside the response head: {got:?}");
        got.push(b[0]);
    }
    (String::from_utf8_lossy(&got).into_owned(), tls)
}

#[tokio::test]
async fn websocket_upgrade_is_gated_substituted_then_relayed() {
    let w = world(BOTH, CRED_HEADERS, "").await;
    let (head, mut tls) = ws_handshake(&w, "api.test", "Bearer mock-API_KEY").await;
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("upgrade: websocket"),
        "{head}"
    );
    // The upstream's reflection of the handshake's Authorization is scrubbed.
    assert!(
        head.contains("x-echo-authorization: Bearer mock-API_KEY"),
        "{head}"
    );
    let g = &w.echo.requests()[0];
    assert_eq!(
        g.version, "HTTP/1.1",
        "upgrade must use an HTTP/1.1 upstream connection"
    );
    assert_real_auth(g);
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        &mut tls,
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    for msg in ["ping-1", "second message"] {
        use futures_util::{SinkExt, StreamExt};
        ws.send(tokio_tungstenite::tungstenite::Message::text(msg))
            .await
            .unwrap();
        let back = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back.to_text().unwrap(), msg);
    }

    // The same handshake toward a host outside the credential's hosts is refused.
    let (head, _) = ws_handshake(&w, "other.test", "Bearer mock-API_KEY").await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert_eq!(w.echo.requests().len(), 1);
}

#[tokio::test]
async fn h2_guest_streams_are_not_stalled_by_a_long_response_on_an_http1_upstream() {
    use http_body_util::BodyExt;
    let w = world(H1_ONLY, CRED_HEADERS, "").await;
    let mut c = h2_client(&w.h, "api.test", 443).await;
    c.ready().await.unwrap();
    // An SSE stream held open by the upstream...
    let sse = c
        .send_request(req("GET", "https://api.test/sse", &[], b""))
        .await
        .unwrap();
    let mut sse = sse.into_body();
    let first = tokio::time::timeout(WAIT, sse.frame()).await.unwrap();
    assert!(first.is_some());
    // ...while other streams on the same guest connection are answered.
    for i in 0..3 {
        let a = h2_send(
            &mut c,
            req("GET", &format!("https://api.test/n{i}"), &[], b""),
        )
        .await;
        assert_eq!(a.status, 200);
        assert_eq!(a.headers["x-upstream-version"], "HTTP/1.1");
    }
    w.echo.sse_release.notify_one();
    let rest = tokio::time::timeout(WAIT, sse.collect())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&rest.to_bytes()[..], b"data: second\n\n");
}

#[tokio::test]
async fn websocket_over_h2_extended_connect_is_gated_and_relayed() {
    use hyper_util::rt::TokioIo;
    let w = world(BOTH, CRED_HEADERS, "").await;
    let mut c = h2_client(&w.h, "api.test", 443).await;
    // One ordinary request first, so the broker's SETTINGS (extended CONNECT) are in.
    assert_eq!(
        h2_send(&mut c, req("GET", "https://api.test/", &[], b""))
            .await
            .status,
        200
    );
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
    assert_eq!(
        resp.headers()["x-echo-authorization"],
        "Bearer mock-API_KEY"
    );
    let up = tokio::time::timeout(WAIT, hyper::upgrade::on(resp))
        .await
        .unwrap()
        .unwrap();
    let mut ws = tokio_tungstenite::WebSocketStream::from_raw_socket(
        TokioIo::new(up),
        tokio_tungstenite::tungstenite::protocol::Role::Client,
        None,
    )
    .await;
    {
        use futures_util::{SinkExt, StreamExt};
        ws.send(tokio_tungstenite::tungstenite::Message::binary(
            &b"ws-over-h2"[..],
        ))
        .await
        .unwrap();
        let back = tokio::time::timeout(WAIT, ws.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(back.into_data().as_ref(), b"ws-over-h2");
    }
    let g = w.echo.requests().pop().unwrap();
    assert_eq!((g.method.as_str(), g.version.as_str()), ("GET", "HTTP/1.1"));
    assert_eq!(g.header("upgrade"), Some("websocket"));
    assert!(g.header("sec-websocket-key").is_some());
    assert_real_auth(&g);
}
