//! Decoders for the encoded forms a placeholder may hide in: percent-encoding and JSON string
//! escapes. Small on purpose: they only need to expose a placeholder for detection.

/// Percent-decodes `%XX` sequences (invalid sequences are kept as-is). Applied up to three
/// times so double-encoding (`%256d`) does not hide a placeholder.
pub(crate) fn percent_decode_deep(input: &[u8]) -> Vec<u8> {
    let mut cur = input.to_vec();
    for _ in 0..3 {
        if !cur.contains(&b'%') {
            break;
        }
        let next = percent_decode(&cur);
        if next == cur {
            break;
        }
        cur = next;
    }
    cur
}

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).map(|d| d as u8)
}

fn percent_decode(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'%' && i + 2 < input.len() {
            if let (Some(h), Some(l)) = (hex(input[i + 1]), hex(input[i + 2])) {
                out.push(h << 4 | l);
                i += 3;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

/// What a backslash starts in a JSON string (greedy, as a JSON parser reads it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Escape {
    /// Not an escape: the backslash is an ordinary byte (`\x`, a lone surrogate, ...).
    Literal,
    /// `len` bytes (2, 6, or 12 for a surrogate pair) that stand for `ch`.
    Token { len: usize, ch: char },
    /// The bytes so far are a proper prefix of an escape: later bytes decide.
    Undecided,
}

/// Reads the escape at the start of `s` (`s[0]` is a backslash). With `at_end`, `s` is all there
/// is (an unfinished escape is then [`Escape::Literal`]); otherwise more bytes may follow.
/// The one reading shared by placeholder detection ([`json_unescape`]) and the response
/// scrubber's JSON view, so both find the same things.
pub(crate) fn escape_at(s: &[u8], at_end: bool) -> Escape {
    let more = if at_end {
        Escape::Literal
    } else {
        Escape::Undecided
    };
    let Some(&c) = s.get(1) else { return more };
    let ch = match c {
        b'"' => '"',
        b'\\' => '\\',
        b'/' => '/',
        b'b' => '\u{8}',
        b'f' => '\u{c}',
        b'n' => '\n',
        b'r' => '\r',
        b't' => '\t',
        b'u' => return u_escape(s, more),
        _ => return Escape::Literal,
    };
    Escape::Token { len: 2, ch }
}

/// `\uXXXX`, a surrogate pair `\uD83D\uDE00`, or not an escape (a lone surrogate).
fn u_escape(s: &[u8], more: Escape) -> Escape {
    let Some(hi) = hex4_prefix(&s[2..]) else {
        return Escape::Literal;
    };
    let Some(hi) = hi else { return more };
    if (0xDC00..0xE000).contains(&hi) {
        return Escape::Literal;
    }
    if !(0xD800..0xDC00).contains(&hi) {
        return match char::from_u32(hi) {
            Some(ch) => Escape::Token { len: 6, ch },
            None => Escape::Literal,
        };
    }
    // A high surrogate counts only with a low one right after it: `\u` + DC00..DFFF.
    let tail = &s[6..s.len().min(12)];
    let ok = tail.iter().enumerate().all(|(k, &b)| match k {
        0 => b == b'\\',
        1 => b == b'u',
        2 => b.eq_ignore_ascii_case(&b'd'),
        3 => matches!(b.to_ascii_lowercase(), b'c'..=b'f'),
        _ => hex(b).is_some(),
    });
    if !ok {
        return Escape::Literal;
    }
    if tail.len() < 6 {
        return more;
    }
    let lo = hex4(&tail[2..]).unwrap_or(0);
    let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
    match char::from_u32(c) {
        Some(ch) => Escape::Token { len: 12, ch },
        None => Escape::Literal,
    }
}

/// Four hex digits: `Some(Some(v))`; fewer bytes, all hex: `Some(None)`; a non-hex: `None`.
fn hex4_prefix(s: &[u8]) -> Option<Option<u32>> {
    let mut v = 0u32;
    for (k, &b) in s.iter().take(4).enumerate() {
        v = v << 4 | u32::from(hex(b)?);
        if k == 3 {
            return Some(Some(v));
        }
    }
    Some(None)
}

/// Undoes JSON string escapes (`\"`, `\\`, `\/`, `\n`..., `\uXXXX` incl. surrogate pairs).
/// Unknown escapes are kept as-is.
pub(crate) fn json_unescape(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] == b'\\' {
            if let Escape::Token { len, ch } = escape_at(&input[i..], true) {
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                i += len;
                continue;
            }
        }
        out.push(input[i]);
        i += 1;
    }
    out
}

fn hex4(s: &[u8]) -> Option<u32> {
    if s.len() < 4 {
        return None;
    }
    s[..4]
        .iter()
        .try_fold(0u32, |acc, b| hex(*b).map(|d| acc << 4 | u32::from(d)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent() {
        assert_eq!(percent_decode_deep(b"mock%2DKEY"), b"mock-KEY");
        assert_eq!(percent_decode_deep(b"%6d%6F%63%6b-K"), b"mock-K");
        assert_eq!(percent_decode_deep(b"%256d%256f"), b"mo");
        assert_eq!(percent_decode_deep(b"100%"), b"100%");
        assert_eq!(percent_decode_deep(b"%zz%4"), b"%zz%4");
    }

    #[test]
    fn json() {
        assert_eq!(json_unescape(br#"mock\u002dKEY"#), b"mock-KEY");
        assert_eq!(json_unescape(br#"\u006d\u006F"#), b"mo");
        assert_eq!(json_unescape(br#"a\/b\"c\\"#), br#"a/b"c\"#);
        assert_eq!(json_unescape(br#"\ud83d\ude00"#), "😀".as_bytes());
        assert_eq!(json_unescape(br#"\u12"#), br#"\u12"#);
        assert_eq!(json_unescape(br#"\"#), br#"\"#);
    }
}
