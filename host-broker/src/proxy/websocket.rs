//! HTTP/1.1 `Upgrade` (WebSocket) inside an intercepted tunnel, and its HTTP/2 form
//! (RFC 8441 extended CONNECT with `:protocol`).
//!
//! An HTTP/2 guest's extended CONNECT is translated to an HTTP/1.1 Upgrade toward the
//! upstream (`GET` + `Connection: upgrade` + `Upgrade: <protocol>`, with a fresh
//! `Sec-WebSocket-Key` when the guest sent none, as RFC 8441 has none); the upstream's `101`
//! becomes `200` on the guest's stream. WebSocket frames are the same in both, so the
//! relay needs no translation.
//!
//! The upgrade request is an ordinary request first: authority check, header gates and
//! substitution (e.g. `Authorization` on the handshake) all happen in the caller. It then
//! goes to the upstream on a *fresh* HTTP/1.1 connection (Upgrade does not exist in HTTP/2
//! without extended CONNECT), and on `101` the two upgraded streams are joined and bytes are
//! relayed as they are -- no substitution or scrubbing inside WebSocket frames.

use std::sync::Arc;

use http::header::{CONNECTION, HOST, UPGRADE};
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::Instrument;

use super::body::{self, ProxyBody};
use super::refuse;
use super::response::{respond, scrub_reason_phrase};
use crate::audit::{self, AuditRecord};
use crate::secrets::CredentialSet;
use crate::state::Shared;
use crate::upstream;

/// The `Upgrade` header of an HTTP/1.1 request that asks for one (Connection: upgrade).
pub(super) fn requested(req: &Request<hyper::body::Incoming>) -> Option<HeaderValue> {
    if req.version() != http::Version::HTTP_11 {
        return None;
    }
    let conn_upgrade = req
        .headers()
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|t| t.trim().eq_ignore_ascii_case("upgrade"));
    if !conn_upgrade {
        return None;
    }
    req.headers().get(UPGRADE).cloned()
}

/// What the caller established for this upgrade request.
pub(super) struct UpgradeRequest<'a> {
    pub host: &'a str,
    pub addr: std::net::SocketAddr,
    pub authority: &'a str,
    pub protocol: HeaderValue,
    pub guest: OnUpgrade,
    /// The guest used HTTP/2 extended CONNECT (answer `200`, not `101`).
    pub h2_guest: bool,
}

/// The `:protocol` of an HTTP/2 extended CONNECT, as an `Upgrade` header value.
pub(super) fn extended_connect(req: &Request<hyper::body::Incoming>) -> Option<HeaderValue> {
    if req.method() != http::Method::CONNECT || req.version() != http::Version::HTTP_2 {
        return None;
    }
    let p = req.extensions().get::<hyper::ext::Protocol>()?;
    HeaderValue::from_str(p.as_str()).ok()
}

/// A `Sec-WebSocket-Key` (16 bytes, base64). It only needs to be unpredictable enough to
/// defeat caching intermediaries, so std's randomly keyed hasher is sufficient.
fn websocket_key() -> HeaderValue {
    use base64::Engine;
    use std::hash::{BuildHasher, Hasher};
    let mut bytes = [0u8; 16];
    for half in bytes.chunks_mut(8) {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(0x5eed);
        half.copy_from_slice(&h.finish().to_le_bytes());
    }
    let key = base64::engine::general_purpose::STANDARD.encode(bytes);
    HeaderValue::from_str(&key).unwrap_or(HeaderValue::from_static("c2x1aWNlLXdzLWtleS0wMQ=="))
}

/// Sends the (already gated) upgrade request upstream and, on `101`, relays the streams.
pub(super) async fn forward(
    up: UpgradeRequest<'_>,
    mut parts: Parts,
    body: ProxyBody,
    rec: AuditRecord,
    creds: &Arc<CredentialSet>,
    shared: &Arc<Shared>,
) -> Response<ProxyBody> {
    let host = up.host;
    let mut h1_only = (*shared.upstream_tls).clone();
    h1_only.alpn_protocols = vec![b"http/1.1".to_vec()];
    let tls = match upstream::dial_tls(&Arc::new(h1_only), host, up.addr).await {
        Ok(t) => t,
        Err(e) => return refuse(shared, rec, StatusCode::BAD_GATEWAY, &e.to_string()),
    };
    let (mut sender, conn) = match hyper::client::conn::http1::handshake(TokioIo::new(tls)).await {
        Ok(x) => x,
        Err(e) => {
            let reason = format!("upstream {host}: {e}");
            return refuse(shared, rec, StatusCode::BAD_GATEWAY, &reason);
        }
    };
    tokio::spawn(
        async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "upstream upgrade connection ended with an error");
            }
        }
        .in_current_span(),
    );
    parts.version = http::Version::HTTP_11;
    if up.h2_guest {
        parts.method = http::Method::GET;
        if !parts.headers.contains_key("sec-websocket-key") {
            parts.headers.insert("sec-websocket-key", websocket_key());
        }
    }
    parts.uri = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/")
        .parse()
        .unwrap_or_else(|_| Uri::from_static("/"));
    if !parts.headers.contains_key(HOST) {
        if let Ok(v) = HeaderValue::from_str(up.authority) {
            parts.headers.insert(HOST, v);
        }
    }
    parts
        .headers
        .insert(CONNECTION, HeaderValue::from_static("upgrade"));
    parts.headers.insert(UPGRADE, up.protocol.clone());
    let mut resp = match sender.send_request(Request::from_parts(parts, body)).await {
        Ok(r) => r,
        Err(e) => {
            let reason = format!("upstream {host}: {e}");
            return refuse(shared, rec, StatusCode::BAD_GATEWAY, &reason);
        }
    };
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        return respond(resp, rec, creds, shared);
    }
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let (mut head, _) = resp.into_parts();
    // The upstream's Upgrade token goes back to the guest: scrubbed like any header.
    let mut protocol = http::HeaderMap::new();
    if let Some(p) = head.headers.get(UPGRADE) {
        protocol.insert(UPGRADE, p.clone());
        creds.scrub_response_headers(&mut protocol);
    }
    let protocol = protocol.remove(UPGRADE);
    super::headers::strip_hop_by_hop(&mut head.headers);
    creds.scrub_response_headers(&mut head.headers);
    scrub_reason_phrase(&mut head.extensions, creds);
    if up.h2_guest {
        // RFC 8441: success is a 2xx on the stream; no connection-specific headers.
        head.status = StatusCode::OK;
        head.version = http::Version::HTTP_2;
        head.headers.remove("sec-websocket-accept");
    } else {
        head.headers
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        if let Some(p) = protocol {
            head.headers.insert(UPGRADE, p);
        }
    }
    let mut rec = rec;
    rec.verdict = "forwarded".into();
    rec.status = head.status.as_u16();
    audit::emit(&shared.events, rec);
    let guest = up.guest;
    tokio::spawn(
        async move {
            let (g, u) = match tokio::try_join!(guest, upstream_upgrade) {
                Ok(x) => x,
                Err(e) => return tracing::info!(error = %e, "upgrade did not complete"),
            };
            let (mut g, mut u) = (TokioIo::new(g), TokioIo::new(u));
            match tokio::io::copy_bidirectional(&mut g, &mut u).await {
                Ok((to_up, to_guest)) => {
                    tracing::info!(to_upstream = to_up, to_guest, "upgraded stream closed")
                }
                Err(e) => tracing::debug!(error = %e, "upgraded stream ended with an error"),
            }
        }
        .in_current_span(),
    );
    Response::from_parts(head, body::full(""))
}
