//! Per-VM queue of accepted streams behind a shared accept loop (kernel AF_VSOCK: one
//! listener for every VM).
//!
//! A hybrid-vsock VM has a listener of its own, and its accept loop pauses between accepts
//! when the VM has no room left for any stream (`proxy::saturated`, `broker.rs`): the VM's
//! excess streams wait in the kernel backlog of *its* socket. On the shared AF_VSOCK loop the
//! same pause would stall every VM's accepts. So the shared loop only routes: it offers each
//! stream to its VM's [`Inbox`] (never waiting), and each VM's own task takes streams from
//! its inbox, serves them, and pauses when that VM is saturated. A stream offered to a full
//! inbox (its VM is flooding faster than it is served) is closed at once: cost to the shared
//! loop one accept and one close, never a wait.

use std::future::Future;
use std::time::Duration;

use tokio::sync::mpsc;
#[cfg(test)]
use tokio::task::JoinHandle;
use tokio::task::JoinSet;

/// Streams queued per VM between the shared accept loop and the VM's task.
pub(crate) const INBOX_CAPACITY: usize = 16;

/// The shared loop's end of one VM's queue.
#[derive(Debug)]
pub(crate) struct Inbox<T> {
    tx: mpsc::Sender<T>,
}

impl<T: Send + 'static> Inbox<T> {
    /// The VM's queue and its task, to be run where the VM's work runs (`vm_runtime`): each
    /// stream is served by `serve` in a task the VM's task owns (dropping the task ends them
    /// all); after each one, if `saturated()`, the task waits `pause` before taking the next.
    pub(crate) fn new<S, Fut, Sat>(
        serve: S,
        saturated: Sat,
        pause: Duration,
    ) -> (Inbox<T>, impl Future<Output = ()> + Send + 'static)
    where
        S: Fn(T) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
        Sat: Fn() -> bool + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel(INBOX_CAPACITY);
        let task = async move {
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    item = rx.recv() => {
                        let Some(item) = item else { break };
                        conns.spawn(serve(item));
                        if saturated() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
            // The VM is gone (its inbox dropped): its open streams end with this task.
        };
        (Inbox { tx }, task)
    }

    /// [`Inbox::new`] with its task spawned on the current runtime.
    #[cfg(test)]
    pub(crate) fn spawn<S, Fut, Sat>(
        serve: S,
        saturated: Sat,
        pause: Duration,
    ) -> (Inbox<T>, JoinHandle<()>)
    where
        S: Fn(T) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
        Sat: Fn() -> bool + Send + 'static,
    {
        let (inbox, task) = Inbox::new(serve, saturated, pause);
        (inbox, tokio::spawn(task))
    }

    /// Hands `item` to the VM's task without waiting; `Err(item)` if its queue is full (or
    /// the VM is gone): the caller drops it.
    pub(crate) fn offer(&self, item: T) -> Result<(), T> {
        self.tx.try_send(item).map_err(|e| match e {
            mpsc::error::TrySendError::Full(i) | mpsc::error::TrySendError::Closed(i) => i,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    const PAUSE: Duration = Duration::from_millis(5);

    /// Counts served items.
    fn inbox(saturated: Arc<AtomicBool>) -> (Inbox<u32>, JoinHandle<()>, Arc<AtomicUsize>) {
        let served = Arc::new(AtomicUsize::new(0));
        let s = served.clone();
        let (inbox, task) = Inbox::spawn(
            move |_item: u32| {
                let s = s.clone();
                async move {
                    s.fetch_add(1, Ordering::SeqCst);
                    // A stream held open (the flood's streams send nothing).
                    std::future::pending::<()>().await
                }
            },
            move || saturated.load(Ordering::SeqCst),
            PAUSE,
        );
        (inbox, task, served)
    }

    #[tokio::test(start_paused = true)]
    async fn a_saturated_vm_never_stalls_another_vms_streams_on_the_shared_loop() {
        let (flood, _t1, flood_served) = inbox(Arc::new(AtomicBool::new(true)));
        let (quiet, _t2, quiet_served) = inbox(Arc::new(AtomicBool::new(false)));
        // The shared loop routes 1000 streams of the flooding VM, then one of the other;
        // no offer waits (this loop never yields), the excess is refused at once.
        let refused = (0..1000).filter(|i| flood.offer(*i).is_err()).count();
        assert!(quiet.offer(0).is_ok());
        assert_eq!(refused, 1000 - INBOX_CAPACITY);
        // The other VM's stream is served at once; the saturated VM's, one per pause.
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_micros(1)).await;
        assert_eq!(quiet_served.load(Ordering::SeqCst), 1);
        let after_one_pause = flood_served.load(Ordering::SeqCst);
        assert!(after_one_pause <= 2, "{after_one_pause}");
        tokio::time::sleep(PAUSE * 4).await;
        let later = flood_served.load(Ordering::SeqCst);
        assert!(
            (after_one_pause + 3..=after_one_pause + 5).contains(&later),
            "{after_one_pause} -> {later}"
        );
        // While the flooding VM pauses, more streams of the other VM are served at once.
        for i in 1..=5 {
            assert!(quiet.offer(i).is_ok());
        }
        tokio::time::sleep(Duration::from_micros(1)).await;
        assert_eq!(quiet_served.load(Ordering::SeqCst), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unsaturated_vm_is_served_without_pauses_and_ends_with_its_inbox() {
        let (vm, task, served) = inbox(Arc::new(AtomicBool::new(false)));
        for i in 0..INBOX_CAPACITY as u32 {
            assert!(vm.offer(i).is_ok());
        }
        tokio::time::sleep(Duration::from_micros(1)).await;
        assert_eq!(served.load(Ordering::SeqCst), INBOX_CAPACITY);
        drop(vm);
        tokio::time::timeout(Duration::from_secs(1), task)
            .await
            .expect("the VM's task ends when its inbox is dropped")
            .unwrap();
    }
}
