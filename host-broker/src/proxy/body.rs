//! Response bodies: our own short answers, and upstream bodies streamed back to the guest,
//! counted for the audit record and (when the VM has credentials) scrubbed: any real value an
//! upstream echoes in a body goes back to the guest as its placeholder.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::audit::PendingAudit;
use crate::secrets::Scrubber;

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

/// Wraps an upstream body; the audit record is emitted when the body is done or dropped.
/// With a scrubber the length may change: the caller must drop `Content-Length`.
pub fn counted(inner: Incoming, audit: PendingAudit, scrubber: Option<Scrubber>) -> ProxyBody {
    Counted {
        inner,
        audit,
        scrubber,
        held: None,
        done: false,
    }
    .boxed()
}

struct Counted {
    inner: Incoming,
    audit: PendingAudit,
    scrubber: Option<Scrubber>,
    /// A trailers frame waiting until the scrubber's tail has been sent.
    held: Option<Frame<Bytes>>,
    done: bool,
}

impl Counted {
    fn data(&mut self, d: Vec<u8>) -> Frame<Bytes> {
        self.audit.add(d.len() as u64);
        Frame::data(Bytes::from(d))
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
            let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Some(Err(Box::new(e)))),
                Poll::Ready(Some(Ok(frame))) => frame,
                Poll::Ready(None) => {
                    this.done = true;
                    let tail = this
                        .scrubber
                        .as_mut()
                        .map(|s| s.finish())
                        .unwrap_or_default();
                    if tail.is_empty() {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Ok(this.data(tail))));
                }
            };
            let frame = match frame.into_data() {
                Ok(data) => match this.scrubber.as_mut() {
                    None => {
                        this.audit.add(data.len() as u64);
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    Some(s) => {
                        let out = s.push(&data);
                        if out.is_empty() {
                            continue; // all held back: read more
                        }
                        return Poll::Ready(Some(Ok(this.data(out))));
                    }
                },
                Err(frame) => frame,
            };
            // Trailers: flush the scrubber's tail first.
            let tail = this
                .scrubber
                .as_mut()
                .map(|s| s.finish())
                .unwrap_or_default();
            if tail.is_empty() {
                return Poll::Ready(Some(Ok(frame)));
            }
            this.held = Some(frame);
            return Poll::Ready(Some(Ok(this.data(tail))));
        }
    }

    fn is_end_stream(&self) -> bool {
        self.held.is_none()
            && (self.done || (self.scrubber.is_none() && self.inner.is_end_stream()))
    }

    fn size_hint(&self) -> SizeHint {
        if self.scrubber.is_some() {
            SizeHint::default()
        } else {
            self.inner.size_hint()
        }
    }
}
