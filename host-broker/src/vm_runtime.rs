//! Where a VM's streams are served: on the runtime the broker was started on, shared by
//! every VM, or on a thread of the VM's own (issue 11: "no VM can starve another").
//!
//! On a shared runtime, tokio runs every VM's tasks first in, first out: a VM keeping the
//! workers busy puts another VM's request behind its own queue, and the other VM's socket is
//! only noticed at the next poll of the I/O driver (`event_interval`). No scheduling inside
//! one runtime fixes the latter. On a thread of its own, each VM's accept loop, streams,
//! upstream connections and timers run on a current-thread runtime, and the *kernel* shares
//! the host's cores between VMs: a flooding VM's thread can use one core at most, and an idle
//! VM's thread, woken by its socket, is scheduled at once (a thread that slept has used less
//! than its share). The cost is one thread per VM (its stack is mapped lazily) and that one
//! VM's broker work is bounded by one core.
//!
//! A VM's thread ends when the VM is unregistered: its loop is stopped, then its runtime
//! shut down, which drops every task the VM's work spawned there.

use std::future::Future;
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// tokio's default `event_interval`, kept for VM threads unless configured.
pub const DEFAULT_EVENT_INTERVAL: u32 = 61;

/// Where the streams of VMs registered from now on are served (`Broker::set_vm_placement`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmPlacement {
    /// On the runtime the broker was started on, shared with every other VM.
    Shared,
    /// On a thread of the VM's own running a current-thread tokio runtime with this
    /// `event_interval` (task polls between two polls of its I/O driver).
    OwnThread { event_interval: u32 },
}

impl Default for VmPlacement {
    fn default() -> Self {
        VmPlacement::OwnThread {
            event_interval: DEFAULT_EVENT_INTERVAL,
        }
    }
}

/// How long a VM thread's shutdown waits for blocking work its streams started (a DNS lookup
/// in `spawn_blocking`) before it leaves it behind.
const BLOCKING_SHUTDOWN_WAIT: Duration = Duration::from_secs(1);

/// The place a VM's loop will run, made before anything else of the VM exists: starting a
/// thread is the one registration step that can fail for want of threads or descriptors,
/// and failing after the VM's CA was minted would leave that CA behind.
pub(crate) enum VmSlot {
    Shared,
    Thread {
        start: oneshot::Sender<VmLoop>,
        stop: oneshot::Sender<()>,
        done: oneshot::Receiver<()>,
    },
}

/// A VM's accept loop (or stream queue), sent to the thread made for it.
pub(crate) type VmLoop = std::pin::Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

