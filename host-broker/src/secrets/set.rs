//! Loading a [`CredentialSet`] from a policy.

use std::collections::BTreeMap;

use super::env::EnvSource;
use super::error::CredentialError;
use super::gate::{GateContext, Verdict};
use crate::policy::Policy;

/// Real values for one policy version plus the automata used to find placeholders and values.
pub struct CredentialSet {}

impl std::fmt::Debug for CredentialSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialSet").finish_non_exhaustive()
    }
}

impl CredentialSet {
    /// Loads every credential's value. Errors name the credential and source, never a value.
    pub fn load(policy: &Policy, env: &dyn EnvSource) -> Result<CredentialSet, CredentialError> {
        let _ = (policy, env);
        todo!()
    }

    /// Placeholder env for the guest: NAME -> placeholder.
    pub fn guest_env(&self) -> BTreeMap<String, String> {
        todo!()
    }

    /// Header substitution for one request under the four gates.
    pub fn apply_request_headers(&self, headers: &mut http::HeaderMap, ctx: &GateContext) -> Verdict {
        let _ = (headers, ctx);
        todo!()
    }

    /// Plain HTTP request: never substitutes; placeholder present => violation.
    pub fn check_plaintext_headers(&self, headers: &http::HeaderMap, ctx: &GateContext) -> Verdict {
        let _ = (headers, ctx);
        todo!()
    }

    /// Replaces real values (and base64 forms) in response headers by their placeholder.
    pub fn scrub_response_headers(&self, headers: &mut http::HeaderMap) -> usize {
        let _ = headers;
        todo!()
    }

    /// Whether the policy has no credentials.
    pub fn is_empty(&self) -> bool {
        todo!()
    }

    /// A streaming scrubber for bodies.
    pub fn scrubber(&self) -> super::scrub::Scrubber {
        todo!()
    }
}
