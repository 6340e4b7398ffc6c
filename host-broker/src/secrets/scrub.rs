//! Streaming replacement of real values by placeholders across chunk boundaries.
//!
//! What is replaced: every occurrence of a value form (raw, base64, percent; see
//! `set.rs::forms`), and every run of JSON string escapes that *decodes* to a value form
//! (`\/`, `\"`, `\\`, `\b\f\n\r\t`, `\uXXXX` in either hex case, surrogate pairs; any subset of
//! the characters escaped). JSON escapes are read the way a JSON parser reads them: greedily
//! from the start of the stream (`encode.rs::escape_at`, the reading placeholder detection
//! uses). Among overlapping occurrences the leftmost, then the longest, wins (as a
//! leftmost-longest automaton would choose).
//!
//! Search ([`Finder`]): a pattern of length `>= m` always covers a `w`-byte window starting at
//! a multiple of `m - w + 1`, so only those windows are looked up (one hash probe every
//! ~`m - w` bytes, whatever the number of credentials), and every gram of every pattern is in
//! the table with its offset; a probe that hits is verified against the pattern. Patterns of
//! 16 bytes or more use 8-byte grams, 4..15 bytes 4-byte grams, shorter ones an automaton.
//!
//! Streaming: the scrubber holds back only from the first byte where the rest of the buffer
//! could still become an occurrence (a proper prefix of a pattern, or of one once decoded,
//! or an escape not yet complete): a match that starts before that point cannot grow with
//! later bytes, so every decision made on the emitted part is the one a scan of the whole
//! stream makes. A streamed event ending in `\n\n` is emitted at once instead of waiting for
//! the next chunk (server-sent events, long polls).

use std::sync::Arc;

use aho_corasick::{packed, AhoCorasick};
use zeroize::{Zeroize, Zeroizing};

use super::encode::{escape_at, Escape};

/// The value forms searched for (pattern id = index).
pub(crate) type Patterns = Arc<[Zeroizing<Vec<u8>>]>;

/// A JSON-escaped character spans at most 6 bytes per decoded byte (`\u0041` for `A`).
const JSON_SPAN: usize = 6;
/// The longest escape (a surrogate pair, `\uD83D\uDE00`).
const LONGEST_ESCAPE: usize = 12;

/// An occurrence in the scanned bytes: start, end, pattern, found through the JSON view.
type Occ = (usize, usize, usize, bool);

/// Multiplier of the gram hash (Fibonacci hashing: the top bits are well mixed).
const HASH_K: u64 = 0x9E37_79B9_7F4A_7C15;

/// A sampled gram table over patterns of at least `width + step - 1` bytes.
struct GramIndex {
    width: usize,
    step: usize,
    /// One bit per hash value (top `64 - filter_shift` bits): a cheap first test.
    filter_shift: u32,
    filter: Vec<u64>,
    /// Bucketed entries: `starts[b]..starts[b + 1]` index `grams`, `pids`, `offs`.
    bucket_shift: u32,
    starts: Vec<u32>,
    /// Pieces of real values: wiped on drop.
    grams: Zeroizing<Vec<u64>>,
    pids: Vec<u32>,
    offs: Vec<u32>,
}

#[inline(always)]
fn gram<const W: usize>(hay: &[u8], at: usize) -> u64 {
    let mut b = [0u8; 8];
    b[..W].copy_from_slice(&hay[at..at + W]);
    u64::from_le_bytes(b)
}

