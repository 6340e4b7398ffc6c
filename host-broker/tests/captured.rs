//! Transparent egress, broker side: `Tcp` streams (a captured guest connection with its
//! original destination) and `Dns` streams (a name the guest looked up), driven as the
//! guest agent drives them, against real loopback upstreams.

mod common;

use std::path::Path;

use common::*;
use host_broker::BrokerEvent;
use shared_proto::{
    read_message, write_stream_header, DnsQuestion, DnsRecordType, DnsReply, StreamHeader,
    StreamKind, TcpReply, TcpTarget, TunnelStream,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UnixStream};

const SECRET: &str = "sk-live-CAPTURED-0123456789abcdef";

/// Opens a `Tcp` stream as the agent does for a captured connection to `host:port`.
async fn open_tcp(listen: &Path, host: &str, port: u16) -> (TcpReply, TunnelStream<UnixStream>) {
    let mut s = UnixStream::connect(listen).await.unwrap();
    let header = StreamHeader {
        kind: StreamKind::Tcp(TcpTarget {
            host: host.into(),
            port,
        }),
    };
    write_stream_header(&mut s, &header).await.unwrap();
    let reply: TcpReply = tokio::time::timeout(WAIT, read_message(&mut s))
        .await
        .unwrap()
        .unwrap();
    (reply, TunnelStream::new(s))
}

async fn ask_dns(listen: &Path, name: &str, record_type: DnsRecordType) -> DnsReply {
    let mut s = UnixStream::connect(listen).await.unwrap();
    let header = StreamHeader {
        kind: StreamKind::Dns(DnsQuestion {
            name: name.into(),
            record_type,
        }),
    };
    write_stream_header(&mut s, &header).await.unwrap();
    tokio::time::timeout(WAIT, read_message(&mut s))
        .await
        .unwrap()
        .unwrap()
}

async fn audit_record(
    rx: &mut tokio::sync::broadcast::Receiver<BrokerEvent>,
    pick: impl Fn(&host_broker::AuditRecord) -> bool,
) -> host_broker::AuditRecord {
    loop {
        let ev = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("audit record in time")
            .unwrap();
        if let BrokerEvent::Request(r) = ev {
            if pick(&r) {
                return r;
            }
        }
    }
}

struct World {
    h: Harness,
    tls_up: Upstream,
    plain_up: Upstream,
    echo: std::net::SocketAddr,
}

/// api.test (TLS) and plain.test (HTTP) allowed on any port and resolved to loopback
/// upstreams (127.0.0.1 itself allowed by CIDR, the rest of loopback private); db.test on raw port 5432;
/// API_KEY for api.test and plain.test; *.denied.test denied.
async fn world() -> World {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "up", &["api.test"]);
    let tls_up = spawn_upstream(Some(pki.server.clone())).await;
    let plain_up = spawn_upstream(None).await;
    let echo = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let a = l.local_addr().unwrap();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                tokio::spawn(async move {
                    let (mut r, mut w) = s.split();
                    let _ = tokio::io::copy(&mut r, &mut w).await;
                });
            }
        });
        a
    };
    let policy = format!(
        r#"{{
        "egress": {{"default": "deny",
            "allow": [{{"hosts": ["api.test", "plain.test", "db.test"]}},
                      {{"cidrs": ["127.0.0.1/32"]}}],
            "deny": [{{"hosts": ["*.denied.test"]}}]}},
        "raw_tcp_ports": [5432],
        "credentials": {{
            "API_KEY": {{"source": {{"env": "API_KEY"}}, "hosts": ["api.test", "plain.test"]}}
        }},
        "resolve": {{"api.test": "{a}", "plain.test": "{p}", "db.test": "{e}"}}
    }}"#,
        a = tls_up.addr,
        p = plain_up.addr,
        e = echo,
    );
    let h = harness_with_key(dir, &policy, SECRET, &pki).await;
    World {
        h,
        tls_up,
        plain_up,
        echo,
    }
}

