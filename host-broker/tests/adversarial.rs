//! The adversarial suite: what a hostile guest tries, end to end through the broker. Each
//! test names the attack; docs/threat-model.md maps every row to its test.

mod common;
mod proto;

use std::sync::Arc;

use common::*;
use proto::*;
use rcgen::{CertificateParams, KeyPair, SanType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const BOTH: &[&[u8]] = &[b"h2", b"http/1.1"];

/// The wrong-host world: `api.test` holds the credential; `other.test` is allowed by egress
/// but is not a credential host. Both are the same echo upstream.
async fn wrong_host_world() -> World {
    world(BOTH, CRED_ALL, "").await
}

async fn expect_403_on_other(w: &World, r: http::Request<http_body_util::Full<bytes::Bytes>>) {
    let before = w.echo.requests().len();
    let mut c = h2_client(&w.h, "other.test", 443).await;
    let a = h2_send(&mut c, r).await;
    assert_eq!(a.status, 403, "{}", a.text());
    assert!(a.reason().contains("API_KEY"), "reason: {}", a.reason());
    assert_eq!(
        w.echo.requests().len(),
        before,
        "the request reached the upstream"
    );
}

#[tokio::test]
async fn placeholder_in_query_to_wrong_host_blocked_raw_and_percent_encoded() {
    let w = wrong_host_world().await;
    for q in [
        "k=mock-API_KEY",
        "k=mock%2DAPI%5FKEY",
        "k=%256d%256fck-API_KEY",
    ] {
        expect_403_on_other(
            &w,
            req("GET", &format!("https://other.test/q?{q}"), &[], b""),
        )
        .await;
    }
}

#[tokio::test]
async fn placeholder_in_body_to_wrong_host_blocked_json_escaped_and_url_encoded() {
    let w = wrong_host_world().await;
    for body in [
        &br#"{"key":"mock-API_KEY"}"#[..],
        br#"{"key":"mock\u002dAPI_KEY"}"#,
        br#"{"key":"\u006d\u006f\u0063\u006b-API_KEY"}"#,
        b"key=mock%2DAPI%5FKEY",
    ] {
        expect_403_on_other(&w, req("POST", "https://other.test/b", &[], body)).await;
    }
}

#[tokio::test]
async fn placeholder_in_basic_auth_to_wrong_host_blocked() {
    use base64::Engine;
    let w = wrong_host_world().await;
    let basic = format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode("user:mock-API_KEY")
    );
    expect_403_on_other(
        &w,
        req(
            "GET",
            "https://other.test/",
            &[("authorization", &basic)],
            b"",
        ),
    )
    .await;
}

#[tokio::test]
async fn placeholder_split_across_chunks_to_wrong_host_blocked() {
    let w = wrong_host_world().await;
    let mut tls = raw_h1_tls(&w.h, "other.test").await;
    tls.write_all(b"POST /c HTTP/1.1\r\nHost: other.test\r\nTransfer-Encoding: chunked\r\n\r\n")
        .await
        .unwrap();
    write_chunked_body(&mut tls, &[b"{\"k\":\"mo", b"ck-AP", b"I_KEY\"}"]).await;
    let mut buf = vec![0u8; 4096];
    let n = tokio::time::timeout(WAIT, tls.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    let head = String::from_utf8_lossy(&buf[..n]);
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(w.echo.requests().is_empty());
}

#[tokio::test]
async fn placeholder_over_plaintext_http_in_query_or_body_blocked() {
    let dir = tempfile::tempdir().unwrap();
    let plain = spawn_upstream(None).await;
    let policy = format!(
        r#"{{"egress": {{"allow": [{{"hosts": ["api.test"]}}, {{"cidrs": ["127.0.0.1/32"]}}]}},
            "credentials": {CRED_ALL},
            "resolve": {{"api.test": "{}"}}}}"#,
        plain.addr
    );
    let h = harness_in(dir, &policy, &[("API_KEY", SECRET)], vec![]).await;
    for (target, body) in [
        ("http://api.test/q?k=mock-API_KEY", &b""[..]),
        ("http://api.test/b", b"k=mock%2DAPI_KEY"),
    ] {
        let s = tokio::net::TcpStream::connect(h.proxy).await.unwrap();
        let mut c = http1(s).await;
        let a = h1_send(&mut c, req("POST", target, &[("host", "api.test")], body)).await;
        assert_eq!(a.status, 403, "{target}: {}", a.text());
        assert!(
            a.reason().contains("plaintext") || a.reason().contains("API_KEY"),
            "{}",
            a.reason()
        );
    }
    assert!(plain.requests().is_empty());
}

