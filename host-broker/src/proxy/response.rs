//! Upstream responses on their way to the guest: hop-by-hop headers stripped, real values
//! scrubbed from headers, trailers and (decoded) bodies, audit record attached to the body.

use std::sync::Arc;

use http::header::{CONTENT_ENCODING, CONTENT_LENGTH};
use http::{Response, StatusCode};
use hyper::body::{Body as _, Incoming};
use hyper::ext::ReasonPhrase;

use super::body::{self, ProxyBody, Scrubbing};
use super::decode::{Decoder, Reencoder};
use super::headers::strip_hop_by_hop;
use super::refuse;
use crate::audit::{AuditRecord, Outcome, PendingAudit};
use crate::secrets::CredentialSet;
use crate::state::Shared;

/// A non-standard HTTP/1.1 reason phrase (`200 OK <anything>`), which hyper keeps in the
/// response extensions and writes back to an HTTP/1.1 guest: real values in it are replaced
/// by placeholders like in a header value; one that cannot be rebuilt is dropped (the guest
/// then gets the canonical reason). Returns the number of replacements.
pub(super) fn scrub_reason_phrase(ext: &mut http::Extensions, creds: &CredentialSet) -> usize {
    let Some(reason) = ext.remove::<ReasonPhrase>() else {
        return 0;
    };
    if creds.is_empty() {
        ext.insert(reason);
        return 0;
    }
    let (out, n) = creds.scrub_bytes(reason.as_bytes());
    if n == 0 {
        ext.insert(reason);
        return 0;
    }
    if let Ok(r) = ReasonPhrase::try_from(out) {
        ext.insert(r);
    }
    n
}

/// Scrubs and strips an upstream response and attaches the audit record to its body.
pub(super) fn respond(
    resp: Response<Incoming>,
    mut rec: AuditRecord,
    creds: &Arc<CredentialSet>,
    shared: &Shared,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    // Before hop-by-hop headers go: `Transfer-Encoding: gzip, chunked` is a coding too.
    let decoder = Decoder::for_headers(&parts.headers);
    let transfer_codings = super::decode::transfer_codings(&parts.headers);
    strip_hop_by_hop(&mut parts.headers);
    let scrubbed = creds.scrub_response_headers(&mut parts.headers)
        + scrub_reason_phrase(&mut parts.extensions, creds);
    if scrubbed > 0 {
        tracing::warn!(
            scrubbed,
            "upstream echoed credential values in the response head; replaced with placeholders"
        );
    }
    // Scrub bodies only when there is something to scrub (the scrubber changes lengths, so
    // Content-Length goes and the guest gets a chunked body / DATA frames without length).
    let scrubbing = if creds.is_empty() || body.is_end_stream() {
        // Transfer-Encoding is hop-by-hop and goes, but a coding in it (`gzip, chunked`)
        // still wraps the bytes: it becomes a content coding so the guest can undo it.
        if !transfer_codings.is_empty() {
            if let Ok(v) = http::HeaderValue::from_str(&transfer_codings.join(", ")) {
                parts.headers.append(CONTENT_ENCODING, v);
            }
        }
        None
    } else {
        let decoder = match decoder {
            Ok(d) => d,
            Err(coding) => {
                let reason = format!(
                    "upstream answered with content-encoding {coding}, which the broker cannot \
                     scrub for credentials"
                );
                return refuse(shared, rec, StatusCode::BAD_GATEWAY, &reason);
            }
        };
        if decoder.is_some() {
            parts.headers.remove(CONTENT_ENCODING);
        }
        parts.headers.remove(CONTENT_LENGTH);
        let reencoder = decoder
            .as_ref()
            .filter(|d| d.gzip_file)
            .map(|_| Reencoder::new());
        Some(Scrubbing {
            creds: creds.clone(),
            scrubber: creds.scrubber(),
            decoder,
            reencoder,
        })
    };
    rec.verdict = Outcome::Forwarded;
    rec.status = parts.status.as_u16();
    let pending = PendingAudit::new(rec, shared.events.clone());
    Response::from_parts(parts, body::counted(body, pending, scrubbing))
}
