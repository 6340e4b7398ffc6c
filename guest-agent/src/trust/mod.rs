//! Installs the VM's interception CA into a target root where real clients look for it.
//!
//! * every distro bundle that exists among openssl-probe's candidate locations (appended,
//!   once; symlinked names like Alpine's `/etc/ssl/cert.pem` are deduplicated);
//! * the anchors directories the distro tools read (`update-ca-certificates`,
//!   `update-ca-trust`), so a later regeneration keeps the CA;
//! * `/etc/ssl/certs/<subject-hash>.N` for OpenSSL's hashed-directory lookup;
//! * a merged bundle, distro roots plus the VM CA, that the environment points runtimes at
//!   (a bundle holding only the Sluice CA would break every passed-through host);
//! * Java's default trust stores (JKS `cacerts`, written here in Rust: no `keytool`) and a
//!   JKS store of our own that `JAVA_TOOL_OPTIONS` names ([`jks`]);
//! * Python `certifi` bundles installed in the root ([`certifi`]).
//!
//! On a read-only root every write goes through [`overlay::Stager`]: a tmpfs copy is
//! bind-mounted over the file or directory instead.

pub mod certifi;
pub mod jks;
pub mod overlay;

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;
use tracing::{info, warn};

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
/// The agent's own directory in the root.
pub const SLUICE_DIR: &str = "/etc/sluice";
/// JKS store (Java roots or distro roots, plus the VM CA) that JAVA_TOOL_OPTIONS names.
pub const JAVA_STORE: &str = "/etc/sluice/java-cacerts.jks";
/// Password of every JKS store the agent writes (the JDK's and Debian's default).
pub const JAVA_STORE_PASSWORD: &str = jks::DEFAULT_PASSWORD;
/// Alias of the (first) VM CA in Java stores; further CAs get `-1`, `-2`, ...
pub const JAVA_ALIAS: &str = "sluice-vm-ca";
/// Where a read-only root's overlays are staged (a tmpfs that survives the root switch).
pub const STAGING: &str = "/run/sluice/trust";

/// Java default trust stores, inside the root (`*` within one component).
const JAVA_STORES: &[&str] = &[
    "/etc/ssl/certs/java/cacerts", // Debian, Ubuntu (ca-certificates-java)
    "/etc/pki/ca-trust/extracted/java/cacerts", // RHEL, Fedora
    "/etc/pki/java/cacerts",
    "/usr/lib/jvm/*/lib/security/cacerts", // distro JDKs (Debian: a link to the first)
    "/usr/lib/jvm/*/jre/lib/security/cacerts", // Java 8
    "/opt/java/*/lib/security/cacerts",    // eclipse-temurin images
    "/opt/*/lib/security/cacerts",
    "/usr/local/openjdk*/lib/security/cacerts", // old openjdk images
];

/// Where the CA ended up, as paths inside the target root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrustPaths {
    pub bundle: PathBuf,
    pub cert_dir: PathBuf,
    pub ca_file: PathBuf,
    /// The JKS store JAVA_TOOL_OPTIONS points at (distro roots + VM CA).
    pub java_store: PathBuf,
    /// Distro bundles the CA was appended to (paths inside the root, symlinks resolved).
    pub distro_bundles: Vec<PathBuf>,
    /// Java default stores holding the CA (inside the root, symlinks resolved).
    pub java_stores: Vec<PathBuf>,
    /// certifi bundles holding the CA (inside the root, symlinks resolved).
    pub certifi_bundles: Vec<PathBuf>,
    /// `<hash>.N` links created in [`CERT_DIR`].
    pub hash_links: Vec<String>,
    /// Files and directories a tmpfs copy was mounted over (read-only root), inside the root.
    pub overlaid: Vec<PathBuf>,
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
    #[error("{path}: JKS store: {source}")]
    Jks {
        path: PathBuf,
        #[source]
        source: jks::JksError,
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
        let ders: Vec<_> = CertificateDer::pem_slice_iter(pem.as_bytes())
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

/// How [`install_with`] writes.
#[derive(Debug, Clone)]
pub struct Options {
    /// Host directory for read-only-root overlays (must be writable).
    pub staging: PathBuf,
    /// How a staged copy is mounted over the original.
    pub binder: overlay::Binder,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            staging: STAGING.into(),
            binder: overlay::bind_mount,
        }
    }
}

