//! The daemon as a VMM plugin, driven over its real control socket: register -> traffic,
//! credential rotation reaching an open keep-alive connection, stats + metrics, unregister
//! closing streams, crash + restart restoring the VM with the same CA.

mod common;
mod daemon_support;

use common::{connect_via, get, http1, make_pki, spawn_bridge, spawn_upstream, tls_over};
use daemon_support::*;
use tokio::io::AsyncReadExt;

const FIRST: &str = "sk-first-secret-111111";
const SECOND: &str = "sk-second-secret-222222";

fn register_body(dir: &std::path::Path, upstream: std::net::SocketAddr) -> String {
    serde_json::json!({
        "id": "vm1",
        "hybrid_socket": dir.join("vm1.vsock"),
        "policy": {
            "egress": {"default": "deny", "allow": [{"hosts": ["api.test"]}, {"cidrs": ["127.0.0.1/32"]}]},
            "resolve": {"api.test": upstream.to_string()},
            "credentials": {"K": {"source": {"value": FIRST}, "hosts": ["api.test"]}}
        }
    })
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn register_rotate_stats_metrics_unregister() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "up", &["api.test"]);
    let up = spawn_upstream(Some(pki.server.clone())).await;
    let d = start_daemon(
        dir.path(),
        &format!("upstream_extra_roots = [{:?}]\n", pki.ca_path),
    )
    .await;

    // The control socket is private.
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&d.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);

    // Register: the VMM's socket does not exist yet (it is created when the VM boots).
    assert!(!dir.path().join("vm1.vsock").exists());
    let (st, v) = d
        .api_json("POST", "/v1/vms", Some(&register_body(dir.path(), up.addr)))
        .await;
    assert_eq!(st, 201, "{v}");
    let listen = dir.path().join("vm1.vsock_7070");
    assert_eq!(v["listen_path"], serde_json::json!(listen));
    assert_eq!(v["credentials"], serde_json::json!(["K"]));

    let (st, ca) = d.api("GET", "/v1/vms/vm1/ca", None).await;
    assert_eq!(st, 200);
    assert!(ca.starts_with("-----BEGIN CERTIFICATE-----"), "{ca}");

    // Traffic: CONNECT + TLS verified against the VM CA + placeholder substituted.
    let proxy = spawn_bridge(listen.clone()).await;
    let (code, head, s) = connect_via(proxy, "api.test:443").await;
    assert_eq!(code, 200, "{head}");
    let tls = tls_over(s, "api.test", &ca).await.unwrap();
    let mut sender = http1(tls).await;
    let auth = [("host", "api.test"), ("authorization", "Bearer mock-K")];
    let (st, _, body) = get(&mut sender, "/one", &auth).await;
    assert_eq!((st, body.as_str()), (200, "ok"));
    assert_eq!(
        up.requests()[0].header("authorization"),
        Some(format!("Bearer {FIRST}").as_str())
    );

    // Rotate K (merge: only `source` given; hosts stay). The next request on the SAME
    // keep-alive connection carries the new value.
    let (st, v) = d
        .api_json(
            "PATCH",
            "/v1/vms/vm1/credentials",
            Some(&serde_json::json!({"K": {"source": {"value": SECOND}}}).to_string()),
        )
        .await;
    assert_eq!(st, 200, "{v}");
    let (st, _, _) = get(&mut sender, "/two", &auth).await;
    assert_eq!(st, 200);
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[1].header("authorization"),
        Some(format!("Bearer {SECOND}").as_str())
    );

    // Stats and metrics.
    let (st, stats) = d.api_json("GET", "/v1/vms/vm1/stats", None).await;
    assert_eq!(st, 200);
    assert_eq!(stats["connections"], 1, "{stats}");
    assert_eq!(stats["substitutions"], 2, "{stats}");
    assert_eq!(stats["verdicts"]["forwarded"], 2, "{stats}");
    assert_eq!(stats["violations"], 0, "{stats}");
    // A denied CONNECT counts as a violation (an address no rule allows; a name that
    // merely fails to resolve would be a 502 upstream failure, not a violation).
    let (code, _, _) = connect_via(proxy, "192.0.2.1:443").await;
    assert_eq!(code, 403);
    let (_, stats) = d.api_json("GET", "/v1/vms/vm1/stats", None).await;
    assert_eq!(stats["violations"], 1, "{stats}");

    let (st, text) = d.api("GET", "/metrics", None).await;
    assert_eq!(st, 200);
    let m = parse_metrics(&text);
    assert_eq!(
        m["sluice_vm_substitutions_total{vm=\"vm1\"}"], 2.0,
        "{text}"
    );
    assert_eq!(
        m["sluice_vm_requests_total{vm=\"vm1\",verdict=\"forwarded\"}"],
        2.0
    );
    assert_eq!(
        m["sluice_vm_requests_total{vm=\"vm1\",verdict=\"denied\"}"],
        1.0
    );
    assert_eq!(
        m["sluice_vm_request_duration_seconds_count{vm=\"vm1\"}"],
        2.0
    );
    assert_eq!(m["sluice_requests_total{verdict=\"forwarded\"}"], 2.0);
    assert_eq!(m["sluice_vms"], 1.0);
    assert!(!text.contains("/one") && !text.contains("evil.test") && !text.contains("sk-"));

    // Unregister: the open tunnel is closed, new streams are refused.
    let (code, _, s2) = connect_via(proxy, "api.test:443").await;
    assert_eq!(code, 200);
    let mut open = tls_over(s2, "api.test", &ca).await.unwrap();
    let (st, _) = d.api("DELETE", "/v1/vms/vm1", None).await;
    assert_eq!(st, 200);
    let mut buf = [0u8; 16];
    let r = tokio::time::timeout(WAIT, open.read(&mut buf))
        .await
        .expect("open stream closed within the bound");
    assert!(matches!(r, Ok(0) | Err(_)), "{r:?}");
    assert!(tokio::net::UnixStream::connect(&listen).await.is_err());
    let (st, _) = d.api("DELETE", "/v1/vms/vm1", None).await;
    assert_eq!(st, 404, "unregistering an unknown id");
    let (st, _) = d.api("GET", "/v1/vms/vm1/stats", None).await;
    assert_eq!(st, 404);
    let (_, text) = d.api("GET", "/metrics", None).await;
    assert!(!text.contains("vm=\"vm1\""), "series removed: {text}");
    assert!(
        !dir.path().join("state/vms/vm1/vm.json").exists(),
        "record removed"
    );
    assert!(
        dir.path().join("state/vms/vm1/ca.key").exists(),
        "CA kept for a re-registration"
    );
    // Re-registering the id (e.g. the VM restored from a snapshot) gives the same CA.
    let (st, v) = d
        .api_json("POST", "/v1/vms", Some(&register_body(dir.path(), up.addr)))
        .await;
    assert_eq!(st, 201, "{v}");
    let (_, ca_again) = d.api("GET", "/v1/vms/vm1/ca", None).await;
    assert_eq!(ca_again, ca, "same CA after unregister + register");
    let (st, _) = d.api("DELETE", "/v1/vms/vm1", None).await;
    assert_eq!(st, 200);

    let log = d.log();
    assert!(!log.contains(FIRST) && !log.contains(SECOND), "{log}");
    assert!(
        log.contains("sluice::audit"),
        "audit lines reach stderr through the non-blocking writer: {log}"
    );
    assert!(
        !log.contains('\x1b'),
        "no ANSI colour when stderr is not a terminal: {log}"
    );
    d.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_and_restart_restores_vms_with_the_same_ca() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "up", &["api.test"]);
    let up = spawn_upstream(Some(pki.server.clone())).await;
    let extra = format!("upstream_extra_roots = [{:?}]\n", pki.ca_path);
    let d = start_daemon_env(dir.path(), &extra, &[("SLUICE_TEST_E", "env-value-before")]).await;
    let (st, v) = d
        .api_json("POST", "/v1/vms", Some(&register_body(dir.path(), up.addr)))
        .await;
    assert_eq!(st, 201, "{v}");
    // An env-sourced credential added through the CLI is stored as the reference only.
    let (ok, out, err) = cli(
        &d.socket,
        &[
            "credentials",
            "set",
            "vm1",
            "E",
            "--env",
            "SLUICE_TEST_E",
            "--hosts",
            "api.test",
        ],
        &[],
    )
    .await;
    assert!(ok, "{out}{err}");
    let (_, ca_before, _) = cli(&d.socket, &["ca", "show", "vm1"], &[]).await;
    assert!(ca_before.contains("BEGIN CERTIFICATE"));

    let record = dir.path().join("state/vms/vm1/vm.json");
    let text = std::fs::read_to_string(&record).unwrap();
    assert!(
        !text.contains(FIRST),
        "literal values are not in vm.json: {text}"
    );
    assert!(text.contains("SLUICE_TEST_E"));
    let secret = dir.path().join("state/vms/vm1/secrets/K");
    assert_eq!(std::fs::read_to_string(&secret).unwrap(), FIRST);
    use std::os::unix::fs::PermissionsExt;
    for p in [&record, &secret] {
        assert_eq!(
            std::fs::metadata(p).unwrap().permissions().mode() & 0o777,
            0o600,
            "{}",
            p.display()
        );
    }

    // Crash (SIGKILL: stale sockets stay behind), then restart; the env-sourced credential
    // is stored as a reference, so it is read again from the new daemon's environment.
    d.kill().await;
    let d = start_daemon_env(dir.path(), &extra, &[("SLUICE_TEST_E", "env-value-333333")]).await;

    let (ok, ls, err) = cli(&d.socket, &["vm", "ls"], &[]).await;
    assert!(ok, "{err}");
    assert!(ls.contains("vm1") && ls.contains("yes"), "{ls}");
    let (_, ca_after, _) = cli(&d.socket, &["ca", "show", "vm1"], &[]).await;
    assert_eq!(ca_before, ca_after, "same CA after restart");

    // No re-registration: the VM's next connection works.
    let proxy = spawn_bridge(dir.path().join("vm1.vsock_7070")).await;
    let (code, head, s) = connect_via(proxy, "api.test:443").await;
    assert_eq!(code, 200, "{head}");
    let tls = tls_over(s, "api.test", &ca_after).await.unwrap();
    let mut sender = http1(tls).await;
    let (st, _, _) = get(
        &mut sender,
        "/after-restart",
        &[
            ("host", "api.test"),
            ("authorization", "Bearer mock-K"),
            ("x-e", "mock-E"),
        ],
    )
    .await;
    assert_eq!(st, 200);
    let seen = up.requests();
    let last = seen.last().unwrap();
    assert_eq!(
        last.header("authorization"),
        Some(format!("Bearer {FIRST}").as_str())
    );
    assert_eq!(last.header("x-e"), Some("env-value-333333"));
    assert!(!d.log().contains(FIRST));
    d.stop().await;
}
