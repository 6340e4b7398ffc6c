//! The agent's side of control protocol negotiation, against stub brokers: a broker that
//! only speaks v1 (and refuses other hellos exactly as the v1 broker did) gets a second hello
//! in v1, and a newer broker's JSON settings with fields this agent does not know still work.

use std::time::Duration;

use guest_agent::broker;
use guest_agent::endpoint::Endpoint;
use shared_proto::negotiate::{feature, MAX_PROTOCOL_VERSION};
use shared_proto::{
    AgentMessage, BootMode, BrokerMessage, GuestConfig, NegotiatedConfig, StreamKind,
};
use tokio::net::UnixListener;

/// Serves `n` control streams, answering each hello with `answer(version)`; returns the
/// versions the hellos asked for.
async fn stub(listener: UnixListener, n: usize, answer: impl Fn(u8) -> BrokerMessage) -> Vec<u8> {
    let mut asked = Vec::new();
    for _ in 0..n {
        let (mut s, _) = listener.accept().await.unwrap();
        let h = shared_proto::read_stream_header(&mut s).await.unwrap();
        assert_eq!(h.kind, StreamKind::Control);
        let AgentMessage::Hello(hello) = shared_proto::read_message(&mut s).await.unwrap() else {
            panic!("expected a hello")
        };
        asked.push(hello.protocol_version);
        shared_proto::write_message(&mut s, &answer(hello.protocol_version))
            .await
            .unwrap();
    }
    asked
}

fn config() -> GuestConfig {
    GuestConfig {
        vm_id: "vm-old".into(),
        proxy_port: 3128,
        ..Default::default()
    }
}

#[tokio::test]
async fn a_v1_only_broker_gets_a_second_hello_in_v1() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.sock");
    let listener = UnixListener::bind(&path).unwrap();
    // What the broker of protocol 1 answered to any other version (its exact text).
    let server = tokio::spawn(stub(listener, 2, |v| {
        if v == 1 {
            BrokerMessage::Config(config())
        } else {
            BrokerMessage::Refused {
                reason: format!("agent speaks protocol {v}, broker speaks 1"),
            }
        }
    }));
    let (_control, got) = broker::fetch_config(
        &Endpoint::Unix(path),
        BootMode::Exec,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(got.config, config());
    assert_eq!(got.protocol_version, 1);
    assert!(got.has(feature::TCP_CAPTURE) && got.has(feature::DNS));
    assert_eq!(server.await.unwrap(), vec![MAX_PROTOCOL_VERSION, 1]);
}

#[tokio::test]
async fn a_newer_brokers_unknown_fields_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = tokio::spawn(stub(listener, 1, |v| {
        BrokerMessage::Negotiated(NegotiatedConfig {
            protocol_version: v,
            config_json: r#"{"vm_id":"vm-new","proxy_port":3129,"env":{"A":"b"},
                "features":["dns"],"broker_version":"9.0.0","added_in_v9":[1,2]}"#
                .into(),
        })
    }));
    let (_control, got) = broker::fetch_config(
        &Endpoint::Unix(path),
        BootMode::Exec,
        Duration::from_secs(10),
    )
    .await
    .unwrap();
    assert_eq!(got.config.vm_id, "vm-new");
    assert_eq!(got.config.proxy_port, 3129);
    assert_eq!(got.broker_version, "9.0.0");
    // Only DNS announced: the agent must not rely on TCP capture.
    assert!(got.has(feature::DNS) && !got.has(feature::TCP_CAPTURE));
    assert_eq!(server.await.unwrap(), vec![MAX_PROTOCOL_VERSION]);
}

#[tokio::test]
async fn an_unrelated_refusal_is_not_retried() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let server = tokio::spawn(stub(listener, 1, |_| BrokerMessage::Refused {
        reason: "no VM registered for this socket".into(),
    }));
    let err = broker::fetch_config(
        &Endpoint::Unix(path),
        BootMode::Exec,
        Duration::from_secs(10),
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("no VM registered"), "{err}");
    assert_eq!(server.await.unwrap(), vec![MAX_PROTOCOL_VERSION]);
}
