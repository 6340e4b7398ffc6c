//! What a test VM is made of: the cached guest kernel, its modules and the Debian root image
//! (prepared by tests/scripts/bootstrap.sh), and the static musl binaries built from this
//! workspace (the guest agent and the probe client).
//!
//! A prebuilt test binary run on another machine (no cargo, no source tree) is pointed at its
//! files with environment overrides, each checked to exist:
//! - `SLUICE_E2E_AGENT`, `SLUICE_E2E_PROBE`: prebuilt static guest binaries (both, or neither:
//!   without them the harness runs cargo);
//! - `SLUICE_E2E_GUEST_DIR`: the `tests/guest` directory (workload scripts, units, sources);
//! - `SLUICE_E2E_GOGET`: a prebuilt static Go client (otherwise built with `go build`);
//! - `SLUICE_E2E_KERNEL_ARGS`: extra guest kernel arguments appended to every VM's cmdline;
//! - `SLUICE_E2E_VSOCK_TEST`: the prebuilt `host-broker/tests/vsock.rs` test binary (run
//!   inside a guest whose kernel has vsock loopback; otherwise cargo builds it);
//! - `SLUICE_CACHE_DIR`: kernel, modules and rootfs (as for bootstrap.sh).

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use crate::error::HarnessError;

/// Static musl target the guest binaries are built for.
pub const MUSL_TARGET: &str = "x86_64-unknown-linux-musl";

/// The cache dir shared with bootstrap.sh.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("SLUICE_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/sluice"))
}

/// The workspace root (this crate lives in `<root>/tests`).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

/// Paths of everything a VM test boots.
#[derive(Debug, Clone)]
pub struct Artifacts {
    /// Debian cloud kernel (bzImage).
    pub kernel: PathBuf,
    /// `lib/modules/<version>` of the same kernel package.
    pub modules_dir: PathBuf,
    /// ext4 image of the Debian root (read-only to VMs).
    pub rootfs: PathBuf,
    /// Static `guest-agent` binary.
    pub agent: PathBuf,
    /// Static `sluice-probe` HTTPS client.
    pub probe: PathBuf,
}

/// Resolves `cache/name` (a symlink bootstrap.sh maintains) to an existing file.
fn cached(name: &str) -> Result<PathBuf, HarnessError> {
    let link = cache_dir().join(name);
    std::fs::canonicalize(&link).map_err(|e| {
        HarnessError::Unavailable(format!(
            "{}: {e} (run tests/scripts/bootstrap.sh)",
            link.display()
        ))
    })
}

/// The file an override variable names, if it is set; an error if it names nothing.
fn override_file(var: &str) -> Result<Option<PathBuf>, HarnessError> {
    let Some(v) = std::env::var_os(var) else {
        return Ok(None);
    };
    let p = PathBuf::from(v);
    if p.is_file() || p.is_dir() {
        Ok(Some(p))
    } else {
        Err(HarnessError::Unavailable(format!(
            "{var}={}: no such file or directory",
            p.display()
        )))
    }
}

/// The directory of guest-side test files (`tests/guest`, or `SLUICE_E2E_GUEST_DIR`).
pub fn guest_dir() -> PathBuf {
    std::env::var_os("SLUICE_E2E_GUEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("guest"))
}

/// `guest_dir()/name`.
pub fn guest_file(name: &str) -> PathBuf {
    guest_dir().join(name)
}

/// Extra guest kernel arguments from `SLUICE_E2E_KERNEL_ARGS` (empty when unset).
pub fn extra_kernel_args() -> String {
    std::env::var("SLUICE_E2E_KERNEL_ARGS").unwrap_or_default()
}

/// The static Go client (tests/guest/goget), built once per process with the host's `go`
/// (`CGO_ENABLED=0`), or `SLUICE_E2E_GOGET`. No `go` on the host makes the VM unbootable for
/// the test that needs it (a failure under `CI=true`).
pub fn go_client() -> Result<PathBuf, HarnessError> {
    if let Some(p) = override_file("SLUICE_E2E_GOGET")? {
        return Ok(p);
    }
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_go_client().map_err(|e| e.to_string()))
        .clone()
        .map_err(HarnessError::Unavailable)
}

