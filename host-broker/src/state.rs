//! Per-VM state and broker-wide shared state, as seen by connection handlers.

use std::sync::{Arc, RwLock};

use rustls::ClientConfig;

use crate::audit::EventSink;
use crate::policy::Policy;
use crate::secrets::CredentialSet;
use crate::tls::{LeafCache, VmCa};

/// One version of a VM's configuration. Replaced as a whole (a new `Arc`) on a live policy
/// update, so a connection keeps a consistent egress view for its lifetime. Credentials are
/// the exception: they live in a cell shared by every version, so a rotation reaches the next
/// request of already-open (keep-alive) connections. Read them once per request with
/// [`VmState::current_credentials`] and use that snapshot for the whole request + response.
pub(crate) struct VmState {
    pub id: String,
    pub policy: Policy,
    /// The VM's current credential set (shared by all versions of the state).
    creds: Arc<RwLock<Arc<CredentialSet>>>,
    pub ca: Arc<VmCa>,
    pub leaves: Arc<LeafCache>,
    /// Becomes `true` when the VM is unregistered (shared by every version of the state).
    pub closed: tokio::sync::watch::Receiver<bool>,
    /// Proxy streams open right now (shared by every version; per-VM connection limit).
    pub open_streams: Arc<std::sync::atomic::AtomicUsize>,
    /// Proxy streams over the limit still being answered `503` (shared by every version;
    /// `proxy::MAX_REFUSING`: beyond it a stream is closed unanswered, bounding fds).
    pub refusing: Arc<std::sync::atomic::AtomicUsize>,
    /// Control streams open right now (shared by every version; `control::MAX_CONTROL_STREAMS`).
    pub open_control: Arc<std::sync::atomic::AtomicUsize>,
    /// Request-body bytes this VM may hold buffered for inspection at once (shared by every
    /// version; sized by the current policy, see `Policy::body_budget` and [`Self::with_policy`]).
    pub body_budget: Arc<tokio::sync::Semaphore>,
    /// The size `body_budget` was last set to (permits in use included).
    body_budget_size: Arc<std::sync::Mutex<usize>>,
    /// Verified upstream connections reused across this VM's tunnels (shared by every
    /// version; never by another VM). See `proxy::pool`.
    pub upstream_pool: Arc<crate::upstream::pool::UpstreamPool>,
}

impl VmState {
    /// A first version of a VM's state.
    pub fn new(
        id: String,
        policy: Policy,
        creds: CredentialSet,
        ca: Arc<VmCa>,
        leaves: Arc<LeafCache>,
        closed: tokio::sync::watch::Receiver<bool>,
    ) -> VmState {
        let budget = policy.body_budget();
        VmState {
            id,
            policy,
            creds: Arc::new(RwLock::new(Arc::new(creds))),
            ca,
            leaves,
            closed,
            open_streams: Arc::default(),
            refusing: Arc::default(),
            open_control: Arc::default(),
            body_budget: Arc::new(tokio::sync::Semaphore::new(budget)),
            body_budget_size: Arc::new(std::sync::Mutex::new(budget)),
            upstream_pool: Arc::default(),
        }
    }

    /// A new version with another policy; CA, leaf cache, credential cell and close signal
    /// are shared with `self`.
    pub fn with_policy(&self, policy: Policy) -> VmState {
        self.resize_body_budget(policy.body_budget());
        VmState {
            id: self.id.clone(),
            policy,
            creds: self.creds.clone(),
            ca: self.ca.clone(),
            leaves: self.leaves.clone(),
            closed: self.closed.clone(),
            open_streams: self.open_streams.clone(),
            refusing: self.refusing.clone(),
            open_control: self.open_control.clone(),
            body_budget: self.body_budget.clone(),
            body_budget_size: self.body_budget_size.clone(),
            upstream_pool: self.upstream_pool.clone(),
        }
    }

