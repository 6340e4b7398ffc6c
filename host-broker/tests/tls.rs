//! Interception PKI: leaf chains validate against the VM CA with the right SAN; the CA key
//! is 0600 and the CA survives a broker restart.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use common::*;
use host_broker::policy::Policy;
use host_broker::tls::{LeafCache, SystemClock, VmCa};
use host_broker::{VmSpec, VmTransport};

#[tokio::test]
async fn leaf_chain_validates_with_dns_and_ip_sans() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Arc::new(VmCa::load_or_create(dir.path(), "t").unwrap());
    let cache = LeafCache::new(ca.clone(), Arc::new(SystemClock), 16);
    let dns = cache.get("api.test").await.unwrap();
    leaf_handshake(dns.clone(), ca.pem(), "api.test")
        .await
        .unwrap();
    // The SAN is checked: the same leaf is not valid for another name.
    assert!(leaf_handshake(dns, ca.pem(), "evil.test").await.is_err());
    let ip = cache.get("127.0.0.1").await.unwrap();
    leaf_handshake(ip.clone(), ca.pem(), "127.0.0.1")
        .await
        .unwrap();
    assert!(leaf_handshake(ip, ca.pem(), "127.0.0.2").await.is_err());
    // And it is the VM CA that makes it valid: another CA does not.
    let other = VmCa::load_or_create(&dir.path().join("other"), "o").unwrap();
    let dns = cache.get("api.test").await.unwrap();
    assert!(leaf_handshake(dns, other.pem(), "api.test").await.is_err());
}

#[tokio::test]
async fn ca_key_is_0600_and_reused_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    let spec = |sock: &str| VmSpec {
        id: "vm1".into(),
        transport: VmTransport::HybridSocket(dir.path().join(sock)),
        policy: Policy::from_json_str("{}").unwrap(),
    };
    let b1 = start_broker(dir.path(), vec![]).await;
    b1.register_vm(spec("a.vsock")).await.unwrap();
    let pem1 = b1.ca_pem("vm1").unwrap();
    b1.shutdown().await;
    let key = dir.path().join("state/vms/vm1/ca.key");
    let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "ca.key mode {mode:o}");
    let b2 = start_broker(dir.path(), vec![]).await;
    b2.register_vm(spec("a.vsock")).await.unwrap();
    assert_eq!(b2.ca_pem("vm1").unwrap(), pem1);
    // Leaves minted after the restart chain to the CA the guest already trusts.
    let ca = Arc::new(VmCa::load_or_create(&dir.path().join("state/vms/vm1"), "vm1").unwrap());
    let leaf = LeafCache::new(ca, Arc::new(SystemClock), 4)
        .get("api.test")
        .await
        .unwrap();
    leaf_handshake(leaf, &pem1, "api.test").await.unwrap();
    b2.shutdown().await;
}
