//! Installs the VM's interception CA into a target root where real clients look for it.
//!
//! * every distro bundle that exists among openssl-probe's candidate locations (appended,
//!   once; symlinked names like Alpine's `/etc/ssl/cert.pem` are deduplicated);
//! * the anchors directories the distro tools read (`update-ca-certificates`,
//!   `update-ca-trust`), so a later regeneration keeps the CA;
//! * `/etc/ssl/certs/<subject-hash>.N` for OpenSSL's hashed-directory lookup;
//! * a merged bundle, distro roots plus the VM CA, that the environment points runtimes at
//!   (a bundle holding only the Sluice CA would break every passed-through host).

use std::path::{Path, PathBuf};

use crate::rootfs;
use crate::x509name;

/// Directories openssl-probe 0.1 searches (`openssl_probe::candidate_cert_dirs`, which only
/// looks at the running system's `/`; here they are probed inside the target root).
const CERT_DIRS: &[&str] = &[
    "/var/ssl",
    "/usr/share/ssl",
    "/usr/local/ssl",
    "/usr/local/openssl",
    "/usr/local/etc/openssl",
    "/usr/local/share",
    "/usr/lib/ssl",
    "/usr/ssl",
    "/etc/openssl",
    "/etc/pki/ca-trust/extracted/pem",
    "/etc/pki/tls",
    "/etc/ssl",
    "/etc/certs",
    "/opt/etc/ssl",
];

/// Bundle file names openssl-probe 0.1 tries in each of [`CERT_DIRS`].
const BUNDLE_NAMES: &[&str] = &[
    "cert.pem",
    "certs.pem",
    "ca-bundle.pem",
    "cacert.pem",
    "ca-certificates.crt",
    "certs/ca-certificates.crt",
    "certs/ca-root-nss.crt",
    "certs/ca-bundle.crt",
    "CARootCertificates.pem",
    "tls-ca-bundle.pem",
];

/// Anchor directories read by distro trust tools, with the file name to use in each.
const ANCHORS: &[(&str, &str)] = &[
    ("/usr/local/share/ca-certificates", "sluice.crt"), // Debian, Ubuntu, Alpine
    ("/etc/pki/ca-trust/source/anchors", "sluice.pem"), // RHEL, Fedora
    ("/etc/pki/trust/anchors", "sluice.pem"),           // SUSE
];

/// OpenSSL's hashed certificate directory.
pub const CERT_DIR: &str = "/etc/ssl/certs";
/// Merged bundle (distro roots + VM CA) the environment points to.
pub const MERGED_BUNDLE: &str = "/etc/sluice/ca-bundle.pem";
/// The VM CA alone (for tools that add to their own roots, e.g. NODE_EXTRA_CA_CERTS).
pub const CA_FILE: &str = "/etc/sluice/sluice-ca.pem";

/// Where the CA ended up, as paths inside the target root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustPaths {
    pub bundle: PathBuf,
    pub cert_dir: PathBuf,
    pub ca_file: PathBuf,
    /// Distro bundles the CA was appended to (paths inside the root, symlinks resolved).
    pub distro_bundles: Vec<PathBuf>,
    /// `<hash>.N` links created in [`CERT_DIR`].
    pub hash_links: Vec<String>,
}

/// Why the CA could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error("GuestConfig holds no CA certificate")]
    NoCa,
    #[error("CA certificate #{index} is not a PEM certificate")]
    BadPem { index: usize },
    #[error("CA certificate #{index}: {source}")]
    BadCert {
        index: usize,
        #[source]
        source: x509name::DerError,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io_err(path: impl Into<PathBuf>) -> impl FnOnce(std::io::Error) -> TrustError {
    let path = path.into();
    move |source| TrustError::Io { path, source }
}

/// One parsed CA: normalised PEM text and DER.
#[derive(Debug)]
struct Ca {
    pem: String,
    der: Vec<u8>,
}

fn parse_cas(pems: &[String]) -> Result<Vec<Ca>, TrustError> {
    if pems.is_empty() {
        return Err(TrustError::NoCa);
    }
    let mut out = Vec::new();
    for (index, pem) in pems.iter().enumerate() {
        let ders: Vec<_> = rustls_pemfile::certs(&mut pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|_| TrustError::BadPem { index })?;
        if ders.is_empty() {
            return Err(TrustError::BadPem { index });
        }
        for der in ders {
            let der = der.as_ref().to_vec();
            // Fail early on a certificate we cannot hash.
            x509name::subject_hash(&der).map_err(|source| TrustError::BadCert { index, source })?;
            out.push(Ca {
                pem: encode_pem(&der),
                der,
            });
        }
    }
    Ok(out)
}

fn encode_pem(der: &[u8]) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD.encode(der);
    let mut s = String::from("-----BEGIN CERTIFICATE-----\n");
    for line in b64.as_bytes().chunks(64) {
        s.push_str(std::str::from_utf8(line).unwrap_or_default());
        s.push('\n');
    }
    s.push_str("-----END CERTIFICATE-----\n");
    s
}

