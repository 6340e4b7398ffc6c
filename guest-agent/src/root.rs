//! The real root filesystem: mount it at /sysroot and switch into it.

use std::path::Path;
use std::time::{Duration, Instant};

use nix::mount::{mount, MsFlags};
use nix::unistd::{chdir, chroot};
use tracing::info;

use crate::cmdline::Settings;

/// Where the root is mounted before the switch.
pub const SYSROOT: &str = "/sysroot";
/// API filesystems moved into the new root.
const MOVED: &[&str] = &["/dev", "/proc", "/sys", "/run"];
/// How long to wait for the root block device to show up (drivers probe asynchronously).
const DEVICE_WAIT: Duration = Duration::from_secs(10);

/// Mounting or switching into the root failed (status 72).
#[derive(Debug, thiserror::Error)]
pub enum RootError {
    #[error("root device {0} did not appear within {1} s")]
    NoDevice(String, u64),
    #[error("mounting {device} ({fstype}) on {SYSROOT}: {errno}")]
    Mount {
        device: String,
        fstype: String,
        errno: nix::Error,
    },
    #[error("switching into {SYSROOT}: {step}: {errno}")]
    Switch {
        step: &'static str,
        errno: nix::Error,
    },
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// Mounts `sluice.root` at [`SYSROOT`] (rw unless `sluice.rootflags=ro`).
pub async fn mount_root(settings: &Settings, device: &str) -> Result<(), RootError> {
    let start = Instant::now();
    while !Path::new(device).exists() {
        if start.elapsed() > DEVICE_WAIT {
            return Err(RootError::NoDevice(device.into(), DEVICE_WAIT.as_secs()));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    std::fs::create_dir_all(SYSROOT).map_err(|source| RootError::Io {
        path: SYSROOT.into(),
        source,
    })?;
    let mut flags = MsFlags::empty();
    if settings.read_only {
        flags |= MsFlags::MS_RDONLY;
    }
    mount(
        Some(device),
        SYSROOT,
        Some(settings.rootfstype.as_str()),
        flags,
        None::<&str>,
    )
    .map_err(|errno| RootError::Mount {
        device: device.into(),
        fstype: settings.rootfstype.clone(),
        errno,
    })?;
    info!("mounted {device} on {SYSROOT}");
    Ok(())
}

/// Copies the initrd's `/sluice/*` to `/run/sluice/` (kept across the switch with /run).
pub fn copy_sluice_files(from: &Path, to: &Path) -> std::io::Result<()> {
    if !from.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let dest = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            std::fs::create_dir_all(&dest)?;
            copy_sluice_files(&entry.path(), &dest)?;
        } else {
            std::fs::create_dir_all(to)?;
            std::fs::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}

/// Moves the API filesystems into [`SYSROOT`] and makes it `/` (what switch_root does,
/// minus deleting the initramfs contents).
pub fn switch_root() -> Result<(), RootError> {
    let sw = |step| move |errno| RootError::Switch { step, errno };
    for m in MOVED {
        let target = format!("{SYSROOT}{m}");
        let _ = std::fs::create_dir_all(&target);
        mount(
            Some(*m),
            target.as_str(),
            None::<&str>,
            MsFlags::MS_MOVE,
            None::<&str>,
        )
        .map_err(sw("moving an API filesystem"))?;
    }
    chdir(SYSROOT).map_err(sw("chdir"))?;
    mount(Some("."), "/", None::<&str>, MsFlags::MS_MOVE, None::<&str>)
        .map_err(sw("moving the root to /"))?;
    chroot(".").map_err(sw("chroot"))?;
    chdir("/").map_err(sw("chdir /"))?;
    info!("switched into the root filesystem");
    Ok(())
}
