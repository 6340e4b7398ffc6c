//! `CONNECT host:port`: policy, verified upstream TLS, then TLS interception with a leaf for
//! `host` (see [`super::tunnel`]) and per-request gated substitution.
//!
//! The upstream TLS handshake happens *before* the `200` is sent: a failed verification is a
//! plain `502` to the CONNECT and nothing of the guest's request ever exists, let alone
//! reaches the upstream.
//!

use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::{Body as _, Incoming};
use hyper_util::rt::TokioIo;
use tracing::Instrument;

use super::body::{self, ProxyBody};
use super::headers::{host_without_port, strip_hop_by_hop};
use super::{record, refuse};
use crate::audit::{self, PendingAudit};
use crate::policy::resolve_target;
use crate::secrets::CredentialSet;
use crate::state::{Shared, VmState};
use crate::upstream;

pub(super) async fn handle(
    req: Request<Incoming>,
    vm: Arc<VmState>,
    shared: Arc<Shared>,
) -> Response<ProxyBody> {
    let Some(authority) = req.uri().authority().cloned() else {
        let rec = record(&vm, &req, "");
        return refuse(
            &shared,
            rec,
            StatusCode::BAD_REQUEST,
            "CONNECT needs host:port",
        );
    };
    let host = host_without_port(authority.as_str());
    let mut rec = record(&vm, &req, &host);
    rec.path = String::new();
    let Some(port) = authority.port_u16() else {
        return refuse(
            &shared,
            rec,
            StatusCode::BAD_REQUEST,
            "CONNECT needs host:port",
        );
    };
    if host.is_empty() {
        return refuse(
            &shared,
            rec,
            StatusCode::BAD_REQUEST,
            "CONNECT host is empty",
        );
    }
    if let Err(d) = vm.policy.check_name(&host, port) {
        rec.verdict = "denied".into();
        return refuse(&shared, rec, StatusCode::FORBIDDEN, &d.reason);
    }
    let addr = match resolve_target(&vm.policy, &host, port).await {
        Ok(a) => a,
        Err(d) => {
            rec.verdict = "denied".into();
            return refuse(&shared, rec, StatusCode::FORBIDDEN, &d.reason);
        }
    };
    let up = match upstream::dial_tls(&shared.upstream_tls, &host, addr).await {
        Ok(s) => s,
        Err(e) => return refuse(&shared, rec, StatusCode::BAD_GATEWAY, &e.to_string()),
    };
    let leaf = match vm.leaves.get(&host).await {
        Ok(l) => l,
        Err(e) => return refuse(&shared, rec, StatusCode::BAD_GATEWAY, &e.to_string()),
    };
    rec.verdict = "intercepted".into();
    rec.status = 200;
    audit::emit(&shared.events, rec);
    let span = tracing::info_span!("tunnel", %host, port, %addr);
    // The tunnel outlives this request's task, so it watches the VM itself: unregistering
    // the VM ends it.
    tokio::spawn(
        async move {
            let vm2 = vm.clone();
            let run = async move {
                match hyper::upgrade::on(req).await {
                    Ok(upgraded) => {
                        let t = super::tunnel::Tunnel {
                            host,
                            addr,
                            vm,
                            shared,
                        };
                        t.intercept(TokioIo::new(upgraded), leaf, up).await
                    }
                    Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
                }
            };
            tokio::select! {
                _ = run => {}
                _ = vm2.closed() => tracing::info!("VM unregistered: closing tunnel"),
            }
        }
        .instrument(span),
    );
    Response::new(body::full(""))
}

/// Scrubs and strips an upstream response and attaches the audit record to its body.
pub(super) fn respond(
    resp: Response<Incoming>,
    mut rec: audit::AuditRecord,
    creds: &CredentialSet,
    shared: &Shared,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let scrubbed = creds.scrub_response_headers(&mut parts.headers);
    if scrubbed > 0 {
        tracing::warn!(
            scrubbed,
            "upstream echoed credential values in response headers; replaced with placeholders"
        );
    }
    rec.verdict = "forwarded".into();
    rec.status = parts.status.as_u16();
    let pending = PendingAudit::new(rec, shared.events.clone());
    // Scrub bodies only when there is something to scrub (the scrubber changes lengths, so
    // Content-Length goes and the guest gets a chunked body). Compressed bodies are not
    // decoded: see host-broker/README.md.
    let scrubber = if creds.is_empty() || body.is_end_stream() {
        None
    } else {
        parts.headers.remove(http::header::CONTENT_LENGTH);
        Some(creds.scrubber())
    };
    Response::from_parts(parts, body::counted(body, pending, scrubber))
}
