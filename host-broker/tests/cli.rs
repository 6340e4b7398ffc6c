//! The `host-broker` binary: `policy check` and `serve` (config file, control stream,
//! clean exit on SIGTERM).

mod common;

use std::process::Stdio;

use common::{agent_hello, open_control, WAIT};
use shared_proto::{BootMode, BrokerMessage};
use tokio::io::{AsyncBufReadExt, BufReader};

const BIN: &str = env!("CARGO_BIN_EXE_host-broker");

#[test]
fn policy_check_prints_names_never_values() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("p.json");
    std::fs::write(
        &p,
        r#"{"credentials": {"OPENAI_API_KEY": {"source": {"value": "sk-VALUE-SHOULD-NOT-PRINT"},
            "hosts": ["api.openai.com"]}}}"#,
    )
    .unwrap();
    let out = std::process::Command::new(BIN)
        .args(["policy", "check"])
        .arg(&p)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("OPENAI_API_KEY") && stdout.contains("api.openai.com"),
        "{stdout}"
    );
    assert!(!stdout.contains("sk-VALUE"));

    std::fs::write(&p, r#"{"credentials": {"K": {"source": {"env": "K"}}}}"#).unwrap();
    let out = std::process::Command::new(BIN)
        .args(["policy", "check"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("credentials.K.hosts"), "{stderr}");
}

#[tokio::test]
async fn serve_answers_the_control_stream_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("vm1.toml"),
        "[egress]\ndefault = \"deny\"\n",
    )
    .unwrap();
    std::fs::write(
        dir.path().join("broker.toml"),
        "state_dir = \"state\"\ncontrol_socket = \"control.sock\"\n[[vms]]\nid = \"vm1\"\nhybrid_socket = \"vm1.vsock\"\npolicy_file = \"vm1.toml\"\n",
    )
    .unwrap();
    let mut child = tokio::process::Command::new(BIN)
        .args(["serve", "--config"])
        .arg(dir.path().join("broker.toml"))
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    tokio::time::timeout(WAIT, async {
        while let Some(l) = lines.next_line().await.unwrap() {
            if l.contains("host-broker serving") {
                return;
            }
        }
        panic!("broker exited before serving");
    })
    .await
    .unwrap();
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });

    let mut s = tokio::net::UnixStream::connect(dir.path().join("vm1.vsock_7070"))
        .await
        .unwrap();
    open_control(&mut s).await;
    let msg = agent_hello(&mut s, "cli-test", BootMode::Exec).await;
    let BrokerMessage::Config(cfg) = msg else {
        panic!("{msg:?}")
    };
    assert_eq!(cfg.vm_id, "vm1");
    let on_disk = std::fs::read_to_string(dir.path().join("state/vms/vm1/ca.pem")).unwrap();
    assert_eq!(cfg.ca_certs_pem, vec![on_disk]);

    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let status = tokio::time::timeout(WAIT, child.wait())
        .await
        .unwrap()
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        !dir.path().join("vm1.vsock_7070").exists(),
        "socket removed on shutdown"
    );
}

/// An I/O error is named once: the library error already carries its cause.
#[test]
fn an_io_error_names_its_cause_once() {
    for args in [
        &["policy", "check", "/nonexistent-sluice.json"][..],
        &["serve", "--config", "/nonexistent-sluice.toml"][..],
    ] {
        let out = std::process::Command::new(BIN).args(args).output().unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(err.matches("No such file").count(), 1, "{args:?}: {err}");
    }
}
