//! The request target (path and query) and request bodies: gated detection everywhere, and
//! substitution only where the credential opts in (`in: ["query"]`, `in: ["body"]`).
//!
//! Detection uses every decoded form the header scan uses (raw, base64, percent-encoded,
//! JSON-escaped), so an encoded placeholder toward a host where a gate fails is a violation.
//! Substitution is narrower on purpose:
//! - query: each `&`-separated parameter name/value is percent-decoded once; a piece whose
//!   decoded text holds a cleared placeholder is replaced by the decoded text with the real
//!   value, re-encoded (RFC 3986 unreserved characters kept). Other pieces stay byte-identical.
//! - body: the raw placeholder becomes the raw value, and the percent-encoded placeholder
//!   (form bodies) becomes the percent-encoded value. Other encodings (JSON `\u` escapes,
//!   base64) are detected but not rewritten: toward an allowed host they go out unchanged.

use std::collections::BTreeSet;

use aho_corasick::{AhoCorasick, MatchKind};
use zeroize::Zeroizing;

use super::encode::percent_decode_deep;
use super::gate::{Gate, GateContext, Verdict};
use super::set::{percent_encode, CredentialSet};

/// Where a payload is: decides which opt-in applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Place {
    Query,
    Body,
}

impl CredentialSet {
    /// Gates and (for `in: ["query"]` credentials) substitution for a request target
    /// `path?query`. Returns the verdict and, when something was substituted, the new target.
    /// `plaintext` requests are never substituted: any placeholder there is a violation.
    pub fn apply_request_target(
        &self,
        target: &str,
        ctx: &GateContext,
        plaintext: bool,
    ) -> (Verdict, Option<Zeroizing<String>>) {
        let (verdict, cleared) = self.gate_payload(target.as_bytes(), ctx, plaintext, Place::Query);
        if cleared.is_empty() || !matches!(verdict, Verdict::Forward { .. }) {
            return (verdict, None);
        }
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, q),
            None => return (verdict, None),
        };
        let mut done = BTreeSet::new();
        let mut out = Zeroizing::new(String::with_capacity(target.len() + 32));
        out.push_str(path);
        out.push('?');
        for (k, param) in query.split('&').enumerate() {
            if k > 0 {
                out.push('&');
            }
            let (name, value) = match param.split_once('=') {
                Some((n, v)) => (n, Some(v)),
                None => (param, None),
            };
            out.push_str(&self.query_piece(name, &cleared, &mut done));
            if let Some(v) = value {
                out.push('=');
                out.push_str(&self.query_piece(v, &cleared, &mut done));
            }
        }
        if done.is_empty() {
            return (verdict, None);
        }
        (self.with_substituted(verdict, &done), Some(out))
    }

    /// One query piece: unchanged unless its percent-decoded form holds a cleared placeholder.
    fn query_piece(
        &self,
        piece: &str,
        cleared: &[usize],
        done: &mut BTreeSet<usize>,
    ) -> Zeroizing<String> {
        let decoded = Zeroizing::new(percent_decode_deep(piece.as_bytes()));
        let (replaced, hit) = self.replace_raw(&decoded, cleared, done, false);
        if !hit {
            return Zeroizing::new(piece.to_owned());
        }
        let enc = percent_encode(&replaced);
        // percent_encode emits ASCII only.
        Zeroizing::new(String::from_utf8_lossy(&enc).into_owned())
    }

    /// Gates and (for `in: ["body"]` credentials) substitution for a whole request body.
    /// Returns the verdict and, when something was substituted, the new body.
    pub fn apply_body(
        &self,
        body: &[u8],
        ctx: &GateContext,
        plaintext: bool,
    ) -> (Verdict, Option<Zeroizing<Vec<u8>>>) {
        let (verdict, cleared) = self.gate_payload(body, ctx, plaintext, Place::Body);
        if cleared.is_empty() || !matches!(verdict, Verdict::Forward { .. }) {
            return (verdict, None);
        }
        let mut done = BTreeSet::new();
        let (out, hit) = self.replace_raw(body, &cleared, &mut done, true);
        if !hit {
            return (verdict, None);
        }
        (self.with_substituted(verdict, &done), Some(out))
    }

    /// Scans `hay` in every decoded form; returns the verdict (substituted still empty) and
    /// the credentials cleared *and* opted in for `place`.
    fn gate_payload(
        &self,
        hay: &[u8],
        ctx: &GateContext,
        plaintext: bool,
        place: Place,
    ) -> (Verdict, Vec<usize>) {
        let mut hits = BTreeSet::new();
        if !self.creds.is_empty() {
            self.scan_value(hay, &mut hits);
        }
        let (violations, cleared) = self.judge(&hits, |i| {
            if plaintext {
                Some(Gate::Plaintext)
            } else {
                self.creds[i].gate(ctx)
            }
        });
        if let Some(block) = self.block_if_needed(ctx, &violations) {
            return (block, Vec::new());
        }
        let cleared = cleared
            .into_iter()
            .filter(|i| match place {
                Place::Query => self.creds[*i].in_query,
                Place::Body => self.creds[*i].in_body,
            })
            .collect();
        (
            Verdict::Forward {
                substituted: Vec::new(),
                logged_violations: self.violations_out(&violations),
            },
            cleared,
        )
    }

    /// Replaces the raw placeholder (and, with `percent_form`, its percent-encoded form) of
    /// each cleared credential by the value in the same form. One automaton pass.
    fn replace_raw(
        &self,
        hay: &[u8],
        cleared: &[usize],
        done: &mut BTreeSet<usize>,
        percent_form: bool,
    ) -> (Zeroizing<Vec<u8>>, bool) {
        let mut needles: Vec<Vec<u8>> = Vec::new();
        let mut owners: Vec<(usize, bool)> = Vec::new();
        for &i in cleared {
            let p = self.creds[i].placeholder.as_bytes();
            needles.push(p.to_vec());
            owners.push((i, false));
            let enc = percent_encode(p);
            if percent_form && enc != p {
                needles.push(enc);
                owners.push((i, true));
            }
        }
        let Ok(ac) = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&needles)
        else {
            return (Zeroizing::new(hay.to_vec()), false);
        };
        let mut out = Zeroizing::new(Vec::with_capacity(hay.len() + 64));
        let mut last = 0;
        for m in ac.find_iter(hay) {
            let (i, encoded) = owners[m.pattern().as_usize()];
            out.extend_from_slice(&hay[last..m.start()]);
            let value = self.creds[i].value.expose().as_bytes();
            if encoded {
                out.extend_from_slice(&Zeroizing::new(percent_encode(value)));
            } else {
                out.extend_from_slice(value);
            }
            last = m.end();
            done.insert(i);
        }
        out.extend_from_slice(&hay[last..]);
        (out, last > 0)
    }

    fn with_substituted(&self, verdict: Verdict, done: &BTreeSet<usize>) -> Verdict {
        match verdict {
            Verdict::Forward {
                logged_violations, ..
            } => Verdict::Forward {
                substituted: done.iter().map(|i| self.creds[*i].name.clone()).collect(),
                logged_violations,
            },
            block => block,
        }
    }
}

impl CredentialSet {
    /// Whether some credential substituting in bodies is cleared for `ctx` (then an
    /// uninspectable body must be refused rather than sent unsubstituted).
    pub fn substitutes_bodies_for(&self, ctx: &GateContext) -> bool {
        self.creds
            .iter()
            .any(|c| c.in_body && c.gate(ctx).is_none())
    }
}
