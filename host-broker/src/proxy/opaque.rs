//! CONNECT tunnels the broker does not intercept: raw TCP to `raw_tcp_ports`, and TLS passed
//! through under `intercept: auto` to hosts where no credential applies.
//!
//! Pass-through still checks the ClientHello: its SNI must equal the CONNECT host (absent
//! only for IP-literal hosts), otherwise the tunnel is closed -- the guest cannot use an
//! allowed CONNECT host to reach another name on a shared server. The address dialed is the
//! one the policy approved. Byte counts are audited when the tunnel closes.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use crate::audit::{self, AuditRecord};
use crate::state::{Shared, VmState};
use crate::tls::client_hello::{read_client_hello, Peeked};
use crate::upstream;

/// How an opaque tunnel is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Mode {
    /// Relay bytes as they come (raw TCP port).
    Raw,
    /// Require a TLS ClientHello for the CONNECT host, then relay.
    PassThrough,
}

fn record(
    vm: &VmState,
    method: &str,
    host: &str,
    verdict: audit::Outcome,
    bytes: u64,
) -> AuditRecord {
    AuditRecord {
        vm: vm.id.clone(),
        host: host.to_owned(),
        method: method.into(),
        path: String::new(),
        credentials: Vec::new(),
        verdict,
        status: 200,
        bytes,
    }
}

/// Runs one opaque tunnel on the guest's stream (`method` names it in audit records:
/// `CONNECT`, or `TCP` for a captured connection).
pub(super) async fn run<G>(
    mut guest: G,
    mode: Mode,
    method: &'static str,
    host: String,
    addr: SocketAddr,
    vm: Arc<VmState>,
    shared: Arc<Shared>,
) where
    G: AsyncRead + AsyncWrite + Unpin,
{
    let mut first = Vec::new();
    if mode == Mode::PassThrough {
        let peek = tokio::time::timeout(super::HEADER_READ_TIMEOUT, read_client_hello(&mut guest));
        let (peeked, bytes) = match peek.await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => return tracing::info!(error = %e, "no TLS hello"),
            Err(_) => return tracing::info!("guest sent no TLS hello in time"),
        };
        let is_ip = host.parse::<IpAddr>().is_ok();
        let ok = match &peeked {
            Peeked::Tls { sni: Some(s) } => *s == host,
            Peeked::Tls { sni: None } => is_ip,
            Peeked::NotTls => false,
        };
        if !ok {
            tracing::warn!(
                ?peeked,
                "closing pass-through tunnel: not a TLS hello for the CONNECT host"
            );
            let mut rec = record(&vm, method, &host, audit::Outcome::Blocked, 0);
            rec.status = 0;
            return audit::emit(&shared.events, rec);
        }
        first = bytes;
    }
    let mut up = match upstream::dial(addr).await {
        Ok(s) => s,
        Err(e) => {
            tracing::info!(error = %e, "opaque tunnel: upstream unreachable");
            let mut rec = record(&vm, method, &host, audit::Outcome::Failed, 0);
            rec.status = 502;
            return audit::emit(&shared.events, rec);
        }
    };
    if !first.is_empty() {
        if let Err(e) = up.write_all(&first).await {
            return tracing::info!(error = %e, "opaque tunnel: upstream write failed");
        }
    }
    let verdict = match mode {
        Mode::Raw => audit::Outcome::Relayed,
        Mode::PassThrough => audit::Outcome::Passthrough,
    };
    // Closed after RELAY_IDLE_TIMEOUT with no byte either way (docs/architecture.md).
    let (to_up, to_guest, idle) =
        crate::idle::relay(guest, &mut up, crate::idle::RELAY_IDLE_TIMEOUT).await;
    let to_up = to_up + first.len() as u64;
    tracing::info!(
        to_upstream = to_up,
        to_guest,
        %verdict,
        idle,
        "opaque tunnel closed"
    );
    audit::emit(
        &shared.events,
        record(&vm, method, &host, verdict, to_up + to_guest),
    );
}
