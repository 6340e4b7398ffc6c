//! Whether VM tests run here, and one-VM-at-a-time serialisation.
//!
//! Outside CI a machine that cannot boot a VM skips the VM tests with a printed reason. With
//! `CI=true` that is a failure instead: CI must never pass because the e2e tests did not run.
//! When `SLUICE_E2E_MARKER` names a file, every VM test that completes appends its name to
//! it, so tests/scripts/test-all.sh can check that they all really ran.

use std::io::Write;

use tokio::sync::{Mutex, MutexGuard};

use crate::artifacts::Artifacts;
use crate::platform::Platform;

/// Held for a VM test's whole duration: under TCG two VMs on two cores only slow each other.
static VM_LOCK: Mutex<()> = Mutex::const_new(());

/// Everything a VM test needs, plus the serialisation guard.
#[derive(Debug)]
pub struct VmTestEnv {
    pub platform: Platform,
    pub artifacts: Artifacts,
    pub name: &'static str,
    _serial: MutexGuard<'static, ()>,
}

/// True when running under CI (`CI=true` or `CI=1`).
pub fn in_ci() -> bool {
    matches!(std::env::var("CI").as_deref(), Ok("true") | Ok("1"))
}

/// Starts a VM test: `Some(env)` when VMs can be booted here; `None` (skip, with a printed
/// reason) when not and not in CI; panics in CI.
pub async fn vm_test(name: &'static str) -> Option<VmTestEnv> {
    init_tracing();
    let serial = VM_LOCK.lock().await;
    let ready = Platform::detect().and_then(|p| Artifacts::locate().map(|a| (p, a)));
    match ready {
        Ok((platform, artifacts)) => {
            eprintln!("e2e {name}: platform {platform}");
            Some(VmTestEnv {
                platform,
                artifacts,
                name,
                _serial: serial,
            })
        }
        Err(e) if in_ci() => panic!("e2e {name}: CI=true and {e}; refusing to skip"),
        Err(e) => {
            eprintln!("e2e {name}: SKIPPED: {e}");
            None
        }
    }
}

impl VmTestEnv {
    /// Records that this test ran to completion (see the module docs).
    pub fn completed(self) {
        if let Some(path) = std::env::var_os("SLUICE_E2E_MARKER") {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
            {
                let _ = writeln!(f, "{}", self.name);
            }
        }
    }
}

/// Logs to the test's captured output; `RUST_LOG` overrides the default level.
pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
