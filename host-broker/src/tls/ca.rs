//! The per-VM interception CA: an ECDSA P-256 key and self-signed certificate, persisted
//! under `<state_dir>/vms/<id>/{ca.key,ca.pem}` and reused across broker restarts.
//!
//! The key file is created with mode 0600 at `open(2)` time (never chmod-ed afterwards, so
//! there is no window where it is readable by others). On reload the in-memory issuer is
//! rebuilt from the *persisted* `ca.pem` (its subject, key identifier and validity) and key,
//! never from the VM id: leaves then chain to the persisted `ca.pem` whatever the id, which
//! is what lets a VM forked or restored from a snapshot under a new id keep trusting the
//! source VM's CA (see [`VmCa::copy_files`] and docs/hypeman.md).

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
    #[error("CA certificate {path} is not a valid PEM X.509 certificate: {message}")]
    BadCert { path: PathBuf, message: String },
    #[error("CA key {key} does not belong to the certificate {cert}")]
    KeyMismatch { key: PathBuf, cert: PathBuf },
    #[error("no CA to copy in {dir} (ca.key and ca.pem are both required)")]
    SourceMissing { dir: PathBuf },
    #[error("{dir} already holds a different CA; refusing to replace it (a guest may trust it)")]
    Conflict { dir: PathBuf },
    #[error("writing {path}: {message}")]
    Write { path: PathBuf, message: String },
    #[error("certificate generation failed: {0}")]
    Generate(#[from] rcgen::Error),
}

/// What [`VmCa::copy_files`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CaCopy {
    /// The source CA was written to the destination.
    Copied,
    /// The destination already held the very same CA (a retried or restored fork).
    AlreadyIdentical,
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
    /// Loads the CA from `dir` or creates it there (dir is created with mode 0700). `vm_id`
    /// only names a newly created CA; a persisted one keeps its own subject.
    pub fn load_or_create(dir: &Path, vm_id: &str) -> Result<VmCa, CaError> {
        let key_path = dir.join("ca.key");
        let pem_path = dir.join("ca.pem");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_err(dir))?;
        if key_path.exists() && pem_path.exists() {
            return load_existing(&key_path, &pem_path);
        }
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = ca_params(vm_id, OffsetDateTime::now_utc())?.self_signed(&key)?;
        let pem = cert.pem();
        write_new(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
        write_new(&pem_path, pem.as_bytes(), 0o644)?;
        Ok(VmCa { key, cert, pem })
    }

    /// Copies the CA of `from` (a VM's state dir) into `to` so the VM of `to` signs with the
    /// same CA: the key with mode 0600, the certificate 0644, each written atomically (temp
    /// file, fsync, rename), the key first so a complete `ca.pem` marks a complete copy.
    ///
    /// The source must hold a valid, matching key and certificate. A destination that
    /// already holds a complete CA is never replaced: the same CA is [`CaCopy::AlreadyIdentical`],
    /// a different one is [`CaError::Conflict`]. A half-copied destination (a crash between
    /// the two writes) is completed.
    pub fn copy_files(from: &Path, to: &Path) -> Result<CaCopy, CaError> {
        let (src_key, src_pem) = (from.join("ca.key"), from.join("ca.pem"));
        if !(src_key.is_file() && src_pem.is_file()) {
            return Err(CaError::SourceMissing {
                dir: from.to_path_buf(),
            });
        }
        // Refuse to spread a broken CA: it must load exactly as the broker would load it.
        load_existing(&src_key, &src_pem)?;
        let key = fs::read(&src_key).map_err(io_err(&src_key))?;
        let pem = fs::read(&src_pem).map_err(io_err(&src_pem))?;
        let (dst_key, dst_pem) = (to.join("ca.key"), to.join("ca.pem"));
        if dst_key.exists() && dst_pem.exists() {
            let same = fs::read(&dst_key).map_err(io_err(&dst_key))? == key
                && fs::read(&dst_pem).map_err(io_err(&dst_pem))? == pem;
            return if same {
                Ok(CaCopy::AlreadyIdentical)
            } else {
                Err(CaError::Conflict {
                    dir: to.to_path_buf(),
                })
            };
        }
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(to)
            .map_err(io_err(to))?;
        write_atomic(&dst_key, &key, 0o600)?;
        write_atomic(&dst_pem, &pem, 0o644)?;
        Ok(CaCopy::Copied)
    }

    /// The CA certificate in PEM form, as persisted (what the guest must trust).
    pub fn pem(&self) -> &str {
        &self.pem
    }
}

use std::os::unix::fs::DirBuilderExt;

/// Loads a persisted CA: the key, and the issuer rebuilt from the persisted certificate
/// (subject, key identifier, validity) after checking that the two belong together.
fn load_existing(key_path: &Path, pem_path: &Path) -> Result<VmCa, CaError> {
    let key_pem = fs::read_to_string(key_path).map_err(io_err(key_path))?;
    let key = KeyPair::from_pem(&key_pem).map_err(|source| CaError::BadKey {
        path: key_path.to_path_buf(),
        source,
    })?;
    let pem = fs::read_to_string(pem_path).map_err(io_err(pem_path))?;
    let bad_cert = |message: String| CaError::BadCert {
        path: pem_path.to_path_buf(),
        message,
    };
    let (_, block) =
        x509_parser::pem::parse_x509_pem(pem.as_bytes()).map_err(|e| bad_cert(e.to_string()))?;
    let x509 = block.parse_x509().map_err(|e| bad_cert(e.to_string()))?;
    if x509.public_key().raw != key.public_key_der().as_slice() {
        return Err(CaError::KeyMismatch {
            key: key_path.to_path_buf(),
            cert: pem_path.to_path_buf(),
        });
    }
    let params = CertificateParams::from_ca_cert_der(&block.contents.clone().into())
        .map_err(|e| bad_cert(e.to_string()))?;
    let cert = params.self_signed(&key)?;
    Ok(VmCa { key, cert, pem })
}

/// Writes `data` to `path` atomically (temp file in the same directory created with `mode`,
/// fsync, rename, fsync of the directory).
fn write_atomic(path: &Path, data: &[u8], mode: u32) -> Result<(), CaError> {
    crate::fsutil::write_atomic_mode(path, data, mode).map_err(|e| CaError::Write {
        path: path.to_path_buf(),
        message: e.to_string(),
    })
}

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
