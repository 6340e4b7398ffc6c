//! The operator CLI against a real daemon: vm add (TOML policy), credentials set from the
//! CLI's environment / stdin, ls, stats, ca show, rm; metrics over the optional TCP listener;
//! `--help` that teaches.

mod daemon_support;

use daemon_support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_drives_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    // A free loopback port for the metrics listener.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let d = start_daemon(
        dir.path(),
        &format!("metrics_listen = \"127.0.0.1:{port}\"\n"),
    )
    .await;
    let policy = dir.path().join("p.toml");
    std::fs::write(
        &policy,
        "[egress]\ndefault = \"deny\"\n[[egress.allow]]\nhosts = [\"api.test\"]\n",
    )
    .unwrap();
    let sock = dir.path().join("vm1.vsock");
    let (ok, out, err) = cli(
        &d.socket,
        &[
            "vm",
            "add",
            "vm1",
            "--hybrid-socket",
            sock.to_str().unwrap(),
            "--policy",
            policy.to_str().unwrap(),
        ],
        &[],
    )
    .await;
    assert!(ok, "{out}{err}");
    assert!(out.contains("vm1.vsock_7070"), "{out}");

    // A value read from the CLI's own environment: sent, stored 0600, never on argv.
    let (ok, out, err) = cli(
        &d.socket,
        &[
            "credentials",
            "set",
            "vm1",
            "TOKEN",
            "--value-from-env",
            "MY_TOKEN",
            "--hosts",
            "api.test",
        ],
        &[("MY_TOKEN", "tok-from-cli-env-123456")],
    )
    .await;
    assert!(ok, "{out}{err}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("state/vms/vm1/secrets/TOKEN")).unwrap(),
        "tok-from-cli-env-123456"
    );
    // Missing variable: a clear error, nothing sent.
    let (ok, _, err) = cli(
        &d.socket,
        &[
            "credentials",
            "set",
            "vm1",
            "TOKEN",
            "--value-from-env",
            "NOT_SET_ANYWHERE_42",
        ],
        &[],
    )
    .await;
    assert!(!ok && err.contains("NOT_SET_ANYWHERE_42"), "{err}");
    // API errors come back as one line with the field.
    let (ok, _, err) = cli(
        &d.socket,
        &["credentials", "set", "vm1", "NEW", "--env", "X"],
        &[],
    )
    .await;
    assert!(!ok && err.contains("hosts"), "{err}");

    let (ok, ls, _) = cli(&d.socket, &["vm", "ls"], &[]).await;
    assert!(ok);
    assert!(ls.contains("vm1") && ls.contains("TOKEN"), "{ls}");
    let (ok, stats, _) = cli(&d.socket, &["vm", "stats", "vm1"], &[]).await;
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(v["connections"], 0);
    let (ok, pem, _) = cli(&d.socket, &["ca", "show", "vm1"], &[]).await;
    assert!(ok && pem.contains("BEGIN CERTIFICATE"));

    // Metrics over TCP (only /metrics there).
    let (st, body) = http_get(&format!("127.0.0.1:{port}"), "/metrics").await;
    assert_eq!(st, 200);
    let m = parse_metrics(&body);
    assert_eq!(m["sluice_vms"], 1.0);
    let (st, _) = http_get(&format!("127.0.0.1:{port}"), "/v1/vms").await;
    assert_eq!(st, 404, "the TCP listener serves metrics only");

    let (ok, out, err) = cli(&d.socket, &["vm", "rm", "vm1"], &[]).await;
    assert!(ok, "{out}{err}");
    let (ok, _, err) = cli(&d.socket, &["vm", "rm", "vm1"], &[]).await;
    assert!(!ok && err.contains("not registered"), "{err}");
    assert!(!d.log().contains("tok-from-cli-env"));
    d.stop().await;

    // No daemon: the error says where it looked and what to do.
    let (ok, _, err) = cli(&dir.path().join("absent.sock"), &["vm", "ls"], &[]).await;
    assert!(
        !ok && err.contains("absent.sock") && err.contains("serve"),
        "{err}"
    );
}

#[test]
fn help_teaches() {
    let out = std::process::Command::new(BIN)
        .arg("--help")
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    for want in [
        "serve",
        "vm",
        "credentials",
        "ca",
        "policy",
        "SLUICE_SOCKET",
        "vm add",
    ] {
        assert!(s.contains(want), "--help lacks {want:?}:\n{s}");
    }
    let out = std::process::Command::new(BIN)
        .args(["credentials", "set", "--help"])
        .output()
        .unwrap();
    let s = String::from_utf8_lossy(&out.stdout);
    for want in [
        "--value-from-credential",
        "CREDENTIALS_DIRECTORY",
        "--value-stdin",
        "--env",
        "--hosts",
    ] {
        assert!(
            s.contains(want),
            "credentials set --help lacks {want:?}:\n{s}"
        );
    }
}

async fn http_get(addr: &str, path: &str) -> (u16, String) {
    use http_body_util::BodyExt;
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::get(path)
        .header("host", addr)
        .body(http_body_util::Empty::<bytes::Bytes>::new())
        .unwrap();
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let st = resp.status().as_u16();
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    (st, String::from_utf8_lossy(&b).into_owned())
}

/// The global `--socket` (here as `$SLUICE_SOCKET`) also moves the daemon's own control
/// socket, over the config file's `control_socket`: one flag for both sides.
#[tokio::test]
async fn serve_listens_on_the_global_socket_over_the_config_file() {
    let dir = tempfile::tempdir().unwrap();
    let wanted = dir.path().join("from-flag.sock");
    let d = start_daemon_env(
        dir.path(),
        "",
        &[("SLUICE_SOCKET", wanted.to_str().unwrap())],
    )
    .await;
    assert!(
        !dir.path().join("ctl.sock").exists(),
        "the config file's control_socket was used despite --socket"
    );
    let (status, body) = api(&wanted, "GET", "/v1/vms", None).await;
    assert_eq!(status, 200, "{body}");
    drop(d);
}
