//! Upstream responses on their way to the guest: hop-by-hop headers stripped, real values
//! scrubbed from headers, trailers and (decoded) bodies, audit record attached to the body.

use std::sync::Arc;

use http::header::{CONTENT_ENCODING, CONTENT_LENGTH};
use http::{Response, StatusCode};
use hyper::body::{Body as _, Incoming};

use super::body::{self, ProxyBody, Scrubbing};
use super::decode::Decoder;
use super::headers::strip_hop_by_hop;
use super::refuse;
use crate::audit::{AuditRecord, PendingAudit};
use crate::secrets::CredentialSet;
use crate::state::Shared;

/// Scrubs and strips an upstream response and attaches the audit record to its body.
pub(super) fn respond(
    resp: Response<Incoming>,
    mut rec: AuditRecord,
    creds: &Arc<CredentialSet>,
    shared: &Shared,
) -> Response<ProxyBody> {
    let (mut parts, body) = resp.into_parts();
    strip_hop_by_hop(&mut parts.headers);
    let scrubbed = creds.scrub_response_headers(&mut parts.headers);
    if scrubbed > 0 {
        tracing::warn!(
            scrubbed,
            "upstream echoed credential values in response headers; replaced with placeholders"
        );
    }
    // Scrub bodies only when there is something to scrub (the scrubber changes lengths, so
    // Content-Length goes and the guest gets a chunked body / DATA frames without length).
    let scrubbing = if creds.is_empty() || body.is_end_stream() {
        None
    } else {
        let decoder = match Decoder::for_headers(&parts.headers) {
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
        Some(Scrubbing {
            creds: creds.clone(),
            scrubber: creds.scrubber(),
            decoder,
        })
    };
    rec.verdict = "forwarded".into();
    rec.status = parts.status.as_u16();
    let pending = PendingAudit::new(rec, shared.events.clone());
    Response::from_parts(parts, body::counted(body, pending, scrubbing))
}
