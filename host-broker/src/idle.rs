//! Idle timeouts for guest connections the HTTP/1.1 header-read timeout does not cover
//! (issue 11): an intercepted HTTP/2 connection, an opaque relay (raw TCP port, pass-through
//! TLS, captured TCP) and a WebSocket relay are closed after a stretch with no byte either
//! way, so a guest cannot hold broker fds (and pooled upstream capacity) by opening
//! connections and leaving them silent.
//!
//! [`Activity`] wraps the guest side of a connection and counts its bytes; the connection is
//! raced against [`idle`], which completes once the counts have not moved for the timeout (checked
//! every quarter of it: a silent connection is closed between 1 and 1.25 times the timeout
//! after its last byte). The cost per read or write is one relaxed atomic add.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// An intercepted HTTP/2 guest connection with no byte either way for this long is closed
/// (HTTP/1.1 connections: the 30 s header-read timeout covers an idle keep-alive).
pub(crate) const H2_IDLE_TIMEOUT: Duration = Duration::from_secs(5 * 60);

/// An opaque or WebSocket relay with no byte either way for this long is closed.
pub(crate) const RELAY_IDLE_TIMEOUT: Duration = Duration::from_secs(60 * 60);

/// Bytes read from and written to a wrapped stream.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    read: AtomicU64,
    written: AtomicU64,
}

impl Counts {
    /// Bytes read from the stream so far.
    pub fn read(&self) -> u64 {
        self.read.load(Ordering::Relaxed)
    }

    /// Bytes written to the stream so far.
    pub fn written(&self) -> u64 {
        self.written.load(Ordering::Relaxed)
    }

    fn total(&self) -> u64 {
        self.read().wrapping_add(self.written())
    }
}

/// A stream whose bytes are counted (see the module docs).
#[derive(Debug)]
pub(crate) struct Activity<T> {
    io: T,
    counts: Arc<Counts>,
}

impl<T> Activity<T> {
    /// Wraps `io`; the counts are shared with the returned handle.
    pub fn new(io: T) -> (Activity<T>, Arc<Counts>) {
        let counts = Arc::<Counts>::default();
        (
            Activity {
                io,
                counts: counts.clone(),
            },
            counts,
        )
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for Activity<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.io).poll_read(cx, buf);
        let n = (buf.filled().len() - before) as u64;
        if n > 0 {
            self.counts.read.fetch_add(n, Ordering::Relaxed);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Activity<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = r {
            self.counts.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let r = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        if let Poll::Ready(Ok(n)) = r {
            self.counts.written.fetch_add(n as u64, Ordering::Relaxed);
        }
        r
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

/// Completes once `counts` have not moved for `timeout` (1 to 1.25 times it).
pub(crate) async fn idle(counts: &Counts, timeout: Duration) {
    let tick = timeout / 4;
    let mut seen = counts.total();
    let mut quiet = 0;
    loop {
        tokio::time::sleep(tick).await;
        let now = counts.total();
        if now == seen {
            quiet += 1;
            if quiet >= 4 {
                return;
            }
        } else {
            (seen, quiet) = (now, 0);
        }
    }
}

/// `copy_bidirectional` between `guest` and `up`, closed after `timeout` with no byte
/// either way. Returns (bytes guest -> upstream, bytes upstream -> guest, whether it ended
/// idle).
pub(crate) async fn relay<G, U>(guest: G, up: &mut U, timeout: Duration) -> (u64, u64, bool)
where
    G: AsyncRead + AsyncWrite + Unpin,
    U: AsyncRead + AsyncWrite + Unpin,
{
    let (mut guest, counts) = Activity::new(guest);
    let idled = tokio::select! {
        r = shared_proto::relay::copy_bidirectional(&mut guest, up) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "relay ended with an error");
            }
            false
        }
        _ = idle(&counts, timeout) => {
            tracing::info!(idle_secs = timeout.as_secs(), "closing idle relay");
            true
        }
    };
    (counts.read(), counts.written(), idled)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const T: Duration = Duration::from_secs(60);

