//! The v1 wire bytes, pinned. Agents already deployed (snapshot-restored or long-running
//! guests) send and expect exactly these, so a newer broker must keep serving them: a change
//! here is a protocol break, not a test update.
//!
//! The expected bytes are spelled out from the v1 layout, independent of the codec: a frame
//! is a big-endian u32 length, then the message with big-endian fixed-width integers, enum
//! variants as u32 indexes, strings/vectors/maps as a u64 length then items, `Option` as a
//! 0/1 byte then the value.

use shared_proto::*;

fn u32be(v: u32) -> Vec<u8> {
    v.to_be_bytes().to_vec()
}
fn string(s: &str) -> Vec<u8> {
    let mut v = (s.len() as u64).to_be_bytes().to_vec();
    v.extend_from_slice(s.as_bytes());
    v
}
fn frame(parts: &[Vec<u8>]) -> Vec<u8> {
    let body: Vec<u8> = parts.concat();
    let mut v = u32be(body.len() as u32);
    v.extend(body);
    v
}
fn check<T>(msg: &T, want: Vec<u8>)
where
    T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let got = encode_frame(msg).unwrap();
    assert_eq!(got, want, "{msg:?}");
    assert_eq!(&decode_frame::<T>(&want).unwrap(), msg);
}

#[test]
fn preface() {
    assert_eq!(PREFACE, *b"SLUICE\x01");
}

#[test]
fn stream_headers() {
    let h = |kind| StreamHeader { kind };
    check(&h(StreamKind::Control), frame(&[u32be(0)]));
    check(&h(StreamKind::Proxy), frame(&[u32be(1)]));
    check(
        &h(StreamKind::Tcp(TcpTarget {
            host: "db.example.com".into(),
            port: 5432,
        })),
        frame(&[
            u32be(2),
            string("db.example.com"),
            5432u16.to_be_bytes().to_vec(),
        ]),
    );
    check(
        &h(StreamKind::Dns(DnsQuestion {
            name: "api.example.com".into(),
            record_type: DnsRecordType::Aaaa,
        })),
        frame(&[u32be(3), string("api.example.com"), u32be(1)]),
    );
    check(
        &h(StreamKind::Dns(DnsQuestion {
            name: "x".into(),
            record_type: DnsRecordType::Other(15),
        })),
        frame(&[
            u32be(3),
            string("x"),
            u32be(2),
            15u16.to_be_bytes().to_vec(),
        ]),
    );
}

#[test]
fn agent_messages() {
    check(
        &AgentMessage::Hello(AgentHello {
            protocol_version: 1,
            agent_version: "0.1.0".into(),
            boot_mode: BootMode::Systemd,
        }),
        frame(&[u32be(0), vec![1], string("0.1.0"), u32be(1)]),
    );
    check(
        &AgentMessage::WorkloadExited(WorkloadExit {
            code: Some(3),
            signal: None,
        }),
        frame(&[u32be(1), vec![1], 3i32.to_be_bytes().to_vec(), vec![0]]),
    );
    check(
        &AgentMessage::Failed {
            reason: "no root".into(),
        },
        frame(&[u32be(2), string("no root")]),
    );
}

#[test]
fn broker_messages() {
    let cfg = GuestConfig {
        vm_id: "vm1".into(),
        ca_certs_pem: vec!["PEM".into()],
        env: [("API_KEY".to_string(), "ph".to_string())].into(),
        proxy_port: 3128,
        no_proxy: vec![],
    };
    check(
        &BrokerMessage::Config(cfg),
        frame(&[
            u32be(0),
            string("vm1"),
            1u64.to_be_bytes().to_vec(),
            string("PEM"),
            1u64.to_be_bytes().to_vec(),
            string("API_KEY"),
            string("ph"),
            3128u16.to_be_bytes().to_vec(),
            0u64.to_be_bytes().to_vec(),
        ]),
    );
    check(
        &BrokerMessage::Refused {
            reason: "unknown VM".into(),
        },
        frame(&[u32be(1), string("unknown VM")]),
    );
    check(&BrokerMessage::Ack, frame(&[u32be(2)]));
}

#[test]
fn capture_replies() {
    check(&TcpReply::Open, frame(&[u32be(0)]));
    check(
        &TcpReply::Refused {
            reason: "denied".into(),
        },
        frame(&[u32be(1), string("denied")]),
    );
    check(
        &DnsReply::Allowed { ttl_secs: 60 },
        frame(&[u32be(0), u32be(60)]),
    );
    check(
        &DnsReply::Denied {
            reason: "no".into(),
        },
        frame(&[u32be(1), string("no")]),
    );
}
