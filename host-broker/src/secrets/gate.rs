//! The substitution gates and the verdict for one request: the four connection gates, then
//! the request-scoped binding of the credential's matching `hosts` entries.

use crate::policy::{HostRule, RequestScope};

/// Facts about the connection a request arrived on, established by the proxy.
#[derive(Debug, Clone, Copy)]
pub struct GateContext<'a> {
    /// CONNECT host (== SNI), lowercase, no port.
    pub target_host: &'a str,
    /// Gate 1: intercepted, and the upstream certificate verified for `target_host`.
    pub tls_verified: bool,
    /// Gate 2: Host / :authority (port stripped) == `target_host`.
    pub authority_matches: bool,
    /// Gate 4: `target_host` is a DNS name the broker resolved itself.
    pub dialed_by_name: bool,
    /// Gate 5 (bindings): port, method and path of the request, matched against the
    /// limits of the credential's `hosts` entries. `None` (no request at hand): only
    /// entries without limits admit.
    pub request: Option<RequestScope<'a>>,
}

/// What the proxy must do with a request.
#[derive(Debug)]
pub enum Verdict {
    /// Send it; `substituted` lists credential NAMES whose values were inserted.
    Forward {
        substituted: Vec<String>,
        logged_violations: Vec<Violation>,
    },
    /// Refuse it (403 + `x-sluice-reason: <reason>`). Headers were not modified.
    Block {
        reason: String,
        violations: Vec<Violation>,
    },
}

/// A placeholder seen where a gate failed. `gate` is one of `tls_verified`, `authority`,
/// `hosts`, `dialed_by_name`, `binding`, `unavailable`, `plaintext`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub credential: String,
    pub gate: String,
}

/// A gate that did not hold, in evaluation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Gate {
    TlsVerified,
    Authority,
    Hosts,
    DialedByName,
    /// The host matches, but no matching entry admits this port, method and path.
    Binding,
    /// Every gate holds, but the credential's source failed to refresh beyond its grace.
    Unavailable,
    Plaintext,
}

impl Gate {
    /// Stable name used in [`Violation::gate`] and audit events.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Gate::TlsVerified => "tls_verified",
            Gate::Authority => "authority",
            Gate::Hosts => "hosts",
            Gate::DialedByName => "dialed_by_name",
            Gate::Binding => "binding",
            Gate::Unavailable => "unavailable",
            Gate::Plaintext => "plaintext",
        }
    }

    /// Why the gate failed, for the guest-readable reason.
    pub(crate) fn why(self) -> &'static str {
        match self {
            Gate::TlsVerified => {
                "the connection is not TLS-intercepted with a verified upstream certificate"
            }
            Gate::Authority => "the request authority does not match the TLS/CONNECT host",
            Gate::Hosts => "not in its hosts",
            Gate::DialedByName => {
                "the target is not a host name the broker resolved itself (IP-literal targets \
                 never receive named credentials)"
            }
            Gate::Binding => "the request is outside the bindings of its hosts entries",
            Gate::Unavailable => {
                "its source failed to refresh and the last good value's grace ran out; see \
                 the broker log"
            }
            Gate::Plaintext => "plaintext HTTP never carries real credentials",
        }
    }
}

impl GateContext<'_> {
    /// The first failing gate for a credential whose `hosts` are `hosts`, if any.
    pub(crate) fn first_failure(&self, hosts: &[HostRule]) -> Option<Gate> {
        let mut matching = hosts.iter().filter(|r| r.host.matches(self.target_host));
        if !self.tls_verified {
            Some(Gate::TlsVerified)
        } else if !self.authority_matches {
            Some(Gate::Authority)
        } else if hosts.iter().all(|r| !r.host.matches(self.target_host)) {
            Some(Gate::Hosts)
        } else if !self.dialed_by_name
            || crate::policy::parse_ip_literal(self.target_host).is_some()
        {
            // Defence in depth: an IP-literal target (bracketed or not) never passes gate 4,
            // whatever the caller computed.
            Some(Gate::DialedByName)
        } else if !matching.any(|r| r.admits(self.request.as_ref())) {
            Some(Gate::Binding)
        } else {
            None
        }
    }

    /// Whether the connection-level gates (1, 2, 4) hold, whatever the credential.
    pub(crate) fn connection_ok(&self) -> bool {
        self.first_failure(&[HostRule::any_request(crate::policy::HostPattern::Any)])
            .is_none()
    }
}

impl super::set::Credential {
    /// The first failing gate for this credential on `ctx`, then its availability.
    pub(crate) fn gate(&self, ctx: &GateContext<'_>) -> Option<Gate> {
        ctx.first_failure(&self.hosts)
            .or(self.health.unavailable.then_some(Gate::Unavailable))
    }
}

/// Builds the readable block reason from violations (credential names, gates and, for a
/// binding, the request's method, path without query and port; never a value).
pub(crate) fn block_reason(ctx: &GateContext<'_>, violations: &[(String, Gate)]) -> String {
    let target_host = ctx.target_host;
    let mut parts = violations
        .iter()
        .map(|(name, gate)| match (gate, &ctx.request) {
            (Gate::Binding, Some(req)) => format!(
                "credential {name} may not be sent to {target_host} ({req} is outside the \
             bindings of its hosts entries for this host)"
            ),
            _ => format!(
                "credential {name} may not be sent to {target_host} ({})",
                gate.why()
            ),
        });
    let mut s = parts.next().unwrap_or_default();
    for p in parts {
        s.push_str("; ");
        s.push_str(&p);
    }
    s
}
