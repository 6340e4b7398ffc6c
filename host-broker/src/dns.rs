//! `Dns` streams: the guest agent asks whether a name may be answered.
//!
//! The decision is [`crate::policy::Policy::check_dns_name`]; the broker resolves nothing
//! here (the agent answers allowed names with a synthetic address and the broker resolves
//! when, and only if, a connection to that name arrives). Every answer is one audit record
//! (method `DNS`, path = record type, verdict `resolved` or `denied`).

use std::sync::Arc;
use std::time::Duration;

use shared_proto::{DnsQuestion, DnsRecordType, DnsReply};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::audit::{self, AuditRecord, Outcome};
use crate::state::{Shared, VmState};

/// How long the agent may reuse an allowed answer (a policy update reaches it this fast).
const ALLOWED_TTL: Duration = Duration::from_secs(30);

fn type_label(t: DnsRecordType) -> String {
    match t {
        DnsRecordType::A => "A".into(),
        DnsRecordType::Aaaa => "AAAA".into(),
        DnsRecordType::Other(n) => format!("TYPE{n}"),
    }
}

/// Decides `question` for `vm`, writes the reply frame and audits it.
pub(crate) async fn answer<S>(
    mut io: S,
    question: DnsQuestion,
    vm: Arc<VmState>,
    shared: Arc<Shared>,
) where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let name: String = question.name.chars().take(255).collect();
    let (reply, verdict, status) = match vm.policy.check_dns_name(&name) {
        Ok(()) => (
            DnsReply::Allowed {
                ttl_secs: ALLOWED_TTL.as_secs() as u32,
            },
            Outcome::Resolved,
            200,
        ),
        Err(d) => {
            tracing::info!(reason = %d.reason, "DNS: NXDOMAIN");
            (DnsReply::Denied { reason: d.reason }, Outcome::Denied, 403)
        }
    };
    audit::emit(
        &shared.events,
        AuditRecord {
            vm: vm.id.clone(),
            host: name,
            method: "DNS".into(),
            path: type_label(question.record_type),
            credentials: Vec::new(),
            verdict,
            status,
            bytes: 0,
        },
    );
    if let Err(e) = shared_proto::write_message(&mut io, &reply).await {
        tracing::debug!(error = %e, "DNS reply not delivered");
    }
}
