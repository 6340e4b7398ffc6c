//! A VM forked or restored from a snapshot under a NEW id keeps trusting the source VM's CA:
//! the CA files copied to another id's dir still sign chaining leaves (the issuer is rebuilt
//! from the persisted `ca.pem`, not from the id), and the daemon's `ca_from` registration
//! option (API and CLI) gives the new id the source's CA, verified by real TLS through the
//! new VM's socket.

mod common;
mod daemon_support;

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use common::{connect_via, get, http1, make_pki, spawn_bridge, spawn_upstream};
use common::{leaf_handshake, tls_over};
use daemon_support::*;
use host_broker::tls::{CaCopy, CaError, LeafCache, SystemClock, VmCa};

#[tokio::test]
async fn ca_copied_to_another_id_signs_leaves_that_chain_to_the_copied_pem() {
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dir.path().join("vms/vm-a"), dir.path().join("vms/vm-b"));
    let a = VmCa::load_or_create(&a_dir, "vm-a").unwrap();

    assert_eq!(VmCa::copy_files(&a_dir, &b_dir).unwrap(), CaCopy::Copied);
    let key_mode = std::fs::metadata(b_dir.join("ca.key"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(key_mode & 0o777, 0o600);
    let copied_pem = std::fs::read_to_string(b_dir.join("ca.pem")).unwrap();
    assert_eq!(copied_pem, a.pem());

    // Loaded under the NEW id: leaves must name the copied CA's subject as issuer.
    let b = Arc::new(VmCa::load_or_create(&b_dir, "vm-b").unwrap());
    assert_eq!(b.pem(), copied_pem);
    let leaf = LeafCache::new(b, Arc::new(SystemClock), 4)
        .get("api.test")
        .await
        .unwrap();
    leaf_handshake(leaf.clone(), &copied_pem, "api.test")
        .await
        .expect("leaf minted under vm-b chains to vm-a's CA");
    // Trust is really checked: a CA of vm-b's own does not validate the leaf.
    let own = VmCa::load_or_create(&dir.path().join("vms/other"), "vm-b").unwrap();
    assert!(leaf_handshake(leaf, own.pem(), "api.test").await.is_err());

    // Copying again is a no-op; a different CA already at the destination is never replaced.
    assert_eq!(
        VmCa::copy_files(&a_dir, &b_dir).unwrap(),
        CaCopy::AlreadyIdentical
    );
    let other_dir = dir.path().join("vms/other");
    let err = VmCa::copy_files(&a_dir, &other_dir).unwrap_err();
    assert!(matches!(err, CaError::Conflict { .. }), "{err}");
    assert_eq!(
        std::fs::read_to_string(other_dir.join("ca.pem")).unwrap(),
        own.pem()
    );
    let err = VmCa::copy_files(&dir.path().join("vms/nope"), &b_dir).unwrap_err();
    assert!(matches!(err, CaError::SourceMissing { .. }), "{err}");
}

#[test]
fn a_key_that_does_not_match_the_pem_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (a_dir, b_dir) = (dir.path().join("a"), dir.path().join("b"));
    VmCa::load_or_create(&a_dir, "a").unwrap();
    VmCa::load_or_create(&b_dir, "b").unwrap();
    std::fs::copy(a_dir.join("ca.key"), b_dir.join("ca.key")).unwrap();
    let err = VmCa::load_or_create(&b_dir, "b").unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");
    // And such a CA is not spread to another VM either.
    let err = VmCa::copy_files(&b_dir, &dir.path().join("c")).unwrap_err();
    assert!(matches!(err, CaError::KeyMismatch { .. }), "{err}");
    assert!(!dir.path().join("c/ca.key").exists());
}