/// The distro bundles present in `root`, deduplicated after symlink resolution, in
/// openssl-probe's search order. Returned as (path inside root, host path).
fn find_distro_bundles(root: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut seen = Vec::new();
    let mut out = Vec::new();
    for dir in CERT_DIRS {
        for name in BUNDLE_NAMES {
            let inner = Path::new(dir).join(name);
            let Ok(host) = rootfs::resolve(root, &inner) else {
                continue;
            };
            if host.is_file() && !seen.contains(&host) {
                seen.push(host.clone());
                let inside = Path::new("/").join(host.strip_prefix(root).unwrap_or(&host));
                out.push((inside, host));
            }
        }
    }
    out
}

/// Installs `ca_pems` into `root` (use `/` for the running system).
pub fn install(root: &Path, ca_pems: &[String]) -> Result<TrustPaths, TrustError> {
    let cas = parse_cas(ca_pems)?;
    let ca_text: String = cas.iter().map(|c| c.pem.as_str()).collect();

    // 1. Distro bundles: append once; remember the first one's original roots.
    let mut distro_roots: Option<String> = None;
    let mut distro_bundles = Vec::new();
    for (inside, host) in find_distro_bundles(root) {
        let original = std::fs::read_to_string(&host).map_err(io_err(&host))?;
        let missing: String = cas
            .iter()
            .filter(|c| !original.contains(c.pem.trim()))
            .map(|c| c.pem.as_str())
            .collect();
        if !missing.is_empty() {
            let mut text = original.clone();
            if !text.is_empty() && !text.ends_with('\n') {
                text.push('\n');
            }
            text.push_str(&missing);
            std::fs::write(&host, text).map_err(io_err(&host))?;
        }
        if distro_roots.is_none() {
            // Keep only the roots the distro shipped, not a CA we appended on an earlier boot.
            let mut roots = original;
            for c in &cas {
                roots = roots.replace(c.pem.trim(), "");
            }
            distro_roots = Some(roots);
        }
        distro_bundles.push(inside);
    }

    // 2. Anchors for the distro tools.
    for (dir, name) in ANCHORS {
        let host_dir = rootfs::resolve(root, Path::new(dir)).map_err(io_err(*dir))?;
        if host_dir.is_dir() {
            let path = host_dir.join(name);
            std::fs::write(&path, &ca_text).map_err(io_err(&path))?;
        }
    }

    // 3. The CA alone, and the merged bundle.
    rootfs::write(root, Path::new(CA_FILE), ca_text.as_bytes(), 0o644).map_err(io_err(CA_FILE))?;
    let mut merged = distro_roots.unwrap_or_default();
    if !merged.is_empty() && !merged.ends_with('\n') {
        merged.push('\n');
    }
    merged.push_str(&ca_text);
    rootfs::write(root, Path::new(MERGED_BUNDLE), merged.as_bytes(), 0o644)
        .map_err(io_err(MERGED_BUNDLE))?;

    // 4. Hashed directory entries.
    let cert_dir = rootfs::resolve(root, Path::new(CERT_DIR)).map_err(io_err(CERT_DIR))?;
    std::fs::create_dir_all(&cert_dir).map_err(io_err(&cert_dir))?;
    let mut hash_links = Vec::new();
    for (i, ca) in cas.iter().enumerate() {
        let file = format!("sluice-ca-{i}.pem");
        let file_path = cert_dir.join(&file);
        std::fs::write(&file_path, &ca.pem).map_err(io_err(&file_path))?;
        let hash = x509name::subject_hash(&ca.der)
            .map_err(|source| TrustError::BadCert { index: i, source })?;
        let link = hash_link_name(&cert_dir, hash, &file).map_err(io_err(&cert_dir))?;
        let link_path = cert_dir.join(&link);
        if std::fs::symlink_metadata(&link_path).is_err() {
            std::os::unix::fs::symlink(&file, &link_path).map_err(io_err(&link_path))?;
        }
        hash_links.push(link);
    }

    Ok(TrustPaths {
        bundle: MERGED_BUNDLE.into(),
        cert_dir: CERT_DIR.into(),
        ca_file: CA_FILE.into(),
        distro_bundles,
        hash_links,
    })
}

/// The first `<hash>.N` that is free or already points at `file`.
fn hash_link_name(dir: &Path, hash: u32, file: &str) -> std::io::Result<String> {
    for n in 0..100 {
        let name = format!("{hash:08x}.{n}");
        match std::fs::read_link(dir.join(&name)) {
            Ok(target) if target == Path::new(file) => return Ok(name),
            Ok(_) => continue,
            Err(_) if dir.join(&name).exists() => continue, // a regular file
            Err(_) => return Ok(name),
        }
    }
    Err(std::io::Error::other(format!(
        "no free {hash:08x}.N name in {}",
        dir.display()
    )))
}
