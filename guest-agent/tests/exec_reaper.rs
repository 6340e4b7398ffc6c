//! As PID 1 the agent reaps orphans, not just its workload. Emulated on the host with
//! PR_SET_CHILD_SUBREAPER, in a test binary of its own because `waitpid(-1)` would also
//! collect other tests' children.

use std::collections::BTreeMap;
use std::time::Duration;

use guest_agent::exec;
use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag};

#[tokio::test]
async fn orphans_are_reaped_while_the_workload_runs() {
    nix::sys::prctl::set_child_subreaper(true).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let done = dir.path().join("orphan-done");
    // The inner shell backgrounds a short-lived process and exits at once, orphaning it to
    // us (the subreaper). The workload waits until the orphan has finished, then exits 3.
    let script = format!(
        "sh -c '(touch {done}) &'; while [ ! -e {done} ]; do sleep 0.01; done; sleep 0.1; exit 3",
        done = done.display()
    );
    let argv = vec!["/bin/sh".to_string(), "-c".to_string(), script];
    let env: BTreeMap<String, String> = [("PATH".to_string(), "/usr/bin:/bin".to_string())].into();
    let exit = tokio::time::timeout(Duration::from_secs(30), exec::run(&argv, &env, true))
        .await
        .expect("workload ended in time")
        .unwrap();
    assert_eq!(exit.code, Some(3));
    // Nothing is left to reap: no zombie children remain.
    assert_eq!(
        waitpid(None, Some(WaitPidFlag::WNOHANG)).unwrap_err(),
        Errno::ECHILD
    );
}
