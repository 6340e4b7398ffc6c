//! SIGTERM sent to the agent reaches the workload. A test binary of its own, because the
//! agent's signal handlers are process-wide.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use guest_agent::exec;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

#[tokio::test]
async fn sigterm_is_forwarded_to_the_workload() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let script = format!(
        "trap 'exit 42' TERM; touch {}; while :; do sleep 0.05; done",
        ready.display()
    );
    let argv = vec!["/bin/sh".to_string(), "-c".to_string(), script];
    let env: BTreeMap<String, String> = [("PATH".to_string(), "/usr/bin:/bin".to_string())].into();
    let run = tokio::spawn(async move { exec::run(&argv, &env, false).await });

    // Wait (bounded) until the workload's trap is installed, then signal the agent itself.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready.exists() {
        assert!(Instant::now() < deadline, "workload never became ready");
        tokio::task::yield_now().await;
    }
    kill(Pid::this(), Signal::SIGTERM).unwrap();
    let exit = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("workload ended in time")
        .unwrap()
        .unwrap();
    assert_eq!(exit.code, Some(42), "{exit:?}");
    assert_eq!(exec::exit_status(&exit), 42);
}
