//! Per-VM random placeholders (`"placeholder": "random"`).
//!
//! A random placeholder is `mock-<NAME>-<32 hex digits>` (128 bits from the TLS library's
//! CSPRNG), drawn once per VM and credential name and kept in
//! `<state_dir>/vms/<id>/placeholders.json` (0600, atomic write), so a broker restart, a
//! policy update and a re-registration of the same id give the guest the same value, and a
//! VM restored from a snapshot under another id (`ca_from`) keeps its own. A leaked
//! placeholder names its VM (`grep` the state dir) and means nothing to any other VM: the
//! other VMs' automata do not contain it.
//!
//! Placeholders are not secrets, but they identify a VM, so the file is private to the
//! broker like the rest of the VM's state dir.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::policy::Policy;

pub use crate::policy::RANDOM_PLACEHOLDER;

/// File under the VM's state dir holding its random placeholders (name -> placeholder).
pub const PLACEHOLDERS_FILE: &str = "placeholders.json";

/// The store cannot be read or written. Names the file, never a value.
#[derive(Debug, thiserror::Error)]
#[error("random placeholders {path}: {reason}")]
pub struct PlaceholderError {
    pub path: PathBuf,
    pub reason: String,
}

fn fresh(name: &str) -> Result<String, String> {
    let mut bytes = [0u8; 16];
    rustls::crypto::ring::default_provider()
        .secure_random
        .fill(&mut bytes)
        .map_err(|_| "the system random generator failed".to_owned())?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("mock-{name}-{hex}"))
}

fn read_store(path: &Path) -> Result<BTreeMap<String, String>, PlaceholderError> {
    let err = |reason: String| PlaceholderError {
        path: path.to_owned(),
        reason,
    };
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| err(e.to_string())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(BTreeMap::new()),
        Err(e) => Err(err(e.to_string())),
    }
}

fn write_store(path: &Path, map: &BTreeMap<String, String>) -> Result<(), PlaceholderError> {
    let err = |reason: String| PlaceholderError {
        path: path.to_owned(),
        reason,
    };
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|e| err(e.to_string()))?;
    let tmp = path.with_extension("json.tmp");
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(|e| err(e.to_string()))?;
    let body = serde_json::to_vec_pretty(map).map_err(|e| err(e.to_string()))?;
    f.write_all(&body)
        .and_then(|_| f.sync_all())
        .map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Replaces every `"placeholder": "random"` of `policy` by the VM's stored placeholder for
/// that credential name, drawing (and storing) one for names that have none yet. `vm_dir`
/// is `<state_dir>/vms/<id>`. Policies without random placeholders touch nothing.
pub fn resolve_random_placeholders(
    policy: &mut Policy,
    vm_dir: &Path,
) -> Result<(), PlaceholderError> {
    let wanted: Vec<String> = policy
        .credentials
        .iter()
        .filter(|(_, c)| c.placeholder.as_deref() == Some(RANDOM_PLACEHOLDER))
        .map(|(n, _)| n.clone())
        .collect();
    if wanted.is_empty() {
        return Ok(());
    }
    let path = vm_dir.join(PLACEHOLDERS_FILE);
    let mut store = read_store(&path)?;
    let mut added = false;
    for name in &wanted {
        if !store.contains_key(name) {
            let ph = fresh(name).map_err(|reason| PlaceholderError {
                path: path.clone(),
                reason,
            })?;
            store.insert(name.clone(), ph);
            added = true;
        }
    }
    if added {
        write_store(&path, &store)?;
    }
    for name in wanted {
        if let Some(c) = policy.credentials.get_mut(&name) {
            c.placeholder = store.get(&name).cloned();
        }
    }
    Ok(())
}

/// Copies the random placeholders of the VM in `from_dir` to `to_dir` unless `to_dir`
/// already has its own (a VM restored from `from`'s snapshot holds `from`'s placeholders in
/// its memory). Nothing to copy is fine.
pub fn copy_random_placeholders(from_dir: &Path, to_dir: &Path) -> Result<(), PlaceholderError> {
    let src = from_dir.join(PLACEHOLDERS_FILE);
    let dst = to_dir.join(PLACEHOLDERS_FILE);
    if dst.exists() || !src.exists() {
        return Ok(());
    }
    let map = read_store(&src)?;
    write_store(&dst, &map)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy::from_json_str(
            r#"{"credentials": {
                "A": {"source": {"env": "A"}, "hosts": ["a.test"], "placeholder": "random"},
                "B": {"source": {"env": "B"}, "hosts": ["b.test"], "placeholder": "random"},
                "C": {"source": {"env": "C"}, "hosts": ["c.test"]}
            }}"#,
        )
        .unwrap()
    }

    #[test]
    fn random_placeholders_are_unguessable_per_vm_and_persisted() {
        let root = tempfile::tempdir().unwrap();
        let (vm1, vm2) = (root.path().join("vm1"), root.path().join("vm2"));
        let mut p1 = policy();
        p1.validate().unwrap();
        resolve_random_placeholders(&mut p1, &vm1).unwrap();
        let a1 = p1.credentials["A"].placeholder.clone().unwrap();
        let b1 = p1.credentials["B"].placeholder.clone().unwrap();
        assert!(
            a1.starts_with("mock-A-") && a1.len() == "mock-A-".len() + 32,
            "{a1}"
        );
        assert!(a1[7..].bytes().all(|b| b.is_ascii_hexdigit()));
        assert_ne!(a1[7..], b1[7..]);
        assert_eq!(p1.credentials["C"].placeholder, None, "others untouched");
        p1.validate().unwrap();
        // Same VM again (restart, update): the same placeholders.
        let mut again = policy();
        resolve_random_placeholders(&mut again, &vm1).unwrap();
        assert_eq!(again.credentials["A"].placeholder.as_deref(), Some(&*a1));
        // Another VM: other placeholders.
        let mut p2 = policy();
        resolve_random_placeholders(&mut p2, &vm2).unwrap();
        assert_ne!(p2.credentials["A"].placeholder.as_deref(), Some(&*a1));
        // A restored snapshot under a new id keeps the source VM's placeholders.
        let vm3 = root.path().join("vm3");
        copy_random_placeholders(&vm1, &vm3).unwrap();
        let mut p3 = policy();
        resolve_random_placeholders(&mut p3, &vm3).unwrap();
        assert_eq!(p3.credentials["A"].placeholder.as_deref(), Some(&*a1));
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(vm1.join(PLACEHOLDERS_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
