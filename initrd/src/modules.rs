//! Kernel module resolution from an extracted kernel package.
//!
//! Debian's cloud kernel package ships plain `.ko` files and no `modules.dep`, so the load
//! order is worked out here from each module's own `.modinfo` section: `depends=` (hard
//! dependencies) and `softdep=pre:` (modules that must be loaded first when present).

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use object::{Object, ObjectSection};

use crate::InitrdError;

/// Normalises a module name: `-` and `_` are the same to the kernel.
pub fn normalize(name: &str) -> String {
    name.trim_end_matches(".ko").replace('-', "_")
}

/// Dependencies a module declares in its `.modinfo` section.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ModInfo {
    /// `depends=`: must be loaded first, must exist (unless built in).
    pub depends: Vec<String>,
    /// `softdep=pre:`: loaded first when available.
    pub soft_pre: Vec<String>,
}

/// Parses the NUL-separated `key=value` strings of a `.modinfo` section.
pub fn parse_modinfo(section: &[u8]) -> ModInfo {
    let mut info = ModInfo::default();
    for raw in section.split(|b| *b == 0) {
        let Ok(s) = std::str::from_utf8(raw) else {
            continue;
        };
        if let Some(v) = s.strip_prefix("depends=") {
            info.depends
                .extend(v.split(',').filter(|d| !d.is_empty()).map(normalize));
        } else if let Some(v) = s.strip_prefix("softdep=") {
            // Format: "pre: a b post: c" (either part optional).
            let mut in_pre = false;
            for tok in v.split_whitespace() {
                match tok {
                    "pre:" => in_pre = true,
                    "post:" => in_pre = false,
                    m if in_pre => info.soft_pre.push(normalize(m)),
                    _ => {}
                }
            }
        }
    }
    info
}

/// Reads the `.modinfo` section of a `.ko` ELF file.
pub fn read_modinfo(path: &Path, bytes: &[u8]) -> Result<ModInfo, InitrdError> {
    let bad = |reason: String| InitrdError::BadModule {
        path: path.to_path_buf(),
        reason,
    };
    let file = object::File::parse(bytes).map_err(|e| bad(e.to_string()))?;
    let section = file
        .section_by_name(".modinfo")
        .ok_or_else(|| bad("no .modinfo section".into()))?;
    let data = section.data().map_err(|e| bad(e.to_string()))?;
    Ok(parse_modinfo(data))
}

/// An index of the modules found under one `lib/modules/<version>` directory.
#[derive(Debug)]
pub struct ModuleIndex {
    root: PathBuf,
    /// normalised name -> path relative to `root` (e.g. `kernel/drivers/virtio/virtio.ko`).
    by_name: BTreeMap<String, PathBuf>,
    builtin: BTreeSet<String>,
}

/// A resolved module: where it lives and what it is called.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedModule {
    pub name: String,
    /// Relative to the modules dir; also its path under `/lib/modules/` in the initrd.
    pub relpath: PathBuf,
    pub bytes: Vec<u8>,
}

impl ModuleIndex {
    /// Scans `root/kernel` for `.ko` files and reads `root/modules.builtin` if present.
    pub fn scan(root: &Path) -> Result<Self, InitrdError> {
        let kernel = root.join("kernel");
        if !kernel.is_dir() {
            return Err(InitrdError::Io {
                path: kernel,
                source: std::io::Error::new(std::io::ErrorKind::NotFound, "no kernel/ directory"),
            });
        }
        let mut by_name = BTreeMap::new();
        let mut stack = vec![kernel];
        while let Some(dir) = stack.pop() {
            let rd = std::fs::read_dir(&dir).map_err(|e| InitrdError::io(&dir, e))?;
            for entry in rd {
                let entry = entry.map_err(|e| InitrdError::io(&dir, e))?;
                let path = entry.path();
                let ft = entry.file_type().map_err(|e| InitrdError::io(&path, e))?;
                if ft.is_dir() {
                    stack.push(path);
                } else if let Some(fname) = path.file_name().and_then(|f| f.to_str()) {
                    if let Some(stem) = fname.strip_suffix(".ko") {
                        let rel = path.strip_prefix(root).unwrap_or(&path).to_path_buf();
                        by_name.insert(normalize(stem), rel);
                    }
                }
            }
        }
        let mut builtin = BTreeSet::new();
        let builtin_path = root.join("modules.builtin");
        if let Ok(text) = std::fs::read_to_string(&builtin_path) {
            for line in text.lines() {
                if let Some(stem) = Path::new(line.trim())
                    .file_name()
                    .and_then(|f| f.to_str())
                    .and_then(|f| f.strip_suffix(".ko"))
                {
                    builtin.insert(normalize(stem));
                }
            }
        }
        Ok(ModuleIndex {
            root: root.to_path_buf(),
            by_name,
            builtin,
        })
    }

    /// Resolves `names` and their dependencies into a load order (dependencies first).
    ///
    /// Names built into the kernel (listed in `modules.builtin`) are skipped. A name that is
    /// neither a `.ko` nor built in is an error unless `optional` is set.
    pub fn resolve(
        &self,
        names: &[&str],
        optional: bool,
    ) -> Result<Vec<ResolvedModule>, InitrdError> {
        let mut order = Vec::new();
        let mut state: BTreeMap<String, bool> = BTreeMap::new(); // false = visiting, true = done
        for name in names {
            let name = normalize(name);
            if !self.by_name.contains_key(&name) && !self.builtin.contains(&name) {
                if optional {
                    continue;
                }
                return Err(InitrdError::MissingModule {
                    name,
                    required_by: None,
                    dir: self.root.clone(),
                });
            }
            self.visit(&name, None, &mut state, &mut order)?;
        }
        Ok(order)
    }

    fn visit(
        &self,
        name: &str,
        parent: Option<&str>,
        state: &mut BTreeMap<String, bool>,
        order: &mut Vec<ResolvedModule>,
    ) -> Result<(), InitrdError> {
        match state.get(name) {
            Some(true) => return Ok(()),
            Some(false) => {
                return Err(InitrdError::DependencyCycle {
                    name: name.to_string(),
                })
            }
            None => {}
        }
        let Some(rel) = self.by_name.get(name) else {
            if self.builtin.contains(name) {
                state.insert(name.to_string(), true);
                return Ok(());
            }
            return Err(InitrdError::MissingModule {
                name: name.to_string(),
                required_by: parent.map(str::to_string),
                dir: self.root.clone(),
            });
        };
        state.insert(name.to_string(), false);
        let path = self.root.join(rel);
        let bytes = std::fs::read(&path).map_err(|e| InitrdError::io(&path, e))?;
        let info = read_modinfo(&path, &bytes)?;
        for soft in &info.soft_pre {
            if self.by_name.contains_key(soft) {
                self.visit(soft, Some(name), state, order)?;
            }
        }
        for dep in &info.depends {
            self.visit(dep, Some(name), state, order)?;
        }
        state.insert(name.to_string(), true);
        order.push(ResolvedModule {
            name: name.to_string(),
            relpath: rel.clone(),
            bytes,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modinfo_parses_depends_and_softdeps() {
        let sec = b"license=GPL\0depends=virtio,virtio_ring\0softdep=pre: crc32c-intel post: foo\0vermagic=6.1\0";
        let info = parse_modinfo(sec);
        assert_eq!(info.depends, ["virtio", "virtio_ring"]);
        assert_eq!(info.soft_pre, ["crc32c_intel"]);
    }

    #[test]
    fn empty_depends_is_no_dependency() {
        assert_eq!(parse_modinfo(b"depends=\0").depends, Vec::<String>::new());
    }
}
