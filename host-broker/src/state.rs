//! Per-VM state and broker-wide shared state, as seen by connection handlers.

use std::sync::{Arc, RwLock};

use rustls::ClientConfig;
use tokio::sync::broadcast;

use crate::policy::Policy;
use crate::secrets::CredentialSet;
use crate::tls::{LeafCache, VmCa};
use crate::BrokerEvent;

/// One version of a VM's configuration. Replaced as a whole (a new `Arc`) on a live update,
/// so a connection keeps a consistent view for its lifetime.
pub(crate) struct VmState {
    pub id: String,
    pub policy: Policy,
    pub creds: Arc<CredentialSet>,
    pub ca: Arc<VmCa>,
    pub leaves: Arc<LeafCache>,
    /// Becomes `true` when the VM is unregistered (shared by every version of the state).
    pub closed: tokio::sync::watch::Receiver<bool>,
}

impl VmState {
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
}

impl VmEntry {
    /// `closed` is the sender half of `state.closed`.
    pub fn new(state: VmState, closed: tokio::sync::watch::Sender<bool>) -> VmEntry {
        VmEntry {
            id: state.id.clone(),
            state: RwLock::new(Arc::new(state)),
            closed,
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
    pub events: broadcast::Sender<BrokerEvent>,
    pub upstream_tls: Arc<ClientConfig>,
}
