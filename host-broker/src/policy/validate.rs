//! Semantic validation that serde cannot express; errors name the field path.

use std::collections::BTreeMap;

use super::binding::HostRule;
use super::error::PolicyError;
use super::host_pattern::{check_hostname, normalize_host, parse_ip_literal, HostPattern};
use super::model::{
    CommandSource, CredentialSpec, EgressRule, Policy, SecretSource, SIGV4_SECRET_ENV,
    SIGV4_TOKEN_ENV,
};

/// Shortest placeholder accepted: shorter ones would match ordinary header text.
pub(crate) const MIN_PLACEHOLDER_LEN: usize = 4;

/// Headers an inject rule may not set: framing, routing and hop-by-hop headers.
const FORBIDDEN_INJECT_HEADERS: &[&str] = &[
    "host",
    "content-length",
    "transfer-encoding",
    "connection",
    "upgrade",
    "te",
    "trailer",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "expect",
];

fn err(path: impl Into<String>, message: impl Into<String>) -> PolicyError {
    PolicyError::invalid(path, message)
}

/// Environment variable names the guest can use: `[A-Za-z_][A-Za-z0-9_]*`.
pub(crate) fn is_env_name(s: &str) -> bool {
    let mut b = s.bytes();
    matches!(b.next(), Some(c) if c.is_ascii_alphabetic() || c == b'_')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_')
}

impl Policy {
    /// Checks cross-field rules (required `hosts`, distinct placeholders, inject rules, ...).
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.max_connections == Some(0) {
            return Err(err("max_connections", "must be at least 1"));
        }
        if let Some(i) = self.raw_tcp_ports.iter().position(|p| *p == 0) {
            return Err(err(format!("raw_tcp_ports[{i}]"), "port 0 is not a port"));
        }
        for (i, r) in self.egress.allow.iter().enumerate() {
            validate_rule(&format!("egress.allow[{i}]"), r)?;
        }
        for (i, r) in self.egress.deny.iter().enumerate() {
            validate_rule(&format!("egress.deny[{i}]"), r)?;
        }
        let mut placeholders: BTreeMap<String, &str> = BTreeMap::new();
        for (name, spec) in &self.credentials {
            let path = format!("credentials.{name}");
            validate_credential(&path, name, spec)?;
            let ph = spec.placeholder_for(name);
            // `random` is drawn per VM at registration: never shared.
            if ph == super::RANDOM_PLACEHOLDER {
                continue;
            }
            if let Some(other) = placeholders.insert(ph.clone(), name) {
                return Err(err(
                    format!("{path}.placeholder"),
                    format!("{ph:?} is also the placeholder of credentials.{other}"),
                ));
            }
        }
        let sigv4: Vec<&String> = self
            .credentials
            .iter()
            .filter(|(_, c)| c.aws_sigv4.is_some())
            .map(|(n, _)| n)
            .collect();
        if let Some(second) = sigv4.get(1) {
            return Err(err(
                format!("credentials.{second}.aws_sigv4"),
                format!(
                    "only one credential may use aws_sigv4 (also credentials.{})",
                    sigv4[0]
                ),
            ));
        }
        if let Some(name) = sigv4.first() {
            for taken in [SIGV4_SECRET_ENV, SIGV4_TOKEN_ENV] {
                if self.credentials.contains_key(taken) || self.env.contains_key(taken) {
                    return Err(err(
                        format!("credentials.{name}.aws_sigv4"),
                        format!("the guest gets its placeholder in {taken}, which is also defined elsewhere in this policy"),
                    ));
                }
            }
            let spec = &self.credentials[*name];
            if !spec.inject.is_empty() || spec.locations != [crate::policy::Location::Headers] {
                return Err(err(
                    format!("credentials.{name}.aws_sigv4"),
                    "an aws_sigv4 credential is applied by re-signing; it takes no inject rules and no \"in\"",
                ));
            }
        }
        for (k, v) in &self.env {
            if !is_env_name(k) {
                return Err(err(
                    format!("env.{k}"),
                    "not a valid environment variable name ([A-Za-z_][A-Za-z0-9_]*)",
                ));
            }
            if self.credentials.contains_key(k) {
                return Err(err(
                    format!("env.{k}"),
                    format!(
                        "conflicts with credentials.{k} (the guest gets its placeholder there)"
                    ),
                ));
            }
            if v.contains('\0') {
                return Err(err(format!("env.{k}"), "value contains a NUL byte"));
            }
        }
        for k in self.resolve.keys() {
            let h = normalize_host(k);
            if parse_ip_literal(&h).is_none() {
                check_hostname(&h).map_err(|e| err(format!("resolve.{k:?}"), e))?;
            }
        }
        Ok(())
    }
}

