//! `Tcp` streams: a guest connection the agent captured, judged exactly like `CONNECT`.
//!
//! Order: per-VM connection limit -> `resolve_target` (name rules before any DNS, then every
//! resolved address, private networks on the address actually dialed) -> [`TcpReply`] ->
//! what the guest speaks decides the handling:
//! * port in `raw_tcp_ports`: relayed as bytes (server-first protocols work; nothing peeked);
//! * a TLS ClientHello: intercepted (SNI must equal the target; gated substitution per
//!   request), or passed through under `intercept: auto` where no credential applies;
//! * an HTTP/1 request: served like absolute-form `http://` requests (Host must equal the
//!   target; a real value never crosses plaintext);
//! * anything else: closed, audited `blocked`.
//!
//! The target host is the name when the guest dialed one of its agent's synthetic DNS
//! answers, else an IP literal -- which is judged by address rules only and never gets a
//! named credential (gate 4), as for `CONNECT` to an IP.

use std::net::SocketAddr;
use std::sync::Arc;

use http::{Request, Uri};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use shared_proto::{TcpReply, TcpTarget, TunnelStream};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument;

use super::opaque::{self, Mode};
use super::prefixed::Prefixed;
use super::{StreamSlot, HEADER_READ_TIMEOUT};
use crate::audit::{self, AuditRecord, Outcome};
use crate::policy::{resolve_target, InterceptMode};
use crate::state::{Shared, VmState};
use crate::tls::client_hello::{read_client_hello, Peeked};

/// Audit method of captured connections (CONNECTs say `CONNECT`).
const METHOD: &str = "TCP";

fn record(vm: &VmState, host: &str, verdict: Outcome, status: u16) -> AuditRecord {
    AuditRecord {
        vm: vm.id.clone(),
        host: host.to_owned(),
        method: METHOD.into(),
        path: String::new(),
        credentials: Vec::new(),
        verdict,
        status,
        bytes: 0,
    }
}

/// Answers `Refused` with `reason`, audited.
async fn refuse<S>(io: &mut S, shared: &Shared, rec: AuditRecord, reason: String)
where
    S: AsyncWrite + Unpin,
{
    tracing::info!(%reason, "captured connection refused");
    audit::emit(&shared.events, rec);
    let _ = shared_proto::write_message(io, &TcpReply::Refused { reason }).await;
}

/// Serves one `Tcp` stream (`io` is positioned just after the stream header).
pub(crate) async fn serve<S>(mut io: S, target: TcpTarget, vm: Arc<VmState>, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let host = crate::policy::normalize_host(&target.host);
    let port = target.port;
    let limit = vm.policy.connection_limit();
    let Some(slot) = StreamSlot::acquire(&vm.open_streams, limit) else {
        let reason = format!("per-VM connection limit ({limit}) reached");
        return refuse(
            &mut io,
            &shared,
            record(&vm, &host, Outcome::Error, 503),
            reason,
        )
        .await;
    };
    let addr = match resolve_target(&vm.policy, &host, port).await {
        Ok(a) => a,
        Err(d) => {
            let (verdict, status) = d.verdict_and_status();
            return refuse(
                &mut io,
                &shared,
                record(&vm, &host, verdict, status),
                d.reason,
            )
            .await;
        }
    };
    if let Err(e) = shared_proto::write_message(&mut io, &TcpReply::Open).await {
        return tracing::debug!(error = %e, "captured connection closed before it opened");
    }
    let guest = TunnelStream::new(io);
    let span = tracing::info_span!("captured", %host, port, %addr);
    let slot = Arc::new(slot);
    let run = handle(guest, host, port, addr, vm.clone(), shared, slot).instrument(span);
    tokio::select! {
        _ = run => {}
        _ = vm.closed() => tracing::info!("VM unregistered: closing captured connection"),
    }
}