#[tokio::test]
async fn wildcard_credential_hosts_edge_cases_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let names = [
        "a.example.test",
        "example.test",
        "evil-example.test",
        "example.test.evil.net",
    ];
    let pki = make_pki(dir.path(), "wild", &names);
    let echo = spawn_echo(server_with_alpn(&pki, BOTH)).await;
    let resolve: Vec<String> = names
        .iter()
        .map(|n| format!(r#""{n}": "{}""#, echo.addr))
        .collect();
    let policy = format!(
        r#"{{"egress": {{"allow": [{{"hosts": ["*"]}}, {{"cidrs": ["127.0.0.1/32"]}}]}},
            "credentials": {{"API_KEY": {{"source": {{"env": "API_KEY"}}, "hosts": ["*.example.test"]}}}},
            "resolve": {{{}}}}}"#,
        resolve.join(", ")
    );
    let h = harness_with_key(dir, &policy, SECRET, &pki).await;
    for (host, substituted) in [
        ("a.example.test", true),
        ("example.test", false),
        ("evil-example.test", false),
        ("example.test.evil.net", false),
    ] {
        let mut c = h2_client(&h, host, 443).await;
        let a = h2_send(&mut c, get_with_placeholder(&format!("https://{host}/"))).await;
        assert_eq!(
            a.status == 200,
            substituted,
            "{host}: {} {}",
            a.status,
            a.reason()
        );
    }
    let got = echo.requests();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].authority.as_deref(), Some("a.example.test"));
}

#[tokio::test]
async fn connect_to_ip_literal_with_forged_sni_is_closed() {
    let w = world(BOTH, CRED_HEADERS, "").await;
    // 127.0.0.1 is allowed (CIDR) and the upstream's certificate covers it.
    let (status, head, s) =
        connect_via(w.h.proxy, &format!("127.0.0.1:{}", w.echo.addr.port())).await;
    assert_eq!(status, 200, "{head}");
    // The guest claims api.test (the credential host) in SNI on the IP-literal tunnel.
    let r = tls_over(s, "api.test", &w.h.vm_ca_pem).await;
    assert!(
        r.is_err(),
        "a tunnel to an IP literal accepted SNI api.test"
    );
    assert!(w.echo.requests().is_empty());
}

#[tokio::test]
async fn private_metadata_and_loopback_targets_refused_in_every_spelling() {
    let dir = tempfile::tempdir().unwrap();
    // Everything allowed by name, nothing by CIDR: private addresses stay closed.
    let policy = r#"{"egress": {"default": "allow"},
        "resolve": {"internal.test": "10.0.0.5:443", "meta.test": "169.254.169.254:80"}}"#;
    let h = harness_in(dir, policy, &[], vec![]).await;
    for target in [
        "169.254.169.254:80",
        "10.1.2.3:443",
        "192.168.1.1:443",
        "172.16.0.1:443",
        "127.0.0.1:443",
        "[::1]:443",
        "[::ffff:127.0.0.1]:443",
        "[::ffff:169.254.169.254]:80",
        "[fd00::1]:443",
        "[fe80::1]:443",
        "0.0.0.0:443",
        "internal.test:443", // a name whose answer is private
        "meta.test:80",
    ] {
        let (status, head, _) = connect_via(h.proxy, target).await;
        assert_eq!(status, 403, "{target}: {head}");
        let s = tokio::net::TcpStream::connect(h.proxy).await.unwrap();
        let mut c = http1(s).await;
        let host = target.rsplit_once(':').unwrap().0;
        let a = h1_send(
            &mut c,
            req("GET", &format!("http://{target}/"), &[("host", host)], b""),
        )
        .await;
        assert_eq!(a.status, 403, "http://{target}: {}", a.reason());
    }
}

