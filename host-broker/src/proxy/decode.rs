//! Content decoding for response scrubbing.
//!
//! Choice: on a VM with credentials, a gzip or deflate response body is decoded, scrubbed and
//! sent to the guest *identity*-encoded (`Content-Encoding` removed), not re-compressed. The
//! guest link is a local vsock, so the larger body costs little, and not re-encoding saves
//! the compression CPU. Codings we cannot decode (br, zstd, ...) are removed from the
//! guest's `Accept-Encoding` on such VMs; an upstream that sends one anyway gets a `502`
//! (never an unscrubbed body). VMs without credentials pass bodies through untouched.
//!
//! Every form the scrubber could otherwise not see through is decoded: a coding in
//! `Transfer-Encoding` (`gzip, chunked`: hyper removes only `chunked`), stacked codings
//! (`Content-Encoding: gzip, gzip`, up to three layers in all), and a body that *is* a gzip
//! file (`Content-Type: application/gzip`), which is decoded for scrubbing and re-compressed
//! for the guest so it stays the file it claims to be. A coding we cannot decode anywhere in
//! that stack is refused. Decoding is bounded per call (memory) and per body
//! ([`MAX_DECODED`]: a decompression bomb is aborted, visibly, not truncated quietly).

use std::io::Write;

use flate2::write::{GzEncoder, MultiGzDecoder, ZlibDecoder};
use http::header::{
    HeaderMap, HeaderValue, ACCEPT_ENCODING, CONTENT_ENCODING, CONTENT_TYPE, TRANSFER_ENCODING,
};

/// A streaming decoder for one response body: one stage per coding, outermost first.
pub(super) struct Decoder {
    stages: Vec<Stage>,
    /// Decoded bytes produced so far (bounded by `limit`: zip bombs).
    total: u64,
    limit: u64,
    /// The body is a gzip file (`Content-Type: application/gzip`): the innermost stage
    /// undoes it for scrubbing and the guest gets it re-compressed (see [`Reencoder`]).
    pub gzip_file: bool,
}

struct Stage {
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
/// Most decoded bytes of one body (1 GiB): beyond it the body is aborted (a zip bomb costs
/// CPU for every byte the scrubber reads, even though memory stays bounded).
pub(super) const MAX_DECODED: u64 = 1 << 30;
/// Most stacked codings (Transfer-Encoding + Content-Encoding + a gzip file); more is
/// refused rather than decoded.
const MAX_STAGES: usize = 3;

impl std::fmt::Debug for Decoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decoder")
            .field("stages", &self.stages.len())
            .field("gzip_file", &self.gzip_file)
            .finish()
    }
}

/// Codings the broker can decode (and therefore scrub).
const DECODABLE: &[&str] = &["gzip", "x-gzip", "deflate", "identity"];

/// The codings listed in every `name` header, in order, `identity` (and for
/// Transfer-Encoding `chunked`, which hyper already removed) left out.
fn codings(headers: &HeaderMap, name: &http::header::HeaderName) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    for v in headers.get_all(name) {
        let Ok(s) = v.to_str() else {
            return Err("(non-ASCII)".into());
        };
        out.extend(
            s.split(',')
                .map(|c| c.trim().to_ascii_lowercase())
                .filter(|c| !c.is_empty() && c != "identity" && c != "chunked"),
        );
    }
    Ok(out)
}

/// Whether the body itself is a gzip file (not a coding: the guest expects gzip bytes).
fn is_gzip_file(headers: &HeaderMap) -> bool {
    headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|t| t.trim().to_ascii_lowercase())
        .is_some_and(|t| t == "application/gzip" || t == "application/x-gzip")
}

