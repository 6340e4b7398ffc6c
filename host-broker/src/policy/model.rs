//! The policy data model (the public JSON/TOML shape). Parsing lives in `parse.rs`,
//! semantic checks in `validate.rs`, evaluation in `check.rs`.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

use super::binding::HostRule;
use super::host_pattern::HostPattern;
use super::secret_value::SecretValue;

/// Per-VM policy. Every field has a default, so `{}` is a valid policy that denies all egress.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Policy {
    #[serde(default)]
    pub egress: EgressPolicy,
    #[serde(default)]
    pub credentials: BTreeMap<String, CredentialSpec>,
    /// Extra environment for the guest (not secret).
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Static resolution overrides: host name -> address to dial (tests, air-gapped upstreams).
    #[serde(default)]
    pub resolve: BTreeMap<String, SocketAddr>,
    #[serde(default)]
    pub intercept: InterceptMode,
    /// Largest request body (bytes) the broker buffers to look for placeholders; see
    /// docs/policy.md "Bodies". Default [`DEFAULT_MAX_INSPECTED_BODY`].
    #[serde(default)]
    pub max_inspected_body: Option<u64>,
    /// CONNECT ports relayed as raw TCP (no TLS interception, no substitution), e.g. 5432.
    /// Egress rules still decide whether the host:port may be reached at all.
    #[serde(default)]
    pub raw_tcp_ports: Vec<u16>,
    /// Most proxy connections (streams) one VM may hold open at once. Default
    /// [`DEFAULT_MAX_CONNECTIONS`].
    #[serde(default)]
    pub max_connections: Option<usize>,
}

/// Default for [`Policy::max_connections`].
pub const DEFAULT_MAX_CONNECTIONS: usize = 256;

/// Default for [`Policy::max_inspected_body`]: 8 MiB.
pub const DEFAULT_MAX_INSPECTED_BODY: u64 = 8 << 20;

impl Policy {
    /// Request-body bytes one VM may hold buffered at once across all its requests: four
    /// bodies of the largest inspected size (32 MiB by default).
    pub fn body_budget(&self) -> usize {
        let four = usize::try_from(self.body_limit().saturating_mul(4)).unwrap_or(usize::MAX);
        four.min(tokio::sync::Semaphore::MAX_PERMITS)
    }

    /// [`Policy::max_connections`] or its default.
    pub fn connection_limit(&self) -> usize {
        self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS)
    }

    /// [`Policy::max_inspected_body`] or its default.
    pub fn body_limit(&self) -> u64 {
        self.max_inspected_body
            .unwrap_or(DEFAULT_MAX_INSPECTED_BODY)
    }
}

/// What may be reached at all.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressPolicy {
    #[serde(default)]
    pub default: DefaultAction,
    #[serde(default)]
    pub allow: Vec<EgressRule>,
    #[serde(default)]
    pub deny: Vec<EgressRule>,
    #[serde(default)]
    pub private_networks: PrivateNetworks,
}

/// Verdict when no rule matches.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DefaultAction {
    Allow,
    #[default]
    Deny,
}

/// Whether private/special-purpose addresses may be dialed without an explicit CIDR allow.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PrivateNetworks {
    Allow,
    #[default]
    Deny,
}

/// One allow or deny rule. A rule matches a connection when its `hosts` match the requested
/// host name OR its `cidrs` contain the dialed IP, and (if `ports` is set) the port matches.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EgressRule {
    #[serde(default)]
    pub hosts: Vec<HostPattern>,
    #[serde(default)]
    pub cidrs: Vec<Cidr>,
    /// Absent means any port.
    #[serde(default)]
    pub ports: Option<Vec<u16>>,
}

/// An IP network parsed from `"10.0.0.0/8"` (a bare IP means a single address).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr(pub ipnet::IpNet);

