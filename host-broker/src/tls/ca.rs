//! The per-VM interception CA: an ECDSA P-256 key and self-signed certificate, persisted
//! under `<state_dir>/vms/<id>/{ca.key,ca.pem}` and reused across broker restarts.
//!
//! The key file is created with mode 0600 at `open(2)` time (never chmod-ed afterwards, so
//! there is no window where it is readable by others). On reload only the key is parsed: the
//! in-memory issuer is rebuilt from the same fixed distinguished name and key, which yields
//! identical issuer name and key identifier, so leaves chain to the persisted `ca.pem`.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, IsCa, KeyPair, KeyUsagePurpose,
    PKCS_ECDSA_P256_SHA256,
};
use time::{Duration, OffsetDateTime};

/// Errors creating or loading a VM CA.
#[derive(Debug, thiserror::Error)]
pub enum CaError {
    #[error("CA file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CA key {path} is not a valid PEM private key: {source}")]
    BadKey {
        path: PathBuf,
        #[source]
        source: rcgen::Error,
    },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// A loaded VM CA, able to sign leaf certificates.
pub struct VmCa {
    pub(crate) key: KeyPair,
    pub(crate) cert: rcgen::Certificate,
    pem: String,
}

impl std::fmt::Debug for VmCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmCa").finish_non_exhaustive()
    }
}

fn ca_params(vm_id: &str, now: OffsetDateTime) -> Result<CertificateParams, rcgen::Error> {
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Sluice");
    dn.push(DnType::CommonName, format!("Sluice VM CA {vm_id}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(3650);
    Ok(params)
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> CaError + '_ {
    move |source| CaError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl VmCa {
    /// Loads the CA from `dir` or creates it there (dir is created with mode 0700).
    pub fn load_or_create(dir: &Path, vm_id: &str) -> Result<VmCa, CaError> {
        let key_path = dir.join("ca.key");
        let pem_path = dir.join("ca.pem");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        if key_path.exists() && pem_path.exists() {
            let key_pem = fs::read_to_string(&key_path).map_err(io_err(&key_path))?;
            let key = KeyPair::from_pem(&key_pem).map_err(|source| CaError::BadKey {
                path: key_path.clone(),
                source,
            })?;
            let pem = fs::read_to_string(&pem_path).map_err(io_err(&pem_path))?;
            let cert = ca_params(vm_id, OffsetDateTime::now_utc())?.self_signed(&key)?;
            return Ok(VmCa { key, cert, pem });
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = ca_params(vm_id, OffsetDateTime::now_utc())?.self_signed(&key)?;
        let pem = cert.pem();
        write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_new(&pem_path, pem.as_bytes(), 0o644)?;
        Ok(VmCa { key, cert, pem })
    }

    /// The CA certificate in PEM form, as persisted (what the guest must trust).
    pub fn pem(&self) -> &str {
        &self.pem
    }
}

use std::os::unix::fs::DirBuilderExt;

/// Writes a file that must not exist yet (or is replaced), created with `mode` at open time.
fn write_new(path: &Path, data: &[u8], mode: u32) -> Result<(), CaError> {
    // A half-written leftover from a crash is replaced: remove it first so O_EXCL holds.
    let _ = fs::remove_file(path);
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io_err(path))?;
    f.write_all(data).map_err(io_err(path))?;
    f.sync_all().map_err(io_err(path))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn key_is_0600_and_ca_is_reused() {
        let dir = tempfile::tempdir().unwrap();
        let vm_dir = dir.path().join("vms/a");
        let first = VmCa::load_or_create(&vm_dir, "a").unwrap();
        let mode = fs::metadata(vm_dir.join("ca.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let second = VmCa::load_or_create(&vm_dir, "a").unwrap();
        assert_eq!(first.pem(), second.pem());
        assert_eq!(first.key.public_key_der(), second.key.public_key_der());
    }
}
