//! `CONNECT host:port`: policy, verified upstream TLS, then TLS interception with a leaf for
//! `host` and per-request gated substitution on a keep-alive HTTP/1.1 connection.
//!
//! The upstream TLS handshake happens *before* the `200` is sent: a failed verification is a
//! plain `502` to the CONNECT and nothing of the guest's request ever exists, let alone
//! reaches the upstream.
//!
//! Inside the tunnel every request's Host header (port stripped) must equal the CONNECT host,
//! otherwise `403`, with or without placeholders: a request for another authority on a
//! connection verified for this one is never what a well-behaved client sends.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::{Request, Response, StatusCode, Uri};
use hyper::body::{Body as _, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_rustls::LazyConfigAcceptor;
use tracing::Instrument;

use super::body::{self, ProxyBody};
use super::headers::{host_header, host_without_port, strip_hop_by_hop};
use super::{record, refuse, HEADER_READ_TIMEOUT};
use crate::audit::{self, PendingAudit};
use crate::policy::resolve_target;
use crate::secrets::{CredentialSet, GateContext, Verdict};
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
                        let t = Tunnel {
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

/// One intercepted CONNECT tunnel.
struct Tunnel {
    host: String,
    addr: SocketAddr,
    vm: Arc<VmState>,
    shared: Arc<Shared>,
}

type UpstreamTls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

impl Tunnel {
    async fn intercept(
        self,
        io: TokioIo<hyper::upgrade::Upgraded>,
        leaf: Arc<rustls::ServerConfig>,
        up: UpstreamTls,
    ) {
        let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), io);
        let start = match tokio::time::timeout(HEADER_READ_TIMEOUT, acceptor).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return tracing::info!(error = %e, "guest TLS hello failed"),
            Err(_) => return tracing::info!("guest sent no TLS hello in time"),
        };
        let sni = start
            .client_hello()
            .server_name()
            .map(|s| s.trim_end_matches('.').to_ascii_lowercase());
        let is_ip = self.host.parse::<IpAddr>().is_ok();
        let sni_ok = match &sni {
            Some(s) => *s == self.host,
            None => is_ip, // clients send no SNI for IP literals
        };
        if !sni_ok {
            let rec = audit::AuditRecord {
                vm: self.vm.id.clone(),
                host: self.host.clone(),
                method: "CONNECT".into(),
                path: String::new(),
                credentials: Vec::new(),
                verdict: "blocked".into(),
                status: 0,
                bytes: 0,
            };
            tracing::warn!(sni = ?sni, "closing tunnel: TLS SNI does not match the CONNECT host");
            return audit::emit(&self.shared.events, rec);
        }
        let tls = match start.into_stream(leaf).await {
            Ok(t) => t,
            Err(e) => return tracing::info!(error = %e, "guest TLS handshake failed"),
        };
        let sender = match handshake(up).await {
            Ok(s) => s,
            Err(e) => return tracing::info!(error = %e, "upstream HTTP handshake failed"),
        };
        let this = Arc::new(self);
        let sender = Arc::new(tokio::sync::Mutex::new(Some(sender)));
        let svc = service_fn(move |req| {
            let this = this.clone();
            let sender = sender.clone();
            async move { Ok::<_, std::convert::Infallible>(this.forward(req, &sender).await) }
        });
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .keep_alive(true)
            .serve_connection(TokioIo::new(tls), svc)
            .await
        {
            tracing::debug!(error = %e, "intercepted connection ended with an error");
        }
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        sender: &tokio::sync::Mutex<Option<SendRequest<Incoming>>>,
    ) -> Response<ProxyBody> {
        let host = &self.host;
        let mut rec = record(&self.vm, &req, host);
        let uri_ok = match req.uri().authority() {
            Some(a) => host_without_port(a.as_str()) == *host,
            None => true,
        };
        match host_header(req.headers()) {
            Some(h) if h == *host && uri_ok => {}
            other => {
                let reason = format!(
                    "request authority {} does not match the CONNECT host {host}",
                    other
                        .as_deref()
                        .unwrap_or("(missing or repeated Host header)")
                );
                return refuse(&self.shared, rec, StatusCode::FORBIDDEN, &reason);
            }
        }
        let (mut parts, body) = req.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        let ctx = GateContext {
            target_host: host,
            tls_verified: true,
            authority_matches: true,
            dialed_by_name: host.parse::<IpAddr>().is_err(),
        };
        // One credential snapshot per request (rotations reach open connections).
        let creds = self.vm.current_credentials();
        match creds.apply_request_headers(&mut parts.headers, &ctx) {
            Verdict::Block { reason, violations } => {
                rec.credentials = violations.iter().map(|v| v.credential.clone()).collect();
                return refuse(&self.shared, rec, StatusCode::FORBIDDEN, &reason);
            }
            Verdict::Forward {
                substituted,
                logged_violations,
            } => {
                for v in &logged_violations {
                    tracing::warn!(credential = %v.credential, gate = %v.gate, "placeholder forwarded unchanged (on_violation = log)");
                }
                rec.credentials = substituted;
            }
        }
        parts.uri = origin_form(&parts.uri);
        let req = Request::from_parts(parts, body);
        let result = {
            let mut guard = sender.lock().await;
            let ready = match guard.as_mut() {
                Some(s) => s.ready().await.is_ok(),
                None => false,
            };
            if !ready {
                *guard = None;
                match upstream::dial_tls(&self.shared.upstream_tls, host, self.addr).await {
                    Ok(up) => match handshake(up).await {
                        Ok(s) => *guard = Some(s),
                        Err(e) => {
                            let reason = format!("upstream {host}: {e}");
                            return refuse(&self.shared, rec, StatusCode::BAD_GATEWAY, &reason);
                        }
                    },
                    Err(e) => {
                        return refuse(&self.shared, rec, StatusCode::BAD_GATEWAY, &e.to_string())
                    }
                }
            }
            let Some(s) = guard.as_mut() else {
                let reason = format!("upstream {host}: no connection");
                return refuse(&self.shared, rec, StatusCode::BAD_GATEWAY, &reason);
            };
            s.send_request(req).await
        };
        match result {
            Ok(resp) => respond(resp, rec, &creds, &self.shared),
            Err(e) => {
                let reason = format!("upstream {host}: {e}");
                refuse(&self.shared, rec, StatusCode::BAD_GATEWAY, &reason)
            }
        }
    }
}

/// HTTP/1 handshake over an established upstream transport; drives the connection in a task.
pub(super) async fn handshake<T>(io: T) -> Result<SendRequest<Incoming>, hyper::Error>
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Send + Unpin + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(io)).await?;
    tokio::spawn(
        async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "upstream connection ended with an error");
            }
        }
        .in_current_span(),
    );
    Ok(sender)
}

/// `http://h/p?q` or `/p?q` -> `/p?q`.
pub(super) fn origin_form(uri: &Uri) -> Uri {
    uri.path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse()
        .unwrap_or_else(|_| Uri::from_static("/"))
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
