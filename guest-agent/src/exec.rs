//! exec mode: run the workload as a child of PID 1, reap, forward signals, report its end.

use std::collections::BTreeMap;

use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use shared_proto::WorkloadExit;
use tokio::signal::unix::{signal, SignalKind};
use tracing::{debug, info};

/// The workload could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("no workload program given")]
    NoProgram,
    #[error("starting the workload `{program}`: {source}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("installing signal handlers: {0}")]
    Signals(std::io::Error),
}

/// The console/power-off status for a workload's end: its code, or 128 + signal.
pub fn exit_status(exit: &WorkloadExit) -> u8 {
    match (exit.code, exit.signal) {
        (Some(code), _) => (code & 0xff) as u8,
        (None, Some(sig)) => (128 + sig).clamp(0, 255) as u8,
        (None, None) => 70,
    }
}

/// Runs `argv` with exactly `env` and waits for it. As PID 1 (`reap_orphans`), every other
/// child that ends is reaped too, so orphans never pile up as zombies.
pub async fn run(
    argv: &[String],
    env: &BTreeMap<String, String>,
    reap_orphans: bool,
) -> Result<WorkloadExit, ExecError> {
    let (program, args) = argv.split_first().ok_or(ExecError::NoProgram)?;
    // Register before spawning so an early exit cannot be missed.
    let mut sigchld = signal(SignalKind::child()).map_err(ExecError::Signals)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(ExecError::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(ExecError::Signals)?;

    let child = std::process::Command::new(program)
        .args(args)
        .env_clear()
        .envs(env)
        .current_dir("/")
        .spawn()
        .map_err(|source| ExecError::Spawn {
            program: program.clone(),
            source,
        })?;
    let pid = Pid::from_raw(child.id() as i32);
    // The status is collected with waitpid below, not through `child`.
    drop(child);
    info!(pid = pid.as_raw(), "started workload {program}");

    loop {
        if let Some(exit) = reap(pid, reap_orphans) {
            return Ok(exit);
        }
        tokio::select! {
            _ = sigchld.recv() => {}
            _ = sigterm.recv() => forward(pid, Signal::SIGTERM),
            _ = sigint.recv() => forward(pid, Signal::SIGINT),
        }
    }
}

fn forward(pid: Pid, sig: Signal) {
    info!("forwarding {sig} to the workload");
    let _ = kill(pid, sig);
}

/// Collects every finished child; returns the workload's exit if it is among them.
fn reap(workload: Pid, reap_orphans: bool) -> Option<WorkloadExit> {
    let target = if reap_orphans { None } else { Some(workload) };
    let mut found = None;
    loop {
        match waitpid(target, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::Exited(p, code)) if p == workload => {
                found = Some(WorkloadExit {
                    code: Some(code),
                    signal: None,
                })
            }
            Ok(WaitStatus::Signaled(p, sig, _)) if p == workload => {
                found = Some(WorkloadExit {
                    code: None,
                    signal: Some(sig as i32),
                })
            }
            Ok(WaitStatus::StillAlive) | Err(_) => return found,
            Ok(other) => {
                debug!("reaped {other:?}");
                if !reap_orphans {
                    return found;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> BTreeMap<String, String> {
        [
            ("PATH".to_string(), "/usr/bin:/bin".to_string()),
            ("SLUICE_T".into(), "v".into()),
        ]
        .into()
    }

    fn sh(script: &str) -> Vec<String> {
        vec!["/bin/sh".into(), "-c".into(), script.into()]
    }

    #[tokio::test]
    async fn exit_code_and_env_reach_the_workload() {
        let exit = run(
            &sh(r#"[ "$SLUICE_T" = v ] && [ -z "$HOME" ] && exit 7"#),
            &env(),
            false,
        )
        .await
        .unwrap();
        assert_eq!(
            exit,
            WorkloadExit {
                code: Some(7),
                signal: None
            }
        );
        assert_eq!(exit_status(&exit), 7);
    }

    #[tokio::test]
    async fn killed_workload_reports_its_signal() {
        let exit = run(&sh("kill -KILL $$"), &env(), false).await.unwrap();
        assert_eq!(exit.signal, Some(9));
        assert_eq!(exit_status(&exit), 137);
    }

    #[tokio::test]
    async fn missing_program_names_it() {
        let err = run(&["/no/such/prog".to_string()], &env(), false)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("/no/such/prog"), "{err}");
    }
}