/// Installs `ca_pems` into `root` (use `/` for the running system).
pub fn install(root: &Path, ca_pems: &[String]) -> Result<TrustPaths, TrustError> {
    install_with(root, ca_pems, &Options::default())
}

/// The path inside `root` of a host path under it.
fn inside(root: &Path, host: &Path) -> PathBuf {
    match host.strip_prefix(root) {
        Ok(rel) => Path::new("/").join(rel),
        Err(_) => host.to_path_buf(),
    }
}

/// Appends the CAs missing from the PEM bundle at `host`. Returns the original text.
fn append_missing(
    stager: &mut overlay::Stager,
    host: &Path,
    cas: &[Ca],
) -> Result<String, TrustError> {
    let original = std::fs::read_to_string(host).map_err(io_err(host))?;
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
        stager
            .write(host, text.as_bytes(), 0o644)
            .map_err(io_err(host))?;
    }
    Ok(original)
}

/// Java aliases for the CAs.
fn java_alias(i: usize) -> String {
    if i == 0 {
        JAVA_ALIAS.to_string()
    } else {
        format!("{JAVA_ALIAS}-{i}")
    }
}

fn is_our_alias(a: &str) -> bool {
    a == JAVA_ALIAS
        || a.strip_prefix(JAVA_ALIAS)
            .and_then(|r| r.strip_prefix('-'))
            .is_some_and(|n| n.parse::<u32>().is_ok())
}

/// `ks` without any earlier VM CA, plus `cas`.
fn with_cas(mut ks: jks::Keystore, cas: &[Ca], now_ms: u64) -> jks::Keystore {
    ks.remove_where(is_our_alias);
    for (i, ca) in cas.iter().enumerate() {
        ks.set_trusted(&java_alias(i), &ca.der, now_ms);
    }
    ks
}

/// Does `ks` already hold exactly `cas` under our aliases?
fn has_cas(ks: &jks::Keystore, cas: &[Ca]) -> bool {
    let ours = ks.aliases().iter().filter(|a| is_our_alias(a)).count();
    ours == cas.len()
        && cas
            .iter()
            .enumerate()
            .all(|(i, ca)| ks.cert(&java_alias(i)) == Some(ca.der.as_slice()))
}

/// Java default stores present in `root`: (inside, host), deduplicated after resolution.
fn find_java_stores(root: &Path) -> Vec<(PathBuf, PathBuf)> {
    let mut out: Vec<(PathBuf, PathBuf)> = Vec::new();
    for pattern in JAVA_STORES {
        for p in certifi::expand(root, pattern) {
            let Ok(host) = rootfs::resolve(root, &p) else {
                continue;
            };
            if host.is_file() && !out.iter().any(|(_, h)| *h == host) {
                out.push((inside(root, &host), host));
            }
        }
    }
    out
}

/// Adds the CAs to every JKS default store; returns (stores updated, the first store's
/// original entries for our own store).
fn install_java(
    root: &Path,
    stager: &mut overlay::Stager,
    cas: &[Ca],
    now_ms: u64,
) -> Result<(Vec<PathBuf>, Option<jks::Keystore>), TrustError> {
    let mut updated = Vec::new();
    let mut base = None;
    for (inside_path, host) in find_java_stores(root) {
        let data = std::fs::read(&host).map_err(io_err(&host))?;
        if !jks::is_jks(&data) {
            let kind = if jks::is_pkcs12(&data) {
                "a PKCS#12"
            } else {
                "an unknown"
            };
            warn!(
                "{}: {kind} Java store, left as is (JAVA_TOOL_OPTIONS names {JAVA_STORE})",
                inside_path.display()
            );
            continue;
        }
        let ks = match jks::Keystore::parse(&data, JAVA_STORE_PASSWORD) {
            Ok(ks) => ks,
            Err(e) => {
                warn!("{}: {e}; left as is", inside_path.display());
                continue;
            }
        };
        if base.is_none() {
            let mut original = ks.clone();
            original.remove_where(is_our_alias);
            base = Some(original);
        }
        if !has_cas(&ks, cas) {
            let bytes = with_cas(ks, cas, now_ms).to_bytes(JAVA_STORE_PASSWORD);
            stager.write(&host, &bytes, 0o644).map_err(io_err(&host))?;
        }
        updated.push(inside_path);
    }
    Ok((updated, base))
}

