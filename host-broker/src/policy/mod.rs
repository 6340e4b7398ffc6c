//! Egress policy: what a VM may reach, and which credentials go where.
//!
//! The policy is parsed from JSON or TOML (`deny_unknown_fields`), validated with errors that
//! name the offending field path, and then queried by the proxy in three steps:
//! [`Policy::check_name`] before any DNS, [`resolve_target`] to resolve once and pick the one
//! address to dial, and [`Policy::check_addr`] on that address (private ranges, CIDR rules).
//! See docs/policy.md for the reference.

mod binding;
mod check;
mod error;
mod host_pattern;
mod ip_class;
mod local_addrs;
mod model;
mod parse;
mod resolve;
pub(crate) mod secret_value;
mod summary;
mod validate;

pub use binding::{is_canonical_path, HostRule, PathPattern, RequestScope};
pub use error::{Denial, PolicyError};
pub use host_pattern::{normalize_host, parse_ip_literal, HostPattern};
pub use ip_class::{classify_private, PrivateClass};
pub use model::{
    Cidr, CommandSource, CredentialSpec, DefaultAction, EgressPolicy, EgressRule, InjectRule,
    InterceptMode, Location, OnViolation, Policy, PrivateNetworks, SecretSource, SigV4Spec,
    DEFAULT_REFRESH_GRACE_SECS, DEFAULT_SCRUB_RETIRED_SECS, RANDOM_PLACEHOLDER, SIGV4_SECRET_ENV,
    SIGV4_TOKEN_ENV,
};
#[cfg(feature = "daemon")]
pub(crate) use parse::toml_message;
pub use resolve::resolve_target;
pub use secret_value::SecretValue;
pub use summary::summarize;

#[cfg(test)]
mod tests;