impl GramIndex {
    fn build(width: usize, patterns: &[Zeroizing<Vec<u8>>], ids: &[usize]) -> Option<GramIndex> {
        let min = ids.iter().map(|&i| patterns[i].len()).min()?;
        let step = min - width + 1;
        let mut grams = Zeroizing::new(Vec::new());
        let mut owner = Vec::new();
        for &i in ids {
            let p = &patterns[i];
            for off in 0..=p.len() - width {
                grams.push(if width == 8 {
                    gram::<8>(p, off)
                } else {
                    gram::<4>(p, off)
                });
                owner.push((i as u32, off as u32));
            }
        }
        let n = grams.len();
        let filter_bits = (n * 16).next_power_of_two().trailing_zeros().clamp(12, 24);
        let bucket_bits = n.next_power_of_two().trailing_zeros().clamp(4, 20);
        let filter_shift = 64 - filter_bits;
        let bucket_shift = 64 - bucket_bits;
        let mut filter = vec![0u64; 1 << (filter_bits - 6)];
        let mut starts = vec![0u32; (1 << bucket_bits) + 1];
        for &g in grams.iter() {
            let h = g.wrapping_mul(HASH_K);
            let f = (h >> filter_shift) as usize;
            filter[f >> 6] |= 1 << (f & 63);
            starts[(h >> bucket_shift) as usize + 1] += 1;
        }
        for b in 1..starts.len() {
            starts[b] += starts[b - 1];
        }
        let mut next = starts.clone();
        let mut sorted = Zeroizing::new(vec![0u64; n]);
        let mut pids = vec![0u32; n];
        let mut offs = vec![0u32; n];
        for (k, &g) in grams.iter().enumerate() {
            let b = (g.wrapping_mul(HASH_K) >> bucket_shift) as usize;
            let at = next[b] as usize;
            next[b] += 1;
            sorted[at] = g;
            (pids[at], offs[at]) = owner[k];
        }
        Some(GramIndex {
            width,
            step,
            filter_shift,
            filter,
            bucket_shift,
            starts,
            grams: sorted,
            pids,
            offs,
        })
    }

    fn find(
        &self,
        hay: &[u8],
        patterns: &[Zeroizing<Vec<u8>>],
        out: &mut Vec<(usize, usize, usize)>,
    ) {
        if self.width == 8 {
            self.scan::<8>(hay, patterns, out);
        } else {
            self.scan::<4>(hay, patterns, out);
        }
    }

    fn scan<const W: usize>(
        &self,
        hay: &[u8],
        patterns: &[Zeroizing<Vec<u8>>],
        out: &mut Vec<(usize, usize, usize)>,
    ) {
        if hay.len() < W {
            return;
        }
        let last = hay.len() - W;
        let mut q = 0;
        while q <= last {
            let g = gram::<W>(hay, q);
            let h = g.wrapping_mul(HASH_K);
            let f = (h >> self.filter_shift) as usize;
            if self.filter[f >> 6] >> (f & 63) & 1 != 0 {
                let b = (h >> self.bucket_shift) as usize;
                for e in self.starts[b] as usize..self.starts[b + 1] as usize {
                    if self.grams[e] != g {
                        continue;
                    }
                    let Some(s) = q.checked_sub(self.offs[e] as usize) else {
                        continue;
                    };
                    let pid = self.pids[e] as usize;
                    let p = &patterns[pid];
                    if hay.len() - s >= p.len() && hay[s..s + p.len()] == p[..] {
                        out.push((s, s + p.len(), pid));
                    }
                }
            }
            q += self.step;
        }
    }
}

/// Finds every occurrence (overlapping ones too) of every pattern; its cost per byte does
/// not grow with the number of patterns (see the module docs).
pub(crate) struct Finder {
    patterns: Patterns,
    long: Option<GramIndex>,
    mid: Option<GramIndex>,
    /// Patterns under 4 bytes (an automaton reporting overlapping matches) and their ids.
    short: Option<(AhoCorasick, Vec<usize>)>,
    /// Up to [`PACKED_MAX`] patterns (a few credentials): a leftmost-longest SIMD (Teddy)
    /// searcher, about twice the sampled grams' speed on bulk bytes. Its matches do not
    /// overlap, so it serves only buffers where no JSON-view occurrence competes.
    packed: Option<packed::Searcher>,
    /// Pattern ids by first byte, for the hold-back decision.
    by_first: Vec<Vec<u32>>,
    /// The bytes that occur in some pattern (a bit set).
    bytes: [u64; 4],
    max_len: usize,
}

impl Finder {
    pub(crate) fn new(patterns: Patterns) -> Result<Finder, aho_corasick::BuildError> {
        let ids = |r: std::ops::Range<usize>| -> Vec<usize> {
            (0..patterns.len())
                .filter(|&i| r.contains(&patterns[i].len()))
                .collect()
        };
        let long = GramIndex::build(8, &patterns, &ids(16..usize::MAX));
        let mid = GramIndex::build(4, &patterns, &ids(4..16));
        let short_ids = ids(1..4);
        let short = if short_ids.is_empty() {
            None
        } else {
            let ac = AhoCorasick::new(short_ids.iter().map(|&i| patterns[i].as_slice()))?;
            Some((ac, short_ids))
        };
        let mut by_first = vec![Vec::new(); 256];
        for (i, p) in patterns.iter().enumerate() {
            if let Some(&b) = p.first() {
                by_first[b as usize].push(i as u32);
            }
        }
        let mut bytes = [0u64; 4];
        for &b in patterns.iter().flat_map(|p| p.iter()) {
            bytes[b as usize >> 6] |= 1 << (b & 63);
        }
        let max_len = patterns.iter().map(|p| p.len()).max().unwrap_or(0);
        let packed = (!patterns.is_empty() && patterns.len() <= PACKED_MAX)
            .then(|| {
                let mut b = packed::Config::new()
                    .match_kind(packed::MatchKind::LeftmostLongest)
                    .builder();
                b.extend(patterns.iter().map(|p| p.as_slice()));
                b.build()
            })
            .flatten();
        Ok(Finder {
            patterns,
            long,
            mid,
            short,
            packed,
            by_first,
            bytes,
            max_len,
        })
    }

