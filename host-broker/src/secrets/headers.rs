//! Header scanning, gated substitution, inject rules and response-header scrubbing.
//!
//! A request is first scanned without modification (raw bytes, the decoded payload of
//! `Authorization: Basic`, and percent-/JSON-decoded forms). The verdict is decided from that
//! scan; only a `Forward` verdict modifies headers, so a blocked request is left untouched.

use std::collections::BTreeSet;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::{HeaderMap, HeaderName, HeaderValue};
use zeroize::Zeroizing;

use super::encode::{json_unescape, percent_decode_deep};
use super::gate::{block_reason, Gate, GateContext, Verdict, Violation};
use super::set::CredentialSet;
use crate::policy::OnViolation;

/// The payload of a `Basic` authorization value, if the value is one.
fn basic_payload(v: &[u8]) -> Option<&[u8]> {
    if v.len() > 6 && v[..6].eq_ignore_ascii_case(b"basic ") {
        Some(v[6..].trim_ascii())
    } else {
        None
    }
}

impl CredentialSet {
    /// Credentials whose placeholder occurs in `hay` (raw automaton search).
    pub(super) fn hits_in(&self, hay: &[u8], out: &mut BTreeSet<usize>) {
        for m in self.placeholders.find_iter(hay) {
            out.insert(self.placeholder_owner[m.pattern().as_usize()]);
        }
    }

    /// Every credential whose placeholder occurs in a header value in any form we decode.
    pub(super) fn scan_value(&self, v: &[u8], out: &mut BTreeSet<usize>) {
        self.hits_in(v, out);
        if let Some(b64) = basic_payload(v) {
            if let Ok(decoded) = STANDARD.decode(b64) {
                self.hits_in(&Zeroizing::new(decoded), out);
            }
        }
        if v.contains(&b'%') {
            self.hits_in(&percent_decode_deep(v), out);
        }
        if v.contains(&b'\\') {
            let j = json_unescape(v);
            self.hits_in(&j, out);
            if j.contains(&b'%') {
                self.hits_in(&percent_decode_deep(&j), out);
            }
        }
    }

    fn scan_headers(&self, headers: &HeaderMap) -> BTreeSet<usize> {
        let mut hits = BTreeSet::new();
        if self.creds.is_empty() {
            return hits;
        }
        for v in headers.values() {
            self.scan_value(v.as_bytes(), &mut hits);
        }
        hits
    }

    /// Splits hits into violations (with the failing gate) and credentials cleared to send.
    pub(super) fn judge(
        &self,
        hits: &BTreeSet<usize>,
        gate_for: impl Fn(usize) -> Option<Gate>,
    ) -> (Vec<(usize, Gate)>, Vec<usize>) {
        let mut violations = Vec::new();
        let mut cleared = Vec::new();
        for &i in hits {
            match gate_for(i) {
                Some(g) => violations.push((i, g)),
                None => cleared.push(i),
            }
        }
        (violations, cleared)
    }

    pub(super) fn violations_out(&self, v: &[(usize, Gate)]) -> Vec<Violation> {
        v.iter()
            .map(|(i, g)| Violation {
                credential: self.creds[*i].name.clone(),
                gate: g.name().to_string(),
            })
            .collect()
    }

    /// Block if any violating credential says `block`.
    pub(super) fn block_if_needed(
        &self,
        ctx: &GateContext<'_>,
        violations: &[(usize, Gate)],
    ) -> Option<Verdict> {
        let blocking: Vec<(String, Gate)> = violations
            .iter()
            .filter(|(i, _)| self.creds[*i].on_violation == OnViolation::Block)
            .map(|(i, g)| (self.creds[*i].name.clone(), *g))
            .collect();
        if blocking.is_empty() {
            return None;
        }
        Some(Verdict::Block {
            reason: block_reason(ctx, &blocking),
            violations: self.violations_out(violations),
        })
    }

