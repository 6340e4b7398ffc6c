//! Persistence of VMs registered through the control API, so a restarted daemon serves them
//! again without re-registration (and with the same CA, which lives beside them).
//!
//! Layout under `<state_dir>/vms/<id>/`:
//! - `vm.json` (0600): the registration as the API received it (id, transport, policy JSON),
//!   except that inline credential values (`{"value": ...}`) are replaced by a reference to
//! - `secrets/<credential>` (0600, directory 0700): the literal value, one file each.
//!
//! Credentials given as `{"env": ...}` or `{"file": ...}` are stored as that reference only;
//! their values are read again at restore time. Every write is atomic (temp file in the same
//! directory, fsync, rename, fsync of the directory).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Errors of the store; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Format { path: PathBuf, message: String },
}

/// One registration as given to the control API (`POST /v1/vms`). Also the `vm.json` shape.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VmRecord {
    /// `[A-Za-z0-9._-]`, 1-64 characters.
    pub id: String,
    /// The VMM's hybrid vsock socket (Cloud Hypervisor `--vsock socket=`, Firecracker
    /// `uds_path`); the broker listens on `<it>_<vsock_port>`. Exclusive with `cid`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hybrid_socket: Option<PathBuf>,
    /// Kernel AF_VSOCK guest CID (QEMU vhost-vsock). Exclusive with `hybrid_socket`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cid: Option<u32>,
    /// The policy (see docs/policy.md), JSON.
    #[serde(default = "empty_object")]
    pub policy: Value,
    /// Use the interception CA of this VM (a fork or snapshot restore under a new id); its
    /// CA is copied into this VM's state dir at registration (see `Broker::register_vm_with_ca_from`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_from: Option<String>,
}

fn empty_object() -> Value {
    Value::Object(Default::default())
}

/// The VM records under `<state_dir>/vms`.
#[derive(Debug, Clone)]
pub struct Store {
    vms_dir: PathBuf,
}

const RECORD: &str = "vm.json";
const SECRETS: &str = "secrets";

impl Store {
    pub fn new(state_dir: &Path) -> Store {
        Store {
            vms_dir: state_dir.join("vms"),
        }
    }

    fn vm_dir(&self, id: &str) -> PathBuf {
        self.vms_dir.join(id)
    }

    /// Writes `rec` (inline values moved to secret files first). Returns the record as
    /// stored (value sources replaced by file references).
    pub fn save(&self, rec: &VmRecord) -> Result<VmRecord, PersistError> {
        let dir = self.vm_dir(&rec.id);
        mkdir_private(&dir)?;
        let mut stored = rec.clone();
        let secrets = dir.join(SECRETS);
        let mut kept = Vec::new();
        if let Some(creds) = stored
            .policy
            .get_mut("credentials")
            .and_then(Value::as_object_mut)
        {
            for (name, spec) in creds.iter_mut() {
                let Some(source) = spec.get_mut("source") else {
                    continue;
                };
                if let Some(value) = source.get("value").and_then(Value::as_str) {
                    mkdir_private(&secrets)?;
                    let file = secrets.join(secret_file_name(name));
                    write_atomic(&file, value.as_bytes())?;
                    *source = serde_json::json!({ "file": file });
                }
                if let Some(file) = source.get("file").and_then(Value::as_str) {
                    kept.push(PathBuf::from(file));
                }
            }
        }
        let json = serde_json::to_vec_pretty(&stored).map_err(|e| PersistError::Format {
            path: dir.join(RECORD),
            message: e.to_string(),
        })?;
        write_atomic(&dir.join(RECORD), &json)?;
        // Secret files no credential refers to any more (rotated to env/file, or removed).
        if let Ok(rd) = std::fs::read_dir(&secrets) {
            for e in rd.flatten() {
                if !kept.contains(&e.path()) {
                    let _ = std::fs::remove_file(e.path());
                }
            }
        }
        Ok(stored)
    }

