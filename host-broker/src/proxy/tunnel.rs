//! One intercepted CONNECT tunnel: the guest's TLS (leaf for the CONNECT host, SNI checked),
//! HTTP/1.1 or HTTP/2 by the guest's ALPN, and every request on it gated on its own (the
//! authority here, then [`super::gates`] with `Transport::Tls`).
//!
//! Authority rule: a request whose authority (HTTP/1.1 `Host`, HTTP/2 `:authority`, port
//! stripped) is not the CONNECT host never goes upstream. HTTP/1.1 gets `403`; HTTP/2 gets
//! `421 Misdirected Request` (RFC 9110 15.5.20), which tells a coalescing client to open a
//! new connection for that authority -- where it will get its own CONNECT, policy check and
//! leaf.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::header::TE;
use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_rustls::LazyConfigAcceptor;

use super::body::ProxyBody;
use super::gates::{self, Transport};
use super::headers::{host_header, host_without_port};
use super::response::respond;
use super::websocket;
use super::{record, refuse, refuse_as, HEADER_READ_TIMEOUT};
use crate::audit;
use crate::state::{Shared, VmState};
use crate::upstream::pool;

/// Concurrent streams a guest may open on one HTTP/2 connection.
const H2_MAX_STREAMS: u32 = 100;

pub(super) struct Tunnel {
    pub host: String,
    /// The port the guest asked for (CONNECT / captured destination); credential bindings
    /// match on it, not on the dialed address (a `resolve` override may change that).
    pub port: u16,
    pub addr: SocketAddr,
    pub vm: Arc<VmState>,
    pub shared: Arc<Shared>,
    /// The VM connection slot this tunnel holds (a WebSocket relay keeps it; see websocket).
    pub slot: Arc<super::StreamSlot>,
}

