//! Streaming replacement of real values by placeholders across chunk boundaries.
//!
//! The scrubber keeps at most `longest pattern - 1` bytes pending between chunks: a match that
//! starts before that tail is always entirely inside the buffer, so every decision made on
//! the emitted part is the same one a scan of the whole stream would make. Within that tail
//! it holds back only from the first byte where the rest of the buffer could still become a
//! real value (a proper prefix of a pattern): a streamed event ending in `\n\n` is emitted
//! at once instead of waiting for the next chunk (server-sent events, long polls).

use std::sync::Arc;

use aho_corasick::{packed, AhoCorasick};
use zeroize::{Zeroize, Zeroizing};

/// From this many bytes in one push, a scrubber builds its SIMD (Teddy) searcher: on bulk
/// bodies the automaton's rare-byte prefilter fires every few hundred bytes of random data,
/// Teddy almost never. Below it (small responses) building one would cost more than it saves.
const PACKED_FROM: usize = 16 * 1024;

/// The packed searcher's state: not tried yet, built, or not available (over 64 patterns,
/// no SIMD on this CPU): then the automaton is used for everything.
enum Packed {
    Untried,
    Built(packed::Searcher),
    Unavailable,
}

/// Replaces real values (and their encoded forms) in a byte stream with placeholders.
/// Feed chunks with [`Scrubber::push`], then call [`Scrubber::finish`].
pub struct Scrubber {
    values: Arc<AhoCorasick>,
    replacements: Arc<[Vec<u8>]>,
    keep: usize,
    /// The patterns (real value forms), to decide what of the tail may still become a match.
    patterns: Arc<[Zeroizing<Vec<u8>>]>,
    /// Unemitted tail; may hold a prefix of a real value, hence zeroized.
    pending: Zeroizing<Vec<u8>>,
    replaced: usize,
    packed: Packed,
}

impl std::fmt::Debug for Scrubber {
    // The automaton holds real values: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrubber")
            .field("window", &self.keep)
            .field("pending", &self.pending.len())
            .field("replaced", &self.replaced)
            .finish()
    }
}

impl Scrubber {
    pub(crate) fn new(
        values: Arc<AhoCorasick>,
        replacements: Arc<[Vec<u8>]>,
        max_len: usize,
        patterns: Arc<[Zeroizing<Vec<u8>>]>,
    ) -> Self {
        Scrubber {
            values,
            replacements,
            keep: max_len.saturating_sub(1),
            patterns,
            pending: Zeroizing::new(Vec::new()),
            replaced: 0,
            packed: Packed::Untried,
        }
    }

    /// Matches in `hay` as (start, end, pattern), leftmost-longest and non-overlapping like
    /// the automaton (the packed searcher is built with the same patterns, order and kind),
    /// stopping at the first match starting at or after `stop`.
    fn find_all(&mut self, hay: &[u8], stop: usize) -> Vec<(usize, usize, usize)> {
        if matches!(self.packed, Packed::Untried) && hay.len() >= PACKED_FROM {
            let mut b = packed::Config::new()
                .match_kind(packed::MatchKind::LeftmostLongest)
                .builder();
            b.extend(self.patterns.iter().map(|p| p.as_slice()));
            self.packed = b.build().map_or(Packed::Unavailable, Packed::Built);
        }
        let mut out = Vec::new();
        let mut add = |start: usize, end: usize, pid: usize| {
            if start >= stop {
                return false;
            }
            out.push((start, end, pid));
            true
        };
        match &self.packed {
            Packed::Built(p) => {
                for m in p.find_iter(hay) {
                    if !add(m.start(), m.end(), m.pattern().as_usize()) {
                        break;
                    }
                }
            }
            _ => {
                for m in self.values.find_iter(hay) {
                    if !add(m.start(), m.end(), m.pattern().as_usize()) {
                        break;
                    }
                }
            }
        }
        out
    }

