//! Per-VM CPU fairness (issue 11: "no VM can starve another").
//!
//! Tokio runs tasks first in, first out: a VM with 16 busy connections has 16 runnable tasks
//! queued ahead of another VM's one, and that VM's request waits behind all of them. Every
//! future the broker runs on behalf of a VM is therefore wrapped in [`Fair`], which
//!
//! - charges the wall time of each poll (the CPU the broker spends for the VM: polls do not
//!   block) to the VM's [`Account`];
//! - counts the VM's *runnable* work: a wake of a VM that is not heavy is counted until the
//!   woken future is polled (its waker is wrapped);
//! - and defers a **heavy** VM's polls while some *other*, light VM has runnable work.
//!
//! Every [`WINDOW`] the [`Scheduler`] rolls: each account's usage is smoothed (half the last
//! window, half the history), the VMs that used any CPU are *active*, and a VM is heavy when
//! it used more than its share, `WINDOW × workers / active`. A deferred poll returns
//! `Pending` at once (its task goes back to tokio without running the VM's code); it is
//! woken as soon as no light VM has runnable work left, at the next roll, or by a backstop
//! timer one window later, whichever comes first. So:
//!
//! - a VM alone, or several VMs that are all heavy, are never deferred (work-conserving: a
//!   deferral needs a light VM with something to run right now);
//! - a light VM's task runs after the heavy VM's polls already in progress, not after the
//!   whole queue of its runnable tasks;
//! - nothing waits long: a heavy VM's futures are deferred at most until the next roll
//!   (about one window), and only while a light VM has work, which by definition uses less
//!   than its share; a long-poll request that uses no CPU is only ever deferred when it wakes.
//!
//! Tasks a wrapped future spawns through [`spawn`] or [`Executor`] (hyper's HTTP/2 streams,
//! upstream connection drivers, tunnels, WebSocket relays) are charged to the same VM: the
//! account in force is kept in a thread-local during each poll.
//!
//! Cost on the single-VM path: two clock reads and a handful of atomics per poll, one extra
//! indirection per wake (wakes are counted only while several VMs are active).
//!
//! Usage is wall time per poll: on an overloaded host a poll preempted by the OS is charged
//! its preemption too (per-thread CPU clocks would not be, at the price of a system call per
//! read).

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicIsize, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use futures_util::task::AtomicWaker;

/// Length of an accounting window.
pub const WINDOW: Duration = Duration::from_millis(2);

const WINDOW_NS: u64 = WINDOW.as_nanos() as u64;

/// Where time comes from: the monotonic clock, or (tests) a hand-driven one.
#[derive(Debug)]
enum Clock {
    Real(Instant),
    #[cfg(test)]
    Manual(Arc<AtomicU64>),
}

impl Clock {
    fn now_ns(&self) -> u64 {
        match self {
            Clock::Real(epoch) => u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX),
            #[cfg(test)]
            Clock::Manual(t) => t.load(Ordering::SeqCst),
        }
    }
}

/// Broker-wide state of the fair scheduler.
#[derive(Debug)]
pub struct Scheduler {
    enabled: AtomicBool,
    clock: Clock,
    /// CPU time the runtime can give per window, in ns (`WINDOW × workers`).
    capacity_ns: u64,
    /// End of the current window (ns on `clock`).
    window_end: AtomicU64,
    /// More than one VM was active in the last window (else wakes are not counted: no
    /// deferral is possible, and a VM alone pays for no shared counter).
    contended: AtomicBool,
    /// Wakes of light VMs' futures not yet polled (transiently negative: a poll may see a
    /// wake's state before the wake counts it).
    light_runnable: AtomicIsize,
    /// Wakers of deferred polls.
    deferred: Mutex<Vec<Waker>>,
    accounts: Mutex<Vec<Weak<Account>>>,
}