    /// Forgets a VM's registration and secret files. Its CA stays (a VM re-registered
    /// under the same id, e.g. restored from a snapshot, keeps trusting it).
    pub fn remove(&self, id: &str) -> Result<(), PersistError> {
        let dir = self.vm_dir(id);
        let io = |path: PathBuf| move |source| PersistError::Io { path, source };
        match std::fs::remove_file(dir.join(RECORD)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(dir.join(RECORD))(e)),
        }
        match std::fs::remove_dir_all(dir.join(SECRETS)) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io(dir.join(SECRETS))(e)),
        }
    }

    /// Every stored record, sorted by id; unreadable ones as errors (naming the file).
    pub fn load_all(&self) -> Vec<Result<VmRecord, PersistError>> {
        let mut out = Vec::new();
        let Ok(rd) = std::fs::read_dir(&self.vms_dir) else {
            return out;
        };
        let mut dirs: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
        dirs.sort();
        for d in dirs {
            let path = d.join(RECORD);
            let text = match std::fs::read(&path) {
                Ok(t) => t,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(source) => {
                    out.push(Err(PersistError::Io { path, source }));
                    continue;
                }
            };
            out.push(
                serde_json::from_slice::<VmRecord>(&text).map_err(|e| PersistError::Format {
                    path: path.clone(),
                    message: e.to_string(),
                }),
            );
        }
        out
    }
}

/// Credential names are validated by the policy, but the file name must never escape the
/// directory whatever they contain.
fn secret_file_name(name: &str) -> String {
    if !name.is_empty()
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    {
        name.to_owned()
    } else {
        name.bytes().map(|b| format!("{b:02x}")).collect()
    }
}

fn mkdir_private(dir: &Path) -> Result<(), PersistError> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| PersistError::Io {
            path: dir.to_path_buf(),
            source,
        })
}

/// Writes `bytes` to `path` atomically with mode 0600.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), PersistError> {
    write_atomic_mode(path, bytes, 0o600)
}

/// Writes `bytes` to `path` atomically; the file is created with `mode` at open time (the
/// core's [`crate::fsutil::write_atomic_mode`], with the store's error type).
pub fn write_atomic_mode(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PersistError> {
    crate::fsutil::write_atomic_mode(path, bytes, mode).map_err(|e| PersistError::Io {
        path: e.path,
        source: e.source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn inline_values_go_to_private_files_and_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::new(dir.path());
        let rec = VmRecord {
            id: "vm1".into(),
            hybrid_socket: Some("/run/vm1.sock".into()),
            cid: None,
            ca_from: None,
            policy: serde_json::json!({"credentials": {
                "K": {"source": {"value": "sk-literal-123456"}, "hosts": ["a.example"]},
                "E": {"source": {"env": "SOME_VAR"}, "hosts": ["b.example"]}
            }}),
        };
        let stored = store.save(&rec).unwrap();
        let text = std::fs::read_to_string(dir.path().join("vms/vm1/vm.json")).unwrap();
        assert!(!text.contains("sk-literal-123456"), "{text}");
        assert!(text.contains("SOME_VAR"));
        let secret = dir.path().join("vms/vm1/secrets/K");
        assert_eq!(
            std::fs::read_to_string(&secret).unwrap(),
            "sk-literal-123456"
        );
        for p in [&secret, &dir.path().join("vms/vm1/vm.json")] {
            let mode = std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        let loaded = store.load_all();
        assert_eq!(loaded.len(), 1);
        assert_eq!(loaded[0].as_ref().unwrap(), &stored);
        // Rotating K to an env source removes its secret file.
        let mut rec2 = stored.clone();
        rec2.policy["credentials"]["K"]["source"] = serde_json::json!({"env": "X"});
        store.save(&rec2).unwrap();
        assert!(!secret.exists());
        store.remove("vm1").unwrap();
        assert!(store.load_all().is_empty());
    }

    #[test]
    fn odd_credential_names_stay_inside() {
        assert_eq!(secret_file_name("OPENAI_KEY"), "OPENAI_KEY");
        assert_eq!(secret_file_name("../x"), "2e2e2f78");
    }
}