/// Upstream certificates the broker must refuse.
fn bad_server(
    dir: &std::path::Path,
    kind: &str,
) -> (Arc<rustls::ServerConfig>, std::path::PathBuf) {
    let key = KeyPair::generate().unwrap();
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    let name = if kind == "wrong-name" {
        "someone-else.test"
    } else {
        "api.test"
    };
    params.subject_alt_names = vec![SanType::DnsName(name.try_into().unwrap())];
    if kind == "expired" {
        params.not_before = time::OffsetDateTime::now_utc() - time::Duration::days(30);
        params.not_after = time::OffsetDateTime::now_utc() - time::Duration::days(1);
    }
    // Signed by the trusted CA, except self-signed.
    let cert = if kind == "self-signed" {
        params.self_signed(&key).unwrap()
    } else {
        let (ca_cert, ca_key) = test_ca();
        params.signed_by(&key, &ca_cert, &ca_key).unwrap()
    };
    let cfg = server_config(&cert, &key);
    let (ca_cert, _) = test_ca();
    let ca_path = dir.join(format!("{kind}-trusted.pem"));
    std::fs::write(&ca_path, ca_cert.pem()).unwrap();
    (Arc::new(cfg), ca_path)
}

/// One fixed test CA (deterministic key) so the trusted root and the signer agree.
fn test_ca() -> (rcgen::Certificate, KeyPair) {
    use std::sync::OnceLock;
    static KEY: OnceLock<String> = OnceLock::new();
    let pem = KEY.get_or_init(|| KeyPair::generate().unwrap().serialize_pem());
    let key = KeyPair::from_pem(pem).unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    p.distinguished_name
        .push(rcgen::DnType::CommonName, "adversarial test CA");
    p.not_before = time::OffsetDateTime::from_unix_timestamp(1_700_000_000).unwrap();
    p.not_after = time::OffsetDateTime::from_unix_timestamp(4_000_000_000).unwrap();
    (p.self_signed(&key).unwrap(), key)
}

#[tokio::test]
async fn upstream_with_expired_self_signed_or_wrong_name_cert_is_502_before_any_request() {
    for kind in ["expired", "self-signed", "wrong-name"] {
        let dir = tempfile::tempdir().unwrap();
        let (server, trusted) = bad_server(dir.path(), kind);
        let echo = spawn_echo(server).await;
        let policy = format!(
            r#"{{"egress": {{"allow": [{{"hosts": ["api.test"]}}, {{"cidrs": ["127.0.0.1/32"]}}]}},
                "credentials": {CRED_HEADERS}, "resolve": {{"api.test": "{}"}}}}"#,
            echo.addr
        );
        let h = harness_in(dir, &policy, &[("API_KEY", SECRET)], vec![trusted]).await;
        let (status, head, _) = connect_via(h.proxy, "api.test:443").await;
        assert_eq!(status, 502, "{kind}: {head}");
        assert!(head.contains("x-sluice-reason"), "{kind}: {head}");
        assert!(
            echo.requests().is_empty(),
            "{kind}: a request reached the upstream"
        );
    }
}

#[tokio::test]
async fn oversized_request_headers_are_refused_and_never_forwarded() {
    let w = world(BOTH, CRED_HEADERS, "").await;
    let mut tls = raw_h1_tls(&w.h, "api.test").await;
    let big = "a".repeat(1 << 20);
    let head = format!("GET / HTTP/1.1\r\nHost: api.test\r\nx-big: {big}\r\n\r\n");
    // The broker may close before reading everything: a write error is fine.
    let _ = tls.write_all(head.as_bytes()).await;
    let out = read_until_close(&mut tls).await;
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 431"), "{out}");
    // And over HTTP/2 (header list limit).
    let mut c = h2_client(&w.h, "api.test", 443).await;
    c.ready().await.unwrap();
    let r = c
        .send_request(req("GET", "https://api.test/", &[("x-big", &big)], b""))
        .await;
    if let Ok(resp) = r {
        assert_eq!(resp.status(), 431);
    }
    assert!(w.echo.requests().is_empty());
}

#[tokio::test]
async fn slowloris_header_trickle_is_cut_off() {
    let w = world(BOTH, CRED_HEADERS, "").await;
    let mut tls = raw_h1_tls(&w.h, "api.test").await;
    let started = std::time::Instant::now();
    let trickle = async {
        // One header byte every 500 ms, never finishing the head.
        let mut tick = tokio::time::interval(std::time::Duration::from_millis(500));
        for b in b"GET / HTTP/1.1\r\nHost: api.test\r\nx-slow: "
            .iter()
            .chain(std::iter::repeat(&b'a'))
        {
            tick.tick().await;
            if tls.write_all(&[*b]).await.is_err() || tls.flush().await.is_err() {
                return;
            }
        }
    };
    // The broker's header read timeout is 30 s: the trickle must be cut within 40 s.
    tokio::time::timeout(std::time::Duration::from_secs(40), trickle)
        .await
        .expect("slowloris connection was kept open");
    assert!(started.elapsed() >= std::time::Duration::from_secs(25));
    assert!(w.echo.requests().is_empty());
}

