//! The WebSocket relay after a `101` (HTTP/1.1 Upgrade) or a `200` to an HTTP/2 extended
//! CONNECT: both sides are parsed as WebSocket (tungstenite's protocol layer), message by
//! message, so nothing crosses that the broker has not looked at.
//!
//! - Upstream -> guest: text and binary payloads and close reasons are scrubbed like a
//!   response body (real values become placeholders). Messages are reassembled from their
//!   fragments before scrubbing, so a value split across frames or reads is still found.
//! - Guest -> upstream: payloads are gated and substituted like a request body
//!   ([`CredentialSet::apply_body`]): the relay only ever reaches the tunnel's host, a
//!   placeholder of a credential for another host is a violation (the relay closes with
//!   1008 and a reason), and `in: ["body"]` credentials are substituted.
//! - Ping/Pong are answered by each side's own protocol layer and not relayed (they are
//!   hop-by-hop liveness; relaying them would carry payloads nobody scrubs).
//! - Anything that is not a WebSocket frame (e.g. an HTTP request for another `Host` written
//!   after the 101) is a protocol error: the relay ends and nothing of it goes upstream.
//! - A message larger than `max_message` ends the relay (bounded memory per relay).

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Bytes, Message, Utf8Bytes};
use tokio_tungstenite::WebSocketStream;

use crate::secrets::{CredentialSet, GateContext, Verdict};

/// What the relay needs to judge payloads.
pub(super) struct Relay {
    pub creds: Arc<CredentialSet>,
    /// The tunnel's (CONNECT) host: the only host the relay reaches.
    pub host: String,
    /// Port, method and path of the upgrade request: credential bindings judge every
    /// guest message as part of that request.
    pub port: u16,
    pub method: String,
    pub path: String,
    pub dialed_by_name: bool,
    /// Largest message (and frame) accepted from either side.
    pub max_message: usize,
}

/// A guest message after gating.
enum Outbound {
    Send(Message),
    Skip,
    Refuse(String),
}

impl Relay {
    /// Relays until either side closes, errs or breaks the protocol.
    pub async fn run<G, U>(self, guest: G, upstream: U)
    where
        G: AsyncRead + AsyncWrite + Unpin,
        U: AsyncRead + AsyncWrite + Unpin,
    {
        let cfg = WebSocketConfig::default()
            .max_message_size(Some(self.max_message))
            .max_frame_size(Some(self.max_message));
        let mut g = WebSocketStream::from_raw_socket(guest, Role::Server, Some(cfg)).await;
        let mut u = WebSocketStream::from_raw_socket(upstream, Role::Client, Some(cfg)).await;
        let (mut to_up, mut to_guest) = (0usize, 0usize);
        loop {
            tokio::select! {
                m = g.next() => {
                    let m = match m {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => {
                            tracing::info!(error = %e, "guest WebSocket ended");
                            break;
                        }
                        None => break,
                    };
                    match self.outbound(m) {
                        Outbound::Send(m) => {
                            to_up += 1;
                            if u.send(m).await.is_err() {
                                break;
                            }
                        }
                        Outbound::Skip => {}
                        Outbound::Refuse(reason) => {
                            tracing::warn!(%reason, "WebSocket message refused; closing the relay");
                            let reason = truncate_reason(format!("sluice: {reason}"));
                            let close = CloseFrame { code: CloseCode::Policy, reason: reason.into() };
                            let _ = g.send(Message::Close(Some(close))).await;
                            let _ = u.close(None).await;
                            break;
                        }
                    }
                }
                m = u.next() => {
                    let m = match m {
                        Some(Ok(m)) => m,
                        Some(Err(e)) => {
                            tracing::info!(error = %e, "upstream WebSocket ended");
                            break;
                        }
                        None => break,
                    };
                    if let Some(m) = self.inbound(m) {
                        to_guest += 1;
                        if g.send(m).await.is_err() {
                            break;
                        }
                    }
                }
            }
        }
        tracing::info!(
            to_upstream = to_up,
            to_guest,
            "WebSocket relay closed (messages)"
        );
    }

