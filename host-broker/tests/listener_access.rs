//! VM listener sockets get the configured mode and group whatever the broker's umask (the
//! shipped systemd unit runs with UMask=0077), so a VMM running as another user in that group
//! can connect and a user outside it cannot. Also checks the shipped unit keeps what running
//! as root is for.
//!
//! Its own test binary: it sets the process umask.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::process::Command;

use host_broker::policy::Policy;
use host_broker::{Broker, BrokerConfig, SocketAccess, VmSpec, VmTransport};

const VMM_GID: u32 = 42_4242;
const OTHER_GID: u32 = 42_4243;
const NOBODY: u32 = 65534;

fn is_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

/// Whether `uid:gid` can connect to the Unix socket at `path` (a child process).
fn connects_as(uid: u32, gid: u32, path: &std::path::Path) -> bool {
    use std::os::unix::process::CommandExt;
    let status = Command::new("python3")
        .args([
            "-c",
            "import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])",
        ])
        .arg(path)
        .uid(uid)
        .gid(gid)
        .stderr(std::process::Stdio::null())
        .status()
        .expect("python3");
    status.success()
}

#[tokio::test]
async fn listener_gets_mode_and_group_despite_umask_0077() {
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    let root = nix::unistd::geteuid().is_root();
    if !root {
        assert!(
            !is_ci(),
            "CI=true: this test needs root (chown to another group)"
        );
        eprintln!("SKIPPED: not root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let broker = Broker::start(BrokerConfig {
        state_dir: dir.path().join("state"),
        vsock_port: shared_proto::DEFAULT_VSOCK_PORT,
        upstream_extra_roots: vec![],
        listener_access: SocketAccess {
            mode: 0o660,
            gid: Some(VMM_GID),
        },
    })
    .await
    .unwrap();
    broker
        .register_vm(VmSpec {
            id: "vm1".into(),
            transport: VmTransport::HybridSocket(dir.path().join("vm1.vsock")),
            policy: Policy::from_json_str(r#"{"egress": {"default": "deny"}}"#).unwrap(),
        })
        .await
        .unwrap();
    let listen = broker.listen_path("vm1").unwrap();
    let meta = std::fs::metadata(&listen).unwrap();
    assert_eq!(meta.mode() & 0o777, 0o660, "socket mode");
    assert_eq!(meta.gid(), VMM_GID, "socket group");
    assert!(
        connects_as(NOBODY, VMM_GID, &listen),
        "a VMM user in the listener group must be able to connect"
    );
    assert!(
        !connects_as(NOBODY, OTHER_GID, &listen),
        "a user outside the listener group must not"
    );
    broker.shutdown().await;
}

/// The unit must not take away what the broker runs as root for: creating listeners in
/// directories owned by the VMM's user (CAP_DAC_OVERRIDE) and handing them to its group
/// (CAP_CHOWN).
#[test]
fn shipped_unit_keeps_the_capabilities_root_is_for() {
    let unit = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/sluice-broker.service"),
    )
    .unwrap();
    let caps: Vec<&str> = unit
        .lines()
        .filter_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .flat_map(|v| v.split_whitespace())
        .collect();
    for cap in ["CAP_DAC_OVERRIDE", "CAP_CHOWN"] {
        assert!(
            caps.contains(&cap),
            "CapabilityBoundingSet lacks {cap}: {caps:?}"
        );
    }
    // The socket mode comes from the config, not the umask: the unit must say so.
    assert!(
        unit.contains("listener_mode"),
        "the unit documents listener_mode"
    );
}
