//! Applying an `aws_sigv4` credential: the guest signs with placeholders (key id, secret
//! key, session token); toward a host where the credential's gates hold, the broker checks
//! that signature with the placeholder secret, swaps in the real key id and session token,
//! and signs the same canonical request again with the real secret.
//!
//! Refused with a reason (never silently forwarded with a placeholder signature):
//! presigned URLs (query signatures) and signed streaming payloads
//! (`STREAMING-AWS4-HMAC-SHA256-*`, aws-chunked: each chunk carries a signature chained to
//! the seed; `STREAMING-UNSIGNED-PAYLOAD-TRAILER`, whose chunks are unsigned, is supported), a signature that does not verify,
//! and a body the broker did not buffer (beyond `max_inspected_body`) when no
//! `x-amz-content-sha256` header gives the payload hash.

use http::{HeaderMap, HeaderValue};
use zeroize::Zeroizing;

use super::gate::GateContext;
use super::set::CredentialSet;
use super::sigv4::{self, SigV4Auth, SignedRequest};

impl CredentialSet {
    /// Whether some credential re-signs AWS requests (the proxy then hashes buffered bodies).
    pub fn signs_aws(&self) -> bool {
        self.creds.iter().any(|c| c.sigv4.is_some())
    }

    /// Re-signs a request signed with an `aws_sigv4` credential's placeholders, in place.
    /// `path_and_query` and `authority` as sent upstream; `body_sha256`: hex SHA-256 of the
    /// body when it was buffered. Returns the credential names used, or the refusal reason.
    pub fn apply_sigv4(
        &self,
        headers: &mut HeaderMap,
        method: &str,
        path_and_query: &str,
        authority: &str,
        body_sha256: Option<&str>,
        ctx: &GateContext<'_>,
    ) -> Result<Vec<String>, String> {
        let mut used = Vec::new();
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        for c in &self.creds {
            let Some(s) = &c.sigv4 else { continue };
            if c.gate(ctx).is_some() {
                continue; // judged (and refused or logged) by the header/target gates
            }
            let name = &c.name;
            let presigned = query.split('&').any(|p| {
                p.split_once('=').is_some_and(|(k, v)| {
                    k.eq_ignore_ascii_case("X-Amz-Credential")
                        && String::from_utf8_lossy(&super::encode::percent_decode_deep(
                            v.as_bytes(),
                        ))
                        .starts_with(&format!("{}/", c.placeholder))
                })
            });
            if presigned {
                return Err(format!(
                    "credential {name}: presigned SigV4 URLs (query signatures) are not \
                     supported; sign with the Authorization header"
                ));
            }
            let Some(auth) = headers
                .get(http::header::AUTHORIZATION)
                .and_then(|v| v.to_str().ok())
                .and_then(SigV4Auth::parse)
            else {
                continue;
            };
            if auth.key_id != c.placeholder {
                continue; // another key: not ours to sign
            }
            let payload = match headers
                .get("x-amz-content-sha256")
                .and_then(|v| v.to_str().ok())
            {
                // Unsigned chunks (the seed signs the literal): like UNSIGNED-PAYLOAD.
                Some(p) if p == "STREAMING-UNSIGNED-PAYLOAD-TRAILER" => p.to_owned(),
                Some(p) if p.starts_with("STREAMING-") => {
                    return Err(format!(
                        "credential {name}: streaming SigV4 payloads ({p}) are not supported \
                         (each chunk is signed); disable chunked signing in the client"
                    ))
                }
                Some(p) => p.to_owned(),
                None => body_sha256.map(str::to_owned).ok_or_else(|| {
                    format!(
                        "credential {name}: the body was not inspected (larger than \
                         max_inspected_body) and no x-amz-content-sha256 header gives its hash"
                    )
                })?,
            };
            let uri = {
                let req = SignedRequest {
                    method,
                    path,
                    query,
                    headers,
                    authority,
                    payload_hash: &payload,
                };
                sigv4::verify(&req, &auth, &s.secret_placeholder)
                    .map_err(|e| format!("credential {name}: {e}"))?
            };
            if let Some((token, ph)) = &s.token {
                let holds = headers
                    .get("x-amz-security-token")
                    .is_some_and(|v| v.as_bytes() == ph.as_bytes());
                if holds {
                    let mut v = HeaderValue::from_str(token.expose()).map_err(|_| {
                        format!("credential {name}: session token is no header value")
                    })?;
                    v.set_sensitive(true);
                    headers.insert("x-amz-security-token", v);
                }
            }
            let mut real = auth.clone();
            real.key_id = c.value.expose().to_owned();
            let req = SignedRequest {
                method,
                path,
                query,
                headers,
                authority,
                payload_hash: &payload,
            };
            real.signature = sigv4::sign(&req, &real, &uri, s.secret.expose())
                .map_err(|e| format!("credential {name}: {e}"))?;
            let text = Zeroizing::new(real.header());
            let mut v = HeaderValue::from_str(&text)
                .map_err(|_| format!("credential {name}: key id is no header value"))?;
            v.set_sensitive(true);
            headers.insert(http::header::AUTHORIZATION, v);
            used.push(name.clone());
        }
        Ok(used)
    }
}