    /// Every occurrence in `hay` as (start, end, pattern), in no particular order.
    pub(crate) fn find(&self, hay: &[u8], out: &mut Vec<(usize, usize, usize)>) {
        for g in [&self.long, &self.mid].into_iter().flatten() {
            g.find(hay, &self.patterns, out);
        }
        if let Some((ac, ids)) = &self.short {
            for m in ac.find_overlapping_iter(hay) {
                out.push((m.start(), m.end(), ids[m.pattern().as_usize()]));
            }
        }
    }

    /// The leftmost-longest occurrences, none overlapping another (what the scrubber's
    /// selection keeps from [`Finder::find`]'s when nothing else competes); `false` when
    /// there is no packed searcher (then use [`Finder::find`]).
    fn find_leftmost_longest(&self, hay: &[u8], out: &mut Vec<(usize, usize, usize)>) -> bool {
        let Some(p) = &self.packed else { return false };
        out.extend(
            p.find_iter(hay)
                .map(|m| (m.start(), m.end(), m.pattern().as_usize())),
        );
        true
    }

    /// Whether some pattern contains byte `b`.
    fn has_byte(&self, b: u8) -> bool {
        self.bytes[b as usize >> 6] >> (b & 63) & 1 != 0
    }

    /// Whether `rest` is a proper prefix of some pattern (could still become one).
    fn grows(&self, rest: &[u8]) -> bool {
        let Some(&b) = rest.first() else { return false };
        self.by_first[b as usize].iter().any(|&i| {
            let p = &self.patterns[i as usize];
            p.len() > rest.len() && p.starts_with(rest)
        })
    }

    /// The first index at or after `from` where `buf[i..]` is a proper prefix of a pattern;
    /// `buf.len()` when none.
    fn hold_from(&self, buf: &[u8], from: usize) -> usize {
        (from..buf.len())
            .find(|&i| self.grows(&buf[i..]))
            .unwrap_or(buf.len())
    }
}

/// Bytes `lo..hi` of the scanned buffer with JSON escapes decoded. `escs` holds, per
/// escape, (its index in `view`, decoded length, where it starts in the buffer, its length):
/// view and buffer positions between escapes differ by a constant.
struct View {
    view: Zeroizing<Vec<u8>>,
    escs: Vec<(usize, usize, usize, usize)>,
    lo: usize,
}

impl View {
    /// `lo` and `hi` are token boundaries; `escapes` (sorted) are the escapes in between.
    fn decode(buf: &[u8], lo: usize, hi: usize, escapes: &[(usize, usize, char)]) -> View {
        let mut view = Zeroizing::new(Vec::with_capacity(hi - lo));
        let mut escs = Vec::with_capacity(escapes.len());
        let mut pos = lo;
        for &(x, n, ch) in escapes {
            view.extend_from_slice(&buf[pos..x]);
            let mut b = [0u8; 4];
            let s = ch.encode_utf8(&mut b);
            escs.push((view.len(), s.len(), x, n));
            view.extend_from_slice(s.as_bytes());
            pos = x + n;
        }
        view.extend_from_slice(&buf[pos..hi]);
        View { view, escs, lo }
    }

    /// Where view index `i` (or the end) starts in the buffer; `None` inside the decoded
    /// bytes of one escape (no token starts there).
    fn original(&self, i: usize) -> Option<usize> {
        let k = self.escs.partition_point(|e| e.0 <= i);
        let Some(&(v, d, x, n)) = k.checked_sub(1).map(|k| &self.escs[k]) else {
            return Some(self.lo + i);
        };
        match i - v {
            0 => Some(x),
            j if j < d => None,
            j => Some(x + n + (j - d)),
        }
    }
}