/// One VM's CPU account.
#[derive(Debug)]
pub struct Account {
    sched: Arc<Scheduler>,
    /// ns charged in the current window.
    used: AtomicU64,
    /// Smoothed ns per window (updated at each roll).
    avg: AtomicU64,
    /// Used more than its share in the smoothed last windows (set at each roll).
    heavy: AtomicBool,
    /// Polls deferred so far (tests and diagnostics).
    deferred: AtomicU64,
}

impl Scheduler {
    /// A scheduler for a runtime with `workers` worker threads (enabled).
    pub fn new(workers: usize) -> Arc<Scheduler> {
        Self::with_clock(workers, Clock::Real(Instant::now()))
    }

    fn with_clock(workers: usize, clock: Clock) -> Arc<Scheduler> {
        let now = clock.now_ns();
        Arc::new(Scheduler {
            enabled: AtomicBool::new(true),
            clock,
            capacity_ns: WINDOW_NS * workers.max(1) as u64,
            window_end: AtomicU64::new(now + WINDOW_NS),
            contended: AtomicBool::new(false),
            light_runnable: AtomicIsize::new(0),
            deferred: Mutex::new(Vec::new()),
            accounts: Mutex::new(Vec::new()),
        })
    }

    /// A scheduler sized for the runtime the broker starts on (its worker count; outside a
    /// runtime, `available_parallelism`, tokio's default for a multi-thread runtime): the
    /// shares must add up to the CPU the broker's tasks really get.
    /// Off until enabled: benches/flood.rs has not shown a reproducible gain yet
    /// (host-broker/README.md "Benchmark").
    pub fn for_host() -> Arc<Scheduler> {
        let workers = tokio::runtime::Handle::try_current()
            .map(|h| h.metrics().num_workers())
            .unwrap_or_else(|_| std::thread::available_parallelism().map_or(1, |n| n.get()));
        let s = Self::new(workers);
        s.set_enabled(false);
        s
    }

    /// Turns deferral on or off for futures wrapped from now on (off: [`bind`] wraps
    /// nothing, so the old FIFO behaviour and cost, e.g. to measure against).
    pub fn set_enabled(&self, on: bool) {
        self.enabled.store(on, Ordering::Relaxed);
        if !on {
            self.wake_deferred();
        }
    }

    pub fn enabled(&self) -> bool {
        self.enabled.load(Ordering::Relaxed)
    }

    /// A new account (one per VM).
    pub fn account(self: &Arc<Self>) -> Arc<Account> {
        let a = Arc::new(Account {
            sched: self.clone(),
            used: AtomicU64::new(0),
            avg: AtomicU64::new(0),
            heavy: AtomicBool::new(false),
            deferred: AtomicU64::new(0),
        });
        self.lock_accounts().push(Arc::downgrade(&a));
        a
    }

    fn lock_accounts(&self) -> std::sync::MutexGuard<'_, Vec<Weak<Account>>> {
        self.accounts.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Rolls the window if `now` is past its end (one caller wins).
    fn maybe_roll(&self, now: u64) {
        let end = self.window_end.load(Ordering::Acquire);
        if now < end {
            return;
        }
        let next = now + WINDOW_NS;
        if self
            .window_end
            .compare_exchange(end, next, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
        {
            // More than one window without a poll: the history is stale.
            self.roll(now - end >= WINDOW_NS);
        }
    }

    /// Closes a window: smooths each account's usage, counts the active VMs and marks the
    /// heavy ones; then lets every deferred poll run again (to re-check).
    fn roll(&self, stale: bool) {
        {
            let mut accounts = self.lock_accounts();
            accounts.retain(|w| w.strong_count() > 0);
            let mut active = 0u64;
            for a in accounts.iter().filter_map(Weak::upgrade) {
                let used = a.used.swap(0, Ordering::Relaxed);
                let avg = if stale {
                    used / 2
                } else {
                    (a.avg.load(Ordering::Relaxed) + used) / 2
                };
                a.avg.store(avg, Ordering::Relaxed);
                active += u64::from(avg > 0);
            }
            self.contended.store(active > 1, Ordering::Relaxed);
            let share = self.capacity_ns / active.max(1);
            for a in accounts.iter().filter_map(Weak::upgrade) {
                let heavy = active > 1 && a.avg.load(Ordering::Relaxed) > share;
                a.heavy.store(heavy, Ordering::Relaxed);
            }
        }
        self.wake_deferred();
    }

    /// Whether a poll for `account` must wait: the VM is heavy and another VM, light, has
    /// runnable work.
    fn should_defer(&self, account: &Account) -> bool {
        self.enabled()
            && account.heavy.load(Ordering::Relaxed)
            && self.light_runnable.load(Ordering::SeqCst) > 0
    }

    /// Parks `waker` until no light VM has runnable work (or the next roll).
    fn defer(&self, waker: &Waker) {
        self.deferred
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(waker.clone());
        // The light work may have been polled between the check and the push.
        if self.light_runnable.load(Ordering::SeqCst) <= 0 {
            self.wake_deferred();
        }
    }

    fn wake_deferred(&self) {
        let wakers = std::mem::take(&mut *self.deferred.lock().unwrap_or_else(|e| e.into_inner()));
        for w in wakers {
            w.wake();
        }
    }

    fn light_woken(&self) {
        if self.light_runnable.fetch_add(1, Ordering::SeqCst) == -1 {
            self.wake_deferred();
        }
    }

    fn light_polled(&self) {
        if self.light_runnable.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.wake_deferred();
        }
    }
}