impl VmSlot {
    /// Makes the place `placement` says for VM `vm` (which names the thread). A thread made
    /// here waits for its loop; dropping the slot unused ends it.
    pub(crate) fn reserve(placement: VmPlacement, vm: &str) -> Result<VmSlot, std::io::Error> {
        #[cfg(test)]
        if test_hooks::FAIL_NEXT_RESERVE.with(|f| f.replace(false)) {
            return Err(std::io::Error::other("thread start failed (test hook)"));
        }
        let event_interval = match placement {
            VmPlacement::Shared => return Ok(VmSlot::Shared),
            VmPlacement::OwnThread { event_interval } => event_interval,
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .event_interval(event_interval)
            .enable_all()
            .build()?;
        // The thread logs where the registering code logs (a test's or an embedder's
        // scoped subscriber included).
        let dispatch = tracing::dispatcher::get_default(|d| d.clone());
        let (start_tx, start_rx) = oneshot::channel::<VmLoop>();
        let (stop_tx, stop_rx) = oneshot::channel();
        let (done_tx, done_rx) = oneshot::channel();
        // Thread names are cut at 15 bytes by the kernel.
        let name: String = format!("vm-{vm}").chars().take(15).collect();
        std::thread::Builder::new().name(name).spawn(move || {
            let _log = tracing::dispatcher::set_default(&dispatch);
            rt.block_on(async move {
                // Err: the slot was dropped unused (the registration failed later on).
                let Ok(vm_loop) = start_rx.await else { return };
                tokio::select! {
                    _ = vm_loop => {}
                    _ = stop_rx => {}
                }
            });
            rt.shutdown_timeout(BLOCKING_SHUTDOWN_WAIT);
            let _ = done_tx.send(());
        })?;
        Ok(VmSlot::Thread {
            start: start_tx,
            stop: stop_tx,
            done: done_rx,
        })
    }

    /// Runs `fut` (the VM's loop) in this slot.
    pub(crate) fn run<F>(self, fut: F) -> VmTask
    where
        F: Future<Output = ()> + Send + 'static,
    {
        match self {
            VmSlot::Shared => VmTask::Shared(tokio::spawn(fut)),
            VmSlot::Thread { start, stop, done } => {
                // An Err means the thread is gone (it panicked): `stop` then finds it ended.
                let _ = start.send(Box::pin(fut));
                VmTask::Thread { stop, done }
            }
        }
    }
}

/// Failure injection for the registration tests (a real thread start fails only when the
/// host is out of threads or descriptors).
#[cfg(test)]
pub(crate) mod test_hooks {
    thread_local! {
        /// Set: the next [`super::VmSlot::reserve`] on this thread fails.
        pub(crate) static FAIL_NEXT_RESERVE: std::cell::Cell<bool> =
            const { std::cell::Cell::new(false) };
    }
}

/// The running accept loop (or stream queue) of one VM, wherever it runs.
#[derive(Debug)]
pub(crate) enum VmTask {
    Shared(JoinHandle<()>),
    Thread {
        stop: oneshot::Sender<()>,
        done: oneshot::Receiver<()>,
    },
}

impl VmTask {
    /// Stops the loop and waits until it (and, on a thread, every task of the VM) has ended.
    pub(crate) async fn stop(self) {
        match self {
            VmTask::Shared(task) => {
                task.abort();
                let _ = task.await;
            }
            VmTask::Thread { stop, done } => {
                let _ = stop.send(());
                // An Err means the thread ended on its own (it panicked): nothing is left.
                let _ = done.await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;

    /// Dropped when the runtime that runs it goes away.
    struct Flag(Arc<AtomicBool>);
    impl Drop for Flag {
        fn drop(&mut self) {
            self.0.store(true, Ordering::SeqCst);
        }
    }

    /// A VM thread runs its loop off the caller's thread, and stopping it ends the tasks the
    /// loop spawned (a detached task included) before `stop` returns.
    #[tokio::test]
    async fn a_vm_thread_runs_apart_and_its_tasks_end_with_it() {
        let caller = std::thread::current().id();
        let (ran_tx, ran_rx) = oneshot::channel();
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = Flag(dropped.clone());
        let task = VmSlot::reserve(VmPlacement::default(), "test-vm")
            .unwrap()
            .run(async move {
                tokio::spawn(async move {
                    let _flag = flag;
                    std::future::pending::<()>().await;
                });
                let _ = ran_tx.send(std::thread::current().id());
                std::future::pending::<()>().await;
            });
        let ran_on = ran_rx.await.unwrap();
        assert_ne!(ran_on, caller, "the loop ran on the caller's thread");
        assert!(!dropped.load(Ordering::SeqCst));
        task.stop().await;
        assert!(
            dropped.load(Ordering::SeqCst),
            "a task of the VM outlived its thread"
        );
    }

    /// Shared placement runs on the caller's runtime, as before.
    #[tokio::test]
    async fn shared_placement_stays_on_the_callers_runtime() {
        let caller = std::thread::current().id();
        let (tx, rx) = oneshot::channel();
        let task = VmSlot::reserve(VmPlacement::Shared, "test-vm")
            .unwrap()
            .run(async move {
                let _ = tx.send(std::thread::current().id());
                std::future::pending::<()>().await;
            });
        assert_eq!(rx.await.unwrap(), caller);
        task.stop().await;
    }
}