impl Decoder {
    /// The decoder for a response head (read *before* hop-by-hop headers are stripped):
    /// `Transfer-Encoding` codings other than `chunked` (`gzip, chunked`), then
    /// `Content-Encoding` codings (each may be stacked: `gzip, gzip`), then a gzip file.
    /// `Ok(None)` when the body is plain, `Err(coding)` for one we cannot decode.
    pub fn for_headers(headers: &HeaderMap) -> Result<Option<Decoder>, String> {
        let mut order = codings(headers, &TRANSFER_ENCODING)?;
        order.reverse();
        let mut ce = codings(headers, &CONTENT_ENCODING)?;
        ce.reverse();
        order.extend(ce);
        let gzip_file = is_gzip_file(headers);
        if gzip_file {
            order.push("gzip".into());
        }
        if order.is_empty() {
            return Ok(None);
        }
        if order.len() > MAX_STAGES {
            return Err(format!(
                "{} (more than {MAX_STAGES} stacked)",
                order.join(", ")
            ));
        }
        let mut stages = Vec::new();
        for c in &order {
            let kind = match c.as_str() {
                "gzip" | "x-gzip" => Kind::Gzip(MultiGzDecoder::new(Vec::new())),
                "deflate" => Kind::Deflate(ZlibDecoder::new(Vec::new())),
                _ => return Err(c.clone()),
            };
            stages.push(Stage {
                kind,
                pending: Vec::new(),
            });
        }
        Ok(Some(Decoder {
            stages,
            total: 0,
            limit: MAX_DECODED,
            gzip_file,
        }))
    }

    /// Lowers the decoded-size bound (tests).
    #[cfg(test)]
    fn with_limit(mut self, limit: u64) -> Decoder {
        self.limit = limit;
        self
    }

    /// Feeds compressed bytes; returns what decoded so far, at most about [`MAX_OUTPUT`]
    /// bytes: the rest of the input waits for [`Decoder::drain`] (see `has_pending`).
    pub fn push(&mut self, data: &[u8]) -> std::io::Result<Vec<u8>> {
        if let Some(s) = self.stages.first_mut() {
            s.pending.extend_from_slice(data);
        }
        self.drain()
    }

    /// Continues with held-back input (bounded output, like [`Decoder::push`]). The
    /// innermost stage with input goes first, so every intermediate buffer stays within
    /// one slice's expansion.
    pub fn drain(&mut self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let last = self.stages.len().saturating_sub(1);
        while out.len() < MAX_OUTPUT {
            let Some(i) = (0..self.stages.len())
                .rev()
                .find(|&i| !self.stages[i].pending.is_empty())
            else {
                break;
            };
            let stage = &mut self.stages[i];
            let end = SLICE.min(stage.pending.len());
            let slice: Vec<u8> = stage.pending.drain(..end).collect();
            stage.feed(&slice)?;
            let produced = stage.take_output();
            if i == last {
                out.extend(produced);
            } else {
                self.stages[i + 1].pending.extend(produced);
            }
        }
        self.count(out.len())?;
        Ok(out)
    }

    fn count(&mut self, n: usize) -> std::io::Result<()> {
        self.total = self.total.saturating_add(n as u64);
        if self.total > self.limit {
            return Err(std::io::Error::other(format!(
                "decoded response body exceeds {} bytes (decompression bomb?); aborted",
                self.limit
            )));
        }
        Ok(())
    }

    /// Whether input is held back (call [`Decoder::drain`] before reading more).
    pub fn has_pending(&self) -> bool {
        self.stages.iter().any(|s| !s.pending.is_empty())
    }

    /// Ends the stream; returns the last decoded bytes (error on a truncated stream).
    pub fn finish(mut self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let last = self.stages.len().saturating_sub(1);
        for i in 0..self.stages.len() {
            while self.has_pending() {
                out.extend(self.drain()?);
            }
            let stage = &mut self.stages[i];
            let kind =
                std::mem::replace(&mut stage.kind, Kind::Deflate(ZlibDecoder::new(Vec::new())));
            let tail = match kind {
                Kind::Gzip(d) => d.finish()?,
                Kind::Deflate(d) => d.finish()?,
            };
            if i == last {
                self.count(tail.len())?;
                out.extend(tail);
            } else {
                self.stages[i + 1].pending.extend(tail);
            }
        }
        Ok(out)
    }
}

impl Stage {
    /// Feeds `data` and flushes: the write-side decoders keep their last output in an
    /// internal buffer until the next write, and a stage must hand everything on.
    fn feed(&mut self, data: &[u8]) -> std::io::Result<()> {
        match &mut self.kind {
            Kind::Gzip(d) => d.write_all(data).and_then(|_| d.flush()),
            Kind::Deflate(d) => d.write_all(data).and_then(|_| d.flush()),
        }
    }

    fn take_output(&mut self) -> Vec<u8> {
        match &mut self.kind {
            Kind::Gzip(d) => std::mem::take(d.get_mut()),
            Kind::Deflate(d) => std::mem::take(d.get_mut()),
        }
    }
}