/// Replaces real values (and their encoded forms) in a byte stream with placeholders.
/// Feed chunks with [`Scrubber::push`], then call [`Scrubber::finish`].
pub struct Scrubber {
    finder: Arc<Finder>,
    replacements: Arc<[Vec<u8>]>,
    /// The same, JSON-escaped, for occurrences found through the JSON view.
    json_replacements: Arc<[Vec<u8>]>,
    /// Unemitted tail; may hold a prefix of a real value, hence zeroized.
    pending: Zeroizing<Vec<u8>>,
    /// `pending[..tok_skip]` ends an escape whose start was already emitted.
    tok_skip: usize,
    replaced: usize,
}

impl std::fmt::Debug for Scrubber {
    // The finder holds real values: never print it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrubber")
            .field("window", &self.window())
            .field("pending", &self.pending.len())
            .field("replaced", &self.replaced)
            .finish()
    }
}

impl Scrubber {
    pub(crate) fn new(
        finder: Arc<Finder>,
        replacements: Arc<[Vec<u8>]>,
        json_replacements: Arc<[Vec<u8>]>,
    ) -> Self {
        Scrubber {
            finder,
            replacements,
            json_replacements,
            pending: Zeroizing::new(Vec::new()),
            tok_skip: 0,
            replaced: 0,
        }
    }

