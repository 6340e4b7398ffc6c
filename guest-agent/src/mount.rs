//! The early mounts, from one table.

use std::path::Path;

use nix::errno::Errno;
use nix::mount::{mount, MsFlags};

/// One early mount.
#[derive(Debug)]
struct Spec {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: &'static str,
}

const NOSUID_NODEV: MsFlags = MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV);

/// In order: later entries may live under earlier ones (/dev/pts under /dev).
const TABLE: &[Spec] = &[
    Spec {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: NOSUID_NODEV.union(MsFlags::MS_NOEXEC),
        data: "",
    },
    Spec {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: NOSUID_NODEV.union(MsFlags::MS_NOEXEC),
        data: "",
    },
    Spec {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: "mode=0755",
    },
    Spec {
        source: "devpts",
        target: "/dev/pts",
        fstype: "devpts",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC),
        data: "gid=5,mode=0620,ptmxmode=0666",
    },
    Spec {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=0755",
    },
    Spec {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: NOSUID_NODEV,
        data: "mode=1777",
    },
];

/// A mount that failed.
#[derive(Debug, thiserror::Error)]
#[error("mounting {fstype} on {target}: {errno}")]
pub struct MountError {
    pub fstype: &'static str,
    pub target: &'static str,
    pub errno: Errno,
}

/// Mounts every table entry; one that is already mounted (EBUSY) is fine.
pub fn mount_early() -> Result<(), MountError> {
    for s in TABLE {
        let err = |errno| MountError {
            fstype: s.fstype,
            target: s.target,
            errno,
        };
        if !Path::new(s.target).exists() {
            std::fs::create_dir_all(s.target)
                .map_err(|e| err(Errno::from_raw(e.raw_os_error().unwrap_or(0))))?;
        }
        let data = (!s.data.is_empty()).then_some(s.data);
        match mount(Some(s.source), s.target, Some(s.fstype), s.flags, data) {
            Ok(()) | Err(Errno::EBUSY) => {}
            Err(e) => return Err(err(e)),
        }
    }
    Ok(())
}
