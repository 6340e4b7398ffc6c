//! Tunnel chunk decoding on arbitrary bytes, delivered in arbitrary pieces (and with the
//! transport returning `Pending` between pieces): `TunnelStream` must never panic, must hand
//! out exactly the payload a straightforward reference decoder of the chunk format finds,
//! must end the same way (EOF chunk, InvalidData, or UnexpectedEof), and must not allocate
//! without bound (libFuzzer's -malloc_limit_mb / -rss_limit_mb catch that). The payload is
//! then written back through a `TunnelStream` over a sink taking partial writes, and the
//! wire bytes must decode to the same payload followed by EOF.
//!
//! Input layout: `[read_size, n_cuts, flags, cut_deltas (u16 BE) x n_cuts, raw stream...]`;
//! flags bit 0: the first piece is passed as already-read bytes (`with_buffered`), bit 1:
//! the transport returns `Pending` before every piece.
#![no_main]

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use shared_proto::tunnel::MAX_CHUNK;
use shared_proto::TunnelStream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

/// Polls `f` with a no-op waker; the transports below never need a wake-up to progress.
fn run<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..10_000 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("tunnel operation made no progress over an always-ready transport");
}

/// Delivers `data` in pieces ending at `cuts`; optionally `Pending` before each piece.
struct Pieces<'a> {
    data: &'a [u8],
    pos: usize,
    cuts: Vec<usize>,
    next_cut: usize,
    pending_first: bool,
    pended: bool,
}

impl AsyncRead for Pieces<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.pending_first && !this.pended {
            this.pended = true;
            return Poll::Pending;
        }
        this.pended = false;
        while this.next_cut < this.cuts.len() && this.cuts[this.next_cut] <= this.pos {
            this.next_cut += 1;
        }
        let end = this
            .cuts
            .get(this.next_cut)
            .copied()
            .unwrap_or(this.data.len());
        let n = (end - this.pos).min(buf.remaining());
        buf.put_slice(&this.data[this.pos..this.pos + n]);
        this.pos += n;
        Poll::Ready(Ok(()))
    }
}

/// A sink that takes at most `max` bytes per write and returns `Pending` every other call.
struct Sink {
    out: Vec<u8>,
    max: usize,
    flip: bool,
}

impl AsyncWrite for Sink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.flip = !self.flip;
        if self.flip {
            return Poll::Pending;
        }
        let n = buf.len().min(self.max);
        self.out.extend_from_slice(&buf[..n]);
        Poll::Ready(Ok(n))
    }
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    Eof,
    Invalid,
    Truncated,
}

/// The chunk format, decoded the obvious way (see shared-proto/src/tunnel.rs).
fn reference(raw: &[u8]) -> (Vec<u8>, End) {
    let mut out = Vec::new();
    let mut pos = 0;
    loop {
        let Some(h) = raw.get(pos..pos + 5) else {
            return (out, End::Truncated);
        };
        pos += 5;
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
        match (h[0], len) {
            (0, 0) => return (out, End::Invalid),
            (0, n) if n > MAX_CHUNK => return (out, End::Invalid),
            (0, n) => {
                let take = n.min(raw.len() - pos);
                out.extend_from_slice(&raw[pos..pos + take]);
                pos += take;
                if take < n {
                    return (out, End::Truncated);
                }
            }
            (1, 0) => return (out, End::Eof),
            _ => return (out, End::Invalid),
        }
    }
}

fn read_all<S: AsyncRead + Unpin>(s: &mut TunnelStream<S>, read_size: usize) -> (Vec<u8>, End) {
    let mut got = Vec::new();
    let mut buf = vec![0u8; read_size];
    loop {
        match run(s.read(&mut buf)) {
            Ok(0) => return (got, End::Eof),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::InvalidData => return (got, End::Invalid),
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return (got, End::Truncated),
            Err(e) => panic!("unexpected error kind from an in-memory transport: {e}"),
        }
        assert!(got.len() <= 16 << 20, "more payload than input");
    }
}

fuzz_target!(|data: &[u8]| {
    let [read_size, n_cuts, flags, rest @ ..] = data else {
        return;
    };
    let read_size = 1 + *read_size as usize * 300; // 1 ..= 76_501, beyond one chunk
    let n_cuts = (*n_cuts as usize % 32).min(rest.len() / 2);
    let (cut_bytes, raw) = rest.split_at(n_cuts * 2);
    let mut cuts = Vec::with_capacity(n_cuts);
    let mut at = 0usize;
    for c in cut_bytes.chunks_exact(2) {
        at += u16::from_be_bytes([c[0], c[1]]) as usize;
        cuts.push(at.min(raw.len()));
    }

    let (want, want_end) = reference(raw);

    let buffered = flags & 1 != 0;
    let split = if buffered {
        cuts.first().copied().unwrap_or(0)
    } else {
        0
    };
    let reader = Pieces {
        data: &raw[split..],
        pos: 0,
        cuts: cuts.iter().map(|c| c - split).collect(),
        next_cut: 0,
        pending_first: flags & 2 != 0,
        pended: false,
    };
    let mut s = TunnelStream::with_buffered(reader, raw[..split].to_vec());
    let (got, end) = read_all(&mut s, read_size);
    assert_eq!(
        end, want_end,
        "stream ended differently from the chunk format"
    );
    assert!(got == want, "payload differs from the reference decoding");
    assert_eq!(s.peer_finished(), end == End::Eof);
    if end == End::Eof {
        // Bytes after the EOF chunk are never handed out.
        assert_eq!(run(s.read(&mut [0u8; 16])).unwrap(), 0);
    }

    // Write the payload back in pieces; the wire bytes must decode to it, then EOF.
    let mut w = TunnelStream::new(Sink {
        out: Vec::new(),
        max: 1 + flags.count_ones() as usize * 997,
        flip: false,
    });
    let mut pos = 0;
    let mut sizes = cuts.iter().map(|c| c % (2 * MAX_CHUNK) + 1).cycle();
    while pos < want.len() {
        let size = sizes.next().unwrap_or(want.len());
        let end = (pos + size).min(want.len());
        let n = run(w.write(&want[pos..end])).expect("write to an in-memory sink");
        assert!(n > 0 && n <= end - pos);
        pos += n;
    }
    run(w.shutdown()).expect("shutdown");
    assert!(
        run(w.write(b"x")).is_err(),
        "write after end-of-stream accepted"
    );
    let wire = &w.get_ref().out;
    let (back, back_end) = reference(wire);
    assert_eq!(back_end, End::Eof);
    assert!(back == want, "written payload does not read back");
});
