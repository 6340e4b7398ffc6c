//! Builds initrds from fake kernel module trees and reads them back.

mod common;

use std::path::Path;
use std::process::Command;

use common::module_order;
use initrd::{cpio::S_IFREG, read_initrd, InitrdBuilder, InitrdError};
use object::write::Object;
use object::{Architecture, BinaryFormat, Endianness, SectionKind};

/// A minimal relocatable ELF with a `.modinfo` section, like a real `.ko`.
fn fake_ko(modinfo: &str) -> Vec<u8> {
    let mut obj = Object::new(BinaryFormat::Elf, Architecture::X86_64, Endianness::Little);
    let id = obj.add_section(Vec::new(), b".modinfo".to_vec(), SectionKind::ReadOnlyData);
    obj.append_section_data(id, modinfo.replace(';', "\0").as_bytes(), 1);
    obj.write().unwrap()
}

fn put(root: &Path, rel: &str, bytes: &[u8]) {
    let p = root.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, bytes).unwrap();
}

/// A modules tree shaped like Debian's: virtio transport chain plus ext4 with a softdep.
fn fake_tree(root: &Path) {
    let k = "kernel/drivers/virtio";
    put(
        root,
        &format!("{k}/virtio_ring.ko"),
        &fake_ko("license=GPL;depends=;"),
    );
    put(
        root,
        &format!("{k}/virtio.ko"),
        &fake_ko("depends=virtio_ring;"),
    );
    put(
        root,
        &format!("{k}/virtio_pci_legacy_dev.ko"),
        &fake_ko("depends=;"),
    );
    put(
        root,
        &format!("{k}/virtio_pci_modern_dev.ko"),
        &fake_ko("depends=;"),
    );
    put(
        root,
        &format!("{k}/virtio_pci.ko"),
        &fake_ko("depends=virtio_pci_legacy_dev,virtio_ring,virtio,virtio_pci_modern_dev;"),
    );
    put(root, "kernel/net/vmw_vsock/vsock.ko", &fake_ko("depends=;"));
    put(
        root,
        "kernel/net/vmw_vsock/vmw_vsock_virtio_transport_common.ko",
        &fake_ko("depends=vsock,virtio_ring,virtio;"),
    );
    put(
        root,
        "kernel/net/vmw_vsock/vmw_vsock_virtio_transport.ko",
        &fake_ko("depends=vmw_vsock_virtio_transport_common,virtio,vsock,virtio_ring;"),
    );
    put(root, "kernel/lib/crc16.ko", &fake_ko("depends=;"));
    put(root, "kernel/fs/jbd2/jbd2.ko", &fake_ko("depends=;"));
    put(root, "kernel/fs/mbcache.ko", &fake_ko("depends=;"));
    put(
        root,
        "kernel/crypto/crc32c_generic.ko",
        &fake_ko("depends=;"),
    );
    put(
        root,
        "kernel/fs/ext4/ext4.ko",
        &fake_ko("depends=mbcache,jbd2,crc16;softdep=pre: crc32c-intel crc32c;"),
    );
    put(root, "kernel/crypto/crc32c-intel.ko", &fake_ko("depends=;"));
    put(
        root,
        "modules.builtin",
        b"kernel/drivers/block/virtio_blk.ko\n",
    );
}

fn agent(dir: &Path) -> std::path::PathBuf {
    let p = dir.join("agent");
    std::fs::write(&p, b"#!agent binary\n").unwrap();
    p
}

fn pos(order: &[String], name: &str) -> usize {
    order
        .iter()
        .position(|n| n == name)
        .unwrap_or_else(|| panic!("{name} missing from {order:?}"))
}

#[test]
fn modules_are_ordered_after_their_dependencies() {
    let tmp = tempfile::tempdir().unwrap();
    let mods = tmp.path().join("lib/modules/6.1.0-test");
    fake_tree(&mods);
    let image = InitrdBuilder::new(agent(tmp.path()))
        .kernel_modules(
            &mods,
            &[
                "vmw_vsock_virtio_transport",
                "virtio-pci",
                "virtio_blk",
                "ext4",
            ],
        )
        .build()
        .unwrap();
    let order = module_order(&image);
    // Each module appears once, after everything it depends on.
    let deps: &[(&str, &[&str])] = &[
        ("virtio", &["virtio_ring"]),
        (
            "virtio_pci",
            &["virtio_pci_legacy_dev", "virtio_pci_modern_dev", "virtio"],
        ),
        ("vmw_vsock_virtio_transport_common", &["vsock", "virtio"]),
        (
            "vmw_vsock_virtio_transport",
            &["vmw_vsock_virtio_transport_common"],
        ),
        ("ext4", &["mbcache", "jbd2", "crc16", "crc32c-intel"]),
    ];
    for (m, ds) in deps {
        for d in *ds {
            assert!(pos(&order, d) < pos(&order, m), "{d} before {m}: {order:?}");
        }
    }
    let mut dedup = order.clone();
    dedup.sort();
    dedup.dedup();
    assert_eq!(dedup.len(), order.len(), "duplicates in {order:?}");
    // virtio_blk is built in: no .ko, no order line.
    assert!(!order.iter().any(|n| n == "virtio_blk"));
    // The .ko files sit at their relative paths under /lib/modules.
    let entries = read_initrd(&image).unwrap();
    assert!(entries
        .iter()
        .any(|e| e.name == "lib/modules/kernel/fs/ext4/ext4.ko" && e.mode == S_IFREG | 0o644));
}

