//! OpenSSL's subject hash (`X509_NAME_hash`, what `openssl x509 -hash` prints and what
//! `/etc/ssl/certs/<hash>.0` links are named after).
//!
//! The hash is the first 4 bytes, little-endian, of SHA-1 over the *canonical* encoding of
//! the subject: the DER of each RDN SET concatenated (no outer SEQUENCE), where every string
//! value is converted to UTF8String, trimmed, has inner whitespace runs collapsed to one
//! space and ASCII letters lower-cased (OpenSSL's `x509_name_canon`). Only the few DER
//! shapes a certificate's subject uses are parsed here.

use sha1::{Digest, Sha1};

/// A certificate that could not be parsed far enough to find its subject.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed certificate: {0}")]
pub struct DerError(&'static str);

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const UTF8_STRING: u8 = 0x0c;

/// One DER TLV: tag, contents, and the whole encoding.
struct Tlv<'a> {
    tag: u8,
    body: &'a [u8],
}

/// Reads one TLV from the front of `buf`; returns it and the rest.
fn read_tlv(buf: &[u8]) -> Result<(Tlv<'_>, &[u8]), DerError> {
    let (&tag, rest) = buf.split_first().ok_or(DerError("truncated tag"))?;
    let (&first, mut rest) = rest.split_first().ok_or(DerError("truncated length"))?;
    let len = if first < 0x80 {
        first as usize
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return Err(DerError("bad length"));
        }
        let mut len = 0usize;
        for &b in &rest[..n] {
            len = (len << 8) | b as usize;
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return Err(DerError("truncated value"));
    }
    Ok((
        Tlv {
            tag,
            body: &rest[..len],
        },
        &rest[len..],
    ))
}

fn encode_tlv(tag: u8, body: &[u8], out: &mut Vec<u8>) {
    out.push(tag);
    let len = body.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = (len as u32).to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (4 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out.extend_from_slice(body);
}

/// The DER body of the subject Name (the SEQUENCE OF RDN contents) of a DER certificate.
pub fn subject_der(cert: &[u8]) -> Result<&[u8], DerError> {
    let (cert, _) = read_tlv(cert)?;
    let (tbs, _) = read_tlv(cert.body)?;
    let mut rest = tbs.body;
    let (first, after) = read_tlv(rest)?;
    if first.tag == 0xa0 {
        rest = after; // explicit [0] version
    }
    // serialNumber, signature, issuer, validity, then subject.
    for _ in 0..4 {
        rest = read_tlv(rest)?.1;
    }
    let (subject, _) = read_tlv(rest)?;
    if subject.tag != SEQUENCE {
        return Err(DerError("subject is not a SEQUENCE"));
    }
    Ok(subject.body)
}

/// Decodes an ASN.1 string value to text, for the types OpenSSL canonicalises.
fn string_value(tag: u8, body: &[u8]) -> Option<String> {
    match tag {
        // UTF8String, PrintableString, IA5String, VisibleString
        0x0c | 0x13 | 0x16 | 0x1a => std::str::from_utf8(body).ok().map(str::to_string),
        // T61String: OpenSSL treats it as Latin-1.
        0x14 => Some(body.iter().map(|&b| b as char).collect()),
        // BMPString: UCS-2 big-endian.
        0x1e => {
            let units: Vec<u16> = body
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)]))
                .collect();
            String::from_utf16(&units).ok()
        }
        // UniversalString: UCS-4 big-endian.
        0x1c => body
            .chunks(4)
            .map(|c| {
                let mut b = [0u8; 4];
                b[..c.len()].copy_from_slice(c);
                char::from_u32(u32::from_be_bytes(b))
            })
            .collect(),
        _ => None,
    }
}

/// OpenSSL's `asn1_string_canon`: trim, collapse whitespace runs, lower-case ASCII.
fn canon_text(s: &str) -> String {
    let is_space = |c: char| matches!(c, ' ' | '\t' | '\n' | '\x0b' | '\x0c' | '\r');
    let mut out = String::with_capacity(s.len());
    let mut pending_space = false;
    for c in s.trim_matches(is_space).chars() {
        if is_space(c) {
            pending_space = true;
            continue;
        }
        if pending_space {
            out.push(' ');
            pending_space = false;
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The canonical encoding of a Name body (see module docs).
pub fn canonical_name(name_body: &[u8]) -> Result<Vec<u8>, DerError> {
    let mut out = Vec::new();
    let mut rdns = name_body;
    while !rdns.is_empty() {
        let (rdn, rest) = read_tlv(rdns)?;
        rdns = rest;
        if rdn.tag != SET {
            return Err(DerError("RDN is not a SET"));
        }
        let mut set_body = Vec::new();
        let mut avas = rdn.body;
        while !avas.is_empty() {
            let (ava, rest) = read_tlv(avas)?;
            avas = rest;
            let (oid, after) = read_tlv(ava.body)?;
            let (value, _) = read_tlv(after)?;
            let mut ava_body = Vec::new();
            encode_tlv(oid.tag, oid.body, &mut ava_body);
            match string_value(value.tag, value.body) {
                Some(text) => encode_tlv(UTF8_STRING, canon_text(&text).as_bytes(), &mut ava_body),
                None => encode_tlv(value.tag, value.body, &mut ava_body),
            }
            encode_tlv(SEQUENCE, &ava_body, &mut set_body);
        }
        encode_tlv(SET, &set_body, &mut out);
    }
    Ok(out)
}

/// `X509_NAME_hash` of a DER certificate's subject, as OpenSSL prints it (8 hex digits).
pub fn subject_hash(cert_der: &[u8]) -> Result<u32, DerError> {
    let canon = canonical_name(subject_der(cert_der)?)?;
    let digest = Sha1::digest(&canon);
    Ok(u32::from_le_bytes([
        digest[0], digest[1], digest[2], digest[3],
    ]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canon_text_matches_openssl_rules() {
        assert_eq!(canon_text("  Sluice \t  Test\nCA  "), "sluice test ca");
        assert_eq!(canon_text("ÄBC"), "Äbc");
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b""[..],
            b"\x30",
            b"\x30\x85\0\0\0\0\0",
            b"\x30\x03\x30\x01",
        ] {
            assert!(subject_hash(bad).is_err());
        }
    }
}
