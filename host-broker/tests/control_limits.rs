//! Issue 11: control streams have a per-VM cap. One VM opening many control streams gets
//! the extra ones refused with a readable reason; a freed slot is usable again.

mod common;

use common::*;
use host_broker::policy::Policy;
use host_broker::secrets::MapEnv;
use host_broker::{VmSpec, VmTransport};
use shared_proto::{read_message, BootMode, BrokerMessage};
use tokio::net::UnixStream;

/// The cap (`host_broker::control::MAX_CONTROL_STREAMS` is private to the crate).
const CAP: usize = 8;

async fn control(listen: &std::path::Path) -> UnixStream {
    let mut s = UnixStream::connect(listen).await.unwrap();
    open_control(&mut s).await;
    s
}

#[tokio::test]
async fn control_streams_beyond_the_per_vm_cap_are_refused_and_other_vms_unaffected() {
    let h = harness_in(tempfile::tempdir().unwrap(), r#"{}"#, &[], vec![]).await;
    // A second VM on the same broker.
    let sock2 = h.dir.path().join("vm2.vsock");
    h.broker
        .register_vm_with_env(
            VmSpec {
                id: "vm2".into(),
                transport: VmTransport::HybridSocket(sock2),
                policy: Policy::from_json_str("{}").unwrap(),
            },
            &MapEnv::from_pairs([]),
        )
        .await
        .unwrap();
    let listen2 = h.dir.path().join("vm2.vsock_7070");

    let mut open = Vec::new();
    for _ in 0..CAP {
        let mut s = control(&h.listen).await;
        let m = agent_hello(&mut s, "0.1.0", BootMode::Exec).await;
        assert!(matches!(m, BrokerMessage::Config(_)), "{m:?}");
        open.push(s);
    }
    // Extra ones, with or without a Hello, are refused at once with a reason.
    for _ in 0..3 {
        let mut s = control(&h.listen).await;
        let m: BrokerMessage = tokio::time::timeout(WAIT, read_message(&mut s))
            .await
            .expect("refusal within the wait")
            .unwrap();
        let BrokerMessage::Refused { reason } = m else {
            panic!("expected Refused, got {m:?}")
        };
        assert!(reason.contains("control streams"), "{reason}");
        assert!(reason.contains("limit 8"), "{reason}");
    }
    // Another VM is not affected by vm1's streams.
    let mut s = control(&listen2).await;
    let m = agent_hello(&mut s, "0.1.0", BootMode::Exec).await;
    assert!(
        matches!(m, BrokerMessage::Config(ref c) if c.vm_id == "vm2"),
        "{m:?}"
    );

    // Closing one frees its slot (once the broker has seen the close).
    drop(open.pop());
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let mut s = control(&h.listen).await;
        match agent_hello(&mut s, "0.1.0", BootMode::Exec).await {
            BrokerMessage::Config(_) => break,
            BrokerMessage::Refused { .. } if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            m => panic!("slot not freed: {m:?}"),
        }
    }
}
