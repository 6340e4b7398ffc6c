//! `sluice-initrd build` end to end.

use std::process::Command;

fn run(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_sluice-initrd"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn builds_and_appends() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n).to_string_lossy().into_owned();
    std::fs::write(p("agent"), b"agent").unwrap();
    std::fs::write(p("w.sh"), b"#!/bin/sh\n").unwrap();
    let (ok, err) = run(&[
        "build",
        "--agent",
        &p("agent"),
        "--out",
        &p("a.img"),
        "--file",
        &format!("{}:/sluice/w.sh:0755", p("w.sh")),
    ]);
    assert!(ok, "{err}");
    let entries = initrd::read_initrd(&std::fs::read(p("a.img")).unwrap()).unwrap();
    let w = entries.iter().find(|e| e.name == "sluice/w.sh").unwrap();
    assert_eq!(w.mode & 0o7777, 0o755);

    let (ok, err) = run(&[
        "build",
        "--agent",
        &p("w.sh"),
        "--out",
        &p("b.img"),
        "--append-to",
        &p("a.img"),
    ]);
    assert!(ok, "{err}");
    let b = std::fs::read(p("b.img")).unwrap();
    assert!(b.starts_with(&std::fs::read(p("a.img")).unwrap()));
    let entries = initrd::read_initrd(&b).unwrap();
    assert_eq!(
        entries
            .iter()
            .rev()
            .find(|e| e.name == "init")
            .unwrap()
            .data,
        b"#!/bin/sh\n"
    );
}

#[test]
fn bad_inputs_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    let p = |n: &str| tmp.path().join(n).to_string_lossy().into_owned();
    std::fs::write(p("agent"), b"agent").unwrap();
    for (args, want) in [
        (
            vec!["build", "--agent", &p("missing"), "--out", &p("x")],
            "missing".to_string(),
        ),
        (
            vec![
                "build",
                "--agent",
                &p("agent"),
                "--out",
                &p("x"),
                "--file",
                "a:b:c:d",
            ],
            "SRC:DEST[:MODE]".into(),
        ),
        (
            vec![
                "build",
                "--agent",
                &p("agent"),
                "--out",
                &p("x"),
                "--file",
                &format!("{}:/a:9z", p("agent")),
            ],
            "not octal".into(),
        ),
        (
            vec![
                "build",
                "--agent",
                &p("agent"),
                "--out",
                &p("x"),
                "--file",
                &format!("{}:rel/path", p("agent")),
            ],
            "rel/path".into(),
        ),
        (
            vec![
                "build",
                "--agent",
                &p("agent"),
                "--out",
                &p("x"),
                "--modules-dir",
                &p("nomods"),
                "--module",
                "vsock",
            ],
            "nomods".into(),
        ),
    ] {
        let (ok, err) = run(&args);
        assert!(!ok, "{args:?}");
        assert!(err.contains(&want), "{args:?}: {err}");
    }
}
