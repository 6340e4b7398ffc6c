//! The four substitution gates and the verdict for one request.

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
/// `hosts`, `dialed_by_name`, `plaintext`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub credential: String,
    pub gate: String,
}