/// How the broker handles TLS.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InterceptMode {
    /// Intercept every TLS connection.
    #[default]
    Always,
    /// Pass TLS through untouched (after checking the ClientHello SNI) to hosts where no
    /// credential applies; intercept the rest.
    Auto,
}

/// One credential: where its value comes from and where it may go.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialSpec {
    pub source: SecretSource,
    /// Required; `Option` only so that a missing list gets a precise error from validation.
    /// Each entry is a host pattern, optionally limited to ports, methods and paths.
    #[serde(default)]
    pub hosts: Option<Vec<HostRule>>,
    /// Defaults to `mock-<NAME>`.
    #[serde(default)]
    pub placeholder: Option<String>,
    /// Where substitution happens; defaults to `["headers"]`.
    #[serde(default = "default_in", rename = "in")]
    pub locations: Vec<Location>,
    #[serde(default)]
    pub inject: Vec<InjectRule>,
    #[serde(default)]
    pub on_violation: OnViolation,
    /// Seconds the last good value is still used after its `file` or `command` source failed
    /// to refresh; then the credential is unavailable (requests carrying its placeholder are
    /// refused with a reason). Default [`DEFAULT_REFRESH_GRACE_SECS`].
    #[serde(default)]
    pub refresh_grace_secs: Option<u64>,
    /// Seconds a replaced value (rotation by the API, a changed file, a new command output)
    /// is still scrubbed from responses. Default [`DEFAULT_SCRUB_RETIRED_SECS`].
    #[serde(default)]
    pub scrub_retired_secs: Option<u64>,
    /// AWS Signature Version 4: this credential is the access key id; requests signed by
    /// the guest with the placeholder key are verified and re-signed with the real secret.
    #[serde(default)]
    pub aws_sigv4: Option<SigV4Spec>,
}

/// The secret half (and optional session token) of an AWS credential. The guest gets
/// placeholders in `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SigV4Spec {
    pub secret_access_key: SecretSource,
    #[serde(default)]
    pub session_token: Option<SecretSource>,
}

/// The `placeholder` value asking for a random one (drawn per VM by the secrets layer;
/// re-exported as `secrets::RANDOM_PLACEHOLDER`).
pub const RANDOM_PLACEHOLDER: &str = "random";

/// Guest variable holding the placeholder secret key of an `aws_sigv4` credential.
pub const SIGV4_SECRET_ENV: &str = "AWS_SECRET_ACCESS_KEY";
/// Guest variable holding the placeholder session token of an `aws_sigv4` credential.
pub const SIGV4_TOKEN_ENV: &str = "AWS_SESSION_TOKEN";

/// Default for [`CredentialSpec::refresh_grace_secs`]: 5 minutes.
pub const DEFAULT_REFRESH_GRACE_SECS: u64 = 300;
/// Default for [`CredentialSpec::scrub_retired_secs`]: 1 hour.
pub const DEFAULT_SCRUB_RETIRED_SECS: u64 = 3600;

fn default_in() -> Vec<Location> {
    vec![Location::Headers]
}

impl CredentialSpec {
    /// A credential from `source` with every other field at its default (`hosts` still
    /// has to be set: it is required).
    pub fn new(source: SecretSource) -> CredentialSpec {
        CredentialSpec {
            source,
            hosts: None,
            placeholder: None,
            locations: default_in(),
            inject: Vec::new(),
            on_violation: OnViolation::default(),
            refresh_grace_secs: None,
            scrub_retired_secs: None,
            aws_sigv4: None,
        }
    }

    /// The placeholder the guest sees for credential `name`.
    pub fn placeholder_for(&self, name: &str) -> String {
        self.placeholder
            .clone()
            .unwrap_or_else(|| format!("mock-{name}"))
    }
}

