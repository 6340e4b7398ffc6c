//! Which VMM and accelerator the VM tests use on this machine.
//!
//! Detection, overridable with `SLUICE_VM_BACKEND=qemu|cloud-hypervisor` and
//! `SLUICE_VM_ACCEL=kvm|tcg`:
//! - accelerator: KVM when `/dev/kvm` opens read-write and is not PVM; PVM
//!   (`/sys/module/kvm_pvm` exists) only runs PVM-built guest kernels, so a stock Debian kernel
//!   needs TCG there (see /work/shared/vm-facts.md);
//! - backend: Cloud Hypervisor when `cloud-hypervisor` is on PATH and KVM is usable (it has no
//!   emulator), QEMU otherwise.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::error::HarnessError;

/// The VMM that runs the guest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `qemu-system-x86_64` with a `vhost-user-vsock-pci` device served by vhost-device-vsock.
    Qemu,
    /// `cloud-hypervisor` with its built-in hybrid vsock.
    CloudHypervisor,
}

/// How guest code is executed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    /// QEMU's emulator: slow (seconds per boot) but works everywhere.
    Tcg,
}

/// The chosen backend and accelerator, plus the binaries they need.
#[derive(Debug, Clone)]
pub struct Platform {
    pub backend: Backend,
    pub accel: Accel,
    /// Path of the VMM binary.
    pub vmm: PathBuf,
    /// Path of `vhost-device-vsock` (QEMU backend only).
    pub vhost_vsock: Option<PathBuf>,
    /// Why this choice was made (printed by the tests).
    pub reason: String,
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}/{:?} ({})", self.backend, self.accel, self.reason)
    }
}

/// Finds `name` in `PATH` (and in `~/.cargo/bin`, where `cargo install` puts binaries).
pub fn which(name: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = std::env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(name)).find(|p| p.is_file())
}

/// Whether KVM can run a stock kernel here; `Err` says why not.
pub fn kvm_usable() -> Result<(), String> {
    if Path::new("/sys/module/kvm_pvm").exists() {
        return Err("/dev/kvm is PVM (kvm_pvm loaded), which cannot run a stock kernel".into());
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .map(|_| ())
        .map_err(|e| format!("/dev/kvm: {e}"))
}

impl Platform {
    /// Detects the backend and accelerator, honouring the override variables.
    pub fn detect() -> Result<Platform, HarnessError> {
        let kvm = kvm_usable();
        let (accel, accel_reason) = match std::env::var("SLUICE_VM_ACCEL").ok().as_deref() {
            Some("kvm") => (Accel::Kvm, "SLUICE_VM_ACCEL=kvm".to_string()),
            Some("tcg") => (Accel::Tcg, "SLUICE_VM_ACCEL=tcg".to_string()),
            Some(other) => {
                return Err(HarnessError::Unavailable(format!(
                    "SLUICE_VM_ACCEL={other:?}: expected kvm or tcg"
                )))
            }
            None => match &kvm {
                Ok(()) => (Accel::Kvm, "KVM usable".to_string()),
                Err(why) => (Accel::Tcg, format!("TCG because {why}")),
            },
        };
        let ch = which("cloud-hypervisor");
        let backend = match std::env::var("SLUICE_VM_BACKEND").ok().as_deref() {
            Some("qemu") => Backend::Qemu,
            Some("cloud-hypervisor") => Backend::CloudHypervisor,
            Some(other) => {
                return Err(HarnessError::Unavailable(format!(
                    "SLUICE_VM_BACKEND={other:?}: expected qemu or cloud-hypervisor"
                )))
            }
            None if ch.is_some() && accel == Accel::Kvm => Backend::CloudHypervisor,
            None => Backend::Qemu,
        };
        match backend {
            Backend::CloudHypervisor => {
                if accel != Accel::Kvm {
                    return Err(HarnessError::Unavailable(format!(
                        "Cloud Hypervisor needs KVM, but {accel_reason}"
                    )));
                }
                let vmm = ch.ok_or_else(|| {
                    HarnessError::Unavailable("cloud-hypervisor is not on PATH".into())
                })?;
                Ok(Platform {
                    backend,
                    accel,
                    vmm,
                    vhost_vsock: None,
                    reason: accel_reason,
                })
            }
            Backend::Qemu => {
                let vmm = which("qemu-system-x86_64").ok_or_else(|| {
                    HarnessError::Unavailable(
                        "qemu-system-x86_64 not found (run tests/scripts/bootstrap.sh)".into(),
                    )
                })?;
                let vhost = which("vhost-device-vsock").ok_or_else(|| {
                    HarnessError::Unavailable(
                        "vhost-device-vsock not found (run tests/scripts/bootstrap.sh)".into(),
                    )
                })?;
                Ok(Platform {
                    backend,
                    accel,
                    vmm,
                    vhost_vsock: Some(vhost),
                    reason: accel_reason,
                })
            }
        }
    }
}