    /// Scrubs `chunk` and returns the bytes that are final; up to [`Scrubber::window`] bytes
    /// are held back until the next call or [`Scrubber::finish`].
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
        let buf = if self.pending.is_empty() {
            chunk
        } else {
            let mut b = std::mem::take(&mut *self.pending);
            b.extend_from_slice(&chunk);
            b
        };
        self.scrub(buf, false)
    }

    /// Flushes the held-back tail (scrubbed).
    pub fn finish(&mut self) -> Vec<u8> {
        let buf = std::mem::take(&mut *self.pending);
        if self.replacements.is_empty() {
            return buf;
        }
        let mut out = self.scrub(buf, true);
        // What came back unchanged is the old tail itself: hand on a copy, wipe it.
        let copy = out.clone();
        out.zeroize();
        copy
    }

    /// One buffer (held-back tail + new bytes): emits what is final, keeps the rest.
    fn scrub(&mut self, mut buf: Vec<u8>, last: bool) -> Vec<u8> {
        let len = buf.len();
        let finder = self.finder.clone();
        // The JSON escapes in reading order from the first token boundary; an escape that
        // later bytes decide stops the reading (`undecided`).
        let mut escapes: Vec<(usize, usize, char)> = Vec::new();
        let mut undecided = None;
        let from = self.tok_skip.min(len);
        let mut next = from;
        for x in memchr::memchr_iter(b'\\', &buf[from..]).map(|x| x + from) {
            if x < next {
                continue;
            }
            match escape_at(&buf[x..], last) {
                Escape::Literal => next = x + 1,
                Escape::Token { len: n, ch } => {
                    escapes.push((x, n, ch));
                    next = x + n;
                }
                Escape::Undecided => {
                    undecided = Some(x);
                    break;
                }
            }
        }
        let decided = undecided.unwrap_or(len);

        let mut occ: Vec<Occ> = Vec::new();
        if !escapes.is_empty() {
            self.json_occurrences(&buf, &escapes, decided, &mut occ);
        }
        // With no JSON-view occurrence, the leftmost-longest non-overlapping matches are
        // exactly what the selection below keeps from all overlapping ones.
        let mut raw = Vec::new();
        if !(occ.is_empty() && finder.find_leftmost_longest(&buf, &mut raw)) {
            raw.clear();
            finder.find(&buf, &mut raw);
        }
        occ.extend(raw.into_iter().map(|(s, e, p)| (s, e, p, false)));

        let mut hold = len;
        if !last {
            let max = finder.max_len;
            hold = finder.hold_from(&buf, len.saturating_sub(max.saturating_sub(1)));
            if let Some(x) = undecided {
                hold = hold.min(x);
            }
            // Could a run of escapes near the end still decode into a value?
            let tail = len.saturating_sub(JSON_SPAN * max + LONGEST_ESCAPE);
            let tail = self.tok_skip.max(tail);
            if undecided.is_some() || escapes.last().is_some_and(|e| e.0 + e.1 > tail) {
                let first = escapes.partition_point(|e| e.0 + e.1 <= tail);
                let lo = escapes.get(first).map_or(tail, |e| e.0.min(tail));
                let v = View::decode(&buf, lo, decided, &escapes[first..]);
                let at = (0..v.view.len()).find_map(|i| {
                    let o = v.original(i)?;
                    finder.grows(&v.view[i..]).then_some(o)
                });
                if let Some(o) = at {
                    hold = hold.min(o);
                }
            }
        }

        // Leftmost, then longest (then raw before JSON, lower pattern id).
        occ.sort_unstable_by(|a, b| {
            a.0.cmp(&b.0)
                .then(b.1.cmp(&a.1))
                .then(a.3.cmp(&b.3))
                .then(a.2.cmp(&b.2))
        });
        let mut found: Vec<Occ> = Vec::new();
        let mut pos = 0;
        for o in occ {
            if o.0 < pos {
                continue;
            }
            if o.0 >= hold {
                break;
            }
            if !last && o.1 > decided {
                // Spans an escape later bytes decide: decide it with them.
                hold = o.0;
                break;
            }
            pos = o.1;
            found.push(o);
        }

        let cut = found.last().map_or(0, |m| m.1).max(hold);
        self.pending.extend_from_slice(&buf[cut..]);
        self.tok_skip = if cut < self.tok_skip {
            self.tok_skip - cut
        } else {
            let k = escapes.partition_point(|e| e.0 < cut);
            match k.checked_sub(1).map(|k| escapes[k]) {
                Some((x, n, _)) if x + n > cut => x + n - cut,
                _ => 0,
            }
        };
        if found.is_empty() {
            buf[cut..].zeroize();
            buf.truncate(cut);
            return buf;
        }
        let mut out = Vec::with_capacity(buf.len());
        let mut pos = 0;
        for (start, end, pid, json) in found {
            out.extend_from_slice(&buf[pos..start]);
            let r = if json {
                &self.json_replacements[pid]
            } else {
                &self.replacements[pid]
            };
            out.extend_from_slice(r);
            pos = end;
            self.replaced += 1;
        }
        out.extend_from_slice(&buf[pos..cut]);
        buf.zeroize();
        out
    }

    /// Occurrences that need at least one of `escapes` decoded: each escape's neighbourhood
    /// (as far as a value containing it can reach) is decoded and searched.
    fn json_occurrences(
        &self,
        buf: &[u8],
        escapes: &[(usize, usize, char)],
        decided: usize,
        occ: &mut Vec<Occ>,
    ) {
        let reach = JSON_SPAN * self.finder.max_len;
        let floor = self.tok_skip.min(buf.len());
        // The escape containing `at`, if any, as its index.
        let inside = |at: usize| {
            let k = escapes.partition_point(|e| e.0 + e.1 <= at);
            escapes.get(k).filter(|e| e.0 < at).map(|_| k)
        };
        // Only an escape that decodes to a byte some form contains can be inside a match
        // (`\n` or `\"` in text usually cannot): only those start a neighbourhood.
        let triggers: Vec<usize> = (0..escapes.len())
            .filter(|&i| {
                let mut b = [0u8; 4];
                self.finder
                    .has_byte(escapes[i].2.encode_utf8(&mut b).as_bytes()[0])
            })
            .collect();
        let mut found = Vec::new();
        let mut t = 0;
        while t < triggers.len() {
            let k = triggers[t];
            let (x, _, _) = escapes[k];
            let mut lo = x.saturating_sub(reach).max(floor);
            if let Some(j) = inside(lo) {
                lo = escapes[j].0;
            }
            // Extend over every escape whose neighbourhood overlaps this one.
            let mut u = t;
            while u + 1 < triggers.len() && {
                let (a, b) = (escapes[triggers[u]], escapes[triggers[u + 1]]);
                b.0 <= a.0 + a.1 + 2 * reach
            } {
                u += 1;
            }
            let j = triggers[u];
            let mut hi = (escapes[j].0 + escapes[j].1 + reach).min(decided);
            if let Some(i) = inside(hi) {
                hi = escapes[i].0 + escapes[i].1;
            }
            let first = escapes.partition_point(|e| e.0 < lo);
            let end = escapes.partition_point(|e| e.0 < hi);
            let v = View::decode(buf, lo, hi, &escapes[first..end]);
            found.clear();
            self.finder.find(&v.view, &mut found);
            for &(a, b, pid) in &found {
                let (Some(s), Some(e)) = (v.original(a), v.original(b)) else {
                    continue;
                };
                // Same length: no escape inside, the raw search has it.
                if e - s != b - a {
                    occ.push((s, e, pid, true));
                }
            }
            t = u + 1;
        }
    }

    /// Bytes currently held back.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// The maximum number of bytes ever held back: longest pattern - 1 without JSON escapes
    /// near the end of the buffer, at most 6 x longest + 24 with them.
    pub fn window(&self) -> usize {
        let max = self.finder.max_len;
        if max == 0 {
            return 0;
        }
        (JSON_SPAN * max + 2 * LONGEST_ESCAPE).max(max + LONGEST_ESCAPE)
    }

    /// Replacements made so far.
    pub fn replaced(&self) -> usize {
        self.replaced
    }
}

