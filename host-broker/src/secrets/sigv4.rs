//! AWS Signature Version 4 (header signatures): parse, verify, sign.
//!
//! Hand-written against AWS's published test vectors (see the tests) with `ring` for
//! SHA-256 and HMAC, because the `aws-sigv4` crate pulls the whole smithy runtime for what
//! is a few string rules. The broker uses it to check that a guest signed with the
//! *placeholder* secret, then re-signs the same canonical request with the real secret.
//!
//! Canonical URI: services other than S3 encode the path twice, S3 once; the verifier tries
//! both (the path as sent, and the path encoded again) and re-signs with the one the guest
//! used, so no service table is needed.

use http::HeaderMap;
use ring::{digest, hmac};

/// SHA-256 of the empty payload.
pub const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

/// The parts of an `Authorization: AWS4-HMAC-SHA256 ...` header.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SigV4Auth {
    pub key_id: String,
    /// `yyyymmdd/region/service/aws4_request`.
    pub scope: String,
    pub signed_headers: Vec<String>,
    pub signature: String,
}

impl SigV4Auth {
    /// Parses the header value; `None` when it is not a SigV4 header signature.
    pub fn parse(v: &str) -> Option<SigV4Auth> {
        let rest = v.strip_prefix("AWS4-HMAC-SHA256 ")?;
        let (mut cred, mut signed, mut sig) = (None, None, None);
        for part in rest.split(',') {
            let part = part.trim();
            if let Some(c) = part.strip_prefix("Credential=") {
                cred = Some(c);
            } else if let Some(s) = part.strip_prefix("SignedHeaders=") {
                signed = Some(s);
            } else if let Some(s) = part.strip_prefix("Signature=") {
                sig = Some(s);
            }
        }
        let (key_id, scope) = cred?.split_once('/')?;
        if scope.split('/').count() != 4 || !scope.ends_with("/aws4_request") {
            return None;
        }
        Some(SigV4Auth {
            key_id: key_id.to_owned(),
            scope: scope.to_owned(),
            signed_headers: signed?.split(';').map(str::to_owned).collect(),
            signature: sig?.to_ascii_lowercase(),
        })
    }

    /// The header value.
    pub fn header(&self) -> String {
        format!(
            "AWS4-HMAC-SHA256 Credential={}/{}, SignedHeaders={}, Signature={}",
            self.key_id,
            self.scope,
            self.signed_headers.join(";"),
            self.signature
        )
    }
}

/// One request as SigV4 sees it.
#[derive(Debug, Clone, Copy)]
pub struct SignedRequest<'a> {
    pub method: &'a str,
    /// The path as sent (percent-encoded once).
    pub path: &'a str,
    /// The raw query, without `?`.
    pub query: &'a str,
    pub headers: &'a HeaderMap,
    /// Used for the `host` header when the request has none (HTTP/2 `:authority`).
    pub authority: &'a str,
    /// Hex SHA-256 of the payload, or `UNSIGNED-PAYLOAD`.
    pub payload_hash: &'a str,
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Hex SHA-256 of `data`.
pub fn sha256_hex(data: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, data).as_ref())
}

/// RFC 3986 encoding of everything but unreserved characters (and `/` when `keep_slash`).
fn uri_encode(s: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len());
    for &b in s {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) || (keep_slash && b == b'/') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn percent_decode(s: &str) -> Vec<u8> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Some(v) = s
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

