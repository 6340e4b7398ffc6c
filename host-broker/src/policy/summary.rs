//! Human-readable summary for `host-broker policy check` (never secret values).

use super::model::Policy;

/// Credential names, hosts and egress rules.
pub fn summarize(policy: &Policy) -> String {
    let _ = policy;
    todo!()
}