/// Where a credential's value comes from. Externally tagged: `{"env": "NAME"}`,
/// `{"file": "/path"}`, `{"value": "..."}`, `{"command": {"argv": [...]}}`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum SecretSource {
    /// A variable of the broker's environment.
    Env(String),
    /// A file; relative paths are taken under `$CREDENTIALS_DIRECTORY` when that is set.
    File(PathBuf),
    /// An inline value (control API); redacted in Debug output.
    Value(SecretValue),
    /// A host command whose standard output is the value, run again after its TTL.
    Command(CommandSource),
}

/// A `command` source: run `argv` (never through a shell), or `shell` with `/bin/sh -c`
/// when asked for explicitly. Exactly one of the two. Debug prints the program name and
/// the number of arguments only (arguments may name secret paths or carry tokens).
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandSource {
    #[serde(default)]
    pub argv: Vec<String>,
    #[serde(default)]
    pub shell: Option<String>,
    /// Seconds a value is used before the command runs again. Default 300.
    #[serde(default)]
    pub ttl_secs: Option<u64>,
    /// Seconds the command may run before it is killed (its process group). Default 10.
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    /// Largest accepted standard output in bytes. Default 65536.
    #[serde(default)]
    pub max_output_bytes: Option<usize>,
}

impl CommandSource {
    /// Default for [`CommandSource::ttl_secs`].
    pub const DEFAULT_TTL_SECS: u64 = 300;
    /// Default for [`CommandSource::timeout_secs`].
    pub const DEFAULT_TIMEOUT_SECS: u64 = 10;
    /// Default for [`CommandSource::max_output_bytes`].
    pub const DEFAULT_MAX_OUTPUT: usize = 64 << 10;

    /// The program shown in errors and summaries: `argv[0]`, or `/bin/sh` for `shell`.
    pub fn program(&self) -> &str {
        if self.shell.is_some() {
            "/bin/sh"
        } else {
            self.argv.first().map(String::as_str).unwrap_or("")
        }
    }

    /// TTL as a duration.
    pub fn ttl(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.ttl_secs.unwrap_or(Self::DEFAULT_TTL_SECS))
    }

    /// Run-time bound as a duration.
    pub fn timeout(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.timeout_secs.unwrap_or(Self::DEFAULT_TIMEOUT_SECS))
    }

    /// Output bound.
    pub fn max_output(&self) -> usize {
        self.max_output_bytes.unwrap_or(Self::DEFAULT_MAX_OUTPUT)
    }
}

impl std::fmt::Debug for CommandSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CommandSource")
            .field("program", &self.program())
            .field("shell", &self.shell.is_some())
            .field("args", &self.argv.len().saturating_sub(1))
            .field("ttl_secs", &self.ttl_secs)
            .finish_non_exhaustive()
    }
}

/// A place in a request where a placeholder may be substituted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Location {
    Headers,
    Query,
    Body,
}

/// Set `header` to `format` with `${value}` replaced by the real value (see docs/policy.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InjectRule {
    pub header: String,
    pub format: String,
}

/// What happens when a placeholder is seen where a gate fails.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OnViolation {
    /// Refuse the request (403 with a reason).
    #[default]
    Block,
    /// Forward it unchanged (placeholder stays) and record the violation.
    Log,
}

impl Cidr {
    /// Parses `"10.0.0.0/8"`, `"fd00::/8"` or a bare address (a /32 or /128).
    pub fn parse(s: &str) -> Result<Cidr, String> {
        if let Ok(net) = s.parse::<ipnet::IpNet>() {
            return Ok(Cidr(net));
        }
        if let Ok(ip) = s.parse::<std::net::IpAddr>() {
            return Ok(Cidr(ipnet::IpNet::from(ip)));
        }
        Err(format!("invalid CIDR {s:?}"))
    }

    /// Whether the network contains `ip` (v4-mapped IPv6 addresses are compared as IPv4).
    pub fn contains(&self, ip: std::net::IpAddr) -> bool {
        self.0.contains(&super::ip_class::canonical(ip))
    }
}

impl std::fmt::Display for Cidr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Cidr::parse(&s).map_err(serde::de::Error::custom)
    }
}