impl Account {
    /// Whether the last roll found this VM over its share.
    #[cfg(test)]
    pub fn is_heavy(&self) -> bool {
        self.heavy.load(Ordering::Relaxed)
    }

    /// Polls deferred so far.
    #[cfg(test)]
    pub fn deferred_polls(&self) -> u64 {
        self.deferred.load(Ordering::Relaxed)
    }
}

const IDLE: u8 = 0;
/// Woken, not counted (heavy, or no contention).
const QUEUED_HEAVY: u8 = 1;
const QUEUED_LIGHT: u8 = 2;
const DEAD: u8 = 3;

/// The waker a [`Fair`] future's inner future sees: counts the wake, then wakes the task.
#[derive(Debug)]
struct Hook {
    account: Arc<Account>,
    state: AtomicU8,
    task: AtomicWaker,
}

impl Wake for Hook {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref()
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // Counted only while it matters: several VMs active, this one not heavy.
        let light = self.account.sched.contended.load(Ordering::Relaxed)
            && !self.account.heavy.load(Ordering::Relaxed);
        let to = if light { QUEUED_LIGHT } else { QUEUED_HEAVY };
        if self
            .state
            .compare_exchange(IDLE, to, Ordering::AcqRel, Ordering::Relaxed)
            .is_ok()
            && light
        {
            self.account.sched.light_woken();
        }
        self.task.wake();
    }
}

thread_local! {
    /// The account of the [`Fair`] future being polled on this thread.
    static CURRENT: RefCell<Option<Arc<Account>>> = const { RefCell::new(None) };
}

struct Bound {
    hook: Arc<Hook>,
    waker: Waker,
    /// The account, moved into [`CURRENT`] during each poll (no refcount traffic).
    account: Option<Arc<Account>>,
    backstop: Option<Pin<Box<tokio::time::Sleep>>>,
}

pin_project_lite::pin_project! {
    /// A future run on behalf of a VM (see the module docs). Unbound (fairness off when it
    /// was made): a plain pass-through.
    pub struct Fair<F> {
        #[pin]
        inner: F,
        bound: Option<Box<Bound>>,
    }

    impl<F> PinnedDrop for Fair<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(b) = this.project().bound.as_ref() {
                if b.hook.state.swap(DEAD, Ordering::AcqRel) == QUEUED_LIGHT {
                    b.hook.account.sched.light_polled();
                }
            }
        }
    }
}

impl<F> std::fmt::Debug for Fair<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fair")
            .field("bound", &self.bound.is_some())
            .finish_non_exhaustive()
    }
}

