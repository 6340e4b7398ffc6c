//! Tunnels that are not intercepted (raw TCP ports, `intercept: auto` pass-through) and the
//! per-VM connection limit.

mod common;
mod proto;

use std::time::Duration;

use common::*;
use host_broker::BrokerEvent;
use proto::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// A TCP echo server on loopback (stands in for Postgres on 5432).
async fn tcp_echo() -> std::net::SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Waits for the audit record with `verdict` for `host`.
async fn audit_record(
    rx: &mut tokio::sync::broadcast::Receiver<BrokerEvent>,
    host: &str,
    verdict: &str,
) -> host_broker::audit::AuditRecord {
    loop {
        let ev = tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap();
        if let BrokerEvent::Request(r) = ev {
            if r.host == host && r.verdict == verdict {
                return r;
            }
        }
    }
}

#[tokio::test]
async fn raw_tcp_port_is_relayed_with_audited_byte_counts() {
    let echo = tcp_echo().await;
    let dir = tempfile::tempdir().unwrap();
    let policy = format!(
        r#"{{"egress": {{"allow": [{{"hosts": ["db.test"], "ports": [5432]}}, {{"cidrs": ["127.0.0.1/32"], "ports": [5432]}}]}},
            "raw_tcp_ports": [5432],
            "resolve": {{"db.test": "{echo}"}}}}"#
    );
    let h = harness_in(dir, &policy, &[], vec![]).await;
    let mut events = h.broker.subscribe();
    let (status, head, mut s) = connect_via(h.proxy, "db.test:5432").await;
    assert_eq!(status, 200, "{head}");
    // Not TLS, not HTTP: a Postgres-like startup message goes through as bytes.
    let msg = b"\x00\x00\x00\x08\x04\xd2\x16\x2fSELECT 1;";
    s.write_all(msg).await.unwrap();
    let mut back = vec![0u8; msg.len()];
    tokio::time::timeout(WAIT, s.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, msg);
    drop(s);
    let r = audit_record(&mut events, "db.test", "relayed").await;
    assert_eq!(r.bytes, 2 * msg.len() as u64);

    // Another port on the same host is not raw: it is intercepted (and here also denied by
    // egress, which still applies to raw ports).
    let (status, _, _) = connect_via(h.proxy, "db.test:5433").await;
    assert_eq!(status, 403);
}

async fn auto_world() -> (World, String) {
    let w = world(
        &[b"h2", b"http/1.1"],
        CRED_HEADERS,
        r#", "intercept": "auto""#,
    )
    .await;
    let ca = w.h.vm_ca_pem.clone();
    (w, ca)
}