fn validate_rule(path: &str, r: &EgressRule) -> Result<(), PolicyError> {
    if r.hosts.is_empty() && r.cidrs.is_empty() {
        return Err(err(path, "a rule needs \"hosts\" or \"cidrs\" (or both)"));
    }
    if let Some(ports) = &r.ports {
        if ports.is_empty() {
            return Err(err(
                format!("{path}.ports"),
                "empty list (omit \"ports\" to mean any port)",
            ));
        }
        if let Some(j) = ports.iter().position(|p| *p == 0) {
            return Err(err(
                format!("{path}.ports[{j}]"),
                "port 0 is not a valid port",
            ));
        }
    }
    Ok(())
}

fn validate_credential(path: &str, name: &str, spec: &CredentialSpec) -> Result<(), PolicyError> {
    if !is_env_name(name) {
        return Err(err(
            path,
            "credential names must be valid environment variable names ([A-Za-z_][A-Za-z0-9_]*)",
        ));
    }
    match &spec.source {
        SecretSource::Env(v) if !is_env_name(v) => {
            return Err(err(
                format!("{path}.source.env"),
                format!("{v:?} is not a valid environment variable name"),
            ))
        }
        SecretSource::File(p) if p.as_os_str().is_empty() => {
            return Err(err(format!("{path}.source.file"), "empty path"))
        }
        SecretSource::Value(v) if v.is_empty() => {
            return Err(err(format!("{path}.source.value"), "empty value"))
        }
        SecretSource::Value(v) if v.expose().chars().any(|c| c.is_control() && c != '\t') => {
            return Err(err(
                format!("{path}.source.value"),
                "value contains control characters (not allowed in an HTTP header)",
            ))
        }
        SecretSource::Command(c) => validate_command(&format!("{path}.source.command"), c)?,
        _ => {}
    }
    match &spec.hosts {
        None => {
            return Err(err(
                format!("{path}.hosts"),
                "required (write \"*\" to mean every host)",
            ))
        }
        Some(h) if h.is_empty() => {
            return Err(err(
                format!("{path}.hosts"),
                "empty list (the credential could never be used; write \"*\" to mean every host)",
            ))
        }
        Some(hosts) => {
            if let Some(j) = hosts
                .iter()
                .position(|h| matches!(h.host, HostPattern::Ip(_)))
            {
                return Err(err(
                    format!("{path}.hosts[{j}]"),
                    format!(
                        "IP literal {} can never receive a credential (gate 4: only host names \
                         the broker resolves itself); use a host name, with a resolve override \
                         if it has no DNS entry",
                        hosts[j].host
                    ),
                ));
            }
            for (j, rule) in hosts.iter().enumerate() {
                validate_binding(&format!("{path}.hosts[{j}]"), rule)?;
            }
        }
    }
    if let Some(ph) = &spec.placeholder {
        if ph.is_empty() {
            return Err(err(format!("{path}.placeholder"), "must not be empty"));
        }
        if ph.len() < MIN_PLACEHOLDER_LEN {
            return Err(err(
                format!("{path}.placeholder"),
                format!("must be at least {MIN_PLACEHOLDER_LEN} characters"),
            ));
        }
        if !ph.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(err(
                format!("{path}.placeholder"),
                "must be printable ASCII without spaces",
            ));
        }
    }
    if spec.locations.is_empty() {
        return Err(err(
            format!("{path}.in"),
            "empty list (omit \"in\" to mean [\"headers\"])",
        ));
    }
    for (i, rule) in spec.inject.iter().enumerate() {
        let ipath = format!("{path}.inject[{i}]");
        let hn = http::HeaderName::from_bytes(rule.header.as_bytes()).map_err(|_| {
            err(
                format!("{ipath}.header"),
                format!("{:?} is not a valid HTTP header name", rule.header),
            )
        })?;
        if FORBIDDEN_INJECT_HEADERS.contains(&hn.as_str()) {
            return Err(err(
                format!("{ipath}.header"),
                format!(
                    "{:?} may not be injected (framing/routing header)",
                    rule.header
                ),
            ));
        }
        if spec.inject[..i]
            .iter()
            .any(|o| o.header.eq_ignore_ascii_case(&rule.header))
        {
            return Err(err(
                format!("{ipath}.header"),
                format!("{:?} is injected twice by this credential", rule.header),
            ));
        }
        if !rule.format.contains("${value}") {
            return Err(err(format!("{ipath}.format"), "must contain ${value}"));
        }
        if rule.format.chars().any(|c| c.is_control() && c != '\t') {
            return Err(err(
                format!("{ipath}.format"),
                "contains control characters (not allowed in an HTTP header)",
            ));
        }
    }
    Ok(())
}