/// Wraps `fut` to run on `account` (unbound if `account` is `None` or fairness is off).
pub fn bind<F: Future + Send>(account: Option<Arc<Account>>, fut: F) -> Fair<F> {
    let bound = account.filter(|a| a.sched.enabled()).map(|account| {
        let hook = Arc::new(Hook {
            account: account.clone(),
            state: AtomicU8::new(IDLE),
            task: AtomicWaker::new(),
        });
        Box::new(Bound {
            waker: Waker::from(hook.clone()),
            hook,
            account: Some(account),
            backstop: None,
        })
    });
    Fair { inner: fut, bound }
}

/// The account of the VM whose future is being polled on this thread, if any.
pub fn current() -> Option<Arc<Account>> {
    CURRENT.with(|c| c.borrow().clone())
}

/// `tokio::spawn`, charged to the VM of the calling future (if any).
pub fn spawn<F>(fut: F) -> tokio::task::JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(bind(current(), fut))
}

/// A hyper executor that spawns with [`spawn`] (HTTP/2 streams and connection tasks run on
/// the VM's account).
#[derive(Debug, Clone, Copy, Default)]
pub struct Executor;

impl<F> hyper::rt::Executor<F> for Executor
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    fn execute(&self, fut: F) {
        spawn(fut);
    }
}