    /// Grows or shrinks the shared body budget to `size`. Shrinking takes back idle permits
    /// now; permits held by bodies being buffered are taken back as they are released.
    fn resize_body_budget(&self, size: usize) {
        let mut current = self
            .body_budget_size
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if size > *current {
            self.body_budget.add_permits(size - *current);
        } else if size < *current {
            let mut owed = *current - size;
            owed -= self.body_budget.forget_permits(owed);
            if owed > 0 {
                let sem = self.body_budget.clone();
                let owed = u32::try_from(owed).unwrap_or(u32::MAX);
                tokio::spawn(async move {
                    if let Ok(p) = sem.acquire_many_owned(owed).await {
                        p.forget();
                    }
                });
            }
        }
        *current = size;
    }

    /// The credential set in force right now. Call once per request (not per connection):
    /// rotations apply to the next request, open keep-alive connections included.
    pub fn current_credentials(&self) -> Arc<CredentialSet> {
        self.creds.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Swaps the credential set for every connection of this VM (next request on). Values
    /// the old set held and the new one does not stay in the scrubber for their
    /// `scrub_retired_secs` (an upstream may still echo the previous value).
    pub fn set_credentials(&self, creds: CredentialSet) {
        let old = self.current_credentials();
        let creds = creds.retiring(&old, std::time::Instant::now());
        *self.creds.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(creds);
    }

    /// Swaps in `creds` only if the cell still holds `expected` (a refresh computed from
    /// `expected` must not undo a concurrent policy or credential update).
    pub fn replace_credentials_if(
        &self,
        expected: &Arc<CredentialSet>,
        creds: CredentialSet,
    ) -> bool {
        let mut cell = self.creds.write().unwrap_or_else(|e| e.into_inner());
        if Arc::ptr_eq(&cell, expected) {
            *cell = Arc::new(creds);
            true
        } else {
            false
        }
    }

    /// Completes once the VM is unregistered.
    pub async fn closed(&self) {
        let mut rx = self.closed.clone();
        // An error means the sender is gone, which also means the VM is gone.
        let _ = rx.wait_for(|c| *c).await;
    }
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmState")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A registered VM: its id and its current state (swappable).
#[derive(Debug)]
pub(crate) struct VmEntry {
    pub id: String,
    state: RwLock<Arc<VmState>>,
    /// Set when the VM is unregistered: its open streams end.
    closed: tokio::sync::watch::Sender<bool>,
    /// The VM's CPU account: every future run for the VM is charged to it (`fair`).
    pub fair: Arc<crate::fair::Account>,
}

impl VmEntry {
    /// `closed` is the sender half of `state.closed`.
    pub fn new(
        state: VmState,
        closed: tokio::sync::watch::Sender<bool>,
        fair: Arc<crate::fair::Account>,
    ) -> VmEntry {
        VmEntry {
            id: state.id.clone(),
            state: RwLock::new(Arc::new(state)),
            closed,
            fair,
        }
    }

    /// Marks the VM unregistered; [`VmEntry::closed`] futures complete.
    pub fn close(&self) {
        self.closed.send_replace(true);
    }

    /// Completes once the VM is unregistered.
    pub async fn closed(&self) {
        let mut rx = self.closed.subscribe();
        // An error means the sender is gone, which also means the VM is gone.
        let _ = rx.wait_for(|c| *c).await;
    }

    /// The current state (cheap clone of an `Arc`).
    pub fn current(&self) -> Arc<VmState> {
        self.state.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Swaps in a new state; connections already running keep the old one.
    pub fn replace(&self, state: VmState) {
        *self.state.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(state);
    }
}

/// What every connection needs besides its VM.
#[derive(Debug)]
pub(crate) struct Shared {
    pub events: EventSink,
    pub upstream_tls: Arc<ClientConfig>,
    /// Per-VM CPU fairness (`fair`).
    pub fair: Arc<crate::fair::Scheduler>,
}