#[tokio::test]
async fn intercept_auto_passes_tls_through_where_no_credential_applies() {
    let (w, _) = auto_world().await;
    let dir = tempfile::tempdir().unwrap();
    // The upstream's own CA (not the VM CA) must verify other.test: the TLS is end to end.
    let pki_dir = w.h.dir.path().join("echo-ca.pem");
    let up_ca = std::fs::read_to_string(&pki_dir).unwrap();
    let (status, head, s) = connect_via(w.h.proxy, "other.test:443").await;
    assert_eq!(status, 200, "{head}");
    let name = rustls::pki_types::ServerName::try_from("other.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(client_alpn(&up_ca, &[b"http/1.1"]))
        .connect(name, s)
        .await
        .expect("pass-through: the upstream's certificate reaches the guest");
    let mut c = http1(tls).await;
    let (st, headers, _) = get(&mut c, "/p", &[("host", "other.test")]).await;
    assert_eq!(st, 200);
    assert_eq!(headers["x-upstream-version"], "HTTP/1.1");
    drop(dir);

    // api.test has a credential: intercepted (VM CA), substitution works.
    let mut c = h2_client(&w.h, "api.test", 443).await;
    let a = h2_send(&mut c, get_with_placeholder("https://api.test/x")).await;
    assert_eq!(a.status, 200);
    let last = w.echo.requests().pop().unwrap();
    assert_real_auth(&last);
}

#[tokio::test]
async fn intercept_auto_pass_through_requires_sni_equal_to_connect_host() {
    let (w, _) = auto_world().await;
    let up_ca = std::fs::read_to_string(w.h.dir.path().join("echo-ca.pem")).unwrap();
    let before = w.echo.requests().len();
    // CONNECT other.test, but the ClientHello asks for api.test (the credential host).
    let (status, _, s) = connect_via(w.h.proxy, "other.test:443").await;
    assert_eq!(status, 200);
    let name = rustls::pki_types::ServerName::try_from("api.test").unwrap();
    let r = tokio_rustls::TlsConnector::from(client_alpn(&up_ca, &[b"http/1.1"]))
        .connect(name, s)
        .await;
    assert!(r.is_err(), "a pass-through tunnel accepted a foreign SNI");
    // Not TLS at all on a pass-through (non-raw) port: closed.
    let (status, _, mut s) = connect_via(w.h.proxy, "other.test:443").await;
    assert_eq!(status, 200);
    s.write_all(b"GET / HTTP/1.1\r\nHost: other.test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap_or(0);
    assert_eq!(
        n, 0,
        "plaintext on a TLS pass-through tunnel must be closed"
    );
    assert_eq!(w.echo.requests().len(), before);
}

#[tokio::test]
async fn connect_flood_from_one_vm_hits_its_limit_while_another_vm_is_served() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "up", &["api.test"]);
    let up = spawn_upstream(Some(pki.server.clone())).await;
    let broker = start_broker(dir.path(), vec![pki.ca_path.clone()]).await;
    let policy = |limit: usize| {
        format!(
            r#"{{"egress": {{"allow": [{{"hosts": ["api.test"]}}, {{"cidrs": ["127.0.0.1/32"]}}]}},
                "max_connections": {limit}, "resolve": {{"api.test": "{}"}}}}"#,
            up.addr
        )
    };
    let mut proxies = Vec::new();
    let mut cas = Vec::new();
    for (id, limit) in [("flood", 4usize), ("calm", 4)] {
        let sock = dir.path().join(format!("{id}.vsock"));
        broker
            .register_vm_with_env(
                host_broker::VmSpec {
                    id: id.into(),
                    transport: host_broker::VmTransport::HybridSocket(sock.clone()),
                    policy: host_broker::policy::Policy::from_json_str(&policy(limit)).unwrap(),
                },
                &host_broker::secrets::MapEnv::from_pairs([]),
            )
            .await
            .unwrap();
        proxies.push(spawn_bridge(dir.path().join(format!("{id}.vsock_7070"))).await);
        cas.push(broker.ca_pem(id).unwrap());
    }
    // The flooding VM opens 4 tunnels and keeps them.
    let mut held = Vec::new();
    for _ in 0..4 {
        let (status, head, s) = connect_via(proxies[0], "api.test:443").await;
        assert_eq!(status, 200, "{head}");
        held.push(s);
    }
    // The 5th is refused with a reason.
    let (status, head, _) = connect_via(proxies[0], "api.test:443").await;
    assert_eq!(status, 503, "{head}");
    assert!(head.contains("connection limit"), "{head}");
    // The other VM is served normally meanwhile.
    for _ in 0..3 {
        let (status, _, s) = connect_via(proxies[1], "api.test:443").await;
        assert_eq!(status, 200);
        let tls = tls_over(s, "api.test", &cas[1]).await.unwrap();
        let mut c = http1(tls).await;
        let (st, _, body) = get(&mut c, "/hello", &[("host", "api.test")]).await;
        assert_eq!((st, body.as_str()), (200, "ok"));
    }
    // Closing the flood's tunnels frees its slots (bounded wait, no fixed sleep).
    drop(held);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, _, _) = connect_via(proxies[0], "api.test:443").await;
        if status == 200 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "slots never freed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.shutdown().await;
}