/// Sorted, re-encoded query parameters.
fn canonical_query(q: &str) -> String {
    let mut params: Vec<(String, String)> = q
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (n, v) = p.split_once('=').unwrap_or((p, ""));
            (
                uri_encode(&percent_decode(n), false),
                uri_encode(&percent_decode(v), false),
            )
        })
        .collect();
    params.sort();
    params
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// Header value: trimmed, inner whitespace runs collapsed to one space.
fn canonical_value(v: &[u8]) -> String {
    String::from_utf8_lossy(v)
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

/// The canonical request for `req`, with `uri` as the canonical URI.
fn canonical_request(req: &SignedRequest<'_>, signed: &[String], uri: &str) -> String {
    let mut headers = String::new();
    for name in signed {
        let values: Vec<String> = req
            .headers
            .get_all(name.as_str())
            .iter()
            .map(|v| canonical_value(v.as_bytes()))
            .collect();
        let value = if values.is_empty() && name == "host" {
            req.authority.to_owned()
        } else {
            values.join(",")
        };
        headers.push_str(&format!("{name}:{value}\n"));
    }
    format!(
        "{}\n{uri}\n{}\n{headers}\n{}\n{}",
        req.method,
        canonical_query(req.query),
        signed.join(";"),
        req.payload_hash
    )
}

/// The candidate canonical URIs: encoded twice (most services) and as sent (S3).
fn uri_candidates(path: &str) -> Vec<String> {
    let path = if path.is_empty() { "/" } else { path };
    let twice = uri_encode(path.as_bytes(), true);
    if twice == path {
        vec![twice]
    } else {
        vec![twice, path.to_owned()]
    }
}

fn signing_key(secret: &str, scope: &str) -> hmac::Key {
    let mut key = hmac::Key::new(hmac::HMAC_SHA256, format!("AWS4{secret}").as_bytes());
    for part in scope.split('/') {
        let tag = hmac::sign(&key, part.as_bytes());
        key = hmac::Key::new(hmac::HMAC_SHA256, tag.as_ref());
    }
    key
}

fn string_to_sign(amz_date: &str, scope: &str, creq: &str) -> String {
    format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        sha256_hex(creq.as_bytes())
    )
}

/// Why a request cannot be verified or re-signed (guest-readable, never a value).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    #[error("the request has no x-amz-date header")]
    NoDate,
    #[error("the credential scope date does not match x-amz-date")]
    DateMismatch,
    #[error("SignedHeaders must include host")]
    HostNotSigned,
    #[error("the signature does not verify with the placeholder secret key (the guest must sign with the placeholder AWS_SECRET_ACCESS_KEY it was given)")]
    BadSignature,
}

fn amz_date(req: &SignedRequest<'_>, auth: &SigV4Auth) -> Result<String, SigV4Error> {
    let date = req
        .headers
        .get("x-amz-date")
        .and_then(|v| v.to_str().ok())
        .ok_or(SigV4Error::NoDate)?
        .to_owned();
    if !auth.signed_headers.iter().any(|h| h == "host") {
        return Err(SigV4Error::HostNotSigned);
    }
    if date.get(..8) != auth.scope.get(..8) {
        return Err(SigV4Error::DateMismatch);
    }
    Ok(date)
}

/// Checks `auth.signature` against `secret`; returns the canonical URI that matched.
pub fn verify(
    req: &SignedRequest<'_>,
    auth: &SigV4Auth,
    secret: &str,
) -> Result<String, SigV4Error> {
    let date = amz_date(req, auth)?;
    let Some(tag) = decode_hex(&auth.signature) else {
        return Err(SigV4Error::BadSignature);
    };
    let key = signing_key(secret, &auth.scope);
    for uri in uri_candidates(req.path) {
        let sts = string_to_sign(
            &date,
            &auth.scope,
            &canonical_request(req, &auth.signed_headers, &uri),
        );
        if hmac::verify(&key, sts.as_bytes(), &tag).is_ok() {
            return Ok(uri);
        }
    }
    Err(SigV4Error::BadSignature)
}