#[tokio::test]
async fn dns_answers_follow_host_rules_and_are_audited() {
    let w = world().await;
    let mut events = w.h.broker.subscribe();
    assert!(matches!(
        ask_dns(&w.h.listen, "api.test", DnsRecordType::A).await,
        DnsReply::Allowed { .. }
    ));
    let r = audit_record(&mut events, |r| r.method == "DNS").await;
    assert_eq!(
        (r.host.as_str(), r.path.as_str(), r.verdict.as_str()),
        ("api.test", "A", "resolved")
    );

    let DnsReply::Denied { reason } =
        ask_dns(&w.h.listen, "x.denied.test", DnsRecordType::Aaaa).await
    else {
        panic!("a denied name must be NXDOMAIN")
    };
    assert!(reason.contains("egress.deny"), "{reason}");
    let r = audit_record(&mut events, |r| r.method == "DNS").await;
    assert_eq!(
        (r.host.as_str(), r.path.as_str(), r.verdict.as_str()),
        ("x.denied.test", "AAAA", "denied")
    );

    // The loopback CIDR rule must not turn every name into an answer (that would send any
    // name to a real resolver later).
    assert!(matches!(
        ask_dns(&w.h.listen, "exfil.attacker.example", DnsRecordType::A).await,
        DnsReply::Denied { .. }
    ));
}

#[tokio::test]
async fn captured_tls_to_a_name_is_intercepted_and_substituted() {
    let w = world().await;
    let mut events = w.h.broker.subscribe();
    // Any port: the broker dials the resolve override, not the guest's port.
    let (reply, tunnel) = open_tcp(&w.h.listen, "api.test", 8443).await;
    assert_eq!(reply, TcpReply::Open);
    let tls = tls_over_io(tunnel, "api.test", &w.h.vm_ca_pem).await;
    let mut c = http1(tls).await;
    let (status, headers, body) = get(
        &mut c,
        "/v1/x",
        &[PLACEHOLDER_AUTH, ("host", "api.test:8443")],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        headers.get("x-echo-authorization").unwrap(),
        "Bearer mock-API_KEY",
        "the echoed real value is scrubbed"
    );
    let seen = w.tls_up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    let r = audit_record(&mut events, |r| r.method == "TCP").await;
    assert_eq!(r.verdict, "intercepted");
    let r = audit_record(&mut events, |r| r.path == "/v1/x").await;
    assert_eq!(
        (r.verdict.as_str(), r.credentials.as_slice()),
        ("forwarded", &["API_KEY".to_string()][..])
    );
}

#[tokio::test]
async fn captured_tls_with_another_sni_is_closed_before_any_request() {
    let w = world().await;
    let (reply, tunnel) = open_tcp(&w.h.listen, "api.test", 443).await;
    assert_eq!(reply, TcpReply::Open);
    // The guest dialed api.test's synthetic address but asks the TLS layer for another name.
    assert!(tls_over_io_result(tunnel, "other.test", &w.h.vm_ca_pem)
        .await
        .is_err());
    assert!(w.tls_up.requests().is_empty());
}

