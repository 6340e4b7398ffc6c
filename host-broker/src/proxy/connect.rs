//! `CONNECT host:port`: policy, verified upstream TLS, then TLS interception with a leaf for
//! `host` (see [`super::tunnel`]) and per-request gated substitution.
//!
//! A verified upstream connection exists *before* the `200` is sent (one of the VM's pooled
//! connections, or one dialled now, see [`super::pool`]): a failed verification is a plain
//! `502` to the CONNECT and nothing of the guest's request ever exists, let alone reaches the
//! upstream.
//!

use std::future::Future;
use std::sync::Arc;

use http::{Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tracing::{Instrument, Span};

use super::body::{self, ProxyBody};
use super::headers::host_without_port;
use super::{allowed_target, record, refuse, StreamSlot};
use crate::audit;
use crate::policy::InterceptMode;
use crate::state::{Shared, VmState};

pub(super) async fn handle(
    req: Request<Incoming>,
    vm: Arc<VmState>,
    shared: Arc<Shared>,
    slot: Arc<StreamSlot>,
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
    let addr = match allowed_target(&vm, &shared, &mut rec, &host, port).await {
        Ok(a) => a,
        Err(refused) => return refused,
    };
    // Raw TCP ports and (under `intercept: auto`) hosts no credential applies to are not
    // intercepted: answer 200, then relay (after checking the ClientHello for pass-through).
    let opaque = if vm.policy.raw_tcp_ports.contains(&port) {
        Some(super::opaque::Mode::Raw)
    } else if vm.policy.intercept == InterceptMode::Auto
        && !vm.current_credentials().applies_to_host(&host)
    {
        Some(super::opaque::Mode::PassThrough)
    } else {
        None
    };
    if let Some(mode) = opaque {
        rec.verdict = audit::Outcome::Tunnel;
        rec.status = 200;
        audit::emit(&shared.events, rec);
        let span = tracing::info_span!("tunnel", %host, port, %addr, ?mode);
        spawn_tunnel(req, vm.clone(), slot, span, move |io| {
            super::opaque::run(io, mode, "CONNECT", host, addr, vm, shared)
        });
        return Response::new(body::full(""));
    }
    let pool = &vm.upstream_pool;
    if let Err(reason) =
        crate::upstream::pool::ensure_verified(pool, &shared.upstream_tls, &host, addr).await
    {
        return refuse(&shared, rec, StatusCode::BAD_GATEWAY, &reason);
    }
    let leaf = match vm.leaves.get(&host).await {
        Ok(l) => l,
        Err(e) => return refuse(&shared, rec, StatusCode::BAD_GATEWAY, &e.to_string()),
    };
    rec.verdict = audit::Outcome::Intercepted;
    rec.status = 200;
    audit::emit(&shared.events, rec);
    let span = tracing::info_span!("tunnel", %host, port, %addr);
    let tunnel_slot = slot.clone();
    spawn_tunnel(req, vm.clone(), slot, span, move |io| {
        let t = super::tunnel::Tunnel {
            host,
            port,
            addr,
            vm,
            shared,
            slot: tunnel_slot,
        };
        t.intercept(io, leaf)
    });
    Response::new(body::full(""))
}

/// Runs `tunnel` on the stream the CONNECT upgrades to, in its own task (after the `200`).
/// The tunnel outlives this request's task, so it watches the VM itself: unregistering the
/// VM ends it. `slot` counts against the VM's limit until the tunnel ends.
fn spawn_tunnel<F, Fut>(
    req: Request<Incoming>,
    vm: Arc<VmState>,
    slot: Arc<StreamSlot>,
    span: Span,
    tunnel: F,
) where
    F: FnOnce(TokioIo<Upgraded>) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send,
{
    crate::fair::spawn(
        async move {
            let _slot = slot;
            let run = async move {
                match hyper::upgrade::on(req).await {
                    Ok(upgraded) => tunnel(TokioIo::new(upgraded)).await,
                    Err(e) => tracing::debug!(error = %e, "CONNECT upgrade failed"),
                }
            };
            tokio::select! {
                _ = run => {}
                _ = vm.closed() => tracing::info!("VM unregistered: closing tunnel"),
            }
        }
        .instrument(span),
    );
}
