//! Writes into a target root that may be read-only.
//!
//! A write is tried in place first. When the filesystem says `EROFS` (a root mounted with
//! `sluice.rootflags=ro`), the file is staged on a tmpfs instead and bind-mounted over the
//! original: an existing file gets a modified copy mounted over it; a new file in an existing
//! directory gets the whole directory copied to the staging area (symlinks kept as symlinks)
//! and that copy mounted over the directory, after which the write goes to the copy.

use std::io;
use std::path::{Path, PathBuf};

/// Mounts `src` over `dst` (both host paths). The default is a plain `MS_BIND`.
pub type Binder = fn(&Path, &Path) -> io::Result<()>;

/// `mount --bind src dst`.
pub fn bind_mount(src: &Path, dst: &Path) -> io::Result<()> {
    nix::mount::mount(
        Some(src),
        dst,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .map_err(io::Error::from)
}

/// Where a directory copy may stop: trust directories are small (Debian's `/etc/ssl/certs`
/// is ~300 symlinks), so anything bigger is a mistake, not something to copy into RAM.
const MAX_COPY_BYTES: u64 = 64 << 20;
const MAX_COPY_ENTRIES: usize = 20_000;

/// How a file ended up written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Written {
    InPlace,
    Overlaid,
}

/// Stages writes for a read-only root.
#[derive(Debug)]
pub struct Stager {
    staging: PathBuf,
    binder: Binder,
    n: usize,
    /// Host paths a copy was mounted over (files and directories).
    pub overlaid: Vec<PathBuf>,
}

fn is_erofs(e: &io::Error) -> bool {
    e.raw_os_error() == Some(nix::libc::EROFS)
}

impl Stager {
    /// `staging` is a host directory on a writable filesystem (a tmpfs under /run in the
    /// guest).
    pub fn new(staging: PathBuf, binder: Binder) -> Self {
        Stager {
            staging,
            binder,
            n: 0,
            overlaid: Vec::new(),
        }
    }

    /// The staging directory (host path).
    pub fn staging(&self) -> &Path {
        &self.staging
    }

    fn covered(&self, host: &Path) -> bool {
        self.overlaid.iter().any(|o| host.starts_with(o))
    }

    fn next_name(&mut self, kind: &str, host: &Path) -> PathBuf {
        self.n += 1;
        let base = host
            .file_name()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_else(|| "root".into());
        self.staging.join(kind).join(format!("{}-{base}", self.n))
    }

    /// Runs `op` in place; false when the filesystem is read-only.
    fn try_in_place(&self, op: impl FnOnce() -> io::Result<()>) -> io::Result<bool> {
        match op() {
            Ok(()) => Ok(true),
            Err(e) if is_erofs(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Writes `bytes` to the host file `host` (created with `mode` if new).
    pub fn write(&mut self, host: &Path, bytes: &[u8], mode: u32) -> io::Result<Written> {
        use std::os::unix::fs::PermissionsExt;
        let fresh = std::fs::symlink_metadata(host).is_err();
        let write = |p: &Path| -> io::Result<()> {
            std::fs::write(p, bytes)?;
            if fresh {
                std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode))?;
            }
            Ok(())
        };
        if self.try_in_place(|| write(host))? {
            return Ok(Written::InPlace);
        }
        if !fresh {
            let stage = self.next_name("files", host);
            std::fs::create_dir_all(stage.parent().unwrap_or(&self.staging))?;
            let perms = std::fs::metadata(host)?.permissions();
            std::fs::write(&stage, bytes)?;
            std::fs::set_permissions(&stage, perms)?;
            (self.binder)(&stage, host)?;
            self.overlaid.push(host.to_path_buf());
            return Ok(Written::Overlaid);
        }
        let parent = host
            .parent()
            .ok_or_else(|| io::Error::other("no parent directory"))?;
        self.overlay_dir(parent)?;
        write(host)?;
        Ok(Written::Overlaid)
    }

    /// Creates a symlink `host -> target`, overlaying its directory if needed.
    pub fn symlink(&mut self, target: &Path, host: &Path) -> io::Result<Written> {
        if self.try_in_place(|| std::os::unix::fs::symlink(target, host))? {
            return Ok(Written::InPlace);
        }
        let parent = host
            .parent()
            .ok_or_else(|| io::Error::other("no parent directory"))?;
        self.overlay_dir(parent)?;
        std::os::unix::fs::symlink(target, host)?;
        Ok(Written::Overlaid)
    }

    /// Makes sure the host directory `dir` exists and is writable. Returns false when it
    /// does not exist and cannot be created (its parent is on a read-only filesystem): the
    /// caller then puts its files in the staging area instead.
    pub fn ensure_dir(&mut self, dir: &Path) -> io::Result<bool> {
        if dir.is_dir() {
            return Ok(true);
        }
        match std::fs::create_dir_all(dir) {
            Ok(()) => Ok(true),
            Err(e) if is_erofs(&e) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Copies `dir` to the staging area and mounts the copy over it (once).
    fn overlay_dir(&mut self, dir: &Path) -> io::Result<()> {
        if self.covered(dir) {
            return Ok(());
        }
        let stage = self.next_name("dirs", dir);
        let mut budget = (MAX_COPY_BYTES, MAX_COPY_ENTRIES);
        copy_tree(dir, &stage, &mut budget)?;
        (self.binder)(&stage, dir)?;
        self.overlaid.push(dir.to_path_buf());
        Ok(())
    }
}

/// Copies a directory tree: regular files with their permissions, symlinks as symlinks,
/// directories recursively; anything else (sockets, devices) is skipped.
fn copy_tree(from: &Path, to: &Path, budget: &mut (u64, usize)) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    std::fs::set_permissions(to, std::fs::metadata(from)?.permissions())?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        budget.1 = budget.1.checked_sub(1).ok_or_else(|| {
            io::Error::other(format!("{}: too many entries to copy", from.display()))
        })?;
        let src = entry.path();
        let dst = to.join(entry.file_name());
        let ft = entry.file_type()?;
        if ft.is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
        } else if ft.is_dir() {
            copy_tree(&src, &dst, budget)?;
        } else if ft.is_file() {
            let len = entry.metadata()?.len();
            budget.0 = budget.0.checked_sub(len).ok_or_else(|| {
                io::Error::other(format!("{}: too large to copy to RAM", from.display()))
            })?;
            std::fs::copy(&src, &dst)?;
        }
    }
    Ok(())
}
