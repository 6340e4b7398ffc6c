//! Running a `command` credential source: bounded in time and output, never through a shell
//! unless the policy says `shell`, its output never logged.
//!
//! The child gets no stdin and its own process group; stderr is discarded (a secret-manager
//! CLI may print the value there on some errors, and nothing of the child's output may reach
//! a log). On timeout the whole process group is killed, so a shell pipeline's children do
//! not linger holding the pipe open. Blocking: call from a blocking context
//! (`spawn_blocking`) on a runtime.

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use zeroize::Zeroizing;

use super::value::SecretValue;
use crate::policy::CommandSource;

/// How often the child is polled for exit while its output is read.
const POLL: Duration = Duration::from_millis(10);

/// Why a command produced no value. Never holds any of its output.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandFailure {
    #[error("cannot start {program}: {reason}")]
    Spawn { program: String, reason: String },
    #[error("{program} did not finish within {secs} s (killed)")]
    Timeout { program: String, secs: u64 },
    #[error("{program} exited with {status}")]
    Status { program: String, status: String },
    #[error("{program} wrote more than {max} bytes to stdout")]
    TooLarge { program: String, max: usize },
    #[error("{program} output is not valid UTF-8")]
    NotUtf8 { program: String },
}

/// Runs `c` and returns its stdout with one trailing newline removed.
pub(crate) fn run(c: &CommandSource) -> Result<SecretValue, CommandFailure> {
    let program = c.program().to_owned();
    let mut cmd = match &c.shell {
        Some(script) => {
            let mut cmd = Command::new("/bin/sh");
            cmd.arg("-c").arg(script);
            cmd
        }
        None => {
            let mut cmd = Command::new(&c.argv[0]);
            cmd.args(&c.argv[1..]);
            cmd
        }
    };
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    let mut child = cmd.spawn().map_err(|e| CommandFailure::Spawn {
        program: program.clone(),
        reason: e.to_string(),
    })?;
    let pgid = nix::unistd::Pid::from_raw(child.id() as i32);
    let kill_group = || {
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
    };
    let max = c.max_output();
    let mut stdout = child.stdout.take().expect("stdout is piped");
    // The reader stops at max + 1 bytes, so an oversize output is detected without
    // holding more than that.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = Zeroizing::new(Vec::new());
        let r = (&mut stdout)
            .take(max as u64 + 1)
            .read_to_end(&mut buf)
            .map(|_| ());
        let _ = tx.send((r, buf));
    });
    let deadline = Instant::now() + c.timeout();
    let timeout = || CommandFailure::Timeout {
        program: program.clone(),
        secs: c.timeout().as_secs(),
    };
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() >= deadline => {
                kill_group();
                let _ = child.wait();
                return Err(timeout());
            }
            Ok(None) => std::thread::sleep(POLL),
            Err(e) => {
                kill_group();
                let _ = child.wait();
                return Err(CommandFailure::Spawn {
                    program,
                    reason: e.to_string(),
                });
            }
        }
    };
    // The child is gone; a grandchild may still hold stdout open.
    let left = deadline.saturating_duration_since(Instant::now());
    let (read, mut out) = match rx.recv_timeout(left.max(POLL)) {
        Ok(x) => x,
        Err(_) => {
            kill_group();
            return Err(timeout());
        }
    };
    kill_group(); // nothing of the group outlives the run
    if !status.success() {
        let status = match (status.code(), status.signal()) {
            (Some(code), _) => format!("status {code}"),
            (None, Some(sig)) => format!("signal {sig}"),
            _ => status.to_string(),
        };
        return Err(CommandFailure::Status { program, status });
    }
    if read.is_err() {
        return Err(CommandFailure::Spawn {
            program,
            reason: "reading its output failed".into(),
        });
    }
    if out.len() > max {
        return Err(CommandFailure::TooLarge { program, max });
    }
    let trim = if out.ends_with(b"\r\n") {
        2
    } else {
        usize::from(out.ends_with(b"\n"))
    };
    let keep = out.len() - trim;
    out.truncate(keep);
    let s = String::from_utf8(std::mem::take(&mut *out)).map_err(|e| {
        let mut raw = e.into_bytes();
        zeroize::Zeroize::zeroize(&mut raw);
        CommandFailure::NotUtf8 {
            program: program.clone(),
        }
    })?;
    Ok(SecretValue::new(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(args: &[&str]) -> CommandSource {
        CommandSource {
            argv: args.iter().map(|s| s.to_string()).collect(),
            shell: None,
            ttl_secs: None,
            timeout_secs: Some(2),
            max_output_bytes: Some(64),
        }
    }

    #[test]
    fn argv_runs_without_a_shell_and_trims_one_newline() {
        // `$HOME` stays literal: no shell expands it.
        let v = run(&argv(&["/bin/echo", "tok-$HOME"])).unwrap();
        assert_eq!(v.expose(), "tok-$HOME");
        let sh = CommandSource {
            shell: Some("printf 'a-%s\\n\\n' b".into()),
            ..argv(&[])
        };
        assert_eq!(run(&sh).unwrap().expose(), "a-b\n");
    }

    #[test]
    fn failures_are_bounded_and_never_quote_the_output() {
        let canary = "canary-out-77f1";
        let sh = |s: &str| CommandSource {
            shell: Some(s.into()),
            ..argv(&[])
        };
        let e = run(&sh(&format!("echo {canary}; exit 3"))).unwrap_err();
        assert_eq!(e.to_string(), "/bin/sh exited with status 3");
        let e = run(&sh(&format!("echo {canary} >&2; head -c 100 /dev/zero"))).unwrap_err();
        assert_eq!(e.to_string(), "/bin/sh wrote more than 64 bytes to stdout");
        // A child that never ends (and a grandchild holding stdout) is killed in time.
        let e = run(&CommandSource {
            timeout_secs: Some(1),
            ..sh("sleep 30 & sleep 30")
        })
        .unwrap_err();
        assert!(matches!(e, CommandFailure::Timeout { secs: 1, .. }), "{e}");
        let e = run(&argv(&["/nonexistent/vault"])).unwrap_err();
        assert!(e.to_string().starts_with("cannot start /nonexistent/vault"));
        for e in [
            run(&sh(&format!("echo {canary}; exit 1"))).unwrap_err(),
            run(&sh(&format!("printf '{canary}\\377'"))).unwrap_err(),
        ] {
            assert!(!format!("{e} {e:?}").contains(canary));
        }
    }
}
