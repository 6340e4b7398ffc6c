//! Errors from parsing/validating a policy, and the refusal returned by egress checks.

use std::fmt;

use crate::outcome::Outcome;

/// A policy that cannot be used. Every variant names where the problem is (file, field path).
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// The file could not be read.
    #[error("cannot read policy file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    /// The file extension is neither `.json` nor `.toml`.
    #[error("policy file {path}: unknown extension (expected .json or .toml)")]
    UnknownFormat { path: String },
    /// Syntax or shape error reported by the JSON/TOML deserializer, with the field path.
    #[error("{path}: {message}")]
    Parse { path: String, message: String },
    /// A semantic check failed; `path` is e.g. `credentials.OPENAI_API_KEY.hosts`.
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl PolicyError {
    pub(crate) fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        PolicyError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// An egress refusal. `reason` is meant for the guest user (sent back in `x-sluice-reason`)
/// and for the audit log; it never contains secret values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    pub reason: String,
    /// The policy allows the name but it could not be resolved (no answer, NXDOMAIN, no
    /// addresses): an upstream failure (502 `failed`), not a policy violation.
    pub unresolved: bool,
}

impl Denial {
    pub(crate) fn new(reason: impl Into<String>) -> Self {
        Denial {
            reason: reason.into(),
            unresolved: false,
        }
    }

    pub(crate) fn unresolved(reason: impl Into<String>) -> Self {
        Denial {
            reason: reason.into(),
            unresolved: true,
        }
    }

    /// The audit verdict and HTTP status this refusal is answered with.
    pub fn verdict_and_status(&self) -> (Outcome, u16) {
        if self.unresolved {
            (Outcome::Failed, 502)
        } else {
            (Outcome::Denied, 403)
        }
    }
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for Denial {}
