//! The one gate pipeline every proxied HTTP request passes before it goes upstream, whether
//! it arrived in an intercepted TLS tunnel (CONNECT or captured, HTTP/1.1 or HTTP/2,
//! WebSocket handshakes included) or as plaintext `http://` (absolute-form or captured).
//!
//! Order: strip hop-by-hop headers -> one credential snapshot's gate context ->
//! `Accept-Encoding` limited to what the scrubber decodes -> header gate -> request-target
//! gate -> body inspection -> (TLS, AWS) SigV4 re-signing. The caller has already checked
//! the authority (it differs per transport: the CONNECT host vs the URI host) and the egress
//! policy; it sends what comes out and audits a refusal with the verdict given here.
//!
//! Why one place: the TLS and plaintext paths used to repeat this sequence, and a gate
//! added to one copy but not the other is a bypass. The transport decides only what the
//! gates may do: over [`Transport::Tls`] a cleared placeholder is substituted; over
//! [`Transport::Plaintext`] nothing ever is (a placeholder is a violation, blocked or
//! logged per `on_violation`) and the request leaves with the guest's bytes.

use std::net::IpAddr;

use http::header::CONTENT_LENGTH;
use http::request::Parts;
use http::{HeaderValue, Response, StatusCode};
use hyper::body::Incoming;

use super::body::ProxyBody;
use super::decode::limit_accept_encoding;
use super::headers::strip_hop_by_hop;
use super::request_body::{self, Inspected};
use crate::audit::{AuditRecord, Outcome};
use crate::policy::RequestScope;
use crate::secrets::{CredentialSet, GateContext, Verdict};
use crate::state::{Shared, VmState};

/// How the request reached the broker, which decides what the gates may do.
#[derive(Debug, Clone, Copy)]
pub(super) enum Transport<'a> {
    /// Inside an intercepted TLS tunnel whose upstream certificate is verified for the
    /// host: cleared placeholders are substituted.
    Tls {
        /// The port the guest asked for (credential bindings match on it).
        port: u16,
        /// The request's authority (port included), which SigV4 signs.
        authority: &'a str,
        /// A WebSocket/extended-CONNECT handshake: its "body" is the upgraded stream and
        /// is never buffered.
        upgrade: bool,
    },
    /// Plaintext `http://`: nothing is substituted, whatever the binding.
    Plaintext,
}

/// A request the gates refused: answered with `status` and `reason`, audited with
/// `verdict` and the credentials involved (names only).
#[derive(Debug)]
pub(super) struct Refusal {
    pub status: StatusCode,
    pub reason: String,
    pub credentials: Vec<String>,
    pub verdict: Outcome,
}

impl Refusal {
    fn new(status: StatusCode, reason: String, credentials: Vec<String>) -> Refusal {
        Refusal {
            status,
            reason,
            credentials,
            verdict: Outcome::of_refusal(status.as_u16()),
        }
    }

    /// Answers the refusal and emits `rec` for it.
    pub fn answer(self, shared: &Shared, mut rec: AuditRecord) -> Response<ProxyBody> {
        rec.credentials = self.credentials;
        super::refuse_as(shared, rec, self.verdict, self.status, &self.reason)
    }
}

/// A request that passed every gate, ready to send.
#[derive(Debug)]
pub(super) struct Gated {
    pub parts: Parts,
    pub body: ProxyBody,
    /// Names of the credentials substituted (sorted, no duplicates; empty over plaintext).
    pub substituted: Vec<String>,
}