/// The signature of `req` under `secret`, for the given scope, signed headers and URI.
pub fn sign(
    req: &SignedRequest<'_>,
    auth: &SigV4Auth,
    uri: &str,
    secret: &str,
) -> Result<String, SigV4Error> {
    let date = amz_date(req, auth)?;
    let sts = string_to_sign(
        &date,
        &auth.scope,
        &canonical_request(req, &auth.signed_headers, uri),
    );
    Ok(hex(hmac::sign(
        &signing_key(secret, &auth.scope),
        sts.as_bytes(),
    )
    .as_ref()))
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

    const SUITE_SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";
    const SUITE_SCOPE: &str = "20150830/us-east-1/service/aws4_request";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    /// AWS Signature Version 4 test suite (docs.aws.amazon.com/general/latest/gr/
    /// signature-v4-test-suite.html) and the S3 GET Object example (sig-v4-header-based-auth).
    #[test]
    fn published_test_vectors() {
        let suite = [
            (
                "GET",
                "",
                &[][..],
                "host;x-amz-date",
                "5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31",
            ),
            (
                "POST",
                "",
                &[][..],
                "host;x-amz-date",
                "5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b",
            ),
            (
                "GET",
                "Param2=value2&Param1=value1",
                &[][..],
                "host;x-amz-date",
                "b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500",
            ),
            (
                "POST",
                "",
                &[("My-Header1", "VALUE1")][..],
                "host;my-header1;x-amz-date",
                "cdbc9802e29d2942e5e10b5bccfdd67c5f22c7c4e8ae67b53629efa58b974b7d",
            ),
        ];
        for (method, query, extra, signed, want) in suite {
            let mut pairs = vec![
                ("host", "example.amazonaws.com"),
                ("x-amz-date", "20150830T123600Z"),
            ];
            pairs.extend_from_slice(extra);
            let h = headers(&pairs);
            let req = SignedRequest {
                method,
                path: "/",
                query,
                headers: &h,
                authority: "example.amazonaws.com",
                payload_hash: EMPTY_SHA256,
            };
            let auth = SigV4Auth {
                key_id: "AKIDEXAMPLE".into(),
                scope: SUITE_SCOPE.into(),
                signed_headers: signed.split(';').map(str::to_owned).collect(),
                signature: want.into(),
            };
            assert_eq!(
                sign(&req, &auth, "/", SUITE_SECRET).unwrap(),
                want,
                "{method} {query}"
            );
            assert_eq!(verify(&req, &auth, SUITE_SECRET).unwrap(), "/");
            assert_eq!(
                verify(&req, &auth, "another-secret"),
                Err(SigV4Error::BadSignature)
            );
        }
        // S3 GET Object example: x-amz-content-sha256, a Range header, path signed once.
        let h = headers(&[
            ("host", "examplebucket.s3.amazonaws.com"),
            ("range", "bytes=0-9"),
            ("x-amz-content-sha256", EMPTY_SHA256),
            ("x-amz-date", "20130524T000000Z"),
        ]);
        let req = SignedRequest {
            method: "GET",
            path: "/test.txt",
            query: "",
            headers: &h,
            authority: "examplebucket.s3.amazonaws.com",
            payload_hash: EMPTY_SHA256,
        };
        let header = "AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20130524/us-east-1/s3/aws4_request, SignedHeaders=host;range;x-amz-content-sha256;x-amz-date, Signature=f0e8bdb87c964420e857bd35b5d6ed310bd44f0170aba48dd91039c6036bdb41";
        let auth = SigV4Auth::parse(header).unwrap();
        assert_eq!(auth.header(), header);
        verify(&req, &auth, "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY").unwrap();
    }

    #[test]
    fn path_encoded_twice_or_once_both_verify_and_tampering_does_not() {
        let h = headers(&[("host", "s3.test"), ("x-amz-date", "20150830T123600Z")]);
        let mut req = SignedRequest {
            method: "GET",
            path: "/my%20key",
            query: "a=%2F&b",
            headers: &h,
            authority: "s3.test",
            payload_hash: "UNSIGNED-PAYLOAD",
        };
        let mut auth = SigV4Auth {
            key_id: "K".into(),
            scope: SUITE_SCOPE.into(),
            signed_headers: vec!["host".into(), "x-amz-date".into()],
            signature: String::new(),
        };
        for uri in ["/my%2520key", "/my%20key"] {
            auth.signature = sign(&req, &auth, uri, "s").unwrap();
            assert_eq!(verify(&req, &auth, "s").unwrap(), uri);
        }
        req.method = "DELETE";
        assert_eq!(verify(&req, &auth, "s"), Err(SigV4Error::BadSignature));
        assert!(SigV4Auth::parse("Bearer x").is_none());
        assert!(SigV4Auth::parse(
            "AWS4-HMAC-SHA256 Credential=K/x, SignedHeaders=host, Signature=00"
        )
        .is_none());
    }
}
