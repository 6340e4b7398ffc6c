//! CA installation into temp roots laid out like Debian, Alpine and Fedora, checked with the
//! real `openssl` tool: hash links, bundle contents, and chain verification.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::Command;

use guest_agent::{trust, x509name};

fn openssl(args: &[&str], dir: &Path) -> String {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A self-signed CA with `subj`; returns its PEM path.
fn make_ca(dir: &Path, name: &str, subj: &str) -> PathBuf {
    openssl(
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.pem"),
            "-days",
            "2",
            "-utf8",
            "-subj",
            subj,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
        dir,
    );
    dir.join(format!("{name}.pem"))
}

/// A leaf for api.example.com signed by the CA `ca`.
fn make_leaf(dir: &Path, ca: &str) -> PathBuf {
    openssl(
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            "leaf.key",
            "-out",
            "leaf.csr",
            "-subj",
            "/CN=api.example.com",
        ],
        dir,
    );
    openssl(
        &[
            "x509",
            "-req",
            "-in",
            "leaf.csr",
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            "leaf.pem",
            "-days",
            "1",
        ],
        dir,
    );
    dir.join("leaf.pem")
}

fn der_of(pem_path: &Path) -> Vec<u8> {
    let text = std::fs::read(pem_path).unwrap();
    let certs: Vec<_> = rustls_pemfile_certs(&text);
    certs.into_iter().next().unwrap()
}

fn rustls_pemfile_certs(text: &[u8]) -> Vec<Vec<u8>> {
    // Decode via openssl to keep the test independent of the agent's own PEM parsing.
    let tmp = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(tmp.path(), text).unwrap();
    let out = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(tmp.path())
        .output()
        .unwrap();
    assert!(out.status.success());
    vec![out.stdout]
}

fn openssl_hash(pem: &Path) -> String {
    openssl(
        &["x509", "-hash", "-noout", "-in", pem.to_str().unwrap()],
        pem.parent().unwrap(),
    )
    .trim()
    .to_string()
}

#[test]
fn subject_hash_matches_openssl() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, subj) in [
        "/CN=Sluice VM CA",
        "/C=US/O=  Sluice   Test  Org /OU=VMs/CN=Sluice   VM CA vm-42",
        "/O=Grüße GmbH/CN=ÉCOLE Root",
        "/CN=mixed Case/emailAddress=Ops@Example.COM",
        "/DC=com/DC=example/CN=x",
    ]
    .iter()
    .enumerate()
    {
        let pem = make_ca(tmp.path(), &format!("ca{i}"), subj);
        let ours = x509name::subject_hash(&der_of(&pem)).unwrap();
        assert_eq!(format!("{ours:08x}"), openssl_hash(&pem), "{subj}");
    }
}

/// A root layout: (files with distro roots, symlinks, anchor dirs).
struct Layout {
    bundles: &'static [&'static str],
    links: &'static [(&'static str, &'static str)],
    anchors: &'static [&'static str],
    cert_dir: &'static str,
}

const DEBIAN: Layout = Layout {
    bundles: &["/etc/ssl/certs/ca-certificates.crt"],
    links: &[
        ("/usr/lib/ssl/certs", "/etc/ssl/certs"),
        (
            "/usr/lib/ssl/cert.pem",
            "/etc/ssl/certs/ca-certificates.crt",
        ),
    ],
    anchors: &["/usr/local/share/ca-certificates"],
    cert_dir: "/etc/ssl/certs",
};

const ALPINE: Layout = Layout {
    bundles: &["/etc/ssl/certs/ca-certificates.crt"],
    links: &[("/etc/ssl/cert.pem", "certs/ca-certificates.crt")],
    anchors: &["/usr/local/share/ca-certificates"],
    cert_dir: "/etc/ssl/certs",
};

const FEDORA: Layout = Layout {
    bundles: &["/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem"],
    links: &[
        (
            "/etc/pki/tls/certs/ca-bundle.crt",
            "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
        ),
        (
            "/etc/pki/tls/cert.pem",
            "/etc/pki/ca-trust/extracted/pem/tls-ca-bundle.pem",
        ),
        ("/etc/ssl/certs", "../pki/tls/certs"),
    ],
    anchors: &["/etc/pki/ca-trust/source/anchors"],
    cert_dir: "/etc/pki/tls/certs",
};

fn build(root: &Path, layout: &Layout, distro_root_pem: &str) {
    for b in layout.bundles {
        let p = root.join(&b[1..]);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, distro_root_pem).unwrap();
    }
    for (link, target) in layout.links {
        let p = root.join(&link[1..]);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        symlink(target, &p).unwrap();
    }
    for a in layout.anchors {
        std::fs::create_dir_all(root.join(&a[1..])).unwrap();
    }
}

