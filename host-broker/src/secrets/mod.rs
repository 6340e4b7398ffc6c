//! Credentials: loading real values, and substituting placeholders under the four gates.
//!
//! The guest only ever sees placeholders (`mock-<NAME>`). [`CredentialSet`] holds the real
//! values for one policy version (Arc-shared), one aho-corasick automaton over every
//! placeholder and a sampled-gram finder over every real value form (`scrub.rs`), so the cost
//! of a scan does not depend on the number of credentials. See docs/policy.md for the gate and violation semantics.

mod aws;
mod base64_forms;
mod command;
mod encode;
mod env;
mod error;
mod gate;
mod headers;
mod payload;
mod placeholders;
mod refresh;
mod scrub;
mod set;
pub mod sigv4;
// The value type belongs to the policy layer (a policy may hold a literal value); the
// `value` name keeps `super::value::SecretValue` valid inside this module.
use crate::policy::secret_value as value;

pub use command::CommandFailure;
pub use env::{EnvSource, MapEnv, ProcessEnv};
pub use error::CredentialError;
pub use gate::{GateContext, Verdict, Violation};
pub use placeholders::{
    copy_random_placeholders, resolve_random_placeholders, PlaceholderError, PLACEHOLDERS_FILE,
    RANDOM_PLACEHOLDER,
};
pub use refresh::{CredentialHealth, RefreshOutcome};
pub use scrub::Scrubber;
pub use set::CredentialSet;
pub use value::SecretValue;

#[cfg(test)]
mod refresh_tests;
#[cfg(test)]
mod tests;