fn build_go_client() -> Result<PathBuf, HarnessError> {
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let out_dir = target_dir.join("goget");
    std::fs::create_dir_all(&out_dir).map_err(|e| HarnessError::file(&out_dir, e))?;
    let out = out_dir.join("goget");
    let status = std::process::Command::new("go")
        .current_dir(guest_dir().join("goget"))
        .args(["build", "-trimpath", "-ldflags=-s -w", "-o"])
        .arg(&out)
        .arg("main.go")
        .env("CGO_ENABLED", "0")
        .env("GOCACHE", out_dir.join("cache"))
        .env("GOPATH", out_dir.join("gopath"))
        .status()
        .map_err(|e| HarnessError::Spawn {
            what: "go build (tests/guest/goget; apt install golang-go)".into(),
            source: e,
        })?;
    if !status.success() {
        return Err(HarnessError::Build(format!("go build goget: {status}")));
    }
    Ok(out)
}

/// The test binary of `host-broker/tests/vsock.rs` (the kernel AF_VSOCK transport), or
/// `SLUICE_E2E_VSOCK_TEST`. Built with the same `cargo test --workspace` selection that runs
/// the e2e tests, so under test-all.sh it is already fresh; glibc-linked, it runs on the
/// Debian root (same release as the build host).
pub fn vsock_test_binary() -> Result<PathBuf, HarnessError> {
    if let Some(p) = override_file("SLUICE_E2E_VSOCK_TEST")? {
        return Ok(p);
    }
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_test_binary("vsock").map_err(|e| e.to_string()))
        .clone()
        .map_err(HarnessError::Build)
}

/// `cargo test --workspace --no-run --test <name>`, and the executable it reports.
fn build_test_binary(name: &str) -> Result<PathBuf, HarnessError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let out = std::process::Command::new(&cargo)
        .current_dir(workspace_root())
        .args(["test", "--workspace", "--no-run", "--test", name])
        .args(["--message-format", "json-render-diagnostics"])
        .stderr(std::process::Stdio::inherit())
        .output()
        .map_err(|e| HarnessError::Spawn {
            what: format!("cargo test --no-run --test {name}"),
            source: e,
        })?;
    if !out.status.success() {
        return Err(HarnessError::Build(format!(
            "cargo test --no-run --test {name}: {}",
            out.status
        )));
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|m| m["reason"] == "compiler-artifact" && m["target"]["name"] == name)
        .find_map(|m| m["executable"].as_str().map(PathBuf::from))
        .ok_or_else(|| HarnessError::Build(format!("cargo reported no executable for test {name}")))
}

impl Artifacts {
    /// Locates the cached kernel and rootfs and builds the musl binaries (once per process),
    /// unless `SLUICE_E2E_AGENT` and `SLUICE_E2E_PROBE` name prebuilt ones.
    pub fn locate() -> Result<Artifacts, HarnessError> {
        static BUILT: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();
        let kernel = cached("vmlinuz")?;
        let modules_dir = cached("modules")?;
        let rootfs = cached("rootfs.ext4")?;
        let prebuilt = (
            override_file("SLUICE_E2E_AGENT")?,
            override_file("SLUICE_E2E_PROBE")?,
        );
        let (agent, probe) = match prebuilt {
            (Some(a), Some(p)) => (a, p),
            (None, None) => BUILT
                .get_or_init(|| build_guest_binaries().map_err(|e| e.to_string()))
                .clone()
                .map_err(HarnessError::Build)?,
            _ => {
                return Err(HarnessError::Unavailable(
                    "set both SLUICE_E2E_AGENT and SLUICE_E2E_PROBE, or neither".into(),
                ))
            }
        };
        Ok(Artifacts {
            kernel,
            modules_dir,
            rootfs,
            agent,
            probe,
        })
    }
}

/// `cargo build --release --target x86_64-unknown-linux-musl -p guest-agent -p sluice-probe`.
///
/// A no-op when test-all.sh already built them; cargo's target-dir lock is free while tests run.
pub fn build_guest_binaries() -> Result<(PathBuf, PathBuf), HarnessError> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let root = workspace_root();
    let status = std::process::Command::new(&cargo)
        .current_dir(&root)
        .args(["build", "--release", "--target", MUSL_TARGET])
        .args(["-p", "guest-agent", "-p", "sluice-probe"])
        .status()
        .map_err(|e| HarnessError::Spawn {
            what: "cargo build (musl guest binaries)".into(),
            source: e,
        })?;
    if !status.success() {
        return Err(HarnessError::Build(format!(
            "cargo build --target {MUSL_TARGET} -p guest-agent -p sluice-probe: {status}"
        )));
    }
    let target_dir = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let out = target_dir.join(MUSL_TARGET).join("release");
    let agent = out.join("guest-agent");
    let probe = out.join("sluice-probe");
    for p in [&agent, &probe] {
        if !p.is_file() {
            return Err(HarnessError::Build(format!(
                "{} was not built",
                p.display()
            )));
        }
    }
    Ok((agent, probe))
}
