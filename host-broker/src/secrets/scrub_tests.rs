//! Tests of the scrubber's finder and JSON view against brute-force references.

use super::*;
use aho_corasick::MatchKind;

fn patterns_of(patterns: &[&[u8]]) -> Patterns {
    let v: Vec<Zeroizing<Vec<u8>>> = patterns
        .iter()
        .map(|p| Zeroizing::new(p.to_vec()))
        .collect();
    v.into()
}

fn repl(n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("<P{i}>").into_bytes()).collect()
}

fn scrubber(patterns: &[&[u8]]) -> Scrubber {
    let finder = Finder::new(patterns_of(patterns)).unwrap();
    let r = repl(patterns.len());
    let j: Vec<Vec<u8>> = r.iter().map(|r| [b"J", &r[..]].concat()).collect();
    Scrubber::new(Arc::new(finder), r.into(), j.into())
}

/// Pushes `data` cut at `cuts` (sorted), then finishes; checks the hold-back bound.
fn chunked(patterns: &[&[u8]], data: &[u8], cuts: &[usize]) -> (Vec<u8>, usize) {
    let mut sc = scrubber(patterns);
    let mut out = Vec::new();
    let mut last = 0;
    for &c in cuts {
        out.extend(sc.push(&data[last..c]));
        assert!(sc.pending_len() <= sc.window(), "window exceeded");
        last = c;
    }
    out.extend(sc.push(&data[last..]));
    out.extend(sc.finish());
    (out, sc.replaced())
}

