//! The HTTP/1.1 proxy served on each `Proxy` stream (keep-alive): `CONNECT host:port`
//! (intercepted, see [`connect`]) and absolute-form `http://` requests (see [`plain`]).
//!
//! Refusals are `403` with an `x-sluice-reason` header and the reason as body; upstream
//! failures are `502` with the same header. Order of checks for every target:
//! `Policy::check_name` -> `resolve_target` (policy on the resolved IP) -> dial that exact
//! `SocketAddr`.

mod body;
mod connect;
mod decode;
mod gates;
mod headers;
mod http10;
mod metered;
mod opaque;
mod plain;
mod prefixed;
mod request_body;
mod response;
mod transparent;
mod tunnel;
mod websocket;
mod ws_relay;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tracing::Instrument;

use crate::audit::{self, AuditRecord, Outcome};
use crate::policy::resolve_target;
use crate::state::{Shared, VmState};

pub use body::{BoxError, ProxyBody};
pub use headers::{host_without_port, strip_hop_by_hop};
pub(crate) use transparent::serve as serve_captured;

/// Name of the header that carries the reason of a refusal or failure.
pub const REASON_HEADER: &str = "x-sluice-reason";

/// How long a client may take to send a request head.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a stream over the per-VM limit may take to send the request its `503` answers.
const REFUSAL_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Streams over the per-VM limit answered at once per VM (see [`serve`]).
const MAX_REFUSING: usize = 8;

static CONN_IDS: AtomicU64 = AtomicU64::new(1);

/// One counted proxy stream of a VM; released on drop.
pub(crate) struct StreamSlot(Arc<AtomicUsize>);

impl StreamSlot {
    fn acquire(open: &Arc<AtomicUsize>, limit: usize) -> Option<StreamSlot> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < limit).then_some(n + 1)
        })
        .ok()
        .map(|_| StreamSlot(open.clone()))
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Whether `vm` has no room left for any stream: every proxy slot and refusal slot taken,
/// or every control slot. Then its accept loop pauses between accepts (see `broker.rs`):
/// a VM that reconnects in a tight loop waits in the kernel's backlog instead of making the
/// broker accept and close thousands of streams a second, CPU the other VMs need.
pub(crate) fn saturated(vm: &VmState) -> bool {
    let proxy_full = vm.open_streams.load(Ordering::Acquire) >= vm.policy.connection_limit()
        && vm.refusing.load(Ordering::Acquire) >= MAX_REFUSING;
    proxy_full || vm.open_control.load(Ordering::Acquire) >= crate::control::MAX_CONTROL_STREAMS
}

/// Serves one proxy stream until the guest closes it.
pub(crate) async fn serve<S>(io: S, vm: Arc<VmState>, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let conn = CONN_IDS.fetch_add(1, Ordering::Relaxed);
    let span = tracing::info_span!("conn", conn);
    let limit = vm.policy.connection_limit();
    let Some(slot) = StreamSlot::acquire(&vm.open_streams, limit) else {
        // Over the per-VM limit: answer this stream's request with 503 and close it. The
        // other VMs (and this VM's open streams) are unaffected. The answer waits at most
        // REFUSAL_READ_TIMEOUT for a request head, and at most MAX_REFUSING such streams
        // wait at once per VM: beyond that a stream is closed unanswered, so a VM that keeps
        // reconnecting holds at most `limit + MAX_REFUSING` streams (fds).
        let Some(_refusing) = StreamSlot::acquire(&vm.refusing, MAX_REFUSING) else {
            span.in_scope(|| {
                tracing::debug!(limit, "per-VM connection limit reached; closing unanswered")
            });
            return;
        };
        span.in_scope(|| tracing::warn!(limit, "per-VM connection limit reached"));
        let reason = format!("per-VM connection limit ({limit}) reached");
        let svc = service_fn(move |req: Request<Incoming>| {
            let rec = record(&vm, &req, req.uri().host().unwrap_or(""));
            let resp = refuse(&shared, rec, StatusCode::SERVICE_UNAVAILABLE, &reason);
            async move { Ok::<_, std::convert::Infallible>(resp) }
        });
        let conn = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(REFUSAL_READ_TIMEOUT)
            .keep_alive(false)
            .serve_connection(TokioIo::new(io), svc);
        // Bounded as a whole too: a guest that never reads the answer cannot hold the fd.
        let _ = tokio::time::timeout(REFUSAL_READ_TIMEOUT * 2, conn).await;
        return;
    };
    // The slot lives as long as the connection *and* any tunnel it became (the CONNECT
    // handler keeps a clone in the tunnel task).
    let slot = Arc::new(slot);
    let svc = service_fn(move |req| {
        let vm = vm.clone();
        let shared = shared.clone();
        let slot = slot.clone();
        async move { Ok::<_, std::convert::Infallible>(route(req, vm, shared, slot).await) }
    });
    let result = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT)
        .keep_alive(true)
        .serve_connection(TokioIo::new(io), svc)
        .with_upgrades()
        .instrument(span.clone())
        .await;
    if let Err(e) = result {
        span.in_scope(|| tracing::debug!(error = %e, "proxy connection ended with an error"));
    }
}