impl Tunnel {
    /// Serves the guest's TLS on `io` (the CONNECT's upgraded stream, or a captured
    /// connection). Upstream connections come from the VM's pool (the caller made sure a
    /// verified one exists), so an idle tunnel holds none of its own.
    pub async fn intercept<I>(self, io: I, leaf: Arc<rustls::ServerConfig>)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
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
                verdict: audit::Outcome::Blocked,
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
        let guest_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        tracing::debug!(guest_h2, "tunnel protocols");
        let this = Arc::new(self);
        let svc = service_fn(move |req| {
            let this = this.clone();
            async move { Ok::<_, std::convert::Infallible>(this.forward(req).await) }
        });
        let result = if guest_h2 {
            // Closed after H2_IDLE_TIMEOUT with no byte either way (HTTP/1.1: the header
            // read timeout covers an idle keep-alive).
            let (tls, counts) = crate::idle::Activity::new(tls);
            let conn = hyper::server::conn::http2::Builder::new(crate::fair::Executor)
                .timer(TokioTimer::new())
                .max_concurrent_streams(H2_MAX_STREAMS)
                .enable_connect_protocol()
                .serve_connection(TokioIo::new(tls), svc);
            tokio::select! {
                r = conn => r,
                _ = crate::idle::idle(&counts, crate::idle::H2_IDLE_TIMEOUT) => {
                    tracing::info!("closing idle HTTP/2 connection");
                    Ok(())
                }
            }
        } else {
            let io = TokioIo::new(tls);
            hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(true)
                .serve_connection(io, svc)
                .with_upgrades()
                .await
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "intercepted connection ended with an error");
        }
    }

    /// The authority the guest asked for, if it is this tunnel's host. Err = the reason.
    fn check_authority(&self, req: &Request<Incoming>) -> Result<String, String> {
        let host = &self.host;
        let uri_auth = req.uri().authority().map(|a| a.as_str().to_owned());
        let header = host_header(req.headers());
        let has_host = req.headers().contains_key(http::header::HOST);
        let claimed = match (&uri_auth, &header, has_host) {
            // Host repeated or not UTF-8.
            (_, None, true) => return Err("repeated or invalid Host header".into()),
            (Some(u), Some(h), _) if host_without_port(u) != *h => {
                return Err(format!("URI authority {u} and Host {h} disagree"))
            }
            (Some(u), _, _) => u.clone(),
            (None, Some(_), _) => req
                .headers()
                .get(http::header::HOST)
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_owned(),
            (None, None, false) => return Err("request has no Host header".into()),
        };
        if host_without_port(&claimed) == *host {
            Ok(claimed)
        } else {
            Err(format!(
                "request authority {claimed} does not match the CONNECT host {host}"
            ))
        }
    }

    async fn forward(&self, mut req: Request<Incoming>) -> Response<ProxyBody> {
        let host = &self.host;
        let mut rec = record(&self.vm, &req, host);
        let h2_guest = req.version() == Version::HTTP_2;
        let authority = match self.check_authority(&req) {
            Ok(a) => a,
            Err(reason) => {
                let status = if h2_guest {
                    StatusCode::MISDIRECTED_REQUEST
                } else {
                    StatusCode::FORBIDDEN
                };
                return refuse_as(&self.shared, rec, audit::Outcome::Blocked, status, &reason);
            }
        };
        let h2_upgrade = websocket::extended_connect(&req);
        let upgrade = websocket::requested(&req)
            .or(h2_upgrade.clone())
            .map(|p| (p, hyper::upgrade::on(&mut req)));
        let (parts, body) = req.into_parts();
        let te_trailers = parts
            .headers
            .get(TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        // One credential snapshot per request (rotations reach open connections).
        let creds = self.vm.current_credentials();
        let transport = Transport::Tls {
            port: self.port,
            authority: &authority,
            upgrade: upgrade.is_some(),
        };
        let (parts, body) = match gates::run(parts, body, host, transport, &self.vm, &creds).await {
            Ok(g) => {
                rec.credentials = g.substituted;
                (g.parts, g.body)
            }
            Err(refusal) => return refusal.answer(&self.shared, rec),
        };
        if let Some((protocol, guest)) = upgrade {
            let up = websocket::UpgradeRequest {
                host,
                port: self.port,
                addr: self.addr,
                authority: &authority,
                protocol,
                guest,
                h2_guest: h2_upgrade.is_some(),
                vm: &self.vm,
                slot: self.slot.clone(),
            };
            return websocket::forward(up, parts, body, rec, &creds, &self.shared).await;
        }
        let version = parts.version;
        let req = Request::from_parts(parts, body);
        let result = self.send_upstream(req, te_trailers, &authority).await;
        match result {
            Ok(resp) => {
                let resp = respond(resp, rec, &creds, &self.shared);
                let cap = self.vm.policy.body_limit();
                super::http10::frame_for(resp, version, cap).await
            }
            Err(reason) => refuse(&self.shared, rec, StatusCode::BAD_GATEWAY, &reason),
        }
    }

    /// Sends one request upstream on a pooled connection of this VM for this host and
    /// address (an HTTP/2 one concurrently, an idle HTTP/1.1 one exclusively), or on a new
    /// verified one when none is free; the connection goes back to the pool once the
    /// response head is in. No lock is held while a request is in flight, so a slow
    /// response never delays another stream. Err = the reason for a 502.
    async fn send_upstream(
        &self,
        mut req: Request<ProxyBody>,
        te_trailers: bool,
        authority: &str,
    ) -> Result<Response<Incoming>, String> {
        let (host, addr) = (&self.host, self.addr);
        let pool = &self.vm.upstream_pool;
        let mut c = match pool.checkout(host, addr) {
            Some(c) => c,
            None => pool::dial(&self.shared.upstream_tls, host, addr).await?,
        };
        if c.is_h2() && te_trailers {
            req.headers_mut()
                .insert(TE, HeaderValue::from_static("trailers"));
        }
        let r = c.send(req, "https", authority).await;
        pool.checkin(host, addr, c);
        r.map_err(|e| format!("upstream {host}: {e}"))
    }
}
