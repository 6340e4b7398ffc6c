//! Where Python's `certifi` bundles live in a root.
//!
//! PyPI's `certifi` ships its own `cacert.pem`, and `requests`/`httpx` installed from PyPI
//! read it instead of the system store unless `SSL_CERT_FILE`/`REQUESTS_CA_BUNDLE` are set
//! (which `env -i`, sudo and clean service environments drop). The agent appends the VM CA to
//! the copies found in the usual places: system and user site-packages, virtualenvs in
//! well-known directories, and pip's vendored copy. The search is bounded in depth (fixed
//! patterns, at most two wildcards) and in results.

use std::path::{Path, PathBuf};

use crate::rootfs;

/// An image that must keep its certifi bundles untouched creates this file.
pub const OPT_OUT: &str = "/etc/sluice/no-certifi";

/// Python library directories (`lib/python3.X`), inside the root; `*` matches within one
/// path component.
const LIB_DIRS: &[&str] = &[
    "/usr/lib/python3*",
    "/usr/local/lib/python3*",
    "/opt/*/lib/python3*",
    "/opt/*/*/lib/python3*",
    "/root/.local/lib/python3*",
    "/home/*/.local/lib/python3*",
    "/venv/lib/python3*",
    "/.venv/lib/python3*",
    "/app/.venv/lib/python3*",
    "/app/venv/lib/python3*",
    "/srv/*/.venv/lib/python3*",
    "/srv/*/venv/lib/python3*",
    "/root/.venv/lib/python3*",
    "/root/venv/lib/python3*",
    "/home/*/.venv/lib/python3*",
    "/home/*/venv/lib/python3*",
    "/workspace/.venv/lib/python3*",
];

/// Below each library directory.
const BUNDLES: &[&str] = &[
    "site-packages/certifi/cacert.pem",
    "dist-packages/certifi/cacert.pem",
    "site-packages/pip/_vendor/certifi/cacert.pem",
    "dist-packages/pip/_vendor/certifi/cacert.pem",
];

/// At most this many matches per wildcard component and bundles in all.
const MAX_MATCHES: usize = 64;
pub const MAX_BUNDLES: usize = 64;

/// `*` anywhere in `pat`, no other metacharacters.
pub(crate) fn matches(pat: &str, name: &str) -> bool {
    match pat.split_once('*') {
        None => pat == name,
        Some((pre, rest)) => {
            let Some(tail) = name.strip_prefix(pre) else {
                return false;
            };
            if rest.is_empty() {
                return true;
            }
            (0..=tail.len())
                .filter(|&i| tail.is_char_boundary(i))
                .any(|i| matches(rest, &tail[i..]))
        }
    }
}

/// Expands `pattern` inside `root` to paths inside the root (not resolved).
pub(crate) fn expand(root: &Path, pattern: &str) -> Vec<PathBuf> {
    let mut current = vec![PathBuf::from("/")];
    for comp in pattern.split('/').filter(|c| !c.is_empty()) {
        let mut next = Vec::new();
        for dir in &current {
            if !comp.contains('*') {
                next.push(dir.join(comp));
                continue;
            }
            let Ok(host) = rootfs::resolve(root, dir) else {
                continue;
            };
            let Ok(rd) = std::fs::read_dir(&host) else {
                continue;
            };
            let mut names: Vec<String> = rd
                .filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| matches(comp, n))
                .collect();
            names.sort();
            names.truncate(MAX_MATCHES);
            next.extend(names.into_iter().map(|n| dir.join(n)));
        }
        current = next;
    }
    current
}

/// certifi bundles present in `root`: (path inside the root, resolved host path), in
/// pattern order, deduplicated after resolution, at most [`MAX_BUNDLES`].
pub fn find(root: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut out: Vec<(PathBuf, PathBuf)> = Vec::new();
    for lib in LIB_DIRS {
        for dir in expand(root, lib) {
            for b in BUNDLES {
                let inside = dir.join(b);
                let Ok(host) = rootfs::resolve(root, &inside) else {
                    continue;
                };
                if host.is_file() && !out.iter().any(|(_, h)| *h == host) {
                    out.push((inside, host));
                    if out.len() >= MAX_BUNDLES {
                        return out;
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards() {
        assert!(matches("python3*", "python3.11"));
        assert!(matches("python3*", "python3"));
        assert!(!matches("python3*", "python2.7"));
        assert!(matches("*", "x"));
        assert!(matches("a*c", "abbc"));
        assert!(!matches("a*c", "abbd"));
    }

    #[test]
    fn finds_site_venv_and_vendored_bundles_once() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        let mk = |p: &str| {
            let p = root.join(p);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, "x").unwrap();
        };
        mk("usr/local/lib/python3.11/site-packages/certifi/cacert.pem");
        mk("usr/lib/python3/dist-packages/pip/_vendor/certifi/cacert.pem");
        mk("opt/venv/lib/python3.12/site-packages/certifi/cacert.pem");
        mk("home/u/.local/lib/python3.11/site-packages/certifi/cacert.pem");
        mk("usr/lib/python3.11/site-packages/notcertifi/cacert.pem");
        // A venv symlinked to another one is found once.
        std::os::unix::fs::symlink("/opt/venv", root.join("venv")).unwrap();
        let found: Vec<_> = find(root).into_iter().map(|(i, _)| i).collect();
        assert_eq!(
            found,
            [
                "/usr/lib/python3/dist-packages/pip/_vendor/certifi/cacert.pem",
                "/usr/local/lib/python3.11/site-packages/certifi/cacert.pem",
                "/opt/venv/lib/python3.12/site-packages/certifi/cacert.pem",
                "/home/u/.local/lib/python3.11/site-packages/certifi/cacert.pem",
            ]
            .map(PathBuf::from)
        );
    }
}
