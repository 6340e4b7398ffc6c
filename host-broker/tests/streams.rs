//! Stream level: control conversation, and malformed streams closed without disturbing
//! other streams.

mod common;

use common::*;
use host_broker::BrokerEvent;
use shared_proto::{
    read_message, write_message, AgentMessage, BootMode, BrokerMessage, StreamHeader, StreamKind,
    WorkloadExit, PREFACE,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

const POLICY: &str = r#"{
    "credentials": {"API_KEY": {"source": {"env": "API_KEY"}, "hosts": ["api.test"]}},
    "env": {"LOG_LEVEL": "debug"}
}"#;

async fn harness() -> Harness {
    harness_in(
        tempfile::tempdir().unwrap(),
        POLICY,
        &[("API_KEY", "real-value-not-for-the-guest")],
        vec![],
    )
    .await
}

async fn control(h: &Harness) -> UnixStream {
    let mut s = UnixStream::connect(&h.listen).await.unwrap();
    open_control(&mut s).await;
    s
}

async fn hello(s: &mut UnixStream) -> BrokerMessage {
    agent_hello(s, "test-0", BootMode::Exec).await
}

#[tokio::test]
async fn hello_gets_config_and_exit_gets_ack() {
    let h = harness().await;
    let mut events = h.broker.subscribe();
    let mut s = control(&h).await;
    let BrokerMessage::Config(cfg) = hello(&mut s).await else {
        panic!("expected Config")
    };
    assert_eq!(cfg.vm_id, "vm1");
    assert_eq!(cfg.ca_certs_pem, vec![h.vm_ca_pem.clone()]);
    assert_eq!(
        cfg.env.get("API_KEY").map(String::as_str),
        Some("mock-API_KEY")
    );
    assert_eq!(cfg.env.get("LOG_LEVEL").map(String::as_str), Some("debug"));
    assert_eq!(cfg.proxy_port, 3128);
    assert!(!format!("{cfg:?}").contains("real-value"));
    write_message(
        &mut s,
        &AgentMessage::WorkloadExited(WorkloadExit {
            code: Some(3),
            signal: None,
        }),
    )
    .await
    .unwrap();
    let ack: BrokerMessage = tokio::time::timeout(WAIT, read_message(&mut s))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ack, BrokerMessage::Ack);
    let mut got_hello = false;
    loop {
        match tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap()
        {
            BrokerEvent::AgentHello {
                vm, agent_version, ..
            } => {
                assert_eq!((vm.as_str(), agent_version.as_str()), ("vm1", "test-0"));
                got_hello = true;
            }
            BrokerEvent::WorkloadExited { vm, exit } => {
                assert_eq!(vm, "vm1");
                assert_eq!(exit.code, Some(3));
                break;
            }
            _ => {}
        }
    }
    assert!(got_hello);
}

/// Writes `bytes` (optionally closing our write side) and expects the broker to close.
async fn expect_closed(h: &Harness, bytes: &[u8], half_close: bool) {
    let mut s = UnixStream::connect(&h.listen).await.unwrap();
    s.write_all(bytes).await.unwrap();
    if half_close {
        s.shutdown().await.unwrap();
    }
    let mut buf = [0u8; 16];
    let n = tokio::time::timeout(WAIT, s.read(&mut buf))
        .await
        .expect("broker must close a bad stream")
        .unwrap_or(0);
    assert_eq!(n, 0, "broker closed the stream without answering");
}

#[tokio::test]
async fn malformed_streams_are_closed_and_others_keep_working() {
    let h = harness().await;
    // A good control stream opened before the bad ones...
    let mut before = control(&h).await;
    assert!(matches!(hello(&mut before).await, BrokerMessage::Config(_)));

    // Garbage preface.
    expect_closed(&h, b"GET / HTTP/1.1\r\n\r\n", false).await;
    // Right magic, unknown version.
    let mut v = PREFACE;
    v[6] = 99;
    expect_closed(&h, &v, false).await;
    // Oversize header frame length.
    let mut oversize = PREFACE.to_vec();
    oversize.extend_from_slice(&u32::MAX.to_be_bytes());
    expect_closed(&h, &oversize, false).await;
    // Truncated frame: announces 10 bytes, sends 3, then ends.
    let mut truncated = PREFACE.to_vec();
    truncated.extend_from_slice(&10u32.to_be_bytes());
    truncated.extend_from_slice(&[0, 0, 0]);
    expect_closed(&h, &truncated, true).await;
    // Unknown stream kind (variant 200).
    let mut unknown = PREFACE.to_vec();
    unknown.extend_from_slice(&4u32.to_be_bytes());
    unknown.extend_from_slice(&200u32.to_be_bytes());
    expect_closed(&h, &unknown, false).await;
    // Garbage on an otherwise valid control stream.
    let mut bad_msg = PREFACE.to_vec();
    bad_msg.extend_from_slice(
        &shared_proto::encode_frame(&StreamHeader {
            kind: StreamKind::Control,
        })
        .unwrap(),
    );
    bad_msg.extend_from_slice(&4u32.to_be_bytes());
    bad_msg.extend_from_slice(&77u32.to_be_bytes());
    expect_closed(&h, &bad_msg, false).await;

    // ...still works, and new streams are still served.
    assert!(matches!(hello(&mut before).await, BrokerMessage::Config(_)));
    let mut after = control(&h).await;
    assert!(matches!(hello(&mut after).await, BrokerMessage::Config(_)));
}

#[tokio::test]
async fn duplicate_vm_id_and_unregister() {
    let h = harness().await;
    let dup = h
        .broker
        .register_vm(host_broker::VmSpec {
            id: "vm1".into(),
            transport: host_broker::VmTransport::HybridSocket(h.dir.path().join("other.vsock")),
            policy: host_broker::policy::Policy::from_json_str("{}").unwrap(),
        })
        .await;
    assert!(matches!(dup, Err(host_broker::BrokerError::DuplicateVm(_))));
    h.broker.unregister_vm("vm1").await.unwrap();
    assert!(!h.listen.exists(), "socket removed on unregister");
    assert!(h.broker.ca_pem("vm1").is_none());
    assert!(h.broker.unregister_vm("vm1").await.is_err());
}

#[tokio::test]
async fn live_policy_update_applies_to_new_streams() {
    let h = harness().await;
    let mut s = control(&h).await;
    let BrokerMessage::Config(before) = hello(&mut s).await else {
        panic!()
    };
    assert_eq!(
        before.env.get("LOG_LEVEL").map(String::as_str),
        Some("debug")
    );
    let new =
        host_broker::policy::Policy::from_json_str(r#"{"env": {"LOG_LEVEL": "warn"}}"#).unwrap();
    h.broker
        .update_vm_with_env("vm1", new, &host_broker::secrets::MapEnv::default())
        .await
        .unwrap();
    let mut s2 = control(&h).await;
    let BrokerMessage::Config(after) = hello(&mut s2).await else {
        panic!()
    };
    assert_eq!(after.env.get("LOG_LEVEL").map(String::as_str), Some("warn"));
    assert!(!after.env.contains_key("API_KEY"));
    assert_eq!(
        after.ca_certs_pem, before.ca_certs_pem,
        "CA unchanged by an update"
    );
    assert!(h
        .broker
        .update_vm("nope", host_broker::policy::Policy::default())
        .await
        .is_err());
}