/// Re-compresses a scrubbed gzip file for the guest (`Content-Type: application/gzip`
/// stays true). Streaming: each call returns what the encoder has produced so far.
pub(super) struct Reencoder(GzEncoder<Vec<u8>>);

impl std::fmt::Debug for Reencoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Reencoder")
    }
}

impl Reencoder {
    pub fn new() -> Reencoder {
        Reencoder(GzEncoder::new(Vec::new(), flate2::Compression::fast()))
    }

    pub fn push(&mut self, plain: &[u8]) -> std::io::Result<Vec<u8>> {
        self.0.write_all(plain)?;
        Ok(std::mem::take(self.0.get_mut()))
    }

    pub fn finish(self) -> std::io::Result<Vec<u8>> {
        self.0.finish()
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
        assert_eq!(d.limit, MAX_DECODED);
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

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn decode_all(mut d: Decoder, z: &[u8], piece: usize) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::new();
        for b in z.chunks(piece) {
            out.extend(d.push(b)?);
            while d.has_pending() {
                out.extend(d.drain()?);
            }
        }
        out.extend(d.finish()?);
        Ok(out)
    }

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            h.append(*n, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn transfer_encoding_and_stacked_codings_are_all_decoded() {
        let plain = b"a value to scrub: sk-live-xyz".repeat(50);
        let te = headers(&[("transfer-encoding", "gzip, chunked")]);
        let d = Decoder::for_headers(&te)
            .unwrap()
            .expect("TE gzip is decoded");
        assert_eq!(decode_all(d, &gz(&plain), 7).unwrap(), plain);
        let twice = headers(&[("content-encoding", "gzip, gzip")]);
        let d = Decoder::for_headers(&twice).unwrap().unwrap();
        assert_eq!(decode_all(d, &gz(&gz(&plain)), 5).unwrap(), plain);
        let file = headers(&[
            ("content-type", "application/gzip"),
            ("content-encoding", "gzip"),
        ]);
        let d = Decoder::for_headers(&file).unwrap().unwrap();
        assert!(d.gzip_file);
        assert_eq!(decode_all(d, &gz(&gz(&plain)), 11).unwrap(), plain);
        for bad in [
            ("transfer-encoding", "br, chunked"),
            ("content-encoding", "gzip, zstd"),
        ] {
            assert!(Decoder::for_headers(&headers(&[bad])).is_err(), "{bad:?}");
        }
        let four = headers(&[
            ("transfer-encoding", "gzip, chunked"),
            ("content-encoding", "gzip, gzip"),
            ("content-type", "application/x-gzip"),
        ]);
        assert!(Decoder::for_headers(&four).is_err());
    }

    #[test]
    fn a_nested_bomb_is_aborted_at_the_decoded_limit_with_bounded_output_per_call() {
        let z = gz(&gz(&vec![0u8; 32 << 20]));
        let h = headers(&[("content-encoding", "gzip, gzip")]);
        let mut d = Decoder::for_headers(&h)
            .unwrap()
            .unwrap()
            .with_limit(8 << 20);
        let mut total = 0usize;
        let mut err = None;
        for b in z.chunks(512) {
            match d.push(b) {
                Ok(o) => {
                    assert!(o.len() <= MAX_OUTPUT + SLICE * 1100, "{}", o.len());
                    total += o.len();
                }
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
            while d.has_pending() && err.is_none() {
                match d.drain() {
                    Ok(o) => total += o.len(),
                    Err(e) => err = Some(e),
                }
            }
            if err.is_some() {
                break;
            }
        }
        let err = err.expect("the bomb is aborted");
        assert!(err.to_string().contains("decompression bomb"), "{err}");
        assert!(total <= (8 << 20) + MAX_OUTPUT + SLICE * 1100, "{total}");
    }

    #[test]
    fn reencoder_round_trips() {
        let mut r = Reencoder::new();
        let mut z = r.push(b"hello ").unwrap();
        z.extend(r.push(b"file").unwrap());
        z.extend(r.finish().unwrap());
        let d = Decoder::for_headers(&headers(&[("content-encoding", "gzip")]))
            .unwrap()
            .unwrap();
        assert_eq!(decode_all(d, &z, 3).unwrap(), b"hello file");
    }
}
