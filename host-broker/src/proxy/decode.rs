//! Content decoding for response scrubbing.
//!
//! Choice: on a VM with credentials, a gzip or deflate response body is decoded, scrubbed and
//! sent to the guest *identity*-encoded (`Content-Encoding` removed), not re-compressed. The
//! guest link is a local vsock, so the larger body costs little, and not re-encoding saves
//! the compression CPU. Codings we cannot decode (br, zstd, ...) are removed from the
//! guest's `Accept-Encoding` on such VMs; an upstream that sends one anyway gets a `502`
//! (never an unscrubbed body). VMs without credentials pass bodies through untouched.

use std::io::Write;

use flate2::write::{MultiGzDecoder, ZlibDecoder};
use http::header::{HeaderMap, HeaderValue, ACCEPT_ENCODING, CONTENT_ENCODING};

/// A streaming decoder for one response body.
pub(super) enum Decoder {
    Gzip(MultiGzDecoder<Vec<u8>>),
    Deflate(ZlibDecoder<Vec<u8>>),
}

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Decoder::Gzip(_) => "Decoder::Gzip",
            Decoder::Deflate(_) => "Decoder::Deflate",
        })
    }
}

/// Codings the broker can decode (and therefore scrub).
const DECODABLE: &[&str] = &["gzip", "x-gzip", "deflate", "identity"];

impl Decoder {
    /// The decoder for a response's `Content-Encoding`: `Ok(None)` for identity/absent,
    /// `Err(coding)` for one we cannot decode (or a stack of several).
    pub fn for_headers(headers: &HeaderMap) -> Result<Option<Decoder>, String> {
        let mut codings: Vec<String> = Vec::new();
        for v in headers.get_all(CONTENT_ENCODING) {
            let Ok(s) = v.to_str() else {
                return Err("(non-ASCII)".into());
            };
            codings.extend(
                s.split(',')
                    .map(|c| c.trim().to_ascii_lowercase())
                    .filter(|c| !c.is_empty() && c != "identity"),
            );
        }
        match codings.as_slice() {
            [] => Ok(None),
            [c] if c == "gzip" || c == "x-gzip" => {
                Ok(Some(Decoder::Gzip(MultiGzDecoder::new(Vec::new()))))
            }
            [c] if c == "deflate" => Ok(Some(Decoder::Deflate(ZlibDecoder::new(Vec::new())))),
            _ => Err(codings.join(", ")),
        }
    }

    /// Feeds compressed bytes; returns what decoded so far.
    pub fn push(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        match self {
            Decoder::Gzip(d) => {
                d.write_all(data)?;
                Ok(std::mem::take(d.get_mut()))
            }
            Decoder::Deflate(d) => {
                d.write_all(data)?;
                Ok(std::mem::take(d.get_mut()))
            }
        }
    }

    /// Ends the stream; returns the last decoded bytes (error on a truncated stream).
    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        match self {
            Decoder::Gzip(d) => d.finish(),
            Decoder::Deflate(d) => d.finish(),
        }
    }
}

/// Restricts the guest's `Accept-Encoding` to codings the broker can decode (used on VMs
/// with credentials). A header left without codings becomes `identity`.
pub(super) fn limit_accept_encoding(headers: &mut HeaderMap) {
    if !headers.contains_key(ACCEPT_ENCODING) {
        return;
    }
    let kept: Vec<String> = headers
        .get_all(ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_owned())
        .filter(|t| {
            let name = t
                .split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase();
            DECODABLE.contains(&name.as_str())
        })
        .collect();
    let value = if kept.is_empty() {
        "identity".to_owned()
    } else {
        kept.join(", ")
    };
    headers.remove(ACCEPT_ENCODING);
    if let Ok(v) = HeaderValue::from_str(&value) {
        headers.insert(ACCEPT_ENCODING, v);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_encoding_keeps_only_decodable() {
        let mut h = HeaderMap::new();
        h.insert(
            ACCEPT_ENCODING,
            "br, gzip;q=0.8, zstd, deflate".parse().unwrap(),
        );
        limit_accept_encoding(&mut h);
        assert_eq!(h[ACCEPT_ENCODING], "gzip;q=0.8, deflate");
        h.insert(ACCEPT_ENCODING, "br".parse().unwrap());
        limit_accept_encoding(&mut h);
        assert_eq!(h[ACCEPT_ENCODING], "identity");
    }

    #[test]
    fn gzip_round_trip_in_small_pieces() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(b"hello gzip world").unwrap();
        let z = enc.finish().unwrap();
        let mut h = HeaderMap::new();
        h.insert(CONTENT_ENCODING, "gzip".parse().unwrap());
        let mut d = Decoder::for_headers(&h).unwrap().unwrap();
        let mut out = Vec::new();
        for b in z.chunks(3) {
            out.extend(d.push(b).unwrap());
        }
        out.extend(d.finish().unwrap());
        assert_eq!(out, b"hello gzip world");
        h.insert(CONTENT_ENCODING, "br".parse().unwrap());
        assert_eq!(Decoder::for_headers(&h).unwrap_err(), "br");
    }
}