async fn handle<G>(
    mut guest: G,
    host: String,
    port: u16,
    addr: SocketAddr,
    vm: Arc<VmState>,
    shared: Arc<Shared>,
    slot: Arc<StreamSlot>,
) where
    G: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    if vm.policy.raw_tcp_ports.contains(&port) {
        return opaque::run(guest, Mode::Raw, METHOD, host, addr, vm, shared).await;
    }
    let (peeked, first) =
        match tokio::time::timeout(HEADER_READ_TIMEOUT, read_client_hello(&mut guest)).await {
            Ok(Ok(x)) => x,
            Ok(Err(e)) => return tracing::debug!(error = %e, "captured connection sent nothing"),
            Err(_) => return tracing::info!("captured connection sent nothing in time"),
        };
    let guest = Prefixed::new(first.clone(), guest);
    match peeked {
        Peeked::Tls { .. } => tls(guest, host, port, addr, vm, shared, slot).await,
        Peeked::NotTls if first.len() == 1 && first[0].is_ascii_uppercase() => {
            plain_http(guest, host, port, vm, shared).await
        }
        Peeked::NotTls => {
            let reason = format!(
                "port {port} is not in raw_tcp_ports and the connection is neither TLS nor HTTP"
            );
            tracing::warn!(%reason, "closing captured connection");
            audit::emit(&shared.events, record(&vm, &host, Outcome::Blocked, 0));
        }
    }
}

async fn tls<G>(
    guest: G,
    host: String,
    port: u16,
    addr: SocketAddr,
    vm: Arc<VmState>,
    shared: Arc<Shared>,
    slot: Arc<StreamSlot>,
) where
    G: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    if vm.policy.intercept == InterceptMode::Auto
        && !vm.current_credentials().applies_to_host(&host)
    {
        audit::emit(&shared.events, record(&vm, &host, Outcome::Tunnel, 200));
        return opaque::run(guest, Mode::PassThrough, METHOD, host, addr, vm, shared).await;
    }
    match crate::upstream::pool::ensure_verified(
        &vm.upstream_pool,
        &shared.upstream_tls,
        &host,
        addr,
    )
    .await
    {
        Ok(()) => {}
        Err(e) => {
            tracing::info!(error = %e, "captured TLS: upstream failed");
            return audit::emit(&shared.events, record(&vm, &host, Outcome::Failed, 502));
        }
    };
    let leaf = match vm.leaves.get(&host).await {
        Ok(l) => l,
        Err(e) => {
            tracing::warn!(error = %e, "captured TLS: no leaf");
            return audit::emit(&shared.events, record(&vm, &host, Outcome::Error, 502));
        }
    };
    audit::emit(
        &shared.events,
        record(&vm, &host, Outcome::Intercepted, 200),
    );
    let t = super::tunnel::Tunnel {
        host,
        port,
        addr,
        vm,
        shared,
        slot,
    };
    t.intercept(guest, leaf).await
}

/// Plain HTTP/1 on a captured connection: each origin-form request is rewritten to the
/// absolute form for the target and handled like a proxy request for `http://host:port`.
async fn plain_http<G>(guest: G, host: String, port: u16, vm: Arc<VmState>, shared: Arc<Shared>)
where
    G: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let authority = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let svc = service_fn(move |req: Request<Incoming>| {
        let (vm, shared, authority) = (vm.clone(), shared.clone(), authority.clone());
        async move {
            let (mut parts, body) = req.into_parts();
            let pq = parts
                .uri
                .path_and_query()
                .map(|p| p.as_str().to_owned())
                .unwrap_or_else(|| "/".into());
            // An absolute-form request must name the captured destination itself;
            // plain::handle then checks the Host header against it.
            let uri = format!("http://{authority}{pq}");
            let resp = match (parts.uri.authority(), uri.parse::<Uri>()) {
                (Some(a), _) if a.as_str() != authority => {
                    let rec = super::record(&vm, &Request::from_parts(parts, ()), &authority);
                    super::refuse(
                        &shared,
                        rec,
                        http::StatusCode::FORBIDDEN,
                        "request URI names another host than the connection's destination",
                    )
                }
                (_, Ok(u)) => {
                    parts.uri = u;
                    super::plain::handle(Request::from_parts(parts, body), vm, shared).await
                }
                (_, Err(_)) => {
                    let rec = super::record(&vm, &Request::from_parts(parts, ()), &authority);
                    super::refuse(
                        &shared,
                        rec,
                        http::StatusCode::BAD_REQUEST,
                        "unparsable request target",
                    )
                }
            };
            Ok::<_, std::convert::Infallible>(resp)
        }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(guest), svc)
        .await;
    if let Err(e) = result {
        tracing::debug!(error = %e, "captured HTTP connection ended with an error");
    }
}
