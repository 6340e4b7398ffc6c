//! Audit records: one per proxied request or refusal.
//!
//! Each record is emitted as a tracing event with target `sluice::audit` (fields: vm, host,
//! method, path without query, credential names, verdict, status, bytes) and broadcast as
//! [`crate::BrokerEvent::Request`]. Records hold names only, never credential values.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::sync::broadcast;

use crate::BrokerEvent;

/// What happened to one request.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditRecord {
    pub vm: String,
    pub host: String,
    pub method: String,
    /// Request path without the query string (queries often carry tokens).
    pub path: String,
    /// Names of the credentials substituted (or, when blocked, violated).
    pub credentials: Vec<String>,
    /// `forwarded`, `blocked`, `denied` (egress policy), `failed` (upstream), `error`.
    pub verdict: String,
    pub status: u16,
    /// Response body bytes sent back to the guest.
    pub bytes: u64,
}

/// Strips the query and fragment from a request target.
pub fn path_only(target: &str) -> String {
    let end = target.find(['?', '#']).unwrap_or(target.len());
    let p = &target[..end];
    if p.is_empty() {
        "/".to_owned()
    } else {
        p.to_owned()
    }
}

/// Emits the record as a tracing event and a broker event.
pub fn emit(events: &broadcast::Sender<BrokerEvent>, rec: AuditRecord) {
    tracing::info!(
        target: "sluice::audit",
        vm = %rec.vm,
        host = %rec.host,
        method = %rec.method,
        path = %rec.path,
        credentials = ?rec.credentials,
        verdict = %rec.verdict,
        status = rec.status,
        bytes = rec.bytes,
        "request"
    );
    // No subscribers is fine.
    let _ = events.send(BrokerEvent::Request(rec));
}

/// Emits its record when dropped, with the byte count accumulated meanwhile: attached to a
/// response body so the event carries the bytes actually streamed back.
#[derive(Debug)]
pub struct PendingAudit {
    rec: Option<AuditRecord>,
    bytes: Arc<AtomicU64>,
    events: broadcast::Sender<BrokerEvent>,
}

impl PendingAudit {
    pub fn new(rec: AuditRecord, events: broadcast::Sender<BrokerEvent>) -> PendingAudit {
        PendingAudit {
            rec: Some(rec),
            bytes: Arc::default(),
            events,
        }
    }

    pub fn add(&self, n: u64) {
        self.bytes.fetch_add(n, Ordering::Relaxed);
    }
}

impl Drop for PendingAudit {
    fn drop(&mut self) {
        if let Some(mut rec) = self.rec.take() {
            rec.bytes = self.bytes.load(Ordering::Relaxed);
            emit(&self.events, rec);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_is_dropped() {
        assert_eq!(path_only("/v1/x?key=secret"), "/v1/x");
        assert_eq!(path_only("?a"), "/");
        assert_eq!(path_only("/a#frag"), "/a");
    }
}
