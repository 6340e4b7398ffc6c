//! Registration through the library: a refused registration leaves nothing behind.

mod common;

use common::*;
use host_broker::policy::Policy;
use host_broker::{BrokerError, VmSpec, VmTransport};

fn spec(id: &str, socket: &std::path::Path) -> VmSpec {
    VmSpec {
        id: id.into(),
        transport: VmTransport::HybridSocket(socket.to_path_buf()),
        policy: Policy::from_json_str(r#"{"egress": {"default": "deny"}}"#).unwrap(),
    }
}

#[tokio::test]
async fn a_refused_registration_mints_no_ca_so_a_retry_with_ca_from_works() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path(), vec![]).await;
    let sock1 = dir.path().join("vm1.vsock");
    broker.register_vm(spec("vm1", &sock1)).await.unwrap();
    // vm2 on vm1's socket: refused before any CA exists for vm2.
    let err = broker.register_vm(spec("vm2", &sock1)).await.unwrap_err();
    assert!(matches!(err, BrokerError::DuplicateSocket { .. }), "{err}");
    assert!(
        !broker.has_persisted_ca("vm2"),
        "a refused add left a CA behind"
    );
    // The retry as a fork of vm1 (its CA) on its own socket works.
    let sock2 = dir.path().join("vm2.vsock");
    broker
        .register_vm_with_ca_from(spec("vm2", &sock2), "vm1")
        .await
        .unwrap();
    assert_eq!(broker.ca_pem("vm2"), broker.ca_pem("vm1"));
}

#[tokio::test]
async fn a_second_broker_on_the_same_state_dir_is_refused_and_touches_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let broker = start_broker(dir.path(), vec![]).await;
    let sock = dir.path().join("vm1.vsock");
    broker.register_vm(spec("vm1", &sock)).await.unwrap();
    let listen = broker.listen_path("vm1").unwrap();
    let second = host_broker::Broker::start(host_broker::BrokerConfig {
        state_dir: dir.path().join("state"),
        vsock_port: shared_proto::DEFAULT_VSOCK_PORT,
        upstream_extra_roots: vec![],
        listener_access: Default::default(),
    })
    .await;
    let err = second.map(|_| ()).unwrap_err();
    assert!(matches!(err, BrokerError::StateDirInUse(_)), "{err}");
    assert!(
        listen.exists(),
        "the live broker's VM socket is still there"
    );
    assert!(tokio::net::UnixStream::connect(&listen).await.is_ok());
    // Once the first broker has shut down, the state dir can be served again.
    broker.shutdown().await;
    let again = start_broker(dir.path(), vec![]).await;
    again.shutdown().await;
}
