//! Path handling inside a target root directory that is not our own `/`.
//!
//! A distro root is full of symlinks (Fedora's `/etc/ssl/certs -> /etc/pki/tls/certs`,
//! Alpine's `/etc/ssl/cert.pem -> certs/ca-certificates.crt`). Absolute link targets mean
//! "inside that root", so every path is resolved component by component relative to the
//! root instead of letting the kernel follow links into the agent's own filesystem.

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::path::{Component, Path, PathBuf};

const MAX_LINKS: usize = 40;

fn push_components(queue: &mut VecDeque<OsString>, path: &Path, front: bool) {
    let comps: Vec<OsString> = path
        .components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect();
    if front {
        for c in comps.into_iter().rev() {
            queue.push_front(c);
        }
    } else {
        queue.extend(comps);
    }
}

/// Resolves `path` (absolute or relative, interpreted inside `root`) to a host path under
/// `root`, following symlinks of existing components within `root`. Components that do not
/// exist yet are appended as they are.
pub fn resolve(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let mut todo = VecDeque::new();
    push_components(&mut todo, path, false);
    let mut done = PathBuf::new();
    let mut links = 0;
    while let Some(c) = todo.pop_front() {
        if c == ".." {
            done.pop();
            continue;
        }
        let candidate = done.join(&c);
        let host = root.join(&candidate);
        match std::fs::symlink_metadata(&host) {
            Ok(m) if m.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(io::Error::other(format!(
                        "too many symlinks resolving {}",
                        path.display()
                    )));
                }
                let target = std::fs::read_link(&host)?;
                if target.is_absolute() {
                    done = PathBuf::new();
                }
                push_components(&mut todo, &target, true);
            }
            _ => done = candidate,
        }
    }
    Ok(root.join(done))
}

/// Writes `bytes` to `path` inside `root`, creating parent directories (0755).
pub fn write(root: &Path, path: &Path, bytes: &[u8], mode: u32) -> io::Result<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let host = resolve(root, path)?;
    if let Some(parent) = host.parent() {
        std::fs::create_dir_all(parent)?;
    }
    std::fs::write(&host, bytes)?;
    std::fs::set_permissions(&host, std::fs::Permissions::from_mode(mode))?;
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_links_stay_inside_the_root() {
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path();
        std::fs::create_dir_all(root.join("etc/pki/tls/certs")).unwrap();
        std::fs::create_dir_all(root.join("etc/ssl")).unwrap();
        std::os::unix::fs::symlink("/etc/pki/tls/certs", root.join("etc/ssl/certs")).unwrap();
        std::os::unix::fs::symlink("../../etc/ssl/x", root.join("etc/pki/y")).unwrap();
        assert_eq!(
            resolve(root, Path::new("/etc/ssl/certs/abc.0")).unwrap(),
            root.join("etc/pki/tls/certs/abc.0")
        );
        assert_eq!(
            resolve(root, Path::new("/etc/pki/y")).unwrap(),
            root.join("etc/ssl/x")
        );
        // `..` never climbs above the root.
        assert_eq!(
            resolve(root, Path::new("/../../etc")).unwrap(),
            root.join("etc")
        );
    }

    #[test]
    fn link_loops_are_errors() {
        let tmp = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/b", tmp.path().join("a")).unwrap();
        std::os::unix::fs::symlink("/a", tmp.path().join("b")).unwrap();
        assert!(resolve(tmp.path(), Path::new("/a/x")).is_err());
    }
}
