//! Streaming replacement of real values by placeholders across chunk boundaries.
//!
//! The scrubber keeps at most `longest pattern - 1` bytes pending between chunks: a match that
//! starts before that tail is always entirely inside the buffer, so every decision made on
//! the emitted part is the same one a scan of the whole stream would make. Within that tail
//! it holds back only from the first byte where the rest of the buffer could still become a
//! real value (a proper prefix of a pattern): a streamed event ending in `\n\n` is emitted
//! at once instead of waiting for the next chunk (server-sent events, long polls).

use std::sync::Arc;

use aho_corasick::AhoCorasick;
use zeroize::Zeroizing;

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
        }
    }

    /// Scrubs `chunk` and returns the bytes that are final; up to `window` bytes are held
    /// back until the next call or [`Scrubber::finish`].
    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.replacements.is_empty() {
            return chunk.to_vec();
        }
        let mut buf = std::mem::take(&mut *self.pending);
        buf.extend_from_slice(chunk);
        let buf = Zeroizing::new(buf);
        // Only a suffix shorter than the longest pattern can be a proper prefix of one; a
        // match starting before `hold` cannot grow with later bytes (else that suffix would
        // be such a prefix), so it is final.
        let hold = self.hold_from(&buf, buf.len().saturating_sub(self.keep));
        let mut out = Vec::with_capacity(buf.len());
        let mut pos = 0;
        for m in self.values.find_iter(buf.as_slice()) {
            if m.start() >= hold {
                break;
            }
            out.extend_from_slice(&buf[pos..m.start()]);
            out.extend_from_slice(&self.replacements[m.pattern().as_usize()]);
            pos = m.end();
            self.replaced += 1;
        }
        let cut = pos.max(hold);
        out.extend_from_slice(&buf[pos..cut]);
        self.pending.extend_from_slice(&buf[cut..]);
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
