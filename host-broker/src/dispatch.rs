//! First bytes of every guest stream: preface + [`StreamHeader`], read within a bounded
//! time, then handed to the control, proxy, captured-TCP or DNS handler. Anything malformed (bad preface,
//! unknown version, oversize/truncated frame, unknown kind) closes that stream with a logged
//! reason; other streams are unaffected.

use std::sync::Arc;
use std::time::Duration;

use shared_proto::{read_stream_header, StreamKind, TunnelStream};
use tracing::Instrument;

use crate::state::{Shared, VmEntry};
use crate::transport::Accepted;

/// How long a guest may take to send the preface and stream header.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one accepted guest stream to completion.
pub(crate) async fn serve_stream(acc: Accepted, vm: Arc<VmEntry>, shared: Arc<Shared>) {
    let mut io = acc.io;
    let header = match tokio::time::timeout(HEADER_TIMEOUT, read_stream_header(&mut io)).await {
        Ok(Ok(h)) => h,
        Ok(Err(e)) => {
            tracing::warn!(reason = %e, "closing stream: bad stream start");
            return;
        }
        Err(_) => {
            tracing::warn!(
                "closing stream: no stream header within {}s",
                HEADER_TIMEOUT.as_secs()
            );
            return;
        }
    };
    let state = vm.current();
    match header.kind {
        StreamKind::Control => {
            let span = tracing::info_span!("control");
            crate::control::serve(io, state, shared)
                .instrument(span)
                .await
        }
        StreamKind::Proxy => {
            shared.events.metrics().connection(&vm.id);
            let span = tracing::info_span!("proxy");
            crate::proxy::serve(TunnelStream::new(io), state, shared)
                .instrument(span)
                .await
        }
        StreamKind::Tcp(target) => {
            shared.events.metrics().connection(&vm.id);
            let span = tracing::info_span!("tcp", host = %target.host, port = target.port);
            crate::proxy::serve_captured(io, target, state, shared)
                .instrument(span)
                .await
        }
        StreamKind::Dns(question) => {
            let span = tracing::debug_span!("dns");
            crate::dns::answer(io, question, state, shared)
                .instrument(span)
                .await
        }
    }
}