/// Limits of one `hosts` entry: lists given must be non-empty, ports non-zero, methods
/// upper-case tokens (HTTP methods are case-sensitive; `get` would never match a client).
fn validate_binding(path: &str, rule: &HostRule) -> Result<(), PolicyError> {
    if let Some(ports) = &rule.ports {
        if ports.is_empty() {
            return Err(err(
                format!("{path}.ports"),
                "empty list (omit \"ports\" to mean any port)",
            ));
        }
        if let Some(k) = ports.iter().position(|p| *p == 0) {
            return Err(err(
                format!("{path}.ports[{k}]"),
                "port 0 is not a valid port",
            ));
        }
    }
    if let Some(methods) = &rule.methods {
        if methods.is_empty() {
            return Err(err(
                format!("{path}.methods"),
                "empty list (omit \"methods\" to mean any method)",
            ));
        }
        for (k, m) in methods.iter().enumerate() {
            let token = !m.is_empty()
                && m.bytes().all(|b| {
                    b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
                });
            if !token {
                return Err(err(
                    format!("{path}.methods[{k}]"),
                    format!(
                        "{m:?} is not an upper-case HTTP method (methods are case-sensitive, \
                         e.g. \"GET\")"
                    ),
                ));
            }
        }
    }
    if let Some(paths) = &rule.paths {
        if paths.is_empty() {
            return Err(err(
                format!("{path}.paths"),
                "empty list (omit \"paths\" to mean any path)",
            ));
        }
    }
    Ok(())
}

/// Longest run time a `command` source may ask for: registration waits for the first run.
const MAX_COMMAND_TIMEOUT_SECS: u64 = 120;
/// Largest output a `command` source may ask for.
const MAX_COMMAND_OUTPUT: usize = 1 << 20;

fn validate_command(path: &str, c: &CommandSource) -> Result<(), PolicyError> {
    match (&c.shell, c.argv.is_empty()) {
        (Some(_), false) => {
            return Err(err(
                path,
                "give either \"argv\" (run directly) or \"shell\" (run with /bin/sh -c), not both",
            ))
        }
        (None, true) => {
            return Err(err(
                format!("{path}.argv"),
                "required: the program and its arguments (or \"shell\" to use /bin/sh -c)",
            ))
        }
        (Some(sh), true) if sh.trim().is_empty() => {
            return Err(err(format!("{path}.shell"), "empty command"))
        }
        _ => {}
    }
    if c.argv.first().is_some_and(|p| p.is_empty()) {
        return Err(err(format!("{path}.argv[0]"), "empty program"));
    }
    if let Some(i) = c.argv.iter().position(|a| a.contains('\0')) {
        return Err(err(format!("{path}.argv[{i}]"), "contains a NUL byte"));
    }
    if c.ttl_secs == Some(0) {
        return Err(err(format!("{path}.ttl_secs"), "must be at least 1"));
    }
    match c.timeout_secs {
        Some(0) => return Err(err(format!("{path}.timeout_secs"), "must be at least 1")),
        Some(t) if t > MAX_COMMAND_TIMEOUT_SECS => {
            return Err(err(
                format!("{path}.timeout_secs"),
                format!("at most {MAX_COMMAND_TIMEOUT_SECS}"),
            ))
        }
        _ => {}
    }
    match c.max_output_bytes {
        Some(0) => {
            return Err(err(
                format!("{path}.max_output_bytes"),
                "must be at least 1",
            ))
        }
        Some(n) if n > MAX_COMMAND_OUTPUT => {
            return Err(err(
                format!("{path}.max_output_bytes"),
                format!("at most {MAX_COMMAND_OUTPUT}"),
            ))
        }
        _ => {}
    }
    Ok(())
}
