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
    // Each case: the agent file, the arguments after `--out`, what the error must name.
    let agent = p("agent");
    let cases: [(String, Vec<String>, &str); 5] = [
        (p("missing"), vec![], "missing"),
        (
            agent.clone(),
            vec!["--file".into(), "a:b:c:d".into()],
            "SRC:DEST[:MODE]",
        ),
        (
            agent.clone(),
            vec!["--file".into(), format!("{agent}:/a:9z")],
            "not octal",
        ),
        (
            agent.clone(),
            vec!["--file".into(), format!("{agent}:rel/path")],
            "rel/path",
        ),
        (
            agent.clone(),
            vec![
                "--modules-dir".into(),
                p("nomods"),
                "--module".into(),
                "vsock".into(),
            ],
            "nomods",
        ),
    ];
    let out = p("x");
    for (agent, more, want) in &cases {
        let mut args = vec!["build", "--agent", agent, "--out", &out];
        args.extend(more.iter().map(String::as_str));
        let (ok, err) = run(&args);
        assert!(!ok, "{args:?}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}
