//! Builds Sluice initramfs images: a gzip-compressed newc cpio holding the guest agent as
//! `/init`, the kernel modules it needs (with their load order in
//! `/lib/modules/sluice.order`) and optional extra files.
//!
//! Output is deterministic: entries sorted by path, parent directories emitted, mtime 0,
//! uid/gid 0, sequential inode numbers, and a gzip header without mtime or file name. The
//! same inputs always give the same bytes, so images can be cached and compared by hash.
#![forbid(unsafe_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

pub mod cpio;
pub mod modules;

use cpio::{CpioEntry, S_IFCHR, S_IFDIR, S_IFREG};

/// Where the load order is written inside the initrd (one path per line, relative to
/// `/lib/modules/`).
pub const MODULE_ORDER_PATH: &str = "lib/modules/sluice.order";

/// Everything that can go wrong building an initrd.
#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("kernel module `{name}`{} not found under {dir} (no .ko and not in modules.builtin)",
        required_by.as_ref().map(|p| format!(" (needed by `{p}`)")).unwrap_or_default())]
    MissingModule {
        name: String,
        required_by: Option<String>,
        dir: PathBuf,
    },
    #[error("kernel module {path}: {reason}")]
    BadModule { path: PathBuf, reason: String },
    #[error("kernel module dependency cycle through `{name}`")]
    DependencyCycle { name: String },
    #[error("bad destination path `{0}`: must be absolute, without `..` or empty components")]
    BadDestination(String),
    #[error("bad cpio archive: {0}")]
    BadArchive(String),
}

