//! Builds a test VM's initrd with the `initrd` crate: the agent as /init, the virtio/vsock
//! (and, for a root disk, block and ext4) modules, and the test's files under /sluice/.

use std::path::{Path, PathBuf};

use crate::artifacts::Artifacts;
use crate::error::HarnessError;

/// Modules every test VM needs; the builder adds their dependencies in load order. `tun`
/// carries the agent's transparent capture device.
pub const BASE_MODULES: &[&str] = &["vmw_vsock_virtio_transport", "virtio_pci", "tun"];
/// Extra modules for a virtio-blk ext4 root.
pub const ROOT_MODULES: &[&str] = &["virtio_blk", "ext4"];

/// Files to put in the initrd, and whether the root disk modules are needed.
#[derive(Debug, Default)]
pub struct InitrdSpec {
    files: Vec<(FileSrc, String, u32)>,
    with_root: bool,
    /// Modules beyond [`BASE_MODULES`] (and [`ROOT_MODULES`]), loaded after them.
    modules: Vec<&'static str>,
}

#[derive(Debug)]
enum FileSrc {
    Path(PathBuf),
    Bytes(Vec<u8>),
}

impl InitrdSpec {
    pub fn new() -> InitrdSpec {
        InitrdSpec::default()
    }

    /// Include virtio_blk and ext4 (for a `sluice.root` disk).
    pub fn with_root(mut self) -> Self {
        self.with_root = true;
        self
    }

    /// Also loads the kernel modules `names` (and their dependencies) at boot.
    pub fn modules(mut self, names: &[&'static str]) -> Self {
        self.modules.extend_from_slice(names);
        self
    }

    /// Copies the host file `src` into the initrd as `dest`.
    pub fn file(mut self, src: impl Into<PathBuf>, dest: &str, mode: u32) -> Self {
        self.files
            .push((FileSrc::Path(src.into()), dest.to_string(), mode));
        self
    }

    /// Adds `text` as the file `dest`.
    pub fn text(mut self, text: &str, dest: &str, mode: u32) -> Self {
        self.files.push((
            FileSrc::Bytes(text.as_bytes().to_vec()),
            dest.to_string(),
            mode,
        ));
        self
    }

    /// Writes the initrd to `out`.
    pub fn build(self, artifacts: &Artifacts, out: &Path) -> Result<PathBuf, HarnessError> {
        let mut names: Vec<&str> = BASE_MODULES.to_vec();
        if self.with_root {
            names.extend_from_slice(ROOT_MODULES);
        }
        names.extend_from_slice(&self.modules);
        let mut b = initrd::InitrdBuilder::new(&artifacts.agent)
            .kernel_modules(&artifacts.modules_dir, &names);
        for (src, dest, mode) in self.files {
            b = match src {
                FileSrc::Path(p) => b.file(p, &dest, mode),
                FileSrc::Bytes(bytes) => b.file_bytes(bytes, &dest, mode),
            };
        }
        let image = b
            .build()
            .map_err(|e| HarnessError::Build(format!("initrd: {e}")))?;
        std::fs::write(out, image).map_err(|e| HarnessError::file(out, e))?;
        Ok(out.to_path_buf())
    }
}
