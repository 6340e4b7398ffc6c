//! Each VM's streams are served on a thread of its own (`VmPlacement::OwnThread`, the
//! default), so the kernel shares the host's cores between VMs (threat-model row 85); the
//! thread ends when the VM is unregistered, with every task of the VM. On a shared runtime
//! (the old behaviour, `VmPlacement::Shared`) there is no such thread: these tests fail there.

mod common;

use std::time::{Duration, Instant};

use common::*;
use host_broker::policy::Policy;
use host_broker::secrets::MapEnv;
use host_broker::{VmPlacement, VmSpec, VmTransport};

const SECRET: &str = "vm-thread-secret-0123456789";

/// Names of this process's threads.
fn thread_names() -> Vec<String> {
    std::fs::read_dir("/proc/self/task")
        .unwrap()
        .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
        .map(|n| n.trim_end().to_owned())
        .collect()
}

fn has_thread(name: &str) -> bool {
    thread_names().iter().any(|n| n == name)
}

/// Waits (up to 10 s, polling) until a thread named `name` exists (`present`) or none does:
/// a new thread carries its creator's name until it has started and named itself, and a
/// thread is gone from /proc a moment after it signalled its end.
async fn wait_thread(name: &str, present: bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while has_thread(name) != present {
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    true
}

fn policy(up: std::net::SocketAddr) -> String {
    format!(
        r#"{{"egress": {{"default": "deny", "allow": [{{"hosts": ["api.test"]}}, {{"cidrs": ["127.0.0.1/32"]}}]}},
            "credentials": {{"API_KEY": {{"source": {{"env": "API_KEY"}}, "hosts": ["api.test"]}}}},
            "resolve": {{"api.test": "{up}"}}}}"#
    )
}

async fn register(h: &Harness, id: &str, up: std::net::SocketAddr) -> std::path::PathBuf {
    let sock = h.dir.path().join(format!("{id}.vsock"));
    h.broker
        .register_vm_with_env(
            VmSpec {
                id: id.into(),
                transport: VmTransport::HybridSocket(sock),
                policy: Policy::from_json_str(&policy(up)).unwrap(),
            },
            &MapEnv::from_pairs([("API_KEY", SECRET)]),
        )
        .await
        .unwrap();
    h.broker.listen_path(id).unwrap()
}

/// A broker with VM `vm1` (default placement) and the TLS upstream for `api.test`.
async fn vm1_and_upstream() -> (Harness, Upstream) {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "threads", &["api.test"]);
    let up = spawn_upstream(Some(pki.server.clone())).await;
    let h = harness_with_key(dir, &policy(up.addr), SECRET, &pki).await;
    (h, up)
}

#[tokio::test]
async fn each_vm_is_served_on_a_thread_of_its_own_that_ends_with_it() {
    let (h, up) = vm1_and_upstream().await;
    assert!(
        wait_thread("vm-vm1", true).await,
        "threads: {:?}",
        thread_names()
    );

    let listen2 = register(&h, "vm2", up.addr).await;
    assert!(
        wait_thread("vm-vm2", true).await,
        "threads: {:?}",
        thread_names()
    );
    // Both VMs serve intercepted, substituted requests from their threads.
    let proxy2 = spawn_bridge(listen2).await;
    let ca2 = h.broker.ca_pem("vm2").unwrap();
    for (proxy, ca) in [(h.proxy, h.vm_ca_pem.clone()), (proxy2, ca2)] {
        let (status, head, s) = connect_via(proxy, "api.test:443").await;
        assert_eq!(status, 200, "{head}");
        let mut c = http1(tls_over(s, "api.test", &ca).await.unwrap()).await;
        let (status, headers, _) =
            get(&mut c, "/x", &[("host", "api.test"), PLACEHOLDER_AUTH]).await;
        assert_eq!(status, 200, "{headers:?}");
    }
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    assert!(seen
        .iter()
        .all(|r| r.header("authorization") == Some(&format!("Bearer {SECRET}"))));

    h.broker.unregister_vm("vm2").await.unwrap();
    assert!(
        wait_thread("vm-vm2", false).await,
        "vm2's thread outlived it"
    );
    assert!(has_thread("vm-vm1"), "vm1's thread ended with vm2's");
}

#[tokio::test]
async fn registering_and_unregistering_leaves_no_thread_behind() {
    let (h, up) = vm1_and_upstream().await;
    for _ in 0..20 {
        let listen = register(&h, "cycle", up.addr).await;
        // A stream open at unregistration ends with the VM's thread.
        let _open = tokio::net::UnixStream::connect(&listen).await.unwrap();
        h.broker.unregister_vm("cycle").await.unwrap();
    }
    // Every cycle's thread had the same name: none is left.
    assert!(
        wait_thread("vm-cycle", false).await,
        "threads: {:?}",
        thread_names()
    );
}

#[tokio::test]
async fn shared_placement_starts_no_thread() {
    let (h, up) = vm1_and_upstream().await;
    h.broker.set_vm_placement(VmPlacement::Shared);
    let listen = register(&h, "onrt", up.addr).await;
    let proxy = spawn_bridge(listen).await;
    let (status, head, _) = connect_via(proxy, "api.test:443").await;
    assert_eq!(status, 200, "{head}");
    // A VM thread would have served that CONNECT, so it would have named itself by now.
    assert!(!has_thread("vm-onrt"), "threads: {:?}", thread_names());
}
