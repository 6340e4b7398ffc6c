//! The binary's command line outside PID 1: usage and argument errors.

use std::process::Command;

fn agent(args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_guest-agent"))
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn no_subcommand_prints_usage() {
    let (code, err) = agent(&[]);
    assert_eq!(code, 64);
    assert!(err.contains("usage: guest-agent proxy"), "{err}");
}

#[test]
fn proxy_argument_errors_name_the_argument() {
    for (args, want) in [
        (&["proxy"][..], "--connect is required"),
        (&["proxy", "--connect", "tcp:1.2.3.4:5"], "tcp:1.2.3.4:5"),
        (&["proxy", "--connect"], "--connect needs a value"),
        (
            &["proxy", "--listen", "localhost", "--connect", "unix:/x"],
            "--listen localhost",
        ),
        (
            &["proxy", "--log", "loud", "--connect", "unix:/x"],
            "--log loud",
        ),
        (&["proxy", "--bogus"], "unknown argument `--bogus`"),
    ] {
        let (code, err) = agent(args);
        assert_eq!(code, 1, "{args:?}: {err}");
        assert!(err.starts_with("sluice-agent: error: "), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn a_listen_address_in_use_is_an_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let (code, err) = agent(&["proxy", "--listen", &addr, "--connect", "unix:/nonexistent"]);
    assert_eq!(code, 1, "{err}");
    assert!(err.contains(&addr), "{err}");
}