impl InitrdError {
    pub(crate) fn io(path: &Path, source: std::io::Error) -> Self {
        InitrdError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

#[derive(Debug, Clone)]
enum Source {
    Path(PathBuf),
    Bytes(Vec<u8>),
}

#[derive(Debug, Clone)]
struct FileSpec {
    source: Source,
    dest: String,
    mode: u32,
}

#[derive(Debug, Clone)]
struct ModuleSpec {
    dir: PathBuf,
    names: Vec<String>,
    optional: bool,
}

/// Assembles an initrd. Inputs are read at [`InitrdBuilder::build`] time.
#[derive(Debug, Clone)]
pub struct InitrdBuilder {
    agent: PathBuf,
    modules: Vec<ModuleSpec>,
    files: Vec<FileSpec>,
}

impl InitrdBuilder {
    /// `agent_binary` becomes `/init` (mode 0755).
    pub fn new(agent_binary: impl Into<PathBuf>) -> Self {
        InitrdBuilder {
            agent: agent_binary.into(),
            modules: Vec::new(),
            files: Vec::new(),
        }
    }

    /// Adds `names` and their dependencies from `modules_dir` (an extracted package's
    /// `lib/modules/<version>`). A name that is neither a `.ko` nor built in fails the build.
    pub fn kernel_modules(mut self, modules_dir: impl Into<PathBuf>, names: &[&str]) -> Self {
        self.modules.push(ModuleSpec {
            dir: modules_dir.into(),
            names: names.iter().map(|s| s.to_string()).collect(),
            optional: false,
        });
        self
    }

    /// Like [`InitrdBuilder::kernel_modules`], but names that do not exist as `.ko` are
    /// skipped (for kernels that build the driver in without shipping `modules.builtin`).
    /// Missing dependencies of a module that is found are still an error.
    pub fn optional_kernel_modules(
        mut self,
        modules_dir: impl Into<PathBuf>,
        names: &[&str],
    ) -> Self {
        self.modules.push(ModuleSpec {
            dir: modules_dir.into(),
            names: names.iter().map(|s| s.to_string()).collect(),
            optional: true,
        });
        self
    }

    /// Adds the file at `src` as `dest` (absolute path in the initrd) with permission `mode`.
    pub fn file(mut self, src: impl Into<PathBuf>, dest: &str, mode: u32) -> Self {
        self.files.push(FileSpec {
            source: Source::Path(src.into()),
            dest: dest.to_string(),
            mode,
        });
        self
    }

    /// Adds `bytes` as `dest` (absolute path in the initrd) with permission `mode`.
    pub fn file_bytes(mut self, bytes: Vec<u8>, dest: &str, mode: u32) -> Self {
        self.files.push(FileSpec {
            source: Source::Bytes(bytes),
            dest: dest.to_string(),
            mode,
        });
        self
    }

    /// The uncompressed, sorted archive entries this builder produces.
    pub fn entries(&self) -> Result<Vec<CpioEntry>, InitrdError> {
        // path -> (mode, data); directories are added for every parent afterwards.
        let mut files: BTreeMap<String, (u32, Vec<u8>)> = BTreeMap::new();
        let agent = std::fs::read(&self.agent).map_err(|e| InitrdError::io(&self.agent, e))?;
        files.insert("init".into(), (S_IFREG | 0o755, agent));

        let mut order = String::new();
        for spec in &self.modules {
            let index = modules::ModuleIndex::scan(&spec.dir)?;
            let names: Vec<&str> = spec.names.iter().map(String::as_str).collect();
            for m in index.resolve(&names, spec.optional)? {
                let rel = m.relpath.to_string_lossy().into_owned();
                let key = format!("lib/modules/{rel}");
                if let std::collections::btree_map::Entry::Vacant(slot) = files.entry(key) {
                    order.push_str(&rel);
                    order.push('\n');
                    slot.insert((S_IFREG | 0o644, m.bytes));
                }
            }
        }
        if !self.modules.is_empty() {
            files.insert(
                MODULE_ORDER_PATH.into(),
                (S_IFREG | 0o644, order.into_bytes()),
            );
        }

        for f in &self.files {
            let dest = clean_dest(&f.dest)?;
            let data = match &f.source {
                Source::Path(p) => std::fs::read(p).map_err(|e| InitrdError::io(p, e))?,
                Source::Bytes(b) => b.clone(),
            };
            files.insert(dest, (S_IFREG | (f.mode & 0o7777), data));
        }

        let mut all: BTreeMap<String, CpioEntry> = BTreeMap::new();
        // The kernel opens /dev/console for init's stdio; ship the node in case the kernel's
        // built-in initramfs lacks it.
        all.insert("dev".into(), dir_entry("dev"));
        all.insert(
            "dev/console".into(),
            CpioEntry {
                name: "dev/console".into(),
                mode: S_IFCHR | 0o600,
                rdev: (5, 1),
                data: Vec::new(),
            },
        );
        for (path, (mode, data)) in files {
            for ancestor in Path::new(&path).ancestors().skip(1) {
                if ancestor.as_os_str().is_empty() {
                    continue;
                }
                let p = ancestor.to_string_lossy().into_owned();
                all.entry(p.clone()).or_insert_with(|| dir_entry(&p));
            }
            all.insert(
                path.clone(),
                CpioEntry {
                    name: path,
                    mode,
                    rdev: (0, 0),
                    data,
                },
            );
        }
        Ok(all.into_values().collect())
    }

    /// Builds a gzip-compressed newc archive. Same inputs, same bytes.
    pub fn build(&self) -> Result<Vec<u8>, InitrdError> {
        let raw = cpio::write_newc(&self.entries()?);
        Ok(gzip(&raw))
    }

    /// Appends this builder's archive as a second segment to `existing_initrd` (e.g. a
    /// distro initrd). The kernel unpacks concatenated segments in order, so `/init` and the
    /// other files here replace the same paths of the existing image.
    pub fn append_to(&self, existing_initrd: &[u8]) -> Result<Vec<u8>, InitrdError> {
        let mut out = existing_initrd.to_vec();
        // The kernel skips zero padding between segments; keep 4-byte alignment.
        while !out.len().is_multiple_of(4) {
            out.push(0);
        }
        out.extend_from_slice(&self.build()?);
        Ok(out)
    }
}

fn dir_entry(name: &str) -> CpioEntry {
    CpioEntry {
        name: name.to_string(),
        mode: S_IFDIR | 0o755,
        rdev: (0, 0),
        data: Vec::new(),
    }
}

/// Turns `/a/b` into `a/b`, refusing relative paths, `..`, `.` and empty components.
fn clean_dest(dest: &str) -> Result<String, InitrdError> {
    let rest = dest
        .strip_prefix('/')
        .ok_or_else(|| InitrdError::BadDestination(dest.to_string()))?;
    if rest.is_empty()
        || rest
            .split('/')
            .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(InitrdError::BadDestination(dest.to_string()));
    }
    Ok(rest.to_string())
}

/// Gzip with a fixed header: no file name, mtime 0.
fn gzip(raw: &[u8]) -> Vec<u8> {
    let mut enc = flate2::GzBuilder::new()
        .mtime(0)
        .write(Vec::new(), flate2::Compression::best());
    // Writing to a Vec cannot fail.
    enc.write_all(raw).expect("write to Vec");
    enc.finish().expect("write to Vec")
}

/// Decompresses and reads every entry of every gzip segment in `image` (a later entry with
/// the same path comes after the earlier one, as the kernel would apply them).
pub fn read_initrd(image: &[u8]) -> Result<Vec<CpioEntry>, InitrdError> {
    use std::io::Read;
    let mut out = Vec::new();
    let mut rest = image;
    loop {
        while let Some((0, tail)) = rest.split_first() {
            rest = tail;
        }
        if rest.is_empty() {
            return Ok(out);
        }
        if rest.starts_with(b"070701") {
            // Uncompressed segment: read it and find its end by re-encoding.
            let entries = cpio::read_newc(rest)?;
            let len = cpio::write_newc(&entries).len();
            out.extend(entries);
            rest = &rest[len.min(rest.len())..];
            continue;
        }
        let mut dec = flate2::bufread::GzDecoder::new(rest);
        let mut raw = Vec::new();
        dec.read_to_end(&mut raw)
            .map_err(|e| InitrdError::BadArchive(format!("gzip: {e}")))?;
        out.extend(cpio::read_newc(&raw)?);
        rest = dec.into_inner();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dest_must_be_clean_and_absolute() {
        assert_eq!(clean_dest("/a/b").unwrap(), "a/b");
        for bad in ["a/b", "/", "/a/../b", "/a//b", "/a/./b"] {
            assert!(clean_dest(bad).is_err(), "{bad}");
        }
    }
}