#[tokio::test]
async fn smuggling_with_conflicting_content_length_and_transfer_encoding_is_contained() {
    let w = world(BOTH, CRED_HEADERS, "").await;
    let mut tls = raw_h1_tls(&w.h, "api.test").await;
    // CL says the body is the whole rest (smuggled request included); TE says it is empty.
    let smuggled =
        "GET /smuggled HTTP/1.1\r\nHost: other.test\r\nAuthorization: Bearer mock-API_KEY\r\n\r\n";
    let body = format!("0\r\n\r\n{smuggled}");
    let head = format!(
        "POST /front HTTP/1.1\r\nHost: api.test\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n{body}",
        body.len()
    );
    tls.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(WAIT, async {
        let mut buf = [0u8; 4096];
        // Read until both answers (or close) arrive.
        loop {
            match tls.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
            }
            if String::from_utf8_lossy(&out).matches("HTTP/1.1 ").count() >= 2 {
                break;
            }
        }
    })
    .await;
    for g in w.echo.requests() {
        // The upstream never sees ambiguous framing, and never the smuggled request to a
        // foreign authority with the real value.
        assert!(
            !(g.header("content-length").is_some() && g.header("transfer-encoding").is_some()),
            "{g:?}"
        );
        assert_ne!(g.target, "/smuggled", "smuggled request forwarded: {g:?}");
        assert!(!g.headers.iter().any(|(_, v)| v.contains(SECRET)), "{g:?}");
    }
    // Duplicate, conflicting Content-Length headers: 400, nothing forwarded.
    let before = w.echo.requests().len();
    let mut tls = raw_h1_tls(&w.h, "api.test").await;
    tls.write_all(b"POST /cl HTTP/1.1\r\nHost: api.test\r\nContent-Length: 3\r\nContent-Length: 30\r\n\r\nabc")
        .await
        .unwrap();
    let out = read_until_close(&mut tls).await;
    assert!(out.is_empty() || out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(w.echo.requests().len(), before);
}

#[tokio::test]
async fn http10_request_without_host_in_a_tunnel_is_refused() {
    let w = world(BOTH, CRED_HEADERS, "").await;
    let mut tls = raw_h1_tls(&w.h, "api.test").await;
    tls.write_all(b"GET / HTTP/1.0\r\nAuthorization: Bearer mock-API_KEY\r\n\r\n")
        .await
        .unwrap();
    let out = read_until_close(&mut tls).await;
    assert!(
        out.starts_with("HTTP/1.0 403") || out.starts_with("HTTP/1.1 403"),
        "{out}"
    );
    assert!(w.echo.requests().is_empty());
}

#[tokio::test]
async fn echo_of_the_real_value_in_header_body_gzip_and_trailer_is_scrubbed() {
    let w = world(BOTH, CRED_HEADERS, "").await;
    let mut c = h2_client(&w.h, "api.test", 443).await;
    for path in ["/echo", "/gzip", "/trailer"] {
        let a = h2_send(
            &mut c,
            req(
                "GET",
                &format!("https://api.test{path}"),
                &[PLACEHOLDER_AUTH, ("accept-encoding", "gzip")],
                b"",
            ),
        )
        .await;
        assert_eq!(a.status, 200);
        if path == "/gzip" {
            // Decoded by the broker (the guest gets identity), so this comparison is on the
            // real content, not on compressed bytes.
            assert!(a.headers.get("content-encoding").is_none(), "{path}");
            assert_eq!(a.text(), "Bearer mock-API_KEY\n\n");
        }
        let all = format!("{:?}{}{:?}", a.headers, a.text(), a.trailers);
        assert!(!all.contains(SECRET), "{path}: {all}");
        assert!(all.contains("mock-API_KEY"), "{path}: {all}");
    }
    // Base64 and URL-encoded forms of the value are scrubbed too.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(SECRET);
    let mut c = h2_client(&w.h, "api.test", 443).await;
    let a = h2_send(
        &mut c,
        req(
            "POST",
            "https://api.test/echo",
            &[],
            format!("{b64} {SECRET}").as_bytes(),
        ),
    )
    .await;
    assert!(
        !a.text().contains(&b64) && !a.text().contains(SECRET),
        "{}",
        a.text()
    );
}

