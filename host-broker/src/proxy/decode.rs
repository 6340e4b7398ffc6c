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
pub(super) struct Decoder {
    kind: Kind,
    /// Compressed input not yet fed (output of one call is bounded; see [`MAX_OUTPUT`]).
    pending: Vec<u8>,
}

enum Kind {
    Gzip(MultiGzDecoder<Vec<u8>>),
    Deflate(ZlibDecoder<Vec<u8>>),
}

/// Most decoded bytes one call produces: a small compressed frame can expand ~1000x, so
/// input is fed in slices and the rest kept for the next call (bounded memory per body).
const MAX_OUTPUT: usize = 1 << 20;
/// Input slice fed at a time.
const SLICE: usize = 1024;

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self.kind {
            Kind::Gzip(_) => "Decoder::Gzip",
            Kind::Deflate(_) => "Decoder::Deflate",
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
            [c] if c == "gzip" || c == "x-gzip" => Ok(Some(Decoder::new(Kind::Gzip(
                MultiGzDecoder::new(Vec::new()),
            )))),
            [c] if c == "deflate" => Ok(Some(Decoder::new(Kind::Deflate(ZlibDecoder::new(
                Vec::new(),
            ))))),
            _ => Err(codings.join(", ")),
        }
    }

    fn new(kind: Kind) -> Decoder {
        Decoder {
            kind,
            pending: Vec::new(),
        }
    }

    fn feed(&mut self, data: &[u8]) -> std::io::Result<()> {
        match &mut self.kind {
            Kind::Gzip(d) => d.write_all(data),
            Kind::Deflate(d) => d.write_all(data),
        }
    }

    fn take_output(&mut self) -> Vec<u8> {
        match &mut self.kind {
            Kind::Gzip(d) => std::mem::take(d.get_mut()),
            Kind::Deflate(d) => std::mem::take(d.get_mut()),
        }
    }

    /// Feeds compressed bytes; returns what decoded so far, at most about [`MAX_OUTPUT`]
    /// bytes: the rest of the input waits for [`Decoder::drain`] (see `has_pending`).
    pub fn push(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        self.pending.extend_from_slice(data);
        self.drain()
    }

    /// Continues with held-back input (bounded output, like [`Decoder::push`]).
    pub fn drain(&mut self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut used = 0;
        while used < self.pending.len() && out.len() < MAX_OUTPUT {
            let end = (used + SLICE).min(self.pending.len());
            let slice = self.pending[used..end].to_vec();
            self.feed(&slice)?;
            used = end;
            out.extend(self.take_output());
        }
        self.pending.drain(..used);
        Ok(out)
    }

    /// Whether input is held back (call [`Decoder::drain`] before reading more).
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Ends the stream; returns the last decoded bytes (error on a truncated stream).
    pub fn finish(mut self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        while self.has_pending() {
            out.extend(self.drain()?);
        }
        match self.kind {
            Kind::Gzip(d) => out.extend(d.finish()?),
            Kind::Deflate(d) => out.extend(d.finish()?),
        }
        Ok(out)
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

    #[test]
    fn bomb_output_is_bounded_per_call() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
        enc.write_all(&vec![0u8; 64 << 20]).unwrap();
        let z = enc.finish().unwrap();
        assert!(z.len() < 256 << 10, "{}", z.len());
        let mut h = HeaderMap::new();
        h.insert(CONTENT_ENCODING, "gzip".parse().unwrap());
        let mut d = Decoder::for_headers(&h).unwrap().unwrap();
        let mut total = d.push(&z).unwrap().len();
        assert!(total <= MAX_OUTPUT + SLICE * 1100, "{total}");
        while d.has_pending() {
            let n = d.drain().unwrap().len();
            assert!(n <= MAX_OUTPUT + SLICE * 1100, "{n}");
            total += n;
        }
        total += d.finish().unwrap().len();
        assert_eq!(total, 64 << 20);
    }
}
