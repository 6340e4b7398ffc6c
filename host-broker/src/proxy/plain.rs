//! Absolute-form `http://host/...` requests: policy applies as for CONNECT, but nothing is
//! ever substituted over plaintext. A placeholder in such a request is a violation
//! (`CredentialSet::check_plaintext_headers`): blocked by default, or forwarded unchanged
//! with `on_violation = "log"`. A Host header naming another host than the URI is refused.
//! The gates are the TLS path's ([`super::gates`], run with `Transport::Plaintext`).

use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::body::ProxyBody;
use super::gates::{self, Transport};
use super::headers::{host_header, host_without_port};
use super::response::respond;
use super::{allowed_target, record, refuse};
use crate::state::{Shared, VmState};
use crate::upstream::{self, conn::UpstreamConn};

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
            "request URI has no host",
        );
    };
    let host = host_without_port(authority.as_str());
    let port = authority.port_u16().unwrap_or(80);
    let mut rec = record(&vm, &req, &host);
    if host.is_empty() {
        return refuse(
            &shared,
            rec,
            StatusCode::BAD_REQUEST,
            "request URI has no host",
        );
    }
    let addr = match allowed_target(&vm, &shared, &mut rec, &host, port).await {
        Ok(a) => a,
        Err(refused) => return refused,
    };
    let (mut parts, body) = req.into_parts();
    match host_header(&parts.headers) {
        None if !parts.headers.contains_key(http::header::HOST) => {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                parts.headers.insert(http::header::HOST, v);
            }
        }
        Some(h) if h == host => {}
        other => {
            let reason = format!(
                "Host header {} does not match the request URI host {host}",
                other.as_deref().unwrap_or("(repeated or invalid)")
            );
            return refuse(&shared, rec, StatusCode::FORBIDDEN, &reason);
        }
    }
    let creds = vm.current_credentials();
    let (parts, body) =
        match gates::run(parts, body, &host, Transport::Plaintext, &vm, &creds).await {
            // Nothing is substituted over plaintext: the record names no credential.
            Ok(g) => (g.parts, g.body),
            Err(refusal) => return refusal.answer(&shared, rec),
        };
    let tcp = match upstream::dial(addr).await {
        Ok(t) => t,
        Err(e) => return refuse(&shared, rec, StatusCode::BAD_GATEWAY, &e.to_string()),
    };
    let mut conn = match UpstreamConn::handshake(tcp, false).await {
        Ok(s) => s,
        Err(e) => {
            let reason = format!("upstream {host}: {e}");
            return refuse(&shared, rec, StatusCode::BAD_GATEWAY, &reason);
        }
    };
    let version = parts.version;
    let req = Request::from_parts(parts, body);
    match conn.send(req, "http", authority.as_str()).await {
        Ok(resp) => {
            let resp = respond(resp, rec, &creds, &shared);
            let cap = vm.policy.body_limit();
            super::http10::frame_for(resp, version, cap).await
        }
        Err(e) => {
            let reason = format!("upstream {host}: {e}");
            refuse(&shared, rec, StatusCode::BAD_GATEWAY, &reason)
        }
    }
}
