//! Request bodies: buffered (up to the policy's `max_inspected_body`) so that placeholders
//! are found in any framing (Content-Length, chunked, HTTP/2 DATA frames, split anywhere)
//! *before* a byte goes upstream, then substituted (`in: ["body"]`) and re-framed with a
//! recomputed Content-Length.
//!
//! Why buffer rather than stream: a streaming rewrite has already sent the bytes before a
//! placeholder when it finds one toward a wrong host, and it cannot recompute Content-Length.
//! The cost is memory (bounded by the cap, per request) and latency for uploads; VMs without
//! credentials stream bodies untouched.
//!
//! Beyond the cap: if a credential that substitutes in bodies is cleared for this host the
//! request is refused (`413`, reason names the cap) rather than sent unsubstituted; otherwise
//! the first `cap` bytes are inspected and the rest streams through uninspected.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::body::{BoxError, ProxyBody};
use crate::secrets::{CredentialSet, GateContext, Verdict};

/// How long the guest may pause between two body frames while we buffer.
const FRAME_TIMEOUT: Duration = Duration::from_secs(30);

/// A body ready for the upstream, or a refusal.
#[derive(Debug)]
pub(super) enum Inspected {
    /// Forward this body; `len` is the new exact length when the body was buffered.
    Forward {
        body: ProxyBody,
        len: Option<u64>,
        substituted: Vec<String>,
        /// Hex SHA-256 of the whole body, when it was buffered and the VM re-signs AWS
        /// requests (`CredentialSet::apply_sigv4`).
        sha256: Option<String>,
    },
    Refuse {
        status: StatusCode,
        reason: String,
        credentials: Vec<String>,
    },
}

/// Inspects `body` under the gates of `ctx`. `plaintext`: never substitute.
pub(super) async fn inspect(
    body: Incoming,
    creds: &CredentialSet,
    ctx: &GateContext<'_>,
    plaintext: bool,
    cap: u64,
    budget: &Arc<Semaphore>,
) -> Inspected {
    if creds.is_empty() || body.is_end_stream() {
        let sha256 = (body.is_end_stream() && creds.signs_aws())
            .then(|| crate::secrets::sigv4::EMPTY_SHA256.to_owned());
        return Inspected::Forward {
            body: passthrough(body),
            len: None,
            substituted: Vec::new(),
            sha256,
        };
    }
    let mut body = body;
    let mut buf = BytesMut::new();
    let mut overflow: Option<Bytes> = None;
    // Bytes buffered count against the VM's budget until the body has been sent.
    let mut held: Option<OwnedSemaphorePermit> = None;
    loop {
        let frame = match tokio::time::timeout(FRAME_TIMEOUT, body.frame()).await {
            Err(_) => return refuse(StatusCode::REQUEST_TIMEOUT, "request body stalled".into()),
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return refuse(StatusCode::BAD_REQUEST, format!("request body: {e}"));
            }
            Ok(Some(Ok(f))) => f,
        };
        // Request trailers are dropped: the buffered body is re-framed with a length.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if (buf.len() + data.len()) as u64 > cap {
            overflow = Some(data);
            break;
        }
        let Some(p) = u32::try_from(data.len())
            .ok()
            .and_then(|n| budget.clone().try_acquire_many_owned(n).ok())
        else {
            return refuse(
                StatusCode::SERVICE_UNAVAILABLE,
                "this VM's request-body inspection budget is exhausted (too many large \
                 uploads at once); retry later"
                    .into(),
            );
        };
        match held.as_mut() {
            Some(h) => h.merge(p),
            None => held = Some(p),
        }
        buf.extend_from_slice(&data);
    }
    let (verdict, new) = creds.apply_body(&buf, ctx, plaintext);
    let substituted = match verdict {
        Verdict::Block { reason, violations } => {
            return Inspected::Refuse {
                status: StatusCode::FORBIDDEN,
                reason: format!("request body: {reason}"),
                credentials: violations.into_iter().map(|v| v.credential).collect(),
            }
        }
        Verdict::Forward {
            substituted,
            logged_violations,
        } => {
            for v in &logged_violations {
                tracing::warn!(credential = %v.credential, gate = %v.gate, "placeholder in body forwarded unchanged (on_violation = log)");
            }
            substituted
        }
    };
    if let Some(first) = overflow {
        if !plaintext && creds.substitutes_bodies_for(ctx) {
            return refuse(
                StatusCode::PAYLOAD_TOO_LARGE,
                format!(
                    "request body larger than max_inspected_body ({cap} bytes): credential \
                     substitution in bodies needs the whole body"
                ),
            );
        }
        tracing::info!(
            cap,
            "request body beyond the inspection cap: rest streamed uninspected"
        );
        let mut prefix = buf;
        prefix.extend_from_slice(&first);
        return Inspected::Forward {
            body: Prefixed {
                prefix: Some(prefix.freeze()),
                rest: body,
                _held: held,
            }
            .boxed(),
            len: None,
            substituted,
            sha256: None,
        };
    }
    let out: Bytes = match new {
        Some(v) => Bytes::copy_from_slice(&v),
        None => buf.freeze(),
    };
    let sha256 = creds
        .signs_aws()
        .then(|| crate::secrets::sigv4::sha256_hex(&out));
    Inspected::Forward {
        sha256,
        len: Some(out.len() as u64),
        body: Budgeted {
            data: Some(out),
            held,
        }
        .boxed(),
        substituted,
    }
}

/// A buffered body holding its share of the VM's budget until it is sent or dropped.
struct Budgeted {
    data: Option<Bytes>,
    held: Option<OwnedSemaphorePermit>,
}

impl Body for Budgeted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let frame = self.data.take().map(|d| Ok(Frame::data(d)));
        self.held = None; // sent: release the budget
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.data.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.data.as_ref().map_or(0, |d| d.len() as u64))
    }
}

fn refuse(status: StatusCode, reason: String) -> Inspected {
    Inspected::Refuse {
        status,
        reason,
        credentials: Vec::new(),
    }
}

/// An uninspected body, boxed.
pub(super) fn passthrough(body: Incoming) -> ProxyBody {
    body.map_err(|e| Box::new(e) as BoxError).boxed()
}

/// An inspected prefix followed by the uninspected rest.
struct Prefixed {
    prefix: Option<Bytes>,
    rest: Incoming,
    _held: Option<OwnedSemaphorePermit>,
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(p) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(p))));
        }
        Pin::new(&mut self.rest)
            .poll_frame(cx)
            .map_err(|e| Box::new(e) as BoxError)
    }

    fn is_end_stream(&self) -> bool {
        self.prefix.is_none() && self.rest.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}