    /// Header substitution for one request under the four gates; handles the placeholder
    /// inside `Authorization: Basic base64(user:pass)`; applies `inject` rules.
    pub fn apply_request_headers(&self, headers: &mut HeaderMap, ctx: &GateContext) -> Verdict {
        let hits = self.scan_headers(headers);
        let (violations, cleared) = self.judge(&hits, |i| self.creds[i].gate(ctx));
        if let Some(block) = self.block_if_needed(ctx, &violations) {
            return block;
        }
        let mut substituted: BTreeSet<usize> = BTreeSet::new();
        // Inject rules of credentials cleared for this connection (whether or not the guest
        // sent the placeholder). A header the guest filled with its own non-placeholder value
        // is left alone.
        let mut injected: Vec<HeaderName> = Vec::new();
        if ctx.connection_ok() {
            for (i, c) in self.creds.iter().enumerate() {
                if c.inject.is_empty() || c.gate(ctx).is_some() {
                    continue;
                }
                for rule in &c.inject {
                    let Ok(name) = HeaderName::from_bytes(rule.header.as_bytes()) else {
                        continue;
                    };
                    if injected.contains(&name) {
                        continue; // first credential (policy order) wins
                    }
                    // Fill when absent, or when a value holds the raw placeholder. A Basic
                    // payload holding it is left to the in-place substitution below, so a
                    // guest that chose Basic keeps Basic.
                    let fill = match headers.get(&name) {
                        None => true,
                        Some(_) => headers.get_all(&name).iter().any(|v| {
                            let mut own = BTreeSet::new();
                            self.hits_in(v.as_bytes(), &mut own);
                            own.contains(&i)
                        }),
                    };
                    if !fill {
                        continue;
                    }
                    let text = Zeroizing::new(rule.format.replace("${value}", c.value.expose()));
                    let Ok(mut hv) = HeaderValue::from_bytes(text.as_bytes()) else {
                        continue; // values and formats are validated; cannot happen
                    };
                    hv.set_sensitive(true);
                    headers.insert(name.clone(), hv);
                    injected.push(name);
                    substituted.insert(i);
                }
            }
        }
        let cleared: Vec<usize> = cleared
            .into_iter()
            .filter(|i| self.creds[*i].in_headers)
            .collect();
        if !cleared.is_empty() {
            for (name, v) in headers.iter_mut() {
                if injected.contains(name) {
                    continue;
                }
                if let Some(new) = self.substitute_value(v.as_bytes(), &cleared, &mut substituted) {
                    *v = new;
                }
            }
        }
        Verdict::Forward {
            substituted: substituted
                .into_iter()
                .map(|i| self.creds[i].name.clone())
                .collect(),
            logged_violations: self.violations_out(&violations),
        }
    }

    /// Replaces raw placeholders of `cleared` credentials (also inside a Basic payload).
    fn substitute_value(
        &self,
        v: &[u8],
        cleared: &[usize],
        done: &mut BTreeSet<usize>,
    ) -> Option<HeaderValue> {
        let mut changed = false;
        let mut out = Zeroizing::new(self.replace_placeholders(v, cleared, done, &mut changed));
        if let Some(b64) = basic_payload(&out) {
            if let Ok(decoded) = STANDARD.decode(b64) {
                let decoded = Zeroizing::new(decoded);
                let mut inner_changed = false;
                let inner = Zeroizing::new(self.replace_placeholders(
                    &decoded,
                    cleared,
                    done,
                    &mut inner_changed,
                ));
                if inner_changed {
                    let mut rebuilt = Zeroizing::new(b"Basic ".to_vec());
                    rebuilt.extend_from_slice(STANDARD.encode(&*inner).as_bytes());
                    out = rebuilt;
                    changed = true;
                }
            }
        }
        if !changed {
            return None;
        }
        let mut hv = HeaderValue::from_bytes(&out).ok()?;
        hv.set_sensitive(true);
        Some(hv)
    }

    fn replace_placeholders(
        &self,
        hay: &[u8],
        cleared: &[usize],
        done: &mut BTreeSet<usize>,
        changed: &mut bool,
    ) -> Vec<u8> {
        let mut out = Vec::with_capacity(hay.len());
        let mut last = 0;
        for m in self.placeholders.find_iter(hay) {
            let owner = self.placeholder_owner[m.pattern().as_usize()];
            let c = &self.creds[owner];
            // Only the raw form is substituted; encoded forms are detected, not rewritten.
            if !cleared.contains(&owner) || &hay[m.range()] != c.placeholder.as_bytes() {
                continue;
            }
            out.extend_from_slice(&hay[last..m.start()]);
            out.extend_from_slice(c.value.expose().as_bytes());
            last = m.end();
            done.insert(owner);
            *changed = true;
        }
        out.extend_from_slice(&hay[last..]);
        out
    }

    /// Plain HTTP request (no TLS): never substitutes; a placeholder present is a violation.
    pub fn check_plaintext_headers(&self, headers: &HeaderMap, ctx: &GateContext) -> Verdict {
        let hits = self.scan_headers(headers);
        let (violations, _) = self.judge(&hits, |_| Some(Gate::Plaintext));
        if let Some(block) = self.block_if_needed(ctx, &violations) {
            return block;
        }
        Verdict::Forward {
            substituted: Vec::new(),
            logged_violations: self.violations_out(&violations),
        }
    }

