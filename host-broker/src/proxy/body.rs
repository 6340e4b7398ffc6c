//! Response bodies: our own short answers, and upstream bodies streamed back to the guest,
//! counted for the audit record and (when the VM has credentials) scrubbed: any real value an
//! upstream echoes in a body or trailer goes back to the guest as its placeholder. Bodies
//! are never buffered: each upstream frame yields a guest frame as soon as it is scrubbed
//! (SSE and long-poll keep working), holding back at most the scrubber's window.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use super::decode::{Decoder, Reencoder};
use crate::audit::PendingAudit;
use crate::secrets::{CredentialSet, Scrubber};

/// Error type of every body the proxy sends to the guest.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;
/// The body type of every response the proxy sends to the guest.
pub type ProxyBody = BoxBody<Bytes, BoxError>;

/// A fixed body.
pub fn full(data: impl Into<Bytes>) -> ProxyBody {
    Full::new(data.into())
        .map_err(|never| match never {})
        .boxed()
}

/// How an upstream body is scrubbed.
#[derive(Debug)]
pub(super) struct Scrubbing {
    pub creds: Arc<CredentialSet>,
    pub scrubber: Scrubber,
    /// Content decoding applied before scrubbing (the guest gets identity).
    pub decoder: Option<Decoder>,
    /// A gzip file (`Content-Type: application/gzip`) is re-compressed after scrubbing.
    pub reencoder: Option<Reencoder>,
}

impl Scrubbing {
    /// Scrubs decoded bytes; re-compresses them when the body is a gzip file.
    fn scrub(&mut self, plain: &[u8]) -> Result<Vec<u8>, BoxError> {
        let out = self.scrubber.push(plain);
        match self.reencoder.as_mut() {
            Some(r) if !out.is_empty() => Ok(r.push(&out)?),
            _ => Ok(out),
        }
    }
}

/// Wraps an upstream body; the audit record is emitted when the body is done or dropped.
/// With scrubbing the length may change: the caller must drop `Content-Length`.
pub(super) fn counted(
    inner: Incoming,
    audit: PendingAudit,
    scrubbing: Option<Scrubbing>,
) -> ProxyBody {
    Counted {
        inner,
        audit,
        scrubbing,
        held: None,
        done: false,
    }
    .boxed()
}

struct Counted {
    inner: Incoming,
    audit: PendingAudit,
    scrubbing: Option<Scrubbing>,
    /// A trailers frame waiting until the scrubber's tail has been sent.
    held: Option<Frame<Bytes>>,
    done: bool,
}

impl Counted {
    fn data(&mut self, d: Vec<u8>) -> Frame<Bytes> {
        self.audit.add(d.len() as u64);
        Frame::data(Bytes::from(d))
    }

    /// End of the upstream body (or trailers): flush decoder and scrubber.
    fn tail(&mut self) -> Result<Vec<u8>, BoxError> {
        let Some(s) = self.scrubbing.as_mut() else {
            return Ok(Vec::new());
        };
        let mut out = match s.decoder.take() {
            Some(d) => s.scrub(&d.finish()?)?,
            None => Vec::new(),
        };
        let rest = s.scrubber.finish();
        match s.reencoder.take() {
            Some(mut r) => {
                out.extend(r.push(&rest)?);
                out.extend(r.finish()?);
            }
            None => out.extend(rest),
        }
        Ok(out)
    }
}

impl Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        loop {
            if let Some(f) = this.held.take() {
                return Poll::Ready(Some(Ok(f)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            // Decoded output is bounded per call: finish held-back input first.
            if let Some(s) = this.scrubbing.as_mut() {
                if let Some(d) = s.decoder.as_mut().filter(|d| d.has_pending()) {
                    let plain = match d.drain() {
                        Ok(p) => p,
                        Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
                    };
                    let out = match s.scrub(&plain) {
                        Ok(o) => o,
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    };
                    if out.is_empty() {
                        continue;
                    }
                    return Poll::Ready(Some(Ok(this.data(out))));
                }
            }
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(None) => {
                    this.done = true;
                    let tail = match this.tail() {
                        Ok(t) => t,
                        Err(e) => return Poll::Ready(Some(Err(e))),
                    };
                    if tail.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(this.data(tail))));
                }
            };
            let frame = match frame.into_data() {
                Ok(data) => match this.scrubbing.as_mut() {
                    None => {
                        this.audit.add(data.len() as u64);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Some(s) => {
                        let plain = match s.decoder.as_mut() {
                            Some(d) => match d.push(&data) {
                                Ok(p) => p,
                                Err(e) => return Poll::Ready(Some(Err(Box::new(e)))),
                            },
                            None => data.to_vec(),
                        };
                        let out = match s.scrub(&plain) {
                            Ok(o) => o,
                            Err(e) => return Poll::Ready(Some(Err(e))),
                        };
                        if out.is_empty() {
                            continue; // all held back: read more
                        }
                        return Poll::Ready(Some(Ok(this.data(out))));
                    }
                },
                Err(frame) => frame,
            };
            // Trailers: scrub them, and flush the body's tail first.
            let frame = match (frame.into_trailers(), this.scrubbing.as_ref()) {
                (Ok(mut t), Some(s)) => {
                    let n = s.creds.scrub_response_headers(&mut t);
                    if n > 0 {
                        tracing::warn!(scrubbed = n, "upstream echoed credential values in trailers; replaced with placeholders");
                    }
                    Frame::trailers(t)
                }
                (Ok(t), None) => Frame::trailers(t),
                (Err(_), _) => continue, // unknown frame kind: drop
            };
            let tail = match this.tail() {
                Ok(t) => t,
                Err(e) => return Poll::Ready(Some(Err(e))),
            };
            if tail.is_empty() {
                return Poll::Ready(Some(Ok(frame)));
            }
            this.held = Some(frame);
            return Poll::Ready(Some(Ok(this.data(tail))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none()
            && (self.done || (self.scrubbing.is_none() && self.inner.is_end_stream()))
    }

    fn size_hint(&self) -> SizeHint {
        if self.scrubbing.is_some() {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}