#[test]
fn missing_module_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let mods = tmp.path().join("mods");
    fake_tree(&mods);
    let err = InitrdBuilder::new(agent(tmp.path()))
        .kernel_modules(&mods, &["virtio", "no_such_mod"])
        .build()
        .unwrap_err();
    assert!(matches!(&err, InitrdError::MissingModule { name, .. } if name == "no_such_mod"));
    assert!(err.to_string().contains("no_such_mod"), "{err}");

    // A missing dependency names both the dependency and who needs it.
    put(&mods, "kernel/extra/needy.ko", &fake_ko("depends=ghost;"));
    let err = InitrdBuilder::new(agent(tmp.path()))
        .kernel_modules(&mods, &["needy"])
        .build()
        .unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("ghost") && msg.contains("needy"), "{msg}");

    // Optional names are skipped when absent.
    let image = InitrdBuilder::new(agent(tmp.path()))
        .optional_kernel_modules(&mods, &["no_such_mod", "virtio"])
        .build()
        .unwrap();
    assert_eq!(module_order(&image), ["virtio_ring", "virtio"]);
}

#[test]
fn missing_file_is_named() {
    let tmp = tempfile::tempdir().unwrap();
    let err = InitrdBuilder::new(agent(tmp.path()))
        .file(tmp.path().join("nope.bin"), "/bin/nope", 0o755)
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("nope.bin"), "{err}");
    let err = InitrdBuilder::new(tmp.path().join("no-agent"))
        .build()
        .unwrap_err();
    assert!(err.to_string().contains("no-agent"), "{err}");
}

fn full_builder(tmp: &Path) -> InitrdBuilder {
    let mods = tmp.join("mods");
    fake_tree(&mods);
    let extra = tmp.join("workload");
    std::fs::write(&extra, b"workload bytes").unwrap();
    InitrdBuilder::new(agent(tmp))
        .kernel_modules(&mods, &["vmw_vsock_virtio_transport", "ext4"])
        .file(&extra, "/sluice/bin/workload", 0o755)
        .file_bytes(b"[Service]\n".to_vec(), "/sluice/units/x.service", 0o644)
}

#[test]
fn rebuild_is_byte_identical() {
    let tmp = tempfile::tempdir().unwrap();
    let a = full_builder(tmp.path()).build().unwrap();
    // Touch the inputs: new mtimes must not change the output.
    let extra = tmp.path().join("workload");
    std::fs::write(&extra, b"workload bytes").unwrap();
    let b = full_builder(tmp.path()).build().unwrap();
    assert_eq!(a, b);
    // gzip header: no mtime (bytes 4..8 zero), no FNAME flag.
    assert_eq!(&a[..3], &[0x1f, 0x8b, 8]);
    assert_eq!(a[3] & 0x08, 0);
    assert_eq!(&a[4..8], &[0, 0, 0, 0]);
}

#[test]
fn cpio_tool_lists_the_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let image = full_builder(tmp.path()).build().unwrap();
    let raw = {
        use std::io::Read;
        let mut d = flate2::read::GzDecoder::new(&image[..]);
        let mut v = Vec::new();
        d.read_to_end(&mut v).unwrap();
        v
    };
    let path = tmp.path().join("img.cpio");
    std::fs::write(&path, &raw).unwrap();
    let out = Command::new("cpio")
        .args(["-t", "-v", "--quiet", "-F"])
        .arg(&path)
        .output()
        .expect("cpio is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing = String::from_utf8(out.stdout).unwrap();
    let names: Vec<&str> = listing
        .lines()
        .map(|l| l.split_whitespace().last().unwrap())
        .collect();
    for want in [
        "dev",
        "dev/console",
        "init",
        "lib",
        "lib/modules",
        "lib/modules/kernel/fs/ext4/ext4.ko",
        "lib/modules/sluice.order",
        "sluice",
        "sluice/bin/workload",
        "sluice/units/x.service",
    ] {
        assert!(names.contains(&want), "{want} not in {names:?}");
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(names, sorted, "entries are sorted");
    // Parents come before children, and /init is executable, owned by root, dated 1970.
    let init = listing.lines().find(|l| l.ends_with(" init")).unwrap();
    assert!(init.starts_with("-rwxr-xr-x"), "{init}");
    assert!(init.contains("root") && init.contains("1970"), "{init}");
    let console = listing
        .lines()
        .find(|l| l.ends_with("dev/console"))
        .unwrap();
    assert!(console.starts_with("crw-------"), "{console}");

    // The raw bytes extract with the stock tool too.
    let dest = tmp.path().join("x");
    std::fs::create_dir(&dest).unwrap();
    let st = Command::new("cpio")
        .args(["-i", "-d", "--quiet", "--no-absolute-filenames", "-F"])
        .arg(&path)
        .arg("sluice/bin/workload")
        .current_dir(&dest)
        .status()
        .unwrap();
    assert!(st.success());
    assert_eq!(
        std::fs::read(dest.join("sluice/bin/workload")).unwrap(),
        b"workload bytes"
    );
}

#[test]
fn append_adds_a_second_segment_that_wins() {
    let tmp = tempfile::tempdir().unwrap();
    let base = InitrdBuilder::new(agent(tmp.path()))
        .file_bytes(b"distro".to_vec(), "/etc/distro", 0o644)
        .build()
        .unwrap();
    let mut odd = base.clone();
    odd.push(0); // unaligned input still works
    let newer = tmp.path().join("agent2");
    std::fs::write(&newer, b"new agent").unwrap();
    let image = InitrdBuilder::new(&newer).append_to(&odd).unwrap();
    assert!(image.starts_with(&base));
    let entries = read_initrd(&image).unwrap();
    assert!(entries.iter().any(|e| e.name == "etc/distro"));
    let last_init = entries.iter().rev().find(|e| e.name == "init").unwrap();
    assert_eq!(last_init.data, b"new agent");
}