#[tokio::test]
async fn many_stalled_large_uploads_from_one_vm_hit_its_body_budget() {
    // max_inspected_body 64 KiB -> the VM may hold 256 KiB of bodies buffered at once.
    let w = world(BOTH, CRED_ALL, r#", "max_inspected_body": 65536"#).await;
    let mut conns = Vec::new();
    for _ in 0..6 {
        let mut tls = raw_h1_tls(&w.h, "api.test").await;
        // Announce 60 KiB, send 50 KiB, then stall: the broker holds what it buffered.
        tls.write_all(b"POST /up HTTP/1.1\r\nHost: api.test\r\nContent-Length: 61440\r\n\r\n")
            .await
            .unwrap();
        tls.write_all(&vec![b'z'; 51200]).await.unwrap();
        tls.flush().await.unwrap();
        conns.push(tls);
    }
    // 6 x 50 KiB > 256 KiB: the first answer on any of them is a refusal naming the budget
    // (the others are still buffering, stalled by us).
    let reads = conns.iter_mut().map(|tls| {
        Box::pin(async move {
            let mut buf = vec![0u8; 1024];
            let n = tls.read(&mut buf).await.unwrap_or(0);
            String::from_utf8_lossy(&buf[..n]).into_owned()
        })
    });
    let (head, _, _) = tokio::time::timeout(WAIT, futures_util::future::select_all(reads))
        .await
        .expect("no upload hit the per-VM body budget");
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(head.contains("budget"), "{head}");
    assert!(w.echo.requests().is_empty());
    // Budget comes back when those requests are gone.
    drop(conns);
    let mut c = h2_client(&w.h, "api.test", 443).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let a = h2_send(
            &mut c,
            req("POST", "https://api.test/ok", &[], &[b'y'; 60000]),
        )
        .await;
        if a.status == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "budget never released: {}",
            a.reason()
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn body_budget_follows_a_policy_update() {
    // max_inspected_body 4 KiB -> a 16 KiB budget; raising the limit must raise the budget
    // (it stayed at the first policy's size: a 20 KB upload got a permanent 503).
    let w = world(BOTH, CRED_ALL, r#", "max_inspected_body": 4096"#).await;
    let mut policy = w.h.broker.policy(&w.h.vm).unwrap();
    policy.max_inspected_body = Some(65536);
    w.h.broker
        .update_vm_with_env(
            &w.h.vm,
            policy,
            &host_broker::secrets::MapEnv::from_pairs([("API_KEY", SECRET)]),
        )
        .await
        .unwrap();
    let mut c = h2_client(&w.h, "api.test", 443).await;
    let a = h2_send(
        &mut c,
        req("POST", "https://api.test/ok", &[], &[b'y'; 20000]),
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.reason());
}

#[tokio::test]
async fn h2_to_http1_downgrade_smuggling_is_contained() {
    // No credentials (bodies stream through uninspected) and an HTTP/1.1-only upstream: the
    // classic h2 -> h1 downgrade setting.
    for creds in ["{}", CRED_HEADERS] {
        let w = world(&[b"http/1.1"], creds, "").await;
        let mut c = h2_client(&w.h, "api.test", 443).await;
        let smuggled = "GET /smuggled HTTP/1.1\r\nHost: api.test\r\n\r\n";
        // content-length 0 with a body carrying a second request; then a transfer-encoding
        // header (connection-specific, forbidden in h2).
        let attempts = [
            req(
                "POST",
                "https://api.test/front",
                &[("content-length", "0")],
                smuggled.as_bytes(),
            ),
            req(
                "POST",
                "https://api.test/front",
                &[("transfer-encoding", "chunked")],
                format!("0\r\n\r\n{smuggled}").as_bytes(),
            ),
        ];
        for r in attempts {
            c.ready().await.ok();
            if let Ok(Ok(resp)) = tokio::time::timeout(WAIT, c.send_request(r)).await {
                let _ = collect(resp).await;
            }
            c = h2_client(&w.h, "api.test", 443).await;
        }
        // A well-formed request afterwards, to flush anything the upstream may have queued.
        let a = h2_send(&mut c, req("GET", "https://api.test/after", &[], b"")).await;
        assert_eq!(a.status, 200);
        for g in w.echo.requests() {
            assert_ne!(
                g.target, "/smuggled",
                "smuggled request reached the upstream: {g:?}"
            );
            assert!(
                g.header("transfer-encoding").is_none() || g.header("content-length").is_none()
            );
        }
    }
}
