//! Response bodies: our own short answers, and upstream bodies counted for the audit record.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body_util::{combinators::BoxBody, BodyExt, Full};
use hyper::body::{Body, Frame, Incoming, SizeHint};

use crate::audit::PendingAudit;

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
pub fn counted(inner: Incoming, audit: PendingAudit) -> ProxyBody {
    Counted { inner, audit }.boxed()
}

struct Counted {
    inner: Incoming,
    audit: PendingAudit,
}

impl Body for Counted {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(d) = frame.data_ref() {
                    this.audit.add(d.len() as u64);
                }
                Poll::Ready(Some(Ok(frame)))
            }
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(Box::new(e)))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
