//! Base64 forms of a value that sits at any offset inside a longer base64 payload.
//!
//! `base64(value)` only matches when the value starts the encoded bytes. Once the value is
//! preceded by 1 or 2 bytes (mod 3) -- `base64("user:" + value)`, the Basic payload the
//! broker itself builds and an upstream such as httpbin's `/headers` echoes in a body -- every
//! character is different, and when it is followed by more bytes the last character is too.
//! For each alignment the characters whose 6 bits all come from the value are the same
//! whatever surrounds it: that run (the "core") is searched for and replaced by the
//! placeholder's core at the same alignment. The one or two boundary characters at each end
//! mix value bits with the neighbours' and are left as they are: at most 4 bits of the
//! value's first byte and 4 of its last stay visible, never the value.

use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;

/// Cores shorter than this are not searched for (too likely in ordinary text).
const MIN_CORE: usize = 8;

/// (core of the value, core of the placeholder) for alignments 0, 1 and 2 in the standard
/// and URL-safe alphabets.
pub(crate) fn unaligned_base64_forms(value: &[u8], placeholder: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut out = Vec::new();
    for align in 0..3 {
        for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
            let v = core(engine, value, align);
            if v.len() >= MIN_CORE {
                out.push((v, core(engine, placeholder, align)));
            }
        }
    }
    out
}

/// The characters of `base64(align zero bytes + bytes)` that depend on `bytes` alone.
fn core(engine: &impl Engine, bytes: &[u8], align: usize) -> Vec<u8> {
    let mut padded = vec![0u8; align];
    padded.extend_from_slice(bytes);
    let enc = engine.encode(&padded).into_bytes();
    // Character i covers bits [6i, 6i + 6); keep those inside [8 * align, 8 * len).
    let start = (8 * align).div_ceil(6);
    let end = (8 * padded.len()) / 6;
    if end <= start {
        return Vec::new();
    }
    enc[start..end].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};

    #[test]
    fn a_core_is_found_whatever_precedes_or_follows_the_value() {
        let value = b"sk-live-4f9a2c7e1b0d8f3a";
        for prefix in 0..7 {
            for suffix in 0..4 {
                let mut bytes = vec![b'u'; prefix];
                bytes.extend_from_slice(value);
                bytes.extend(std::iter::repeat_n(b'!', suffix));
                for engine in [&STANDARD, &URL_SAFE] {
                    let text = engine.encode(&bytes);
                    let forms = unaligned_base64_forms(value, b"mock-K");
                    assert!(
                        forms
                            .iter()
                            .any(|(f, _)| text.as_bytes().windows(f.len()).any(|w| w == &f[..])),
                        "prefix {prefix} suffix {suffix}: no core in {text}"
                    );
                }
            }
        }
    }

    #[test]
    fn short_values_give_no_core() {
        assert!(unaligned_base64_forms(b"abc", b"mock-K").is_empty());
    }
}
