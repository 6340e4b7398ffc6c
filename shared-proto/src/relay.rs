//! Copying both directions between two byte streams, with buffers that follow the traffic.
//!
//! `tokio::io::copy_bidirectional` holds two fixed 8 KiB buffers per relay: an idle tunnel
//! pays 16 KiB for them, and a bulk transfer moves 8 KiB per read and per write, so a
//! 100 MiB download cost the guest agent about 39,000 `recvfrom` and as many `sendto`
//! calls (issue 13). Here each direction starts with [`SMALL`] bytes, doubles up to
//! [`LARGE`] whenever a read fills its buffer, and drops back to [`SMALL`] once traffic is
//! small again, so idle and interactive tunnels stay small and bulk moves 64 KiB a syscall.
//!
//! Semantics are those of `copy_bidirectional`: when one side reaches end-of-file, the
//! other side's writer is flushed and shut down; the relay ends when both directions have,
//! with the byte counts (a to b, b to a), or at the first error.

use std::future::poll_fn;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Buffer size a direction starts with and returns to.
pub const SMALL: usize = 4 * 1024;
/// Largest buffer a direction grows to (one tunnel chunk, see [`crate::tunnel::MAX_CHUNK`]).
pub const LARGE: usize = 64 * 1024;

/// One direction's state.
#[derive(Debug, Default)]
struct Pump {
    /// Allocated on the first read; `buf[pos..end]` is read and not yet written.
    buf: Vec<u8>,
    pos: usize,
    end: usize,
    /// Bytes the last read returned (decides shrinking).
    last_read: usize,
    read_done: bool,
    /// Written since the last flush.
    unflushed: bool,
    done: bool,
    total: u64,
}

impl Pump {
    /// Resizes the (drained) buffer for the next read.
    fn size_for_next_read(&mut self) {
        let len = self.buf.len();
        if len == 0 {
            self.buf = vec![0; SMALL];
        } else if self.last_read == len && len < LARGE {
            // The read filled the buffer: more is likely waiting.
            self.buf.resize((len * 2).min(LARGE), 0);
        } else if len > SMALL && self.last_read <= SMALL / 2 {
            self.buf = vec![0; SMALL];
        }
    }