impl<F: Future> Future for Fair<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let Some(b) = this.bound.as_mut() else {
            return this.inner.poll(cx);
        };
        let sched = &b.hook.account.sched;
        if b.hook.state.swap(IDLE, Ordering::AcqRel) == QUEUED_LIGHT {
            sched.light_polled();
        }
        let start = sched.clock.now_ns();
        sched.maybe_roll(start);
        if sched.should_defer(&b.hook.account) {
            b.hook.account.deferred.fetch_add(1, Ordering::Relaxed);
            sched.defer(cx.waker());
            // Backstop: at the latest one window from now, even if nothing else polls.
            let at = tokio::time::Instant::now() + WINDOW;
            match b.backstop.as_mut() {
                Some(s) => s.as_mut().reset(at),
                None => b.backstop = Some(Box::pin(tokio::time::sleep_until(at))),
            }
            if let Some(s) = b.backstop.as_mut() {
                let _ = s.as_mut().poll(cx);
            }
            return Poll::Pending;
        }
        b.hook.task.register(cx.waker());
        let prev = CURRENT.with(|c| c.replace(b.account.take()));
        let r = this.inner.poll(&mut Context::from_waker(&b.waker));
        b.account = CURRENT.with(|c| c.replace(prev));
        let end = sched.clock.now_ns();
        b.hook
            .account
            .used
            .fetch_add(end.saturating_sub(start), Ordering::Relaxed);
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    /// A waker counting its wakes.
    #[derive(Default)]
    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// The shares add up to the CPU of the runtime the broker runs on, not the machine's:
    /// sized from the machine, a broker on a one-worker runtime of a 2-core host gave each of
    /// two VMs a whole worker's window as its share, so neither could ever be over it.
    #[test]
    fn a_scheduler_is_sized_for_the_runtime_it_starts_on() {
        for workers in [1, 3] {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(workers)
                .build()
                .unwrap();
            let s = rt.block_on(async { Scheduler::for_host() });
            assert_eq!(
                s.capacity_ns,
                WINDOW_NS * workers as u64,
                "{workers} workers"
            );
        }
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        assert_eq!(
            rt.block_on(async { Scheduler::for_host() }).capacity_ns,
            WINDOW_NS
        );
    }

    fn manual(workers: usize) -> (Arc<Scheduler>, Arc<AtomicU64>) {
        let t = Arc::new(AtomicU64::new(0));
        (Scheduler::with_clock(workers, Clock::Manual(t.clone())), t)
    }

    /// A future that "uses" `cost` ns of CPU per poll (advances the manual clock), stays
    /// pending and wakes itself through the hook when `ready` is told to.
    struct Work {
        clock: Arc<AtomicU64>,
        cost: u64,
        polls: Arc<AtomicUsize>,
        waker: Arc<Mutex<Option<Waker>>>,
    }
    impl Future for Work {
        type Output = ();
        fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
            self.clock.fetch_add(self.cost, Ordering::SeqCst);
            self.polls.fetch_add(1, Ordering::SeqCst);
            *self.waker.lock().unwrap() = Some(cx.waker().clone());
            Poll::Pending
        }
    }

    struct Probe {
        fut: Pin<Box<Fair<Work>>>,
        polls: Arc<AtomicUsize>,
        inner_waker: Arc<Mutex<Option<Waker>>>,
        task: Arc<Count>,
    }
    impl Probe {
        fn new(account: &Arc<Account>, clock: &Arc<AtomicU64>, cost: u64) -> Probe {
            let polls = Arc::new(AtomicUsize::new(0));
            let inner_waker = Arc::new(Mutex::new(None));
            let work = Work {
                clock: clock.clone(),
                cost,
                polls: polls.clone(),
                waker: inner_waker.clone(),
            };
            Probe {
                fut: Box::pin(bind(Some(account.clone()), work)),
                polls,
                inner_waker,
                task: Arc::default(),
            }
        }
        /// Polls once; whether the inner future ran.
        fn poll(&mut self) -> bool {
            let before = self.polls.load(Ordering::SeqCst);
            let w = Waker::from(self.task.clone());
            let _ = self.fut.as_mut().poll(&mut Context::from_waker(&w));
            self.polls.load(Ordering::SeqCst) > before
        }
        /// The inner future's event fires (I/O ready): wakes through the hook.
        fn event(&self) {
            self.inner_waker.lock().unwrap().take().unwrap().wake();
        }
        fn task_wakes(&self) -> usize {
            self.task.0.load(Ordering::SeqCst)
        }
    }

    /// A busy VM's poll: three of them use 90% of a window (the share of each of two active
    /// VMs on one worker is 50%).
    const A_COST: u64 = WINDOW_NS * 3 / 10;
    /// A light VM's poll: 5% of a window.
    const B_COST: u64 = WINDOW_NS / 20;

    /// One window in which `busy` is polled `busy_polls` times and `light` once; the clock
    /// then moves to the next window.
    fn windows(
        clock: &Arc<AtomicU64>,
        busy: &mut Probe,
        light: Option<&mut Probe>,
        busy_polls: u32,
    ) {
        for _ in 0..busy_polls {
            busy.poll();
        }
        if let Some(l) = light {
            l.poll();
        }
        let now = clock.load(Ordering::SeqCst);
        let next = (now / WINDOW_NS + 1) * WINDOW_NS;
        clock.store(next, Ordering::SeqCst);
    }

    #[tokio::test(start_paused = true)]
    async fn a_vm_alone_is_never_heavy_nor_deferred() {
        let (sched, clock) = manual(1);
        let a = sched.account();
        // Uses whole windows, many in a row.
        let mut p = Probe::new(&a, &clock, WINDOW_NS);
        for _ in 0..20 {
            windows(&clock, &mut p, None, 4);
            assert!(!a.is_heavy());
        }
        assert_eq!(a.deferred_polls(), 0);
        // Its wakes are not even counted (no shared counter on the single-VM path).
        p.event();
        assert_eq!(sched.light_runnable.load(Ordering::SeqCst), 0);
        assert_eq!(p.polls.load(Ordering::SeqCst), 80);
    }

    #[tokio::test(start_paused = true)]
    async fn the_vm_over_its_share_becomes_heavy_the_other_stays_light() {
        let (sched, clock) = manual(1);
        let (a, b) = (sched.account(), sched.account());
        let mut pa = Probe::new(&a, &clock, A_COST);
        let mut pb = Probe::new(&b, &clock, B_COST);
        for _ in 0..6 {
            windows(&clock, &mut pa, Some(&mut pb), 3);
        }
        pa.poll(); // rolls
        assert!(a.is_heavy());
        assert!(!b.is_heavy());
        // Both under the share: neither heavy.
        for _ in 0..6 {
            windows(&clock, &mut pa, Some(&mut pb), 1);
        }
        pa.poll();
        assert!(!a.is_heavy());
        assert!(!b.is_heavy());
    }

    #[tokio::test(start_paused = true)]
    async fn heavy_defers_only_while_a_light_vm_has_runnable_work() {
        let (sched, clock) = manual(1);
        let (a, b) = (sched.account(), sched.account());
        let mut pa = Probe::new(&a, &clock, A_COST);
        let mut pb = Probe::new(&b, &clock, B_COST);
        for _ in 0..6 {
            windows(&clock, &mut pa, Some(&mut pb), 3);
        }
        pa.poll();
        assert!(a.is_heavy() && !b.is_heavy());
        // Nothing of b's is runnable: a runs (work-conserving).
        assert!(pa.poll());
        // b's I/O fires: a light wake is pending, a's next poll is deferred...
        pb.event();
        assert_eq!(pb.task_wakes(), 1, "b's task is woken through the hook");
        let wakes = pa.task_wakes();
        assert!(!pa.poll(), "deferred while b has runnable work");
        assert_eq!(a.deferred_polls(), 1);
        assert_eq!(pa.task_wakes(), wakes);
        // ...until b's task is polled: then a's deferred poll is woken, and runs.
        assert!(pb.poll());
        assert_eq!(pa.task_wakes(), wakes + 1);
        assert!(pa.poll());
    }

    #[tokio::test(start_paused = true)]
    async fn a_deferred_poll_is_woken_by_the_next_roll_at_the_latest() {
        let (sched, clock) = manual(1);
        let (a, b) = (sched.account(), sched.account());
        let mut pa = Probe::new(&a, &clock, A_COST);
        let mut pb = Probe::new(&b, &clock, B_COST);
        for _ in 0..6 {
            windows(&clock, &mut pa, Some(&mut pb), 3);
        }
        pa.poll();
        pb.event(); // b runnable, and (say) never polled in this window
        let wakes = pa.task_wakes();
        assert!(!pa.poll());
        // Another heavy future of a's (same VM) crosses the window end: the roll wakes
        // every deferred poll to re-check.
        clock.fetch_add(WINDOW_NS, Ordering::SeqCst);
        let mut pa2 = Probe::new(&a, &clock, 0);
        pa2.poll();
        assert_eq!(pa.task_wakes(), wakes + 1);
        // And the backstop timer fires a window later even with no poll at all.
        assert!(!pa.poll());
        tokio::time::sleep(WINDOW * 2).await;
        assert_eq!(pa.task_wakes(), wakes + 2);
    }

    #[tokio::test(start_paused = true)]
    async fn a_dropped_future_leaves_no_runnable_count_behind() {
        let (sched, clock) = manual(1);
        let (a, b) = (sched.account(), sched.account());
        let mut pa = Probe::new(&a, &clock, A_COST);
        let mut pb = Probe::new(&b, &clock, B_COST);
        for _ in 0..6 {
            windows(&clock, &mut pa, Some(&mut pb), 3);
        }
        pa.poll();
        pb.event();
        assert_eq!(sched.light_runnable.load(Ordering::SeqCst), 1);
        drop(pb);
        assert_eq!(sched.light_runnable.load(Ordering::SeqCst), 0);
        assert!(pa.poll(), "nothing light runnable: a runs");
    }

    #[tokio::test(start_paused = true)]
    async fn disabled_binds_nothing_and_spawned_tasks_inherit_the_account() {
        let (sched, _clock) = manual(1);
        let a = sched.account();
        sched.set_enabled(false);
        assert!(bind(Some(a.clone()), async {}).bound.is_none());
        sched.set_enabled(true);
        let inherited = bind(Some(a.clone()), async { current() }).await;
        assert!(Arc::ptr_eq(&inherited.unwrap(), &a));
        assert!(current().is_none(), "restored after the poll");
        let child = bind(Some(a.clone()), async { spawn(async { current() }).await }).await;
        assert!(Arc::ptr_eq(&child.unwrap().unwrap(), &a));
    }
}