fn check_layout(name: &str, layout: &Layout) {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let distro_pem_path = make_ca(&work, "distro", "/O=Distro Roots/CN=Some Public Root");
    let distro_pem = std::fs::read_to_string(&distro_pem_path).unwrap();
    let vm_ca_path = make_ca(&work, "vmca", "/O=Sluice/CN=Sluice VM CA vm-1");
    let vm_ca = std::fs::read_to_string(&vm_ca_path).unwrap();
    let leaf = make_leaf(&work, "vmca");

    let root = tmp.path().join("root");
    build(&root, layout, &distro_pem);
    let paths = trust::install(&root, std::slice::from_ref(&vm_ca)).unwrap();
    // A second boot on a persistent root must not duplicate anything.
    let again = trust::install(&root, std::slice::from_ref(&vm_ca)).unwrap();
    assert_eq!(paths, again, "{name}");
    assert_eq!(
        paths.distro_bundles.len(),
        layout.bundles.len(),
        "{name}: {paths:?}"
    );

    let vm_body = vm_ca.trim();
    let distro_body = distro_pem.trim();
    // Every bundle name a client might use (including symlinked ones) has both.
    for p in layout
        .bundles
        .iter()
        .chain(layout.links.iter().map(|(l, _)| l))
    {
        // Resolve inside the root: absolute links must not lead the test to the host's files.
        let host = guest_agent::rootfs::resolve(&root, Path::new(p)).unwrap();
        if host.is_dir() {
            continue;
        }
        let text = std::fs::read_to_string(&host).unwrap();
        assert_eq!(text.matches(vm_body).count(), 1, "{name}: {p}");
        assert_eq!(text.matches(distro_body).count(), 1, "{name}: {p}");
    }
    // Merged bundle: distro roots kept, VM CA once.
    let merged = std::fs::read_to_string(root.join("etc/sluice/ca-bundle.pem")).unwrap();
    assert_eq!(merged.matches(distro_body).count(), 1, "{name}");
    assert_eq!(merged.matches(vm_body).count(), 1, "{name}");
    // Anchors.
    for a in layout.anchors {
        let files: Vec<_> = std::fs::read_dir(root.join(&a[1..])).unwrap().collect();
        assert_eq!(files.len(), 1, "{name}: {a}");
    }
    // Hash link, named as openssl names it, in the directory the distro really uses.
    let hash = openssl_hash(&vm_ca_path);
    assert_eq!(paths.hash_links, [format!("{hash}.0")], "{name}");
    let cert_dir = root.join(&layout.cert_dir[1..]);
    assert!(cert_dir.join(format!("{hash}.0")).exists(), "{name}");

    // (verified, openssl's output): stdout says what failed, stderr why.
    let verify = |args: &[&str]| {
        let out = Command::new("openssl")
            .arg("verify")
            .args(args)
            .arg(&leaf)
            .output()
            .unwrap();
        (
            out.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ),
        )
    };
    // The leaf verifies against the merged bundle and through the hashed directory alone.
    let merged_path = root.join("etc/sluice/ca-bundle.pem");
    let (ok, out) = verify(&["-CAfile", merged_path.to_str().unwrap()]);
    assert!(ok, "{name}: {out}");
    let (ok, out) = verify(&[
        "-no-CAfile",
        "-no-CAstore",
        "-CApath",
        cert_dir.to_str().unwrap(),
    ]);
    assert!(ok, "{name}: {out}");
    // Control: without the install, the same leaf does not verify against the distro roots.
    let (ok, _) = verify(&[
        "-no-CApath",
        "-no-CAstore",
        "-CAfile",
        distro_pem_path.to_str().unwrap(),
    ]);
    assert!(!ok, "{name}: control should fail");
}

#[test]
fn debian_layout() {
    check_layout("debian", &DEBIAN);
}

#[test]
fn alpine_layout() {
    check_layout("alpine", &ALPINE);
}

#[test]
fn fedora_layout() {
    check_layout("fedora", &FEDORA);
}

#[test]
fn empty_root_gets_a_bundle_and_hash_dir() {
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("w");
    std::fs::create_dir(&work).unwrap();
    let ca = std::fs::read_to_string(make_ca(&work, "ca", "/CN=Only CA")).unwrap();
    let root = tmp.path().join("root");
    std::fs::create_dir(&root).unwrap();
    let paths = trust::install(&root, std::slice::from_ref(&ca)).unwrap();
    assert!(paths.distro_bundles.is_empty());
    let merged = std::fs::read_to_string(root.join("etc/sluice/ca-bundle.pem")).unwrap();
    assert_eq!(merged.trim(), ca.trim());
}

#[test]
fn bad_ca_input_is_rejected() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(matches!(
        trust::install(tmp.path(), &[]),
        Err(trust::TrustError::NoCa)
    ));
    let err = trust::install(tmp.path(), &["not a pem".into()]).unwrap_err();
    assert!(
        matches!(err, trust::TrustError::BadPem { index: 0 }),
        "{err}"
    );
}
