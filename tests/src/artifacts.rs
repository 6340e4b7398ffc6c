//! What a test VM is made of: the cached guest kernel, its modules and the Debian root image
//! (prepared by tests/scripts/bootstrap.sh), and the static musl binaries built from this
//! workspace (the guest agent and the probe client).

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

impl Artifacts {
    /// Locates the cached kernel and rootfs and builds the musl binaries (once per process).
    pub fn locate() -> Result<Artifacts, HarnessError> {
        static BUILT: OnceLock<Result<(PathBuf, PathBuf), String>> = OnceLock::new();
        let kernel = cached("vmlinuz")?;
        let modules_dir = cached("modules")?;
        let rootfs = cached("rootfs.ext4")?;
        let (agent, probe) = BUILT
            .get_or_init(|| build_guest_binaries().map_err(|e| e.to_string()))
            .clone()
            .map_err(HarnessError::Build)?;
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
