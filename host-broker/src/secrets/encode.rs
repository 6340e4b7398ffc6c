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

/// Undoes JSON string escapes (`\"`, `\\`, `\/`, `\n`..., `\uXXXX` incl. surrogate pairs).
/// Unknown escapes are kept as-is.
pub(crate) fn json_unescape(input: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] != b'\\' || i + 1 >= input.len() {
            out.push(input[i]);
            i += 1;
            continue;
        }
        let simple = match input[i + 1] {
            b'"' => Some(b'"'),
            b'\\' => Some(b'\\'),
            b'/' => Some(b'/'),
            b'b' => Some(8),
            b'f' => Some(12),
            b'n' => Some(b'\n'),
            b'r' => Some(b'\r'),
            b't' => Some(b'\t'),
            _ => None,
        };
        if let Some(c) = simple {
            out.push(c);
            i += 2;
            continue;
        }
        if input[i + 1] == b'u' {
            if let Some((ch, used)) = parse_u_escape(&input[i..]) {
                let mut buf = [0u8; 4];
                out.extend_from_slice(ch.encode_utf8(&mut buf).as_bytes());
                i += used;
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

/// Parses `\uXXXX` (and a following low surrogate); returns the char and bytes consumed.
fn parse_u_escape(s: &[u8]) -> Option<(char, usize)> {
    let hi = hex4(s.get(2..)?)?;
    if (0xD800..0xDC00).contains(&hi) {
        if s.get(6..8)? == b"\\u" {
            let lo = hex4(s.get(8..)?)?;
            if (0xDC00..0xE000).contains(&lo) {
                let c = 0x10000 + ((hi - 0xD800) << 10) + (lo - 0xDC00);
                return char::from_u32(c).map(|c| (c, 12));
            }
        }
        return None;
    }
    char::from_u32(hi).map(|c| (c, 6))
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
