//! Absolute-form `http://host/...` requests: policy applies as for CONNECT, but nothing is
//! ever substituted over plaintext. A placeholder in such a request is a violation
//! (`CredentialSet::check_plaintext_headers`): blocked by default, or forwarded unchanged
//! with `on_violation = "log"`. A Host header naming another host than the URI is refused.

use std::net::IpAddr;
use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode};
use hyper::body::Incoming;

use super::body::ProxyBody;
use super::headers::{host_header, host_without_port, strip_hop_by_hop};
use super::request_body::{self, Inspected};
use super::response::respond;
use super::upstream_conn::UpstreamConn;
use super::{allowed_target, record, refuse};
use crate::secrets::{GateContext, Verdict};
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
    strip_hop_by_hop(&mut parts.headers);
    let ctx = GateContext {
        target_host: &host,
        tls_verified: false,
        authority_matches: true,
        dialed_by_name: host.parse::<IpAddr>().is_err(),
        // Plaintext never carries a value, whatever the binding.
        request: None,
    };
    let creds = vm.current_credentials();
    if !creds.is_empty() {
        super::decode::limit_accept_encoding(&mut parts.headers);
    }
    match creds.check_plaintext_headers(&parts.headers, &ctx) {
        Verdict::Block { reason, violations } => {
            rec.credentials = violations.iter().map(|v| v.credential.clone()).collect();
            return refuse(&shared, rec, StatusCode::FORBIDDEN, &reason);
        }
        Verdict::Forward {
            logged_violations, ..
        } => {
            for v in &logged_violations {
                tracing::warn!(credential = %v.credential, gate = %v.gate, "placeholder sent over plaintext unchanged (on_violation = log)");
            }
        }
    }
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    if let (Verdict::Block { reason, violations }, _) = creds.apply_request_target(&pq, &ctx, true)
    {
        rec.credentials = violations.iter().map(|v| v.credential.clone()).collect();
        let reason = format!("request target: {reason}");
        return refuse(&shared, rec, StatusCode::FORBIDDEN, &reason);
    }
    let cap = vm.policy.body_limit();
    let body = match request_body::inspect(body, &creds, &ctx, true, cap, &vm.body_budget).await {
        Inspected::Refuse {
            status,
            reason,
            credentials,
        } => {
            rec.credentials = credentials;
            return refuse(&shared, rec, status, &reason);
        }
        Inspected::Forward { body, .. } => body,
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
            super::http10::frame_for(resp, version, cap).await
        }
        Err(e) => {
            let reason = format!("upstream {host}: {e}");
            refuse(&shared, rec, StatusCode::BAD_GATEWAY, &reason)
        }
    }
}