fn body(dir: &std::path::Path, id: &str, upstream: std::net::SocketAddr) -> serde_json::Value {
    serde_json::json!({
        "id": id,
        "hybrid_socket": dir.join(format!("{id}.vsock")),
        "policy": {
            "egress": {"default": "deny", "allow": [{"hosts": ["api.test"]}, {"cidrs": ["127.0.0.1/32"]}]},
            "resolve": {"api.test": upstream.to_string()}
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_under_a_new_id_uses_the_source_vms_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "up", &["api.test"]);
    let up = spawn_upstream(Some(pki.server.clone())).await;
    let extra = format!("upstream_extra_roots = [{:?}]\n", pki.ca_path);
    let d = start_daemon(dir.path(), &extra).await;

    let (st, v) = d
        .api_json(
            "POST",
            "/v1/vms",
            Some(&body(dir.path(), "vm-a", up.addr).to_string()),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, ca_a) = d.api("GET", "/v1/vms/vm-a/ca", None).await;
    assert_eq!(st, 200);
    assert!(ca_a.starts_with("-----BEGIN CERTIFICATE-----"), "{ca_a}");

    // An unknown source is the caller's fault, and the error names the field.
    let mut bad = body(dir.path(), "vm-b", up.addr);
    bad["ca_from"] = "vm-nope".into();
    let (st, v) = d.api_json("POST", "/v1/vms", Some(&bad.to_string())).await;
    assert_eq!(
        (st, &v["field"]),
        (400, &serde_json::json!("ca_from")),
        "{v}"
    );
    bad["ca_from"] = "../vm-a".into();
    let (st, v) = d.api_json("POST", "/v1/vms", Some(&bad.to_string())).await;
    assert_eq!(
        (st, &v["field"]),
        (400, &serde_json::json!("ca_from")),
        "{v}"
    );
    let (st, _) = d.api("GET", "/v1/vms/vm-b", None).await;
    assert_eq!(st, 404, "nothing registered by the refused calls");

    // The fork: vm-b with ca_from vm-a.
    let mut fork = body(dir.path(), "vm-b", up.addr);
    fork["ca_from"] = "vm-a".into();
    let (st, v) = d.api_json("POST", "/v1/vms", Some(&fork.to_string())).await;
    assert_eq!(st, 201, "{v}");
    let (st, ca_b) = d.api("GET", "/v1/vms/vm-b/ca", None).await;
    assert_eq!(st, 200);
    assert_eq!(ca_b, ca_a, "vm-b serves vm-a's CA");
    let key = dir.path().join("state/vms/vm-b/ca.key");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // Traffic for vm-b, through vm-b's socket, verifies against vm-a's CA PEM.
    let proxy = spawn_bridge(dir.path().join("vm-b.vsock_7070")).await;
    let (code, head, s) = connect_via(proxy, "api.test:443").await;
    assert_eq!(code, 200, "{head}");
    let tls = tls_over(s, "api.test", &ca_a)
        .await
        .expect("vm-b's interception chains to vm-a's CA");
    let mut sender = http1(tls).await;
    let (st, _, b) = get(&mut sender, "/fork", &[("host", "api.test")]).await;
    assert_eq!((st, b.as_str()), (200, "ok"));
    assert_eq!(up.requests().last().unwrap().path, "/fork");

    // A third VM with a CA of its own is never silently switched: 409 naming the field.
    let (st, v) = d
        .api_json(
            "POST",
            "/v1/vms",
            Some(&body(dir.path(), "vm-c", up.addr).to_string()),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (_, ca_c) = d.api("GET", "/v1/vms/vm-c/ca", None).await;
    let (st, _) = d.api("DELETE", "/v1/vms/vm-c", None).await;
    assert_eq!(st, 200);
    let mut conflict = body(dir.path(), "vm-c", up.addr);
    conflict["ca_from"] = "vm-a".into();
    let (st, v) = d
        .api_json("POST", "/v1/vms", Some(&conflict.to_string()))
        .await;
    assert_eq!(
        (st, &v["field"]),
        (409, &serde_json::json!("ca_from")),
        "{v}"
    );
    assert_eq!(
        std::fs::read_to_string(dir.path().join("state/vms/vm-c/ca.pem")).unwrap(),
        ca_c,
        "vm-c's own CA untouched"
    );

    // The CLI flag: a fork of a source that is no longer registered (its CA stays).
    let (st, _) = d.api("DELETE", "/v1/vms/vm-a", None).await;
    assert_eq!(st, 200);
    let sock = dir.path().join("vm-d.vsock");
    let (ok, out, err) = cli(
        &d.socket,
        &[
            "vm",
            "add",
            "vm-d",
            "--hybrid-socket",
            sock.to_str().unwrap(),
            "--ca-from",
            "vm-a",
        ],
        &[],
    )
    .await;
    assert!(ok, "{out}{err}");
    let (_, ca_d, _) = cli(&d.socket, &["ca", "show", "vm-d"], &[]).await;
    assert_eq!(ca_d.trim_end(), ca_a.trim_end());

    // A restart restores the forks from their own copies, even with the source's dir gone.
    d.kill().await;
    std::fs::remove_dir_all(dir.path().join("state/vms/vm-a")).unwrap();
    let d = start_daemon(dir.path(), &extra).await;
    let (st, ca_b_after) = d.api("GET", "/v1/vms/vm-b/ca", None).await;
    assert_eq!((st, ca_b_after.as_str()), (200, ca_a.as_str()));
    let (st, ca_d_after) = d.api("GET", "/v1/vms/vm-d/ca", None).await;
    assert_eq!((st, ca_d_after.as_str()), (200, ca_a.as_str()));
    let proxy = spawn_bridge(dir.path().join("vm-b.vsock_7070")).await;
    let (code, head, s) = connect_via(proxy, "api.test:443").await;
    assert_eq!(code, 200, "{head}");
    tls_over(s, "api.test", &ca_a)
        .await
        .expect("after restart vm-b still chains to vm-a's CA");
    d.stop().await;
}