    /// Names of the credentials whose placeholder occurs in `bytes` in any detected form
    /// (raw, base64, percent-encoded, JSON-escaped). For audit of URIs and bodies.
    pub fn placeholders_in(&self, bytes: &[u8]) -> Vec<String> {
        let mut hits = BTreeSet::new();
        if !self.creds.is_empty() {
            self.scan_value(bytes, &mut hits);
        }
        hits.into_iter()
            .map(|i| self.creds[i].name.clone())
            .collect()
    }

    /// Gates for the request-target (path and query): the core never substitutes there
    /// (query substitution is opt-in and later), but a placeholder in it toward a host where
    /// a gate fails, or over plaintext, is a violation like one in a header.
    pub fn check_request_target(
        &self,
        target: &[u8],
        ctx: &GateContext,
        plaintext: bool,
    ) -> Verdict {
        let mut hits = BTreeSet::new();
        if !self.creds.is_empty() {
            self.scan_value(target, &mut hits);
        }
        let (violations, _) = self.judge(&hits, |i| {
            if plaintext {
                Some(Gate::Plaintext)
            } else {
                self.creds[i].gate(ctx)
            }
        });
        if let Some(block) = self.block_if_needed(ctx, &violations) {
            return block;
        }
        Verdict::Forward {
            substituted: Vec::new(),
            logged_violations: self.violations_out(&violations),
        }
    }

    /// Replaces any real value (raw, base64, URL-safe base64, percent-encoded, and inside a
    /// `Basic` payload) in response headers with the placeholder in the same encoding.
    /// Header *names* holding a real value (in any letter case) are renamed to the
    /// placeholder form, or dropped when that is no valid name. Returns the number of
    /// replacements.
    pub fn scrub_response_headers(&self, headers: &mut HeaderMap) -> usize {
        if self.creds.is_empty() {
            return 0;
        }
        let mut total = self.scrub_header_names(headers);
        for v in headers.values_mut() {
            // A Basic payload first, decoded: the value inside it is then replaced in the
            // clear and the payload re-encoded, so the guest gets a valid `user:<placeholder>`
            // (the base64 scan alone would leave an undecodable token).
            let basic = basic_payload(v.as_bytes())
                .and_then(|b64| STANDARD.decode(b64).ok())
                .map(|decoded| self.scrub_bytes(&Zeroizing::new(decoded)))
                .filter(|(_, k)| *k > 0);
            let (out, n) = match basic {
                Some((inner, k)) => {
                    let mut rebuilt = b"Basic ".to_vec();
                    rebuilt.extend_from_slice(STANDARD.encode(&inner).as_bytes());
                    (rebuilt, k)
                }
                None => self.scrub_bytes(v.as_bytes()),
            };
            if n > 0 {
                match HeaderValue::from_bytes(&out) {
                    Ok(hv) => *v = hv,
                    // Cannot happen (placeholders are printable ASCII); never leak the value.
                    Err(_) => *v = HeaderValue::from_static("[scrubbed]"),
                }
                total += n;
            }
        }
        total
    }

    /// Renames (or drops) every header whose name holds a real value form in any letter
    /// case; its values are kept, under the new name. Returns the number of replacements.
    fn scrub_header_names(&self, headers: &mut HeaderMap) -> usize {
        let hit: Vec<HeaderName> = headers
            .keys()
            .filter(|n| self.values_nocase.is_match(n.as_str()))
            .cloned()
            .collect();
        let mut total = 0;
        for name in hit {
            let values: Vec<HeaderValue> = headers.get_all(&name).iter().cloned().collect();
            headers.remove(&name);
            let mut out = Vec::with_capacity(name.as_str().len());
            let mut last = 0;
            let hay = name.as_str().as_bytes();
            for m in self.values_nocase.find_iter(hay) {
                out.extend_from_slice(&hay[last..m.start()]);
                out.extend_from_slice(&self.value_replacements[m.pattern().as_usize()]);
                last = m.end();
                total += 1;
            }
            out.extend_from_slice(&hay[last..]);
            // HeaderName lowercases; a name that is invalid (or, pathologically, still holds
            // a value) is dropped with its values.
            let Ok(renamed) = HeaderName::from_bytes(&out) else {
                continue;
            };
            if self.values_nocase.is_match(renamed.as_str()) {
                continue;
            }
            for v in values {
                headers.append(&renamed, v);
            }
        }
        total
    }

    /// One-shot replacement of real values in `hay` (every form the body scrubber finds,
    /// JSON escapes included); returns the result and the count.
    pub(crate) fn scrub_bytes(&self, hay: &[u8]) -> (Vec<u8>, usize) {
        let mut sc = self.scrubber();
        let mut out = sc.push(hay);
        out.extend(sc.finish());
        (out, sc.replaced())
    }
}
