//! In-band framing for tunnelled byte streams.
//!
//! After the stream header, each direction of a `Proxy` stream is a sequence of chunks:
//!
//! ```text
//! DATA: 0x00, u32 BE length (1..=MAX_CHUNK), bytes
//! EOF:  0x01, u32 BE 0
//! ```
//!
//! EOF says "this direction is done" without closing the transport, which is needed because
//! vhost-device-vsock never delivers a guest `shutdown(SHUT_WR)` to the host and turns a host
//! close into a full shutdown for the guest. [`TunnelStream`] wraps a transport and exposes
//! the plain bytes as `AsyncRead + AsyncWrite`: `poll_shutdown` sends EOF (it does not close
//! the transport) and a received EOF reads as end-of-file.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Largest payload of one DATA chunk.
pub const MAX_CHUNK: usize = 64 * 1024;

const TAG_DATA: u8 = 0;
const TAG_EOF: u8 = 1;
const CHUNK_HEADER_LEN: usize = 5;
/// Size of the read buffer for chunk headers and small chunks. Payload beyond what it holds
/// is read straight into the caller's buffer, so an idle tunnel does not pin a 64 KiB
/// buffer (there are many idle tunnels, and two of these per tunnel: agent and broker).
const READ_BUF: usize = 4 * 1024;

/// A byte stream carried in DATA/EOF chunks over `S`.
#[derive(Debug)]
pub struct TunnelStream<S> {
    inner: S,
    /// Read buffer: `rbuf[rpos..rend]` are raw bytes read from `inner` and not yet consumed;
    /// `rbuf[rend..]` is spare room, zeroed once when the buffer grows and reused by every
    /// read after (no memset per read). The consumed prefix is dropped before each fill, so
    /// the buffer stays at [`READ_BUF`]: chunk headers and small chunks land here, the rest
    /// of a large chunk is read straight into the caller's buffer.
    rbuf: Vec<u8>,
    rpos: usize,
    rend: usize,
    /// Payload bytes of the current DATA chunk not yet handed to the reader.
    r_remaining: usize,
    r_eof: bool,
    /// A transport error met after bytes were already handed to the reader in the same
    /// call: reported by the next read.
    r_err: Option<io::Error>,
    /// Encoded chunks waiting to be written to `inner`.
    wbuf: Vec<u8>,
    wpos: usize,
    w_eof_sent: bool,
}

impl<S> TunnelStream<S> {
    /// Wraps a transport whose stream header has already been exchanged.
    pub fn new(inner: S) -> Self {
        Self::with_buffered(inner, Vec::new())
    }

    /// Like [`TunnelStream::new`], for when some tunnel bytes were already read from `inner`.
    pub fn with_buffered(inner: S, already_read: Vec<u8>) -> Self {
        TunnelStream {
            inner,
            rend: already_read.len(),
            rbuf: already_read,
            rpos: 0,
            r_remaining: 0,
            r_eof: false,
            r_err: None,
            wbuf: Vec::new(),
            wpos: 0,
            w_eof_sent: false,
        }
    }

    /// The wrapped transport.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// Whether the peer has signalled end-of-stream.
    pub fn peer_finished(&self) -> bool {
        self.r_eof
    }

    fn buffered(&self) -> &[u8] {
        &self.rbuf[self.rpos..self.rend]
    }

    fn consume(&mut self, n: usize) {
        self.rpos += n;
        if self.rpos == self.rend {
            self.rpos = 0;
            self.rend = 0;
        }
    }

    /// Bytes the read buffer holds allocated (tests: it stays bounded).
    #[cfg(test)]
    fn read_buffer_len(&self) -> usize {
        self.rbuf.capacity()
    }
}

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

