//! The per-VM credential refresher: once a second, one refresh step over the VM's current
//! credential set (file stamps, command TTLs, retired values' deadlines; see
//! `secrets/refresh.rs`), swapping in the new set when something changed, and keeping the
//! refresh metrics current. Ends when the VM is unregistered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::Instrument;

use crate::state::{Shared, VmEntry};

/// How often sources are checked: a rotated file is in use within about this long.
pub(crate) const REFRESH_TICK: Duration = Duration::from_secs(1);

/// Starts the refresher of `vm`.
pub(crate) fn spawn(vm: Arc<VmEntry>, shared: Arc<Shared>) {
    let span = tracing::info_span!("vm", vm = %vm.id);
    tokio::spawn(
        async move {
            let mut tick = tokio::time::interval(REFRESH_TICK);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = vm.closed() => return,
                    _ = tick.tick() => step(&vm, &shared).await,
                }
            }
        }
        .instrument(span),
    );
}

async fn step(vm: &VmEntry, shared: &Shared) {
    let state = vm.current();
    let creds = state.current_credentials();
    if !creds.has_refresh_work() {
        return;
    }
    let from = creds.clone();
    let span = tracing::Span::current();
    // File reads and commands block: off the runtime's worker threads.
    let Ok(outcome) =
        tokio::task::spawn_blocking(move || span.in_scope(|| from.refresh(Instant::now()))).await
    else {
        return;
    };
    let in_force = match outcome.set {
        Some(next) => {
            let health = next.health();
            if state.replace_credentials_if(&creds, next) {
                health
            } else {
                // A policy or credential update won the race; the next tick starts from it.
                state.current_credentials().health()
            }
        }
        None => creds.health(),
    };
    shared
        .events
        .metrics()
        .credential_refresh(&vm.id, &outcome.failed, &in_force);
}