    /// Scrubs `chunk` and returns the bytes that are final; up to `window` bytes are held
    /// back until the next call or [`Scrubber::finish`].
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        self.push_vec(chunk.to_vec())
    }

    /// [`Scrubber::push`] for an owned chunk: when nothing is held back and nothing matches
    /// (the bulk case), the chunk itself is returned, without a copy.
    ///
    /// Wiping: a buffer in which a real value was found is zeroized before it is freed, and
    /// the held-back tail always is. A buffer with no match held no complete real value and
    /// is handed on as the output (wiping every bulk chunk cost as much as the scan).
    pub fn push_vec(&mut self, chunk: Vec<u8>) -> Vec<u8> {
        if self.replacements.is_empty() {
            return chunk;
        }
        let mut buf = if self.pending.is_empty() {
            chunk
        } else {
            let mut b = std::mem::take(&mut *self.pending);
            b.extend_from_slice(&chunk);
            b
        };
        // Only a suffix shorter than the longest pattern can be a proper prefix of one; a
        // match starting before `hold` cannot grow with later bytes (else that suffix would
        // be such a prefix), so it is final.
        let hold = self.hold_from(&buf, buf.len().saturating_sub(self.keep));
        let found = self.find_all(&buf, hold);
        let cut = found.last().map_or(0, |m| m.1).max(hold);
        self.pending.extend_from_slice(&buf[cut..]);
        if found.is_empty() {
            buf[cut..].zeroize();
            buf.truncate(cut);
            return buf;
        }
        let mut out = Vec::with_capacity(buf.len());
        let mut pos = 0;
        for (start, end, pid) in found {
            out.extend_from_slice(&buf[pos..start]);
            out.extend_from_slice(&self.replacements[pid]);
            pos = end;
            self.replaced += 1;
        }
        out.extend_from_slice(&buf[pos..cut]);
        buf.zeroize();
        out
    }

    /// The first index at or after `from` where `buf[i..]` is a proper prefix of a pattern
    /// (must be held back); `buf.len()` when none.
    fn hold_from(&self, buf: &[u8], from: usize) -> usize {
        (from..buf.len())
            .find(|&i| {
                let rest = &buf[i..];
                self.patterns
                    .iter()
                    .any(|p| p.len() > rest.len() && p.starts_with(rest))
            })
            .unwrap_or(buf.len())
    }

    /// Flushes the held-back tail (scrubbed).
    pub fn finish(&mut self) -> Vec<u8> {
        let buf = std::mem::take(&mut *self.pending);
        let buf = Zeroizing::new(buf);
        let mut out = Vec::with_capacity(buf.len());
        let mut pos = 0;
        for m in self.values.find_iter(buf.as_slice()) {
            out.extend_from_slice(&buf[pos..m.start()]);
            out.extend_from_slice(&self.replacements[m.pattern().as_usize()]);
            pos = m.end();
            self.replaced += 1;
        }
        out.extend_from_slice(&buf[pos..]);
        out
    }

    /// Bytes currently held back.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The maximum number of bytes ever held back (longest pattern - 1).
    pub fn window(&self) -> usize {
        self.keep
    }

    /// Replacements made so far.
    pub fn replaced(&self) -> usize {
        self.replaced
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use aho_corasick::MatchKind;

    fn scrubber(patterns: &[&[u8]]) -> Scrubber {
        let ac = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(patterns)
            .unwrap();
        let repl: Vec<Vec<u8>> = (0..patterns.len())
            .map(|i| format!("<P{i}>").into_bytes())
            .collect();
        let max = patterns.iter().map(|p| p.len()).max().unwrap();
        let pats: Vec<Zeroizing<Vec<u8>>> = patterns
            .iter()
            .map(|p| Zeroizing::new(p.to_vec()))
            .collect();
        Scrubber::new(Arc::new(ac), repl.into(), max, pats.into())
    }

    /// Bulk-sized pushes (the packed SIMD searcher) give exactly what one automaton pass
    /// over the whole stream gives, for values anywhere, across chunk edges, and for
    /// patterns that are prefixes of each other (leftmost-longest).
    #[test]
    fn bulk_chunks_scrub_like_one_automaton_pass() {
        let patterns: &[&[u8]] = &[b"sk-live-secret", b"sk-live-secret-long", b"c2stbGl2ZQ"];
        let mut x: u32 = 12345;
        let mut data = Vec::new();
        for i in 0..200_000usize {
            x = x.wrapping_mul(1_103_515_245).wrapping_add(12345);
            data.push((x >> 16) as u8);
            if i % 9_973 == 0 {
                data.extend_from_slice(patterns[i % 3]);
            }
        }
        let mut reference = scrubber(patterns);
        let mut expect = reference.push(&data);
        expect.extend(reference.finish());
        assert!(expect.windows(14).all(|w| w != b"sk-live-secret"));
        for chunk in [16 * 1024, 20_000, 64 * 1024, 65_537] {
            let mut sc = scrubber(patterns);
            let mut got = Vec::new();
            for c in data.chunks(chunk) {
                got.extend(sc.push_vec(c.to_vec()));
            }
            got.extend(sc.finish());
            assert!(
                matches!(sc.packed, Packed::Built(_)),
                "SIMD searcher not used"
            );
            assert_eq!(got, expect, "chunk size {chunk}");
            assert_eq!(sc.replaced(), reference.replaced());
        }
    }
}