impl<S: AsyncRead + Unpin> TunnelStream<S> {
    /// Reads more raw bytes from the transport into `rbuf`; `Ok(false)` on transport EOF.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        // Drop the consumed prefix: what is left is at most a partial chunk header (a fill
        // is only needed when the buffered bytes cannot make progress), so this moves a few
        // bytes, and a peer whose writes always end inside a header cannot grow the buffer.
        if self.rpos > 0 {
            self.rbuf.copy_within(self.rpos..self.rend, 0);
            self.rend -= self.rpos;
            self.rpos = 0;
        }
        if self.rbuf.len() > READ_BUF && self.rend < READ_BUF {
            // Bytes handed over by `with_buffered` are used up: back to the small buffer.
            self.rbuf.truncate(READ_BUF);
            self.rbuf.shrink_to_fit();
        }
        let want = (self.rend + CHUNK_HEADER_LEN).max(READ_BUF);
        if self.rbuf.len() < want {
            // Allocated on the first read (an idle tunnel holds none) and zeroed once.
            self.rbuf.resize(want, 0);
        }
        let mut rb = ReadBuf::new(&mut self.rbuf[self.rend..]);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        self.rend += n;
        Poll::Ready(Ok(n > 0))
    }

    /// Reads payload of the current DATA chunk straight from the transport into `buf`
    /// (nothing is buffered): no copy through `rbuf`, and `rbuf` need not hold a chunk.
    fn poll_payload_direct(
        &mut self,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let want = self.r_remaining.min(buf.remaining());
        let dst = buf.initialize_unfilled_to(want);
        let mut rb = ReadBuf::new(dst);
        ready!(Pin::new(&mut self.inner).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        if n == 0 {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "tunnel transport closed inside a data chunk",
            )));
        }
        buf.advance(n);
        self.r_remaining -= n;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for TunnelStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if let Some(e) = this.r_err.take() {
            return Poll::Ready(Err(e));
        }
        loop {
            if this.r_eof || buf.remaining() == 0 {
                return Poll::Ready(Ok(()));
            }
            if this.r_remaining > 0 && !this.buffered().is_empty() {
                let n = this
                    .r_remaining
                    .min(this.buffered().len())
                    .min(buf.remaining());
                buf.put_slice(&this.buffered()[..n]);
                this.consume(n);
                this.r_remaining -= n;
                // The rest of the chunk, if already there, in the same call: a bulk reader
                // then gets a chunk per read instead of the buffered head and then the rest.
                if this.r_remaining > 0 && buf.remaining() > 0 && this.buffered().is_empty() {
                    if let Poll::Ready(Err(e)) = this.poll_payload_direct(cx, buf) {
                        this.r_err = Some(e);
                    }
                }
                return Poll::Ready(Ok(()));
            }
            if this.r_remaining > 0 {
                return this.poll_payload_direct(cx, buf);
            }
            if this.buffered().len() >= CHUNK_HEADER_LEN {
                let h = this.buffered();
                let tag = h[0];
                let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
                this.consume(CHUNK_HEADER_LEN);
                match tag {
                    TAG_DATA if len == 0 => return Poll::Ready(Err(invalid("empty data chunk"))),
                    TAG_DATA if len > MAX_CHUNK => {
                        return Poll::Ready(Err(invalid("tunnel chunk exceeds MAX_CHUNK")))
                    }
                    TAG_DATA => this.r_remaining = len,
                    TAG_EOF if len == 0 => this.r_eof = true,
                    TAG_EOF => return Poll::Ready(Err(invalid("EOF chunk with a length"))),
                    _ => return Poll::Ready(Err(invalid("unknown tunnel chunk tag"))),
                }
                continue;
            }
            if !ready!(this.poll_fill(cx))? {
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "tunnel transport closed without an end-of-stream chunk",
                )));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> TunnelStream<S> {
    /// Writes out every encoded chunk held in `wbuf`.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.wpos < self.wbuf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.wbuf[self.wpos..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.wpos += n;
        }
        self.wbuf.clear();
        self.wpos = 0;
        if self.wbuf.capacity() > 4 * READ_BUF {
            // A bulk write grew it to a chunk; an idle tunnel should not keep that.
            self.wbuf = Vec::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for TunnelStream<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(buf)])
    }

    /// Every buffer, up to [`MAX_CHUNK`] bytes in all, goes into one DATA chunk: a TLS
    /// writer hands over several records at once, and each would otherwise be its own chunk
    /// and its own syscall.
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.w_eof_sent {
            return Poll::Ready(Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "write after tunnel end-of-stream",
            )));
        }
        ready!(this.poll_drain(cx))?;
        let total = bufs.iter().map(|b| b.len()).sum::<usize>().min(MAX_CHUNK);
        if total == 0 {
            return Poll::Ready(Ok(0));
        }
        this.wbuf.reserve(CHUNK_HEADER_LEN + total);
        this.wbuf.push(TAG_DATA);
        this.wbuf.extend_from_slice(&(total as u32).to_be_bytes());
        let mut left = total;
        for b in bufs {
            let n = b.len().min(left);
            this.wbuf.extend_from_slice(&b[..n]);
            left -= n;
            if left == 0 {
                break;
            }
        }
        // Best effort: push the chunk out now; what is left goes on the next write or flush.
        if let Poll::Ready(Err(e)) = this.poll_drain(cx) {
            return Poll::Ready(Err(e));
        }
        Poll::Ready(Ok(total))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    /// Sends the EOF chunk and flushes; the transport itself stays open for reading.
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if !this.w_eof_sent {
            ready!(this.poll_drain(cx))?;
            this.wbuf.push(TAG_EOF);
            this.wbuf.extend_from_slice(&0u32.to_be_bytes());
            this.w_eof_sent = true;
        }
        ready!(this.poll_drain(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn bytes_and_eof_cross_in_both_directions() {
        let (a, b) = tokio::io::duplex(1024);
        let mut a = TunnelStream::new(a);
        let mut b = TunnelStream::new(b);
        let payload: Vec<u8> = (0..200_000u32).map(|i| i as u8).collect();
        let sent = payload.clone();
        let writer = tokio::spawn(async move {
            a.write_all(&sent).await.unwrap();
            a.shutdown().await.unwrap();
            // The other direction still works after our EOF.
            let mut back = Vec::new();
            a.read_to_end(&mut back).await.unwrap();
            back
        });
        let mut got = Vec::new();
        b.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, payload);
        assert!(b.peer_finished());
        b.write_all(b"reply").await.unwrap();
        b.shutdown().await.unwrap();
        assert_eq!(writer.await.unwrap(), b"reply");
    }

    #[tokio::test]
    async fn transport_close_without_eof_is_an_error() {
        let (a, b) = tokio::io::duplex(64);
        drop(a);
        let mut b = TunnelStream::new(b);
        let err = b.read_to_end(&mut Vec::new()).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[tokio::test]
    async fn bad_chunks_are_rejected() {
        for raw in [
            vec![7u8, 0, 0, 0, 1, 0],          // unknown tag
            vec![0u8, 0, 0, 0, 0],             // empty data
            vec![0u8, 0xff, 0xff, 0xff, 0xff], // oversize
            vec![1u8, 0, 0, 0, 3],             // EOF with length
        ] {
            let mut s = TunnelStream::new(&raw[..]);
            let err = s.read_to_end(&mut Vec::new()).await.unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{raw:?}");
        }
    }

    /// Delivers `data` in pieces ending at `cuts` (one read never crosses a cut).
    struct Pieces {
        data: Vec<u8>,
        pos: usize,
        cuts: std::collections::VecDeque<usize>,
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: Pin<&mut Self>,
            _cx: &mut Context<'_>,
            buf: &mut ReadBuf<'_>,
        ) -> Poll<io::Result<()>> {
            let this = &mut *self;
            while this.cuts.front().is_some_and(|&c| c <= this.pos) {
                this.cuts.pop_front();
            }
            let end = this.cuts.front().copied().unwrap_or(this.data.len());
            let n = (end - this.pos).min(buf.remaining());
            buf.put_slice(&this.data[this.pos..this.pos + n]);
            this.pos += n;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn reads_ending_inside_chunk_headers_keep_the_buffer_bounded() {
        // 12 MiB in 1000-byte chunks; every transport read ends 2 bytes into the next
        // chunk's header, so the buffer is never fully drained.
        const CHUNKS: usize = 12 * 1024;
        const PAYLOAD: usize = 1024;
        let mut data = Vec::with_capacity(CHUNKS * (PAYLOAD + CHUNK_HEADER_LEN) + 5);
        let mut cuts = std::collections::VecDeque::new();
        for i in 0..CHUNKS {
            data.push(TAG_DATA);
            data.extend_from_slice(&(PAYLOAD as u32).to_be_bytes());
            data.extend((0..PAYLOAD).map(|j| (i + j) as u8));
            cuts.push_back(data.len() + 2);
        }
        data.extend_from_slice(&[TAG_EOF, 0, 0, 0, 0]);
        let mut s = TunnelStream::new(Pieces { data, pos: 0, cuts });
        let mut total = 0usize;
        let mut peak = 0usize;
        let mut buf = vec![0u8; 4096];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            peak = peak.max(s.read_buffer_len());
            if n == 0 {
                break;
            }
            total += n;
        }
        assert_eq!(total, CHUNKS * PAYLOAD);
        assert!(
            peak <= 2 * (MAX_CHUNK + CHUNK_HEADER_LEN),
            "read buffer grew to {peak} bytes after {total} bytes read"
        );
    }

    #[tokio::test]
    async fn full_size_chunks_are_read_without_a_chunk_sized_buffer() {
        // Idle tunnels are many: the per-stream read buffer must not be sized for a whole
        // 64 KiB chunk. Payload goes straight into the caller's buffer.
        let mut data = Vec::new();
        for i in 0..64u8 {
            data.push(TAG_DATA);
            data.extend_from_slice(&(MAX_CHUNK as u32).to_be_bytes());
            data.extend(std::iter::repeat_n(i, MAX_CHUNK));
        }
        data.extend_from_slice(&[TAG_EOF, 0, 0, 0, 0]);
        let mut s = TunnelStream::new(&data[..]);
        let mut got = Vec::new();
        let mut buf = vec![0u8; 16 * 1024];
        let mut peak = 0;
        loop {
            let n = s.read(&mut buf).await.unwrap();
            peak = peak.max(s.read_buffer_len());
            if n == 0 {
                break;
            }
            got.extend_from_slice(&buf[..n]);
        }
        assert_eq!(got.len(), 64 * MAX_CHUNK);
        assert!(got
            .chunks(MAX_CHUNK)
            .enumerate()
            .all(|(i, c)| c.iter().all(|&b| b == i as u8)));
        assert!(peak <= READ_BUF, "read buffer grew to {peak} bytes");
    }

    #[tokio::test]
    async fn wire_format_is_unchanged() {
        let mut out = Vec::new();
        let mut w = TunnelStream::new(&mut out);
        w.write_all(b"hi").await.unwrap();
        w.shutdown().await.unwrap();
        drop(w);
        assert_eq!(out, [0u8, 0, 0, 0, 2, b'h', b'i', 1, 0, 0, 0, 0]);
    }

    #[tokio::test]
    async fn already_read_bytes_are_used_first() {
        let raw = vec![0u8, 0, 0, 0, 2, b'h', b'i', 1, 0, 0, 0, 0];
        let (first, rest) = raw.split_at(4);
        let mut s = TunnelStream::with_buffered(rest, first.to_vec());
        let mut got = Vec::new();
        s.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"hi");
    }

    #[tokio::test]
    async fn a_vectored_write_is_one_chunk() {
        let mut out = Vec::new();
        let mut w = TunnelStream::new(&mut out);
        assert!(w.is_write_vectored());
        let n = w
            .write_vectored(&[
                io::IoSlice::new(b"ab"),
                io::IoSlice::new(b""),
                io::IoSlice::new(b"cde"),
            ])
            .await
            .unwrap();
        assert_eq!(n, 5);
        w.flush().await.unwrap();
        drop(w);
        assert_eq!(out, [0u8, 0, 0, 0, 5, b'a', b'b', b'c', b'd', b'e']);
        // More than a chunk: the first MAX_CHUNK bytes go, the caller writes the rest.
        let big = vec![7u8; MAX_CHUNK];
        let mut out = Vec::new();
        let mut w = TunnelStream::new(&mut out);
        let n = w
            .write_vectored(&[io::IoSlice::new(b"x"), io::IoSlice::new(&big)])
            .await
            .unwrap();
        assert_eq!(n, MAX_CHUNK);
        w.flush().await.unwrap();
        drop(w);
        assert_eq!(out.len(), CHUNK_HEADER_LEN + MAX_CHUNK);
        assert_eq!(out[CHUNK_HEADER_LEN], b'x');
    }

    #[tokio::test]
    async fn a_bulk_read_gets_a_whole_chunk_when_it_is_there() {
        let mut raw = vec![0u8, 0, 1, 0, 0];
        raw.extend(std::iter::repeat_n(9u8, 65_536));
        let mut s = TunnelStream::new(&raw[..]);
        let mut buf = vec![0u8; 65_536];
        let n = s.read(&mut buf).await.unwrap();
        assert_eq!(n, 65_536, "the buffered head and the rest in one read");
    }

    #[tokio::test]
    async fn an_error_after_the_buffered_head_comes_with_the_next_read() {
        // A chunk announcing 10,000 bytes; the transport ends after 100 of them.
        let mut raw = vec![0u8, 0, 0, 0x27, 0x10];
        raw.extend(std::iter::repeat_n(1u8, 100));
        let mut s = TunnelStream::new(&raw[..]);
        let mut buf = vec![0u8; 20_000];
        assert_eq!(s.read(&mut buf).await.unwrap(), 100);
        let e = s.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof);
    }
}