/// Brute force: every raw occurrence, every occurrence in the JSON reading of the whole
/// input (tokens as `escape_at` reads them from the start, at least one escape inside),
/// then leftmost-longest, raw before JSON, lower pattern first.
fn reference(patterns: &[&[u8]], data: &[u8]) -> Vec<u8> {
    let mut occ: Vec<Occ> = Vec::new();
    for (pid, p) in patterns.iter().enumerate() {
        for s in 0..data.len() {
            if data[s..].starts_with(p) {
                occ.push((s, s + p.len(), pid, false));
            }
        }
    }
    let (mut view, mut map) = (Vec::new(), Vec::new());
    let mut i = 0;
    while i < data.len() {
        if data[i] == b'\\' {
            if let Escape::Token { len, ch } = escape_at(&data[i..], true) {
                let mut b = [0u8; 4];
                for &c in ch.encode_utf8(&mut b).as_bytes() {
                    view.push(c);
                    map.push(i);
                }
                i += len;
                continue;
            }
        }
        view.push(data[i]);
        map.push(i);
        i += 1;
    }
    let orig = |k: usize| if k == map.len() { data.len() } else { map[k] };
    let boundary = |k: usize| k == 0 || k == map.len() || map[k] != map[k - 1];
    for (pid, p) in patterns.iter().enumerate() {
        for a in 0..view.len() {
            let b = a + p.len();
            if view[a..].starts_with(p) && boundary(a) && boundary(b) {
                let (s, e) = (orig(a), orig(b));
                if e - s != b - a {
                    occ.push((s, e, pid, true));
                }
            }
        }
    }
    occ.sort_by(|a, b| {
        a.0.cmp(&b.0)
            .then(b.1.cmp(&a.1))
            .then(a.3.cmp(&b.3))
            .then(a.2.cmp(&b.2))
    });
    let r = repl(patterns.len());
    let mut out = Vec::new();
    let mut pos = 0;
    for (s, e, pid, json) in occ {
        if s < pos {
            continue;
        }
        out.extend_from_slice(&data[pos..s]);
        if json {
            out.push(b'J');
        }
        out.extend_from_slice(&r[pid]);
        pos = e;
    }
    out.extend_from_slice(&data[pos..]);
    out
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// `s` with a random subset of its characters JSON-escaped, in random ways (`\uXXXX` in
/// either hex case, surrogate pairs, the short escapes where they exist).
fn escape_some(s: &str, rng: &mut Rng) -> Vec<u8> {
    let mut out = Vec::new();
    for c in s.chars() {
        let short = match c {
            '"' => Some("\\\""),
            '\\' => Some("\\\\"),
            '/' => Some("\\/"),
            '\t' => Some("\\t"),
            _ => None,
        };
        match rng.below(4) {
            0 if short.is_some() => out.extend_from_slice(short.unwrap().as_bytes()),
            1 | 2 => {
                let mut units = [0u16; 2];
                for u in c.encode_utf16(&mut units) {
                    let e = if rng.below(2) == 0 {
                        format!("\\u{:04x}", u)
                    } else {
                        format!("\\u{:04X}", u)
                    };
                    out.extend_from_slice(e.as_bytes());
                }
            }
            _ if c == '\\' || c == '"' => out.extend_from_slice(short.unwrap().as_bytes()),
            _ => {
                let mut b = [0u8; 4];
                out.extend_from_slice(c.encode_utf8(&mut b).as_bytes());
            }
        }
    }
    out
}

/// Bulk-sized pushes give exactly what one leftmost-longest automaton pass over the whole
/// stream gives (no JSON escapes in the data), for values anywhere, across chunk edges,
/// for patterns that are prefixes of each other, and for long (8-byte grams), mid (4-byte
/// grams) and short (automaton) patterns: 150 of them (the sampled grams) and 20 (the
/// packed searcher of a few credentials).
#[test]
fn bulk_chunks_scrub_like_one_automaton_pass() {
    for count in [150, 20] {
        bulk_chunks_like_one_pass(count);
    }
}

fn bulk_chunks_like_one_pass(count: usize) {
    let mut owned: Vec<Vec<u8>> = vec![
        b"sk-live-secret".to_vec(),
        b"sk-live-secret-long".to_vec(),
        b"c2stbGl2ZQ".to_vec(),
        b"xyz".to_vec(),
    ];
    for i in 0..count - 4 {
        owned.push(format!("value-{i:03}-0123456789abcdef").into_bytes());
    }
    let patterns: Vec<&[u8]> = owned.iter().map(|p| p.as_slice()).collect();
    let mut rng = Rng(12345);
    let mut data = Vec::new();
    for i in 0..300_000usize {
        let b = rng.next() as u8;
        data.push(if b == b'\\' { b'.' } else { b });
        if i % 997 == 0 {
            data.extend_from_slice(patterns[rng.below(patterns.len())]);
        }
    }
    let ac = AhoCorasick::builder()
        .match_kind(MatchKind::LeftmostLongest)
        .build(&patterns)
        .unwrap();
    let mut expect = Vec::new();
    let mut pos = 0;
    let mut n = 0;
    for m in ac.find_iter(&data) {
        expect.extend_from_slice(&data[pos..m.start()]);
        expect.extend_from_slice(format!("<P{}>", m.pattern().as_usize()).as_bytes());
        pos = m.end();
        n += 1;
    }
    expect.extend_from_slice(&data[pos..]);
    assert!(n > 250, "{n} matches");
    for chunk in [1000, 16 * 1024, 20_000, 64 * 1024, 65_537] {
        let cuts: Vec<usize> = (chunk..data.len()).step_by(chunk).collect();
        let (got, replaced) = chunked(&patterns, &data, &cuts);
        assert!(got == expect, "{count} patterns, chunk size {chunk}");
        assert_eq!(replaced, n);
    }
}

/// The finder reports every occurrence, overlapping ones included, for patterns of every
/// length class, on a small alphabet (many overlaps).
#[test]
fn finder_reports_every_occurrence() {
    let mut rng = Rng(99);
    for round in 0..40 {
        let mut owned: Vec<Vec<u8>> = Vec::new();
        for _ in 0..1 + rng.below(12) {
            let len = 1 + rng.below(24);
            let p: Vec<u8> = (0..len).map(|_| b"ab"[rng.below(2)]).collect();
            if !owned.contains(&p) {
                owned.push(p);
            }
        }
        let patterns: Vec<&[u8]> = owned.iter().map(|p| p.as_slice()).collect();
        let finder = Finder::new(patterns_of(&patterns)).unwrap();
        let hay: Vec<u8> = (0..300).map(|_| b"ab"[rng.below(2)]).collect();
        let mut got = Vec::new();
        finder.find(&hay, &mut got);
        got.sort_unstable();
        got.dedup();
        let mut want = Vec::new();
        for (pid, p) in patterns.iter().enumerate() {
            for s in 0..hay.len() {
                if hay[s..].starts_with(p) {
                    want.push((s, s + p.len(), pid));
                }
            }
        }
        want.sort_unstable();
        assert_eq!(got, want, "round {round}");
    }
}

const VALUE: &str = "sk-live/AbC+9\"q\\<&>\u{e9}\u{20ac}\u{2028}\u{1f600}-tail";

/// A value echoed inside a JSON string with some or all of its characters escaped, in the
/// forms real encoders produce, is replaced at every split point and byte by byte.
#[test]
fn json_escaped_value_is_scrubbed_at_every_split() {
    let value = VALUE.as_bytes();
    let patterns: &[&[u8]] = &[value, b"other-value-0123456789"];
    let forms: Vec<Vec<u8>> = vec![
        // serde_json / JSON.stringify: `"` and `\` only.
        br#"sk-live/AbC+9\"q\\<&>"#
            .iter()
            .copied()
            .chain("\u{e9}\u{20ac}\u{2028}\u{1f600}-tail".bytes())
            .collect(),
        // PHP json_encode: `\/` too, non-ASCII as lower-case \u.
        br#"sk-live\/AbC+9\"q\\<&>\u00e9\u20ac\u2028\ud83d\ude00-tail"#.to_vec(),
        // Python json.dumps (ensure_ascii).
        br#"sk-live/AbC+9\"q\\<&>\u00e9\u20ac\u2028\ud83d\ude00-tail"#.to_vec(),
        // Go encoding/json: <, >, & and U+2028.
        br#"sk-live/AbC+9\"q\\\u003c\u0026\u003e"#
            .iter()
            .copied()
            .chain("\u{e9}\u{20ac}".bytes())
            .chain(br#"\u2028"#.iter().copied())
            .chain("\u{1f600}-tail".bytes())
            .collect(),
        // Upper-case hex, every character escaped.
        VALUE
            .encode_utf16()
            .flat_map(|u| format!("\\u{u:04X}").into_bytes())
            .collect(),
    ];
    for (k, form) in forms.iter().enumerate() {
        let data = [br#"{"echo":""#.as_slice(), form, br#"","n":1}"#].concat();
        let want = reference(patterns, &data);
        assert_eq!(
            want,
            br#"{"echo":"J<P0>","n":1}"#.to_vec(),
            "form {k} not recognised by the reference"
        );
        for split in 0..=data.len() {
            assert!(
                chunked(patterns, &data, &[split]).0 == want,
                "form {k} split {split}"
            );
        }
        let every: Vec<usize> = (1..data.len()).collect();
        assert!(
            chunked(patterns, &data, &every).0 == want,
            "form {k} byte by byte"
        );
    }
}

/// Random mixtures of escaped values, near misses, backslash runs and random bytes: the
/// streaming result equals the brute-force reference for random cut points.
#[test]
fn json_view_matches_the_reference_for_random_streams() {
    let value = VALUE;
    let patterns: &[&[u8]] = &[
        value.as_bytes(),
        b"ab/cd\\ef\"gh-0123",
        b"ab/cd\\ef",
        b"x\"y",
    ];
    let mut rng = Rng(7);
    let mut json_hits = 0;
    for round in 0..1500 {
        let mut data = Vec::new();
        for _ in 0..rng.below(8) {
            match rng.below(7) {
                0 => data.extend(escape_some(value, &mut rng)),
                1 => data.extend(escape_some("ab/cd\\ef\"gh-0123", &mut rng)),
                2 => data.extend(escape_some("x\"y", &mut rng)),
                3 => {
                    let e = escape_some(value, &mut rng);
                    data.extend_from_slice(&e[..rng.below(e.len())]);
                }
                4 => data.extend(std::iter::repeat_n(b'\\', rng.below(4))),
                5 => {
                    data.extend_from_slice([&b"\\u00"[..], b"\\ud83d", b"\\u", b"\\"][rng.below(4)])
                }
                _ => data.extend((0..rng.below(10)).map(|_| b"\\u0aAf/\"xb-"[rng.below(11)])),
            }
        }
        let want = reference(patterns, &data);
        json_hits += usize::from(want.contains(&b'J'));
        let mut cuts: Vec<usize> = (0..rng.below(6))
            .map(|_| rng.below(data.len() + 1))
            .collect();
        cuts.sort_unstable();
        assert!(
            chunked(patterns, &data, &cuts).0 == want,
            "round {round}: {:?} cuts {cuts:?}",
            String::from_utf8_lossy(&data)
        );
    }
    assert!(
        json_hits > 300,
        "only {json_hits} rounds found an escaped value"
    );
}

/// A streamed event with no value prefix at its end is emitted at once, also right after
/// a JSON escape; an unfinished escape or a decoded prefix of a value is held back.
#[test]
fn hold_back_is_only_what_could_still_become_a_value() {
    let patterns: &[&[u8]] = &[b"sk-live/secret-0123456789"];
    let mut sc = scrubber(patterns);
    assert_eq!(
        sc.push(b"data: {\"a\":\"x\\/y\"}\n\n"),
        b"data: {\"a\":\"x\\/y\"}\n\n"
    );
    assert_eq!(sc.pending_len(), 0);
    assert_eq!(sc.push(b"data: \"sk-live\\/sec"), b"data: \"");
    assert_eq!(sc.push(b"ret-012345678"), b"");
    assert_eq!(sc.push(b"9\" \\u00"), b"J<P0>\" ");
    assert_eq!(sc.pending_len(), 4);
    assert_eq!(sc.push(b"41"), b"\\u0041");
    assert_eq!(sc.finish(), b"");
}
