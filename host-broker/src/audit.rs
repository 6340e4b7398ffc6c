//! Audit records: one per proxied request or refusal.
//!
//! Each record is emitted as a tracing event with target `sluice::audit` (fields: vm, host,
//! method, path without query, credential names, verdict, status, bytes) and broadcast as
//! [`BrokerEvent::Request`]. Records hold names only, never credential values.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::broadcast;

use crate::metrics::Metrics;
pub use crate::outcome::Outcome;

/// What the broker reports to embedders.
#[derive(Debug, Clone)]
pub enum BrokerEvent {
    AgentHello {
        vm: String,
        agent_version: String,
        boot_mode: shared_proto::BootMode,
    },
    WorkloadExited {
        vm: String,
        exit: shared_proto::WorkloadExit,
    },
    AgentFailed {
        vm: String,
        reason: String,
    },
    /// One proxied request or refusal (same fields as the `sluice::audit` event).
    Request(AuditRecord),
}

/// Where events go: the broadcast channel embedders subscribe to, plus the statistics and
/// metrics derived from them. Cheap to clone.
#[derive(Debug, Clone)]
pub struct EventSink {
    tx: broadcast::Sender<BrokerEvent>,
    metrics: Arc<Metrics>,
}

impl EventSink {
    pub fn new(capacity: usize, metrics: Arc<Metrics>) -> EventSink {
        let (tx, _) = broadcast::channel(capacity);
        EventSink { tx, metrics }
    }

    /// Broadcasts an event; returns the number of subscribers reached (none is fine).
    pub fn send(&self, ev: BrokerEvent) -> usize {
        self.tx.send(ev).unwrap_or(0)
    }

    pub fn subscribe(&self) -> broadcast::Receiver<BrokerEvent> {
        self.tx.subscribe()
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }
}

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
    /// What happened; serialized as its string (`forwarded`, `blocked`, `denied`, ...).
    pub verdict: Outcome,
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

/// Longest guest- or upstream-supplied text written into one log field (in characters).
pub(crate) const LOG_TEXT_MAX: usize = 256;

/// Displays a guest- or upstream-supplied string for a log line: control characters
/// (newlines, ANSI escapes), backslashes, quotes and invisible format characters escaped
/// as `char::escape_debug` does, and cut after [`LOG_TEXT_MAX`] characters. A guest cannot
/// start a forged log line or recolour the terminal through it, in any log format.
pub(crate) struct Untrusted<'a>(pub &'a str);

impl std::fmt::Display for Untrusted<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Runs of characters that need no escape are written as one slice (a log line's
        // host and path nearly always are one run): one formatter call, not one per char.
        let s = self.0;
        let mut run = 0;
        for (n, (i, c)) in s.char_indices().enumerate() {
            if n == LOG_TEXT_MAX {
                f.write_str(&s[run..i])?;
                return write!(f, "...(+{} bytes)", s.len() - i);
            }
            let escaped = c.escape_debug();
            if escaped.len() != 1 {
                f.write_str(&s[run..i])?;
                write!(f, "{escaped}")?;
                run = i + c.len_utf8();
            }
        }
        f.write_str(&s[run..])
    }
}

/// Emits the record as a tracing event and a broker event, and counts it.
pub fn emit(events: &EventSink, rec: AuditRecord) {
    emit_timed(events, rec, None)
}

fn emit_timed(events: &EventSink, rec: AuditRecord, duration: Option<Duration>) {
    events.metrics.record(
        &rec.vm,
        rec.verdict,
        rec.credentials.len(),
        rec.bytes,
        duration,
    );
    tracing::info!(
        target: "sluice::audit",
        vm = %rec.vm,
        host = %Untrusted(&rec.host),
        method = %Untrusted(&rec.method),
        path = %Untrusted(&rec.path),
        credentials = ?rec.credentials,
        verdict = %rec.verdict,
        status = rec.status,
        bytes = rec.bytes,
        "request"
    );
    // No subscribers is fine.
    events.send(BrokerEvent::Request(rec));
}

/// Emits its record when dropped, with the byte count accumulated meanwhile: attached to a
/// response body so the event carries the bytes actually streamed back.
#[derive(Debug)]
pub struct PendingAudit {
    rec: Option<AuditRecord>,
    bytes: Arc<AtomicU64>,
    events: EventSink,
    started: Instant,
}

impl PendingAudit {
    pub fn new(rec: AuditRecord, events: EventSink) -> PendingAudit {
        PendingAudit {
            rec: Some(rec),
            bytes: Arc::default(),
            events,
            started: Instant::now(),
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
            emit_timed(&self.events, rec, Some(self.started.elapsed()));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn untrusted_text_cannot_break_a_log_line() {
        let forged = "1.0\n2026-01-01T00:00:00Z ERROR forged\r\u{1b}[31mred\u{202e}\\";
        let shown = Untrusted(forged).to_string();
        assert!(!shown.chars().any(|c| c.is_control()), "{shown:?}");
        assert_eq!(
            shown,
            "1.0\\n2026-01-01T00:00:00Z ERROR forged\\r\\u{1b}[31mred\\u{202e}\\\\"
        );
        assert_eq!(Untrusted("agent 0.1.0").to_string(), "agent 0.1.0");
        let long = "é".repeat(LOG_TEXT_MAX + 10);
        let shown = Untrusted(&long).to_string();
        assert!(shown.starts_with(&"é".repeat(LOG_TEXT_MAX)));
        assert!(shown.ends_with("...(+20 bytes)"), "{shown}");
    }

    /// The run-at-a-time writer shows exactly what escaping each character on its own shows,
    /// escapes at the cut included.
    #[test]
    fn untrusted_matches_escaping_char_by_char() {
        fn per_char(s: &str) -> String {
            let mut out = String::new();
            for (n, (i, c)) in s.char_indices().enumerate() {
                if n == LOG_TEXT_MAX {
                    out.push_str(&format!("...(+{} bytes)", s.len() - i));
                    return out;
                }
                out.push_str(&c.escape_debug().to_string());
            }
            out
        }
        let pieces = [
            "a", "é", "\n", "\u{1b}", "\\", "\"", "\u{301}", "\u{202e}", "/v1/x", "\t",
        ];
        let mut seed = 7u64;
        for len in [0usize, 1, 2, 3, 17, 255, 256, 257, 300, 600] {
            for _ in 0..20 {
                let s: String = (0..len)
                    .map(|_| {
                        seed = seed
                            .wrapping_mul(6364136223846793005)
                            .wrapping_add(1442695040888963407);
                        pieces[(seed >> 33) as usize % pieces.len()]
                    })
                    .collect();
                assert_eq!(Untrusted(&s).to_string(), per_char(&s), "{s:?}");
            }
        }
    }

    #[test]
    fn query_is_dropped() {
        assert_eq!(path_only("/v1/x?key=secret"), "/v1/x");
        assert_eq!(path_only("?a"), "/");
        assert_eq!(path_only("/a#frag"), "/a");
    }
}
