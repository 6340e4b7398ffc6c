//! Control protocol negotiation against the real broker: an agent of any version gets the
//! newest version both speak, a v1 agent the frozen v1 bytes, and a version older than any
//! the broker serves a readable refusal.

mod common;

use common::*;
use shared_proto::negotiate::{self, feature, MAX_PROTOCOL_VERSION};
use shared_proto::{read_message, write_message, BootMode, BrokerMessage};
use tokio::net::UnixStream;

const POLICY: &str = r#"{
    "credentials": {"API_KEY": {"source": {"env": "API_KEY"}, "hosts": ["api.test"]}}
}"#;

/// Says hello asking for `version` at most; returns the broker's answer.
async fn hello_in(h: &Harness, version: u8) -> BrokerMessage {
    let mut s = UnixStream::connect(&h.listen).await.unwrap();
    open_control(&mut s).await;
    write_message(&mut s, &negotiate::hello("test", BootMode::Exec, version))
        .await
        .unwrap();
    tokio::time::timeout(WAIT, read_message(&mut s))
        .await
        .unwrap()
        .unwrap()
}

async fn harness() -> Harness {
    harness_in(
        tempfile::tempdir().unwrap(),
        POLICY,
        &[("API_KEY", "real-value-not-for-the-guest")],
        vec![],
    )
    .await
}

#[tokio::test]
async fn a_v1_agent_gets_the_positional_v1_config() {
    let h = harness().await;
    let m = hello_in(&h, 1).await;
    let BrokerMessage::Config(cfg) = m else {
        panic!("a v1 agent must get BrokerMessage::Config, got {m:?}")
    };
    assert_eq!(cfg.vm_id, "vm1");
    assert_eq!(
        cfg.env.get("API_KEY").map(String::as_str),
        Some("mock-API_KEY")
    );
}

#[tokio::test]
async fn a_v2_agent_gets_json_settings_with_the_served_features() {
    let h = harness().await;
    for asked in [2, MAX_PROTOCOL_VERSION, 200] {
        let m = hello_in(&h, asked).await;
        let s = negotiate::settings_from(&m, asked)
            .unwrap()
            .unwrap_or_else(|| panic!("no config for a v{asked} hello: {m:?}"));
        assert_eq!(s.protocol_version, asked.min(MAX_PROTOCOL_VERSION));
        assert!(matches!(m, BrokerMessage::Negotiated(_)), "{m:?}");
        assert_eq!(s.config.vm_id, "vm1");
        assert_eq!(s.config.ca_certs_pem, vec![h.vm_ca_pem.clone()]);
        assert!(s.has(feature::TCP_CAPTURE) && s.has(feature::DNS), "{s:?}");
        assert_eq!(s.broker_version, env!("CARGO_PKG_VERSION"));
        assert!(!format!("{m:?}").contains("real-value"));
    }
}

#[tokio::test]
async fn a_version_older_than_any_served_is_refused_with_a_reason() {
    let h = harness().await;
    let m = hello_in(&h, 0).await;
    let BrokerMessage::Refused { reason } = m else {
        panic!("{m:?}")
    };
    assert!(reason.contains("up to 0"), "{reason}");
}
