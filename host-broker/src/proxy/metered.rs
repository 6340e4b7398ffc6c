//! A reader whose buffered-but-unassembled bytes count against the VM's body budget (the
//! same `tokio::sync::Semaphore` as request bodies, `Policy::body_budget`).
//!
//! A WebSocket relay reassembles each message before judging it, so a guest (or upstream)
//! can make the broker hold up to `max_inspected_body` per direction per relay in partial
//! frames; with hundreds of relays that is gigabytes. Every byte read through [`Metered`]
//! takes a permit; the relay calls [`Metered::release`] when a complete message came out.
//! When the budget is exhausted the read fails with a readable reason and the relay ends;
//! other VMs are unaffected.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

pub(super) struct Metered<S> {
    inner: S,
    budget: Arc<Semaphore>,
    held: Option<OwnedSemaphorePermit>,
}

impl<S> Metered<S> {
    pub fn new(inner: S, budget: Arc<Semaphore>) -> Metered<S> {
        Metered {
            inner,
            budget,
            held: None,
        }
    }

    /// Gives back every permit held (a complete message was taken out of the buffer).
    pub fn release(&mut self) {
        self.held = None;
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Metered<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let this = &mut *self;
        std::task::ready!(Pin::new(&mut this.inner).poll_read(cx, buf))?;
        let n = buf.filled().len() - before;
        if n == 0 {
            return Poll::Ready(Ok(()));
        }
        let permits = u32::try_from(n).unwrap_or(u32::MAX);
        match this.budget.clone().try_acquire_many_owned(permits) {
            Ok(p) => {
                match this.held.as_mut() {
                    Some(h) => h.merge(p),
                    None => this.held = Some(p),
                }
                Poll::Ready(Ok(()))
            }
            Err(_) => Poll::Ready(Err(io::Error::other(
                "the VM's buffer budget (4 x max_inspected_body, shared with request bodies) \
                 is exhausted by partial WebSocket messages",
            ))),
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Metered<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}
