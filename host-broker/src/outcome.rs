//! The typed verdict of one audit record: what happened to a request, CONNECT, captured
//! connection or DNS question.
//!
//! A leaf module so that both the event sink (`audit`) and the counters derived from it
//! (`metrics`) can name it without depending on each other the wrong way
//! (docs/architecture.md, "Layers"). [`Outcome::as_str`] gives the exact strings the audit
//! log, the JSON audit records, the stats API and the `verdict` metric label have always
//! carried; they are part of the operator interface and must not change.

use std::fmt;

/// What happened to one audited request (re-exported as `audit::Outcome`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Outcome {
    /// CONNECT accepted for TLS interception (each request inside is audited on its own).
    Intercepted,
    /// Request forwarded upstream (credentials substituted where every gate held).
    Forwarded,
    /// Refused by a credential, authority or SNI gate.
    Blocked,
    /// Refused by the egress policy (host, address, port, DNS name).
    Denied,
    /// The upstream could not be reached or answered badly (or the name did not resolve).
    Failed,
    /// The guest's request was malformed or over a limit.
    Error,
    /// CONNECT accepted for an opaque tunnel (raw TCP or TLS pass-through).
    Tunnel,
    /// A raw TCP tunnel closed (byte counts).
    Relayed,
    /// A TLS pass-through tunnel closed (byte counts).
    Passthrough,
    /// A DNS question the policy allows.
    Resolved,
}

impl Outcome {
    /// Every outcome, in a fixed order (the metrics index their counters by it).
    pub const ALL: [Outcome; 10] = [
        Outcome::Intercepted,
        Outcome::Forwarded,
        Outcome::Blocked,
        Outcome::Denied,
        Outcome::Failed,
        Outcome::Error,
        Outcome::Tunnel,
        Outcome::Relayed,
        Outcome::Passthrough,
        Outcome::Resolved,
    ];

    /// The verdict string of logs, audit JSON, stats and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            Outcome::Intercepted => "intercepted",
            Outcome::Forwarded => "forwarded",
            Outcome::Blocked => "blocked",
            Outcome::Denied => "denied",
            Outcome::Failed => "failed",
            Outcome::Error => "error",
            Outcome::Tunnel => "tunnel",
            Outcome::Relayed => "relayed",
            Outcome::Passthrough => "passthrough",
            Outcome::Resolved => "resolved",
        }
    }

    /// Position in [`Outcome::ALL`].
    pub const fn index(self) -> usize {
        self as usize
    }

    /// The verdict of a refusal or failure answered with `status` when no gate named one:
    /// `403` is a gate's refusal, `502`/`504` an upstream failure, anything else an error.
    pub fn of_refusal(status: u16) -> Outcome {
        match status {
            403 => Outcome::Blocked,
            502 | 504 => Outcome::Failed,
            _ => Outcome::Error,
        }
    }

    /// Whether this is a policy or gate violation (counted in `VmStats::violations`).
    pub const fn is_violation(self) -> bool {
        matches!(self, Outcome::Blocked | Outcome::Denied)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Outcome {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Lets callers compare with the verdict strings they already know (`r.verdict == "denied"`).
impl PartialEq<str> for Outcome {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Outcome {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_and_indexes_are_stable() {
        let strings: Vec<&str> = Outcome::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(
            strings,
            [
                "intercepted",
                "forwarded",
                "blocked",
                "denied",
                "failed",
                "error",
                "tunnel",
                "relayed",
                "passthrough",
                "resolved"
            ]
        );
        for (i, o) in Outcome::ALL.iter().enumerate() {
            assert_eq!(o.index(), i);
            assert_eq!(serde_json::to_string(o).unwrap(), format!("\"{o}\""));
        }
        assert_eq!(Outcome::of_refusal(403), Outcome::Blocked);
        assert_eq!(Outcome::of_refusal(502), Outcome::Failed);
        assert_eq!(Outcome::of_refusal(504), Outcome::Failed);
        assert_eq!(Outcome::of_refusal(421), Outcome::Error);
        assert!(Outcome::Denied == "denied");
    }
}