#[tokio::test]
async fn captured_plain_http_never_carries_a_real_value() {
    let w = world().await;
    let (reply, mut tunnel) = open_tcp(&w.h.listen, "plain.test", 80).await;
    assert_eq!(reply, TcpReply::Open);
    tunnel
        .write_all(
            b"GET /p HTTP/1.1\r\nHost: plain.test\r\nAuthorization: Bearer mock-API_KEY\r\n\r\n",
        )
        .await
        .unwrap();
    let head = read_head_of(&mut tunnel).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(
        head.to_ascii_lowercase().contains("x-sluice-reason"),
        "{head}"
    );
    assert!(
        w.plain_up.requests().is_empty(),
        "nothing reached the upstream"
    );

    // Without a placeholder the request goes through, with the Host checked.
    let (_, mut tunnel) = open_tcp(&w.h.listen, "plain.test", 80).await;
    tunnel
        .write_all(b"GET /ok HTTP/1.1\r\nHost: plain.test\r\n\r\n")
        .await
        .unwrap();
    let head = read_head_of(&mut tunnel).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert_eq!(w.plain_up.requests()[0].path, "/ok");

    // A Host naming another site on the same connection is refused.
    let (_, mut tunnel) = open_tcp(&w.h.listen, "plain.test", 80).await;
    tunnel
        .write_all(b"GET /x HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .await
        .unwrap();
    let head = read_head_of(&mut tunnel).await;
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
}

#[tokio::test]
async fn captured_connections_to_private_addresses_are_refused_with_a_reason() {
    let w = world().await;
    let mut events = w.h.broker.subscribe();
    for (host, port) in [
        ("169.254.169.254", 80),
        ("10.0.2.2", 443),
        ("127.0.0.2", 443),
    ] {
        let (reply, _) = open_tcp(&w.h.listen, host, port).await;
        let TcpReply::Refused { reason } = reply else {
            panic!("{host}:{port} must be refused")
        };
        assert!(!reason.is_empty());
        let r = audit_record(&mut events, |r| r.method == "TCP").await;
        assert_eq!((r.host.as_str(), r.verdict.as_str()), (host, "denied"));
    }
    // A name outside the policy, as a malicious agent might send it.
    let (reply, _) = open_tcp(&w.h.listen, "x.denied.test", 443).await;
    assert!(matches!(reply, TcpReply::Refused { .. }));
}

#[tokio::test]
async fn captured_raw_port_relays_and_other_protocols_are_closed() {
    let w = world().await;
    let mut events = w.h.broker.subscribe();
    let (reply, mut tunnel) = open_tcp(&w.h.listen, "db.test", 5432).await;
    assert_eq!(reply, TcpReply::Open);
    tunnel.write_all(b"\x00\x00\x00\x08hello").await.unwrap();
    let mut back = [0u8; 9];
    tokio::time::timeout(WAIT, tunnel.read_exact(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(&back, b"\x00\x00\x00\x08hello");
    drop(tunnel);
    let r = audit_record(&mut events, |r| r.method == "TCP" && r.verdict == "relayed").await;
    assert_eq!(r.host, "db.test");

    // Binary bytes to a non-raw port: neither TLS nor HTTP, so the broker closes.
    let (reply, mut tunnel) = open_tcp(&w.h.listen, "api.test", 22).await;
    assert_eq!(reply, TcpReply::Open);
    tunnel.write_all(b"\x00SSH-ish").await.unwrap();
    let mut buf = Vec::new();
    let n = tokio::time::timeout(WAIT, tunnel.read_to_end(&mut buf)).await;
    assert!(
        matches!(n, Ok(Ok(0)) | Ok(Err(_))),
        "closed without an answer: {n:?}"
    );
    let r = audit_record(&mut events, |r| r.method == "TCP" && r.verdict == "blocked").await;
    assert_eq!(r.host, "api.test");
    let _ = w.echo;
}

async fn tls_over_io_result(
    io: TunnelStream<UnixStream>,
    name: &str,
    ca_pem: &str,
) -> std::io::Result<tokio_rustls::client::TlsStream<TunnelStream<UnixStream>>> {
    let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
    tokio::time::timeout(
        WAIT,
        tokio_rustls::TlsConnector::from(client_trusting(ca_pem)).connect(name, io),
    )
    .await
    .unwrap()
}

async fn tls_over_io(
    io: TunnelStream<UnixStream>,
    name: &str,
    ca_pem: &str,
) -> tokio_rustls::client::TlsStream<TunnelStream<UnixStream>> {
    tls_over_io_result(io, name, ca_pem).await.unwrap()
}

async fn read_head_of(s: &mut TunnelStream<UnixStream>) -> String {
    let mut buf = Vec::new();
    let mut byte = [0u8; 1];
    while !buf.ends_with(b"\r\n\r\n") {
        match tokio::time::timeout(WAIT, s.read(&mut byte)).await.unwrap() {
            Ok(0) | Err(_) => break,
            Ok(_) => buf.push(byte[0]),
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}