    /// Upstream -> guest: scrubbed. `None` = not relayed.
    fn inbound(&self, m: Message) -> Option<Message> {
        let out = match m {
            Message::Text(t) => Message::Text(text(self.scrub(t.as_bytes()))),
            Message::Binary(b) => Message::Binary(Bytes::from(self.scrub(&b))),
            Message::Close(Some(f)) => Message::Close(Some(CloseFrame {
                code: f.code,
                reason: text(self.scrub(f.reason.as_bytes())),
            })),
            Message::Close(None) => Message::Close(None),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => return None,
        };
        Some(out)
    }

    fn scrub(&self, payload: &[u8]) -> Vec<u8> {
        if self.creds.is_empty() {
            return payload.to_vec();
        }
        let (out, n) = self.creds.scrub_bytes(payload);
        if n > 0 {
            tracing::warn!(
                scrubbed = n,
                "upstream echoed credential values in a WebSocket message; replaced with placeholders"
            );
        }
        out
    }

    /// Guest -> upstream: gated and substituted like a request body.
    fn outbound(&self, m: Message) -> Outbound {
        match m {
            Message::Text(t) => match self.substitute(t.as_bytes()) {
                Ok(p) => Outbound::Send(Message::Text(text(p))),
                Err(reason) => Outbound::Refuse(reason),
            },
            Message::Binary(b) => match self.substitute(&b) {
                Ok(p) => Outbound::Send(Message::Binary(Bytes::from(p))),
                Err(reason) => Outbound::Refuse(reason),
            },
            Message::Close(Some(f)) => {
                // A close reason is never substituted; one that fails a gate goes empty.
                let reason = match self.gate(f.reason.as_bytes()) {
                    Ok(None) => f.reason,
                    _ => Utf8Bytes::from_static(""),
                };
                Outbound::Send(Message::Close(Some(CloseFrame {
                    code: f.code,
                    reason,
                })))
            }
            Message::Close(None) => Outbound::Send(Message::Close(None)),
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Outbound::Skip,
        }
    }

    /// The payload to send upstream, or the reason it may not go.
    fn substitute(&self, payload: &[u8]) -> Result<Vec<u8>, String> {
        match self.gate(payload)? {
            Some(new) => Ok(new),
            None => Ok(payload.to_vec()),
        }
    }

    /// `Ok(Some(new))` when something was substituted, `Ok(None)` to send as is.
    fn gate(&self, payload: &[u8]) -> Result<Option<Vec<u8>>, String> {
        if self.creds.is_empty() {
            return Ok(None);
        }
        let ctx = GateContext {
            target_host: &self.host,
            tls_verified: true,
            authority_matches: true,
            dialed_by_name: self.dialed_by_name,
            request: Some(crate::policy::RequestScope {
                port: self.port,
                method: &self.method,
                path: &self.path,
            }),
        };
        match self.creds.apply_body(payload, &ctx, false) {
            (Verdict::Block { reason, .. }, _) => Err(format!("WebSocket message: {reason}")),
            (
                Verdict::Forward {
                    logged_violations, ..
                },
                new,
            ) => {
                for v in &logged_violations {
                    tracing::warn!(credential = %v.credential, gate = %v.gate, "placeholder forwarded unchanged in a WebSocket message (on_violation = log)");
                }
                Ok(new.map(|n| n.to_vec()))
            }
        }
    }
}

/// Bytes that were valid UTF-8 before a scrub or substitution (which replaces whole values
/// by ASCII placeholders, or placeholders by string values) are still valid; lossy just in
/// case.
fn text(bytes: Vec<u8>) -> Utf8Bytes {
    match String::from_utf8(bytes) {
        Ok(s) => s.into(),
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned().into(),
    }
}

/// A close reason fits in 123 bytes (RFC 6455 5.5: control payload <= 125, 2 for the code).
fn truncate_reason(mut s: String) -> String {
    while s.len() > 123 {
        s.pop();
    }
    s
}