    #[tokio::test(start_paused = true)]
    async fn a_silent_relay_is_closed_after_the_timeout_and_not_before() {
        let (guest, mut guest_far) = tokio::io::duplex(1024);
        let (mut up, mut up_far) = tokio::io::duplex(1024);
        let start = tokio::time::Instant::now();
        let run = tokio::spawn(async move { relay(guest, &mut up, T).await });
        // Some bytes each way, then silence.
        guest_far.write_all(b"hello").await.unwrap();
        let mut b = [0u8; 5];
        up_far.read_exact(&mut b).await.unwrap();
        up_far.write_all(b"hi").await.unwrap();
        guest_far.read_exact(&mut b[..2]).await.unwrap();
        let (to_up, to_guest, idled) = run.await.unwrap();
        assert!(idled);
        assert_eq!((to_up, to_guest), (5, 2));
        let took = start.elapsed();
        assert!(took >= T && took <= T * 5 / 4 + T / 8, "{took:?}");
        // The relay is gone: both far ends see the close.
        assert_eq!(guest_far.read(&mut b).await.unwrap(), 0);
        assert_eq!(up_far.read(&mut b).await.unwrap(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_relay_with_a_byte_now_and_then_stays_open() {
        let (guest, mut guest_far) = tokio::io::duplex(1024);
        let (mut up, mut up_far) = tokio::io::duplex(1024);
        let run = tokio::spawn(async move { relay(guest, &mut up, T).await });
        let mut b = [0u8; 1];
        // A byte every 0.9 timeout, alternating directions, for 10 timeouts.
        for i in 0..11 {
            tokio::time::sleep(T * 9 / 10).await;
            if i % 2 == 0 {
                guest_far.write_all(b"x").await.unwrap();
                up_far.read_exact(&mut b).await.unwrap();
            } else {
                up_far.write_all(b"y").await.unwrap();
                guest_far.read_exact(&mut b).await.unwrap();
            }
            assert!(!run.is_finished(), "closed after {i} bytes");
        }
        // The guest closes: the relay ends, not idle.
        drop(guest_far);
        drop(up_far);
        let (_, _, idled) = run.await.unwrap();
        assert!(!idled);
    }

    /// The HTTP/2 path as `proxy::tunnel` serves it: an idle connection is closed, a busy
    /// one is not.
    #[tokio::test(start_paused = true)]
    async fn an_idle_http2_connection_is_closed_after_the_timeout() {
        use http_body_util::{BodyExt, Empty};
        use hyper_util::rt::{TokioExecutor, TokioIo};
        let (server_io, client_io) = tokio::io::duplex(64 * 1024);
        let server = tokio::spawn(async move {
            let (io, counts) = Activity::new(server_io);
            let svc = hyper::service::service_fn(|_req| async {
                Ok::<_, std::convert::Infallible>(
                    hyper::Response::new(Empty::<bytes::Bytes>::new()),
                )
            });
            let conn = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(io), svc);
            // As proxy::tunnel races it.
            tokio::select! {
                _ = conn => false,
                _ = idle(&counts, H2_IDLE_TIMEOUT) => true,
            }
        });
        let (mut sender, conn) =
            hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(client_io))
                .await
                .unwrap();
        let client_conn = tokio::spawn(conn);
        // Requests now and then keep it open...
        for _ in 0..3 {
            tokio::time::sleep(H2_IDLE_TIMEOUT * 9 / 10).await;
            let req = hyper::Request::get("https://a.test/")
                .body(Empty::<bytes::Bytes>::new())
                .unwrap();
            let resp = sender.send_request(req).await.unwrap();
            let _ = resp.into_body().collect().await.unwrap();
            assert!(!server.is_finished());
        }
        // ...silence closes it.
        let start = tokio::time::Instant::now();
        assert!(server.await.unwrap(), "ended idle");
        assert!(start.elapsed() <= H2_IDLE_TIMEOUT * 5 / 4 + H2_IDLE_TIMEOUT / 8);
        let _ = tokio::time::timeout(Duration::from_secs(1), client_conn)
            .await
            .expect("the client sees the connection close");
    }
}
