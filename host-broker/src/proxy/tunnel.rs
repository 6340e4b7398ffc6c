//! One intercepted CONNECT tunnel: the guest's TLS (leaf for the CONNECT host, SNI checked),
//! HTTP/1.1 or HTTP/2 by the guest's ALPN, and every request on it gated on its own.
//!
//! Authority rule: a request whose authority (HTTP/1.1 `Host`, HTTP/2 `:authority`, port
//! stripped) is not the CONNECT host never goes upstream. HTTP/1.1 gets `403`; HTTP/2 gets
//! `421 Misdirected Request` (RFC 9110 15.5.20), which tells a coalescing client to open a
//! new connection for that authority -- where it will get its own CONNECT, policy check and
//! leaf.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;

use http::header::{CONTENT_LENGTH, TE};
use http::{HeaderValue, Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio_rustls::LazyConfigAcceptor;

use super::body::ProxyBody;
use super::decode::limit_accept_encoding;
use super::headers::{host_header, host_without_port, strip_hop_by_hop};
use super::request_body::{self, Inspected};
use super::response::respond;
use super::upstream_conn::UpstreamConn;
use super::websocket;
use super::{record, refuse, HEADER_READ_TIMEOUT};
use crate::audit;
use crate::policy::RequestScope;
use crate::secrets::{GateContext, Verdict};
use crate::state::{Shared, VmState};
use crate::upstream;

/// How long a request waits for the tunnel's HTTP/1.1 upstream connection to finish the
/// previous response before it gets an extra connection of its own.
const H1_REUSE_WAIT: std::time::Duration = std::time::Duration::from_millis(20);

/// Concurrent streams a guest may open on one HTTP/2 connection.
const H2_MAX_STREAMS: u32 = 100;

type UpstreamTls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

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

fn negotiated_h2(up: &UpstreamTls) -> bool {
    up.get_ref().1.alpn_protocol() == Some(b"h2")
}

impl Tunnel {
    /// Serves the guest's TLS on `io` (the CONNECT's upgraded stream, or a captured
    /// connection) against the already verified upstream `up`.
    pub async fn intercept<I>(self, io: I, leaf: Arc<rustls::ServerConfig>, up: UpstreamTls)
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
        let guest_h2 = tls.get_ref().1.alpn_protocol() == Some(b"h2");
        let up_h2 = negotiated_h2(&up);
        tracing::debug!(guest_h2, upstream_h2 = up_h2, "tunnel protocols");
        let conn = match UpstreamConn::handshake(up, up_h2).await {
            Ok(s) => s,
            Err(e) => return tracing::info!(error = %e, "upstream HTTP handshake failed"),
        };
        let this = Arc::new(self);
        let conn = Arc::new(tokio::sync::Mutex::new(Some(conn)));
        let svc = service_fn(move |req| {
            let this = this.clone();
            let conn = conn.clone();
            async move { Ok::<_, std::convert::Infallible>(this.forward(req, &conn).await) }
        });
        let io = TokioIo::new(tls);
        let result = if guest_h2 {
            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .timer(TokioTimer::new())
                .max_concurrent_streams(H2_MAX_STREAMS)
                .enable_connect_protocol()
                .serve_connection(io, svc)
                .await
        } else {
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

    async fn forward(
        &self,
        mut req: Request<Incoming>,
        conn: &tokio::sync::Mutex<Option<UpstreamConn>>,
    ) -> Response<ProxyBody> {
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
                rec.verdict = "blocked".into();
                return refuse(&self.shared, rec, status, &reason);
            }
        };
        let h2_upgrade = websocket::extended_connect(&req);
        let upgrade = websocket::requested(&req)
            .or(h2_upgrade.clone())
            .map(|p| (p, hyper::upgrade::on(&mut req)));
        let (mut parts, body) = req.into_parts();
        let te_trailers = parts
            .headers
            .get(TE)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"trailers"));
        strip_hop_by_hop(&mut parts.headers);
        let (method, path) = (parts.method.to_string(), parts.uri.path().to_owned());
        let ctx = GateContext {
            target_host: host,
            tls_verified: true,
            authority_matches: true,
            dialed_by_name: host.parse::<IpAddr>().is_err(),
            request: Some(RequestScope {
                port: self.port,
                method: &method,
                path: &path,
            }),
        };
        // One credential snapshot per request (rotations reach open connections).
        let creds = self.vm.current_credentials();
        if !creds.is_empty() {
            limit_accept_encoding(&mut parts.headers);
        }
        let mut substituted = match creds.apply_request_headers(&mut parts.headers, &ctx) {
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
                substituted
            }
        };
        let pq = parts
            .uri
            .path_and_query()
            .map(|p| p.as_str().to_owned())
            .unwrap_or_else(|| "/".into());
        match creds.apply_request_target(&pq, &ctx, false) {
            (Verdict::Block { reason, violations }, _) => {
                rec.credentials = violations.iter().map(|v| v.credential.clone()).collect();
                let reason = format!("request target: {reason}");
                return refuse(&self.shared, rec, StatusCode::FORBIDDEN, &reason);
            }
            (Verdict::Forward { substituted: s, .. }, new) => {
                substituted.extend(s);
                if let Some(new) = new {
                    match new.parse() {
                        Ok(u) => parts.uri = u,
                        Err(_) => {
                            return refuse(
                                &self.shared,
                                rec,
                                StatusCode::BAD_REQUEST,
                                "request target invalid after substitution",
                            )
                        }
                    }
                }
            }
        }
        let cap = self.vm.policy.body_limit();
        let inspected = if upgrade.is_some() {
            // An upgrade's "body" is the upgraded stream itself (HTTP/2 extended CONNECT):
            // never buffer it; the handshake goes out without one.
            drop(body);
            Inspected::Forward {
                body: super::body::full(""),
                len: None,
                substituted: Vec::new(),
                sha256: None,
            }
        } else {
            request_body::inspect(body, &creds, &ctx, false, cap, &self.vm.body_budget).await
        };
        let body = match inspected {
            Inspected::Refuse {
                status,
                reason,
                credentials,
            } => {
                rec.credentials = credentials;
                return refuse(&self.shared, rec, status, &reason);
            }
            Inspected::Forward {
                body,
                len,
                substituted: s,
                sha256,
            } => {
                substituted.extend(s);
                if let Some(len) = len {
                    parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
                }
                if creds.signs_aws() {
                    // AWS SigV4: verify the guest's placeholder signature, re-sign for real.
                    let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
                    let pq = pq.to_owned();
                    match creds.apply_sigv4(
                        &mut parts.headers,
                        &method,
                        &pq,
                        &authority,
                        sha256.as_deref(),
                        &ctx,
                    ) {
                        Ok(s) => substituted.extend(s),
                        Err(reason) => {
                            return refuse(&self.shared, rec, StatusCode::FORBIDDEN, &reason)
                        }
                    }
                }
                body
            }
        };
        substituted.sort();
        substituted.dedup();
        rec.credentials = substituted;
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
        let result = self.send_upstream(conn, req, te_trailers, &authority).await;
        match result {
            Ok(resp) => {
                let resp = respond(resp, rec, &creds, &self.shared);
                super::http10::frame_for(resp, version, cap).await
            }
            Err(reason) => refuse(&self.shared, rec, StatusCode::BAD_GATEWAY, &reason),
        }
    }

    /// A new upstream connection (HTTP/2 or HTTP/1.1 as the upstream chooses).
    async fn dial(&self) -> Result<UpstreamConn, String> {
        let host = &self.host;
        let up = upstream::dial_tls(&self.shared.upstream_tls, host, self.addr)
            .await
            .map_err(|e| e.to_string())?;
        let h2 = negotiated_h2(&up);
        UpstreamConn::handshake(up, h2)
            .await
            .map_err(|e| format!("upstream {host}: {e}"))
    }

    /// Sends one request upstream. HTTP/2: on the shared connection, concurrently. HTTP/1.1:
    /// on the tunnel's connection when it is free, else on a one-off extra connection, so a
    /// long response (SSE) on one stream of an HTTP/2 guest never stalls its other streams.
    /// Err = the reason for a 502.
    async fn send_upstream(
        &self,
        conn: &tokio::sync::Mutex<Option<UpstreamConn>>,
        mut req: Request<ProxyBody>,
        te_trailers: bool,
        authority: &str,
    ) -> Result<Response<Incoming>, String> {
        let host = &self.host;
        let mut guard = conn.lock().await;
        let usable = match guard.as_mut() {
            Some(c) if c.is_closed() => false,
            Some(c) if c.is_h2() => c.ready().await,
            Some(_) => true,
            None => false,
        };
        if !usable {
            let mut fresh = self.dial().await?;
            fresh.ready().await;
            *guard = Some(fresh);
        }
        let Some(c) = guard.as_mut() else {
            return Err(format!("upstream {host}: no connection"));
        };
        if c.is_h2() && te_trailers {
            req.headers_mut()
                .insert(TE, HeaderValue::from_static("trailers"));
        }
        let mut one_off;
        let c = if let Some(shared) = c.shared() {
            // HTTP/2: release the lock, other streams go concurrently.
            drop(guard);
            one_off = shared;
            &mut one_off
        } else if c.is_ready_now()
            || tokio::time::timeout(H1_REUSE_WAIT, c.ready()).await == Ok(true)
        {
            let r = c.send(req, "https", authority).await;
            return r.map_err(|e| format!("upstream {host}: {e}"));
        } else {
            // HTTP/1.1 busy with another response: an extra connection for this request.
            drop(guard);
            one_off = self.dial().await?;
            if !one_off.ready().await {
                return Err(format!("upstream {host}: connection closed"));
            }
            &mut one_off
        };
        c.send(req, "https", authority)
            .await
            .map_err(|e| format!("upstream {host}: {e}"))
    }
}