/// Runs the gates on one request for `host` (the tunnel's or URI's host, port stripped)
/// under the credential snapshot `creds` (the caller keeps it for scrubbing the response).
pub(super) async fn run(
    mut parts: Parts,
    body: Incoming,
    host: &str,
    transport: Transport<'_>,
    vm: &VmState,
    creds: &CredentialSet,
) -> Result<Gated, Refusal> {
    strip_hop_by_hop(&mut parts.headers);
    let plaintext = matches!(transport, Transport::Plaintext);
    let (method, path) = (parts.method.to_string(), parts.uri.path().to_owned());
    let ctx = GateContext {
        target_host: host,
        tls_verified: !plaintext,
        authority_matches: true,
        dialed_by_name: host.parse::<IpAddr>().is_err(),
        request: match transport {
            Transport::Tls { port, .. } => Some(RequestScope {
                port,
                method: &method,
                path: &path,
            }),
            // Plaintext never carries a value, whatever the binding.
            Transport::Plaintext => None,
        },
    };
    if !creds.is_empty() {
        limit_accept_encoding(&mut parts.headers);
    }
    let mut substituted = header_gate(&mut parts, creds, &ctx, plaintext)?;
    substituted.extend(target_gate(&mut parts, creds, &ctx, plaintext)?);
    let cap = vm.policy.body_limit();
    let inspected = match transport {
        Transport::Tls { upgrade: true, .. } => {
            // An upgrade's "body" is the upgraded stream itself (HTTP/2 extended CONNECT):
            // never buffer it; the handshake goes out without one.
            drop(body);
            Inspected::Forward {
                body: super::body::full(""),
                len: None,
                substituted: Vec::new(),
                sha256: None,
            }
        }
        _ => request_body::inspect(body, creds, &ctx, plaintext, cap, &vm.body_budget).await,
    };
    let (body, len, sha256) = match inspected {
        Inspected::Refuse {
            status,
            reason,
            credentials,
        } => return Err(Refusal::new(status, reason, credentials)),
        Inspected::Forward {
            body,
            len,
            substituted: s,
            sha256,
        } => {
            substituted.extend(s);
            (body, len, sha256)
        }
    };
    if let Transport::Tls { authority, .. } = transport {
        // Over plaintext the body is the guest's, unchanged: its framing stays as sent.
        if let Some(len) = len {
            parts.headers.insert(CONTENT_LENGTH, HeaderValue::from(len));
        }
        if creds.signs_aws() {
            // AWS SigV4: verify the guest's placeholder signature, re-sign for real.
            let pq = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let pq = pq.to_owned();
            let signed = creds.apply_sigv4(
                &mut parts.headers,
                &method,
                &pq,
                authority,
                sha256.as_deref(),
                &ctx,
            );
            match signed {
                Ok(s) => substituted.extend(s),
                Err(reason) => return Err(Refusal::new(StatusCode::FORBIDDEN, reason, Vec::new())),
            }
        }
    }
    substituted.sort();
    substituted.dedup();
    Ok(Gated {
        parts,
        body,
        substituted,
    })
}

/// The header gate: over TLS substitutes cleared placeholders (and inject rules); over
/// plaintext only checks. Returns the credentials substituted.
fn header_gate(
    parts: &mut Parts,
    creds: &CredentialSet,
    ctx: &GateContext<'_>,
    plaintext: bool,
) -> Result<Vec<String>, Refusal> {
    let verdict = if plaintext {
        creds.check_plaintext_headers(&parts.headers, ctx)
    } else {
        creds.apply_request_headers(&mut parts.headers, ctx)
    };
    match verdict {
        Verdict::Block { reason, violations } => Err(Refusal::new(
            StatusCode::FORBIDDEN,
            reason,
            violations.iter().map(|v| v.credential.clone()).collect(),
        )),
        Verdict::Forward {
            substituted,
            logged_violations,
        } => {
            for v in &logged_violations {
                if plaintext {
                    tracing::warn!(credential = %v.credential, gate = %v.gate, "placeholder sent over plaintext unchanged (on_violation = log)");
                } else {
                    tracing::warn!(credential = %v.credential, gate = %v.gate, "placeholder forwarded unchanged (on_violation = log)");
                }
            }
            Ok(substituted)
        }
    }
}

/// The request-target gate (path and query): over TLS substitutes where the credential is
/// bound to `in: ["query"]`; over plaintext only checks. Returns the credentials substituted.
fn target_gate(
    parts: &mut Parts,
    creds: &CredentialSet,
    ctx: &GateContext<'_>,
    plaintext: bool,
) -> Result<Vec<String>, Refusal> {
    let pq = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "/".into());
    match creds.apply_request_target(&pq, ctx, plaintext) {
        (Verdict::Block { reason, violations }, _) => Err(Refusal::new(
            StatusCode::FORBIDDEN,
            format!("request target: {reason}"),
            violations.iter().map(|v| v.credential.clone()).collect(),
        )),
        // Plaintext never substitutes, so there is never a new target to take.
        (Verdict::Forward { .. }, _) if plaintext => Ok(Vec::new()),
        (Verdict::Forward { substituted, .. }, new) => {
            if let Some(new) = new {
                parts.uri = new.parse().map_err(|_| {
                    Refusal::new(
                        StatusCode::BAD_REQUEST,
                        "request target invalid after substitution".into(),
                        Vec::new(),
                    )
                })?;
            }
            Ok(substituted)
        }
    }
}