/// The most patterns a packed (Teddy) searcher takes.
const PACKED_MAX: usize = 64;

/// From this many bytes in one push, the baseline scrubber builds its SIMD (Teddy) searcher.
const PACKED_FROM: usize = 16 * 1024;

/// The scrubber before the sampled-gram finder and the JSON view: one leftmost-longest
/// automaton, a Teddy searcher for bulk pushes while there are at most 64 patterns. Kept only
/// as the baseline of `benches/scrub.rs`; not used by the broker.
#[doc(hidden)]
pub struct BaselineScrubber {
    values: Arc<AhoCorasick>,
    replacements: Arc<[Vec<u8>]>,
    keep: usize,
    patterns: Patterns,
    pending: Zeroizing<Vec<u8>>,
    packed: Option<Option<packed::Searcher>>,
}

impl std::fmt::Debug for BaselineScrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BaselineScrubber").finish_non_exhaustive()
    }
}

impl BaselineScrubber {
    pub(crate) fn new(
        values: Arc<AhoCorasick>,
        replacements: Arc<[Vec<u8>]>,
        patterns: Patterns,
    ) -> Self {
        let max = patterns.iter().map(|p| p.len()).max().unwrap_or(0);
        BaselineScrubber {
            values,
            replacements,
            keep: max.saturating_sub(1),
            patterns,
            pending: Zeroizing::new(Vec::new()),
            packed: None,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) -> Vec<u8> {
        if self.replacements.is_empty() {
            return chunk.to_vec();
        }
        let mut buf = std::mem::take(&mut *self.pending);
        buf.extend_from_slice(chunk);
        let from = buf.len().saturating_sub(self.keep);
        let hold = (from..buf.len())
            .find(|&i| {
                let rest = &buf[i..];
                self.patterns
                    .iter()
                    .any(|p| p.len() > rest.len() && p.starts_with(rest))
            })
            .unwrap_or(buf.len());
        if self.packed.is_none() && buf.len() >= PACKED_FROM {
            let mut b = packed::Config::new()
                .match_kind(packed::MatchKind::LeftmostLongest)
                .builder();
            b.extend(self.patterns.iter().map(|p| p.as_slice()));
            self.packed = Some(b.build());
        }
        let mut found = Vec::new();
        match &self.packed {
            Some(Some(p)) => found.extend(
                p.find_iter(&buf)
                    .map(|m| (m.start(), m.end(), m.pattern().as_usize()))
                    .take_while(|m| m.0 < hold),
            ),
            _ => found.extend(
                self.values
                    .find_iter(&buf)
                    .map(|m| (m.start(), m.end(), m.pattern().as_usize()))
                    .take_while(|m| m.0 < hold),
            ),
        }
        let cut = found.last().map_or(0, |m| m.1).max(hold);
        self.pending.extend_from_slice(&buf[cut..]);
        if found.is_empty() {
            buf.truncate(cut);
            return buf;
        }
        let mut out = Vec::with_capacity(buf.len());
        let mut pos = 0;
        for (start, end, pid) in found {
            out.extend_from_slice(&buf[pos..start]);
            out.extend_from_slice(&self.replacements[pid]);
            pos = end;
        }
        out.extend_from_slice(&buf[pos..cut]);
        buf.zeroize();
        out
    }

    pub fn finish(&mut self) -> Vec<u8> {
        let buf = Zeroizing::new(std::mem::take(&mut *self.pending));
        let mut out = Vec::with_capacity(buf.len());
        let mut pos = 0;
        for m in self.values.find_iter(buf.as_slice()) {
            out.extend_from_slice(&buf[pos..m.start()]);
            out.extend_from_slice(&self.replacements[m.pattern().as_usize()]);
            pos = m.end();
        }
        out.extend_from_slice(&buf[pos..]);
        out
    }
}

#[cfg(test)]
#[path = "scrub_tests.rs"]
mod tests;