/// A store of the PEM roots in `pem` (the distro bundle), certificates that do not parse
/// skipped.
fn store_from_pem(pem: &str, now_ms: u64) -> jks::Keystore {
    let mut ks = jks::Keystore::new();
    let ders = CertificateDer::pem_slice_iter(pem.as_bytes()).filter_map(|c| c.ok());
    for (i, der) in ders.enumerate() {
        ks.set_trusted(&format!("distro-{i}"), der.as_ref(), now_ms);
    }
    ks
}

/// Installs `ca_pems` into `root`, staging writes per `opts` where the root is read-only.
pub fn install_with(
    root: &Path,
    ca_pems: &[String],
    opts: &Options,
) -> Result<TrustPaths, TrustError> {
    let cas = parse_cas(ca_pems)?;
    let ca_text: String = cas.iter().map(|c| c.pem.as_str()).collect();
    let mut stager = overlay::Stager::new(opts.staging.clone(), opts.binder);
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    // A directory of ours: in the root, or on the staging tmpfs when the root is read-only
    // and does not have it.
    let own_dir = |stager: &mut overlay::Stager, dir: &str, staged: &str| {
        let host = rootfs::resolve(root, Path::new(dir)).map_err(io_err(dir))?;
        if stager.ensure_dir(&host).map_err(io_err(&host))? {
            Ok::<_, TrustError>((inside(root, &host), host))
        } else {
            let d = opts.staging.join(staged);
            std::fs::create_dir_all(&d).map_err(io_err(&d))?;
            Ok((d.clone(), d))
        }
    };

    // 1. Distro bundles: append once; remember the first one's original roots.
    let mut distro_roots: Option<String> = None;
    let mut distro_bundles = Vec::new();
    for (inside_path, host) in find_distro_bundles(root) {
        let original = append_missing(&mut stager, &host, &cas)?;
        if distro_roots.is_none() {
            // Keep only the roots the distro shipped, not a CA we appended on an earlier boot.
            let mut roots = original;
            for c in &cas {
                roots = roots.replace(c.pem.trim(), "");
            }
            distro_roots = Some(roots);
        }
        distro_bundles.push(inside_path);
    }

    // 2. Anchors for the distro tools.
    for (dir, name) in ANCHORS {
        let host_dir = rootfs::resolve(root, Path::new(dir)).map_err(io_err(*dir))?;
        if host_dir.is_dir() {
            let path = host_dir.join(name);
            let current = std::fs::read_to_string(&path).unwrap_or_default();
            if current != ca_text {
                stager
                    .write(&path, ca_text.as_bytes(), 0o644)
                    .map_err(io_err(&path))?;
            }
        }
    }

    // 3. The CA alone, and the merged bundle.
    let (own_inside, own_host) = own_dir(&mut stager, SLUICE_DIR, "etc-sluice")?;
    let file_name = |p: &str| {
        Path::new(p)
            .file_name()
            .map(PathBuf::from)
            .unwrap_or_default()
    };
    let ca_host = own_host.join(file_name(CA_FILE));
    stager
        .write(&ca_host, ca_text.as_bytes(), 0o644)
        .map_err(io_err(&ca_host))?;
    let mut merged = distro_roots.clone().unwrap_or_default();
    if !merged.is_empty() && !merged.ends_with('\n') {
        merged.push('\n');
    }
    merged.push_str(&ca_text);
    let bundle_host = own_host.join(file_name(MERGED_BUNDLE));
    stager
        .write(&bundle_host, merged.as_bytes(), 0o644)
        .map_err(io_err(&bundle_host))?;

    // 4. Hashed directory entries.
    let (cert_inside, cert_dir) = own_dir(&mut stager, CERT_DIR, "certs")?;
    let mut hash_links = Vec::new();
    for (i, ca) in cas.iter().enumerate() {
        let file = format!("sluice-ca-{i}.pem");
        let file_path = cert_dir.join(&file);
        if std::fs::read_to_string(&file_path).ok().as_deref() != Some(ca.pem.as_str()) {
            stager
                .write(&file_path, ca.pem.as_bytes(), 0o644)
                .map_err(io_err(&file_path))?;
        }
        let hash = x509name::subject_hash(&ca.der)
            .map_err(|source| TrustError::BadCert { index: i, source })?;
        let link = hash_link_name(&cert_dir, hash, &file).map_err(io_err(&cert_dir))?;
        let link_path = cert_dir.join(&link);
        if std::fs::symlink_metadata(&link_path).is_err() {
            stager
                .symlink(Path::new(&file), &link_path)
                .map_err(io_err(&link_path))?;
        }
        hash_links.push(link);
    }

    // 5. Java: the default stores, and ours (the first JKS store's entries, or the distro
    //    PEM roots when there is none, plus the VM CA).
    let (java_stores, base) = install_java(root, &mut stager, &cas, now_ms)?;
    let base =
        base.unwrap_or_else(|| store_from_pem(distro_roots.as_deref().unwrap_or(""), now_ms));
    let java_host = own_host.join(file_name(JAVA_STORE));
    let current = std::fs::read(&java_host)
        .ok()
        .and_then(|d| jks::Keystore::parse(&d, JAVA_STORE_PASSWORD).ok());
    let wanted = with_cas(base, &cas, now_ms);
    // Rewrite only when the entries changed (timestamps aside) so a persistent root is not
    // rewritten on every boot.
    let same = current.as_ref().is_some_and(|c| {
        has_cas(c, &cas)
            && c.aliases() == wanted.aliases()
            && c.trusted_certs().eq(wanted.trusted_certs())
    });
    if !same {
        stager
            .write(&java_host, &wanted.to_bytes(JAVA_STORE_PASSWORD), 0o644)
            .map_err(io_err(&java_host))?;
    }

    // 6. certifi bundles, unless the image opted out.
    let mut certifi_bundles = Vec::new();
    let opted_out = rootfs::resolve(root, Path::new(certifi::OPT_OUT))
        .is_ok_and(|p| std::fs::symlink_metadata(p).is_ok());
    if opted_out {
        info!(
            "{} exists: certifi bundles left as they are",
            certifi::OPT_OUT
        );
    } else {
        for (_, host) in certifi::find(root) {
            if distro_bundles.contains(&inside(root, &host)) {
                continue; // a link to the distro bundle (Debian's python3-certifi)
            }
            append_missing(&mut stager, &host, &cas)?;
            certifi_bundles.push(inside(root, &host));
        }
    }

    let overlaid: Vec<PathBuf> = stager.overlaid.iter().map(|h| inside(root, h)).collect();
    let show = |v: &[PathBuf]| {
        v.iter()
            .map(|p| p.display().to_string())
            .collect::<Vec<_>>()
            .join(" ")
    };
    let mut stores = distro_bundles.clone();
    stores.extend(java_stores.iter().cloned());
    stores.extend(certifi_bundles.iter().cloned());
    info!("VM CA trusted by: {}", show(&stores));
    if !overlaid.is_empty() {
        info!(
            "read-only root: tmpfs copies mounted over {}",
            show(&overlaid)
        );
    }

    Ok(TrustPaths {
        bundle: own_inside.join(file_name(MERGED_BUNDLE)),
        cert_dir: cert_inside,
        ca_file: own_inside.join(file_name(CA_FILE)),
        java_store: own_inside.join(file_name(JAVA_STORE)),
        distro_bundles,
        java_stores,
        certifi_bundles,
        hash_links,
        overlaid,
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
