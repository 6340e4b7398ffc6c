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
//! without extended CONNECT), and on `101` the two upgraded streams are joined by a
//! frame-parsing relay ([`super::ws_relay`]) that scrubs and substitutes inside messages.
//!
//! Only the `websocket` token is relayed: any other Upgrade (h2c, TLS, a private protocol)
//! is refused with a reason, as bytes the broker cannot parse could carry anything.
//! Extensions (`permessage-deflate`) are stripped from the offer, and an upstream that
//! negotiates one anyway is refused: compressed frames would hide values from the scrubber.
//!
//! A relay is not a detached task: it holds a slot of the VM's `max_connections` (the
//! tunnel's own for HTTP/1.1, whose connection the upgrade consumes; a fresh one per stream
//! for HTTP/2, where one connection carries many) and ends when the VM is unregistered.

use std::sync::Arc;

use http::header::{CONNECTION, HOST, UPGRADE};
use http::request::Parts;
use http::{HeaderValue, Request, Response, StatusCode, Uri};
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tracing::Instrument;

use super::body::{self, ProxyBody};
use super::response::{respond, scrub_reason_phrase};
use super::{refuse, StreamSlot};
use crate::audit::{self, AuditRecord};
use crate::secrets::CredentialSet;
use crate::state::{Shared, VmState};
use crate::upstream;

/// The extension-offer header, stripped toward the upstream (see the module doc).
const EXTENSIONS: &str = "sec-websocket-extensions";

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
    /// The port the guest asked for (bindings match it).
    pub port: u16,
    pub addr: std::net::SocketAddr,
    pub authority: &'a str,
    pub protocol: HeaderValue,
    pub guest: OnUpgrade,
    /// The guest used HTTP/2 extended CONNECT (answer `200`, not `101`).
    pub h2_guest: bool,
    pub vm: &'a Arc<VmState>,
    /// The tunnel's slot (kept by an HTTP/1.1 relay, whose connection the upgrade ends).
    pub slot: Arc<StreamSlot>,
}

/// Whether an `Upgrade` / `:protocol` token is WebSocket (the only one relayed).
fn is_websocket(protocol: &HeaderValue) -> bool {
    protocol.as_bytes().eq_ignore_ascii_case(b"websocket")
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

/// Why a `101` may not be relayed: a non-WebSocket protocol, or an extension the guest
/// was never offered (the broker strips the offer) that would hide payloads.
fn refused_101(headers: &http::HeaderMap) -> Option<String> {
    let token = headers.get(UPGRADE);
    if !token.is_some_and(is_websocket) {
        return Some("upstream switched to a protocol other than WebSocket".into());
    }
    headers.contains_key(EXTENSIONS).then(|| {
        "upstream negotiated a WebSocket extension (e.g. permessage-deflate), which the \
         broker cannot scrub through"
            .into()
    })
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
    if !is_websocket(&up.protocol) {
        let token = String::from_utf8_lossy(up.protocol.as_bytes()).into_owned();
        let reason = format!(
            "only WebSocket upgrades are relayed (the broker cannot inspect protocol {token:?})"
        );
        return refuse(shared, rec, StatusCode::BAD_REQUEST, &reason);
    }
    let slot = if up.h2_guest {
        // One HTTP/2 connection carries many relays: each counts on its own.
        let limit = up.vm.policy.connection_limit();
        match StreamSlot::acquire(&up.vm.open_streams, limit) {
            Some(s) => Arc::new(s),
            None => {
                let reason = format!("per-VM connection limit ({limit}) reached");
                return refuse(shared, rec, StatusCode::SERVICE_UNAVAILABLE, &reason);
            }
        }
    } else {
        up.slot.clone()
    };
    parts.headers.remove(EXTENSIONS);
    // Messages are judged against the credential bindings of the upgrade request.
    let request_method = parts.method.as_str().to_owned();
    let request_path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
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
    crate::fair::spawn(
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
    if let Some(reason) = refused_101(resp.headers()) {
        return refuse(shared, rec, StatusCode::BAD_GATEWAY, &reason);
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
    rec.verdict = audit::Outcome::Forwarded;
    rec.status = head.status.as_u16();
    audit::emit(&shared.events, rec);
    let relay = super::ws_relay::Relay {
        creds: creds.clone(),
        host: host.to_owned(),
        port: up.port,
        method: request_method,
        path: request_path,
        dialed_by_name: host.parse::<std::net::IpAddr>().is_err(),
        max_message: usize::try_from(up.vm.policy.body_limit()).unwrap_or(usize::MAX),
        budget: up.vm.body_budget.clone(),
    };
    let (guest, vm) = (up.guest, up.vm.clone());
    crate::fair::spawn(
        async move {
            let _slot = slot;
            let run = async move {
                let (g, u) = match tokio::try_join!(guest, upstream_upgrade) {
                    Ok(x) => x,
                    Err(e) => return tracing::info!(error = %e, "upgrade did not complete"),
                };
                relay.run(TokioIo::new(g), TokioIo::new(u)).await;
            };
            tokio::select! {
                _ = run => {}
                _ = vm.closed() => tracing::info!("VM unregistered: closing WebSocket relay"),
            }
        }
        .in_current_span(),
    );
    Response::from_parts(head, body::full(""))
}