    fn poll_copy<R, W>(
        &mut self,
        cx: &mut Context<'_>,
        r: &mut R,
        w: &mut W,
    ) -> Poll<io::Result<()>>
    where
        R: AsyncRead + Unpin + ?Sized,
        W: AsyncWrite + Unpin + ?Sized,
    {
        loop {
            if self.done {
                return Poll::Ready(Ok(()));
            }
            if self.pos < self.end {
                let n = ready!(Pin::new(&mut *w).poll_write(cx, &self.buf[self.pos..self.end]))?;
                if n == 0 {
                    return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
                }
                self.pos += n;
                self.total += n as u64;
                self.unflushed = true;
                continue;
            }
            if self.read_done {
                ready!(Pin::new(&mut *w).poll_flush(cx))?;
                ready!(Pin::new(&mut *w).poll_shutdown(cx))?;
                self.done = true;
                self.buf = Vec::new();
                return Poll::Ready(Ok(()));
            }
            self.size_for_next_read();
            let mut rb = ReadBuf::new(&mut self.buf);
            match Pin::new(&mut *r).poll_read(cx, &mut rb) {
                Poll::Ready(Ok(())) => {
                    let n = rb.filled().len();
                    self.last_read = n;
                    self.pos = 0;
                    self.end = n;
                    if n == 0 {
                        self.read_done = true;
                    }
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => {
                    // Nothing more to read for now: push out what was written.
                    if self.unflushed {
                        ready!(Pin::new(&mut *w).poll_flush(cx))?;
                        self.unflushed = false;
                    }
                    return Poll::Pending;
                }
            }
        }
    }

    /// Bytes held allocated (tests).
    #[cfg(test)]
    fn capacity(&self) -> usize {
        self.buf.capacity()
    }
}

/// Copies `a` to `b` and `b` to `a` until both reach end-of-file; returns (a to b, b to a).
pub async fn copy_bidirectional<A, B>(a: &mut A, b: &mut B) -> io::Result<(u64, u64)>
where
    A: AsyncRead + AsyncWrite + Unpin + ?Sized,
    B: AsyncRead + AsyncWrite + Unpin + ?Sized,
{
    let mut ab = Pump::default();
    let mut ba = Pump::default();
    poll_fn(|cx| {
        let x = ab.poll_copy(cx, a, b)?;
        let y = ba.poll_copy(cx, b, a)?;
        ready!(x);
        ready!(y);
        Poll::Ready(Ok((ab.total, ba.total)))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A reader over fixed pieces: each read returns at most one piece, and the read after a
    /// piece is used up is `Pending` once (as a socket with nothing more yet); counts reads.
    struct Pieces {
        pieces: Vec<Vec<u8>>,
        reads: usize,
        pause: bool,
    }

    impl Pieces {
        fn new(pieces: Vec<Vec<u8>>) -> Self {
            Pieces {
                pieces,
                reads: 0,
                pause: false,
            }
        }
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            self.reads += 1;
            if std::mem::take(&mut self.pause) {
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            if let Some(p) = self.pieces.first_mut() {
                let n = p.len().min(buf.remaining());
                buf.put_slice(&p[..n]);
                p.drain(..n);
                if p.is_empty() {
                    self.pieces.remove(0);
                    self.pause = true;
                }
            }
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn both_directions_arrive_whole_and_end_with_eof() {
        let (client, mut relay_a) = tokio::io::duplex(100_000);
        let (mut relay_b, server) = tokio::io::duplex(3_000);
        let up: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7) as u8).collect();
        let down: Vec<u8> = (0..300_000u32).map(|i| (i * 13) as u8).collect();
        let relay =
            tokio::spawn(async move { copy_bidirectional(&mut relay_a, &mut relay_b).await });
        // Each end writes and reads at once (the duplex buffers are small).
        async fn end(io: tokio::io::DuplexStream, send: Vec<u8>) -> Vec<u8> {
            let (mut r, mut w) = tokio::io::split(io);
            let writer = tokio::spawn(async move {
                w.write_all(&send).await.unwrap();
                w.shutdown().await.unwrap();
            });
            let mut got = Vec::new();
            r.read_to_end(&mut got).await.unwrap();
            writer.await.unwrap();
            got
        }
        let srv = tokio::spawn(end(server, down.clone()));
        let got_down = end(client, up.clone()).await;
        assert!(got_down == down, "server to client bytes differ");
        assert!(srv.await.unwrap() == up, "client to server bytes differ");
        assert_eq!(
            relay.await.unwrap().unwrap(),
            (up.len() as u64, down.len() as u64)
        );
    }

    #[test]
    fn the_buffer_grows_under_bulk_and_shrinks_after() {
        let waker = std::task::Waker::noop();
        let mut cx = Context::from_waker(waker);
        let mut p = Pump::default();
        let mut r = Pieces::new(vec![vec![1u8; 1 << 20]]);
        let mut sink = Vec::new();
        while p.poll_copy(&mut cx, &mut r, &mut sink).is_pending() {}
        assert_eq!(sink, vec![1u8; 1 << 20]);
        // 4 + 8 + 16 + 32 KiB, then 64 KiB reads: 20 reads for 1 MiB (and a pause and the
        // end-of-file read), where fixed 4 KiB buffers take 256.
        assert!(r.reads <= 22, "{} reads for 1 MiB", r.reads);

        let mut p = Pump::default();
        let mut pieces = vec![vec![2u8; 1 << 20]];
        pieces.extend((0..4).map(|_| vec![3u8; 100]));
        let mut r = Pieces::new(pieces);
        let mut sink = Vec::new();
        let mut held = Vec::new();
        while p.poll_copy(&mut cx, &mut r, &mut sink).is_pending() {
            held.push(p.capacity());
        }
        assert_eq!(sink.len(), (1 << 20) + 400);
        assert_eq!(held[0], LARGE, "after the bulk piece: {held:?}");
        assert!(
            held.last().is_some_and(|&c| c <= SMALL),
            "still held after small reads: {held:?}"
        );
    }
}