async fn route(
    req: Request<Incoming>,
    vm: Arc<VmState>,
    shared: Arc<Shared>,
    slot: Arc<StreamSlot>,
) -> Response<ProxyBody> {
    if req.method() == Method::CONNECT {
        return connect::handle(req, vm, shared, slot).await;
    }
    match req.uri().scheme_str() {
        Some("http") if req.uri().authority().is_some() => plain::handle(req, vm, shared).await,
        Some(_) => {
            let rec = record(&vm, &req, req.uri().host().unwrap_or(""));
            refuse(
                &shared,
                rec,
                StatusCode::BAD_REQUEST,
                "only http:// absolute-form requests and CONNECT are proxied; use CONNECT for https",
            )
        }
        None => {
            let rec = record(&vm, &req, "");
            refuse(
                &shared,
                rec,
                StatusCode::BAD_REQUEST,
                "this is a proxy: send CONNECT host:port or an absolute-form http:// request",
            )
        }
    }
}

/// An audit record for `req`, verdict and status to be filled in (`refuse` derives the
/// verdict from the status; the forwarding paths set [`Outcome::Forwarded`]).
fn record<B>(vm: &VmState, req: &Request<B>, host: &str) -> AuditRecord {
    AuditRecord {
        vm: vm.id.clone(),
        host: host.to_owned(),
        method: req.method().as_str().to_owned(),
        path: audit::path_only(
            req.uri()
                .path_and_query()
                .map(|p| p.as_str())
                .unwrap_or("/"),
        ),
        credentials: Vec::new(),
        verdict: Outcome::Error,
        status: 0,
        bytes: 0,
    }
}

/// The policy decision for `host:port`, shared by CONNECT and absolute-form requests:
/// `resolve_target` checks the name first (before any DNS), then every resolved address.
/// Returns the one address to dial, or the `403` answer (audited with verdict `denied`), or
/// for a name the policy allows but DNS cannot resolve the `502` answer (verdict `failed`).
async fn allowed_target(
    vm: &VmState,
    shared: &Shared,
    rec: &mut AuditRecord,
    host: &str,
    port: u16,
) -> Result<SocketAddr, Response<ProxyBody>> {
    resolve_target(&vm.policy, host, port).await.map_err(|d| {
        let (verdict, status) = d.verdict_and_status();
        let status = StatusCode::from_u16(status).unwrap_or(StatusCode::FORBIDDEN);
        refuse_as(shared, rec.clone(), verdict, status, &d.reason)
    })
}

/// Builds a refusal/failure answer, emits its audit record and returns the response. The
/// verdict follows from the status ([`Outcome::of_refusal`]: `403` blocked, `502`/`504`
/// failed, else error); [`refuse_as`] names another.
fn refuse(
    shared: &Shared,
    rec: AuditRecord,
    status: StatusCode,
    reason: &str,
) -> Response<ProxyBody> {
    let verdict = Outcome::of_refusal(status.as_u16());
    refuse_as(shared, rec, verdict, status, reason)
}

/// [`refuse`] with an explicit verdict (an egress denial is `denied`, a misdirected HTTP/2
/// request `blocked` although answered `421`).
fn refuse_as(
    shared: &Shared,
    mut rec: AuditRecord,
    verdict: Outcome,
    status: StatusCode,
    reason: &str,
) -> Response<ProxyBody> {
    rec.verdict = verdict;
    rec.status = status.as_u16();
    let body = format!("sluice: {reason}\n");
    rec.bytes = body.len() as u64;
    tracing::info!(status = status.as_u16(), %reason, "refused");
    audit::emit(&shared.events, rec);
    reason_response(status, reason, body)
}

pub(super) fn reason_response(
    status: StatusCode,
    reason: &str,
    body: String,
) -> Response<ProxyBody> {
    let header = HeaderValue::from_str(reason).unwrap_or_else(|_| {
        let clean: String = reason
            .chars()
            .map(|c| {
                if c.is_ascii_graphic() || c == ' ' {
                    c
                } else {
                    '?'
                }
            })
            .collect();
        HeaderValue::from_str(&clean).unwrap_or(HeaderValue::from_static("refused"))
    });
    let mut resp = Response::new(body::full(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(REASON_HEADER, header);
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}
