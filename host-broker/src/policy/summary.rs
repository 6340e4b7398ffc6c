//! Human-readable summary for `host-broker policy check` (never secret values).

use std::fmt::Write;

use super::host_pattern::HostPattern;
use super::model::{EgressRule, Policy, SecretSource};

/// Lowercased Debug name of a unit enum variant (`Deny` -> `deny`).
fn lower(v: impl std::fmt::Debug) -> String {
    format!("{v:?}").to_lowercase()
}

fn rule_line(r: &EgressRule) -> String {
    let mut parts = Vec::new();
    if !r.hosts.is_empty() {
        let h: Vec<String> = r.hosts.iter().map(|p| p.to_string()).collect();
        parts.push(format!("hosts {}", h.join(", ")));
    }
    if !r.cidrs.is_empty() {
        let c: Vec<String> = r.cidrs.iter().map(|c| c.to_string()).collect();
        parts.push(format!("cidrs {}", c.join(", ")));
    }
    match &r.ports {
        None => parts.push("any port".into()),
        Some(p) => parts.push(format!(
            "ports {}",
            p.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
        )),
    }
    parts.join("; ")
}

/// Credential names, sources (kind and name/path only), hosts and egress rules.
pub fn summarize(policy: &Policy) -> String {
    let mut s = String::new();
    let e = &policy.egress;
    let _ = writeln!(
        s,
        "egress: default {}, private_networks {}, intercept {}",
        lower(e.default),
        lower(e.private_networks),
        lower(policy.intercept)
    );
    for (kind, rules) in [("allow", &e.allow), ("deny", &e.deny)] {
        for (i, r) in rules.iter().enumerate() {
            let _ = writeln!(s, "  {kind}[{i}]: {}", rule_line(r));
        }
    }
    let _ = writeln!(s, "credentials: {}", policy.credentials.len());
    for (name, c) in &policy.credentials {
        let source = match &c.source {
            SecretSource::Env(v) => format!("env {v}"),
            SecretSource::File(p) => format!("file {}", p.display()),
            SecretSource::Value(_) => "inline value".to_string(),
            // The program only: arguments may carry tokens or secret paths.
            SecretSource::Command(c) => format!(
                "command {}{} (ttl {} s)",
                c.program(),
                if c.shell.is_some() { " -c ..." } else { "" },
                c.ttl().as_secs()
            ),
        };
        let hosts: Vec<String> = c.hosts.iter().flatten().map(|p| p.to_string()).collect();
        let _ = writeln!(
            s,
            "  {name}: placeholder {}, source {source}, hosts {}, in {}, on_violation {}",
            match c.placeholder_for(name) {
                p if p == super::RANDOM_PLACEHOLDER => "random (drawn per VM)".into(),
                p => p,
            },
            hosts.join(", "),
            c.locations
                .iter()
                .map(|l| lower(*l))
                .collect::<Vec<_>>()
                .join(", "),
            lower(c.on_violation)
        );
        if let Some(a) = &c.aws_sigv4 {
            let _ = writeln!(
                s,
                "    aws_sigv4: re-signs requests signed with the placeholders in {name}, {}{}",
                super::model::SIGV4_SECRET_ENV,
                if a.session_token.is_some() {
                    format!(", {}", super::model::SIGV4_TOKEN_ENV)
                } else {
                    String::new()
                }
            );
        }
        for r in &c.inject {
            let _ = writeln!(s, "    inject {}: {}", r.header, r.format);
        }
        for h in c.hosts.iter().flatten() {
            if let HostPattern::Exact(name) = &h.host {
                if let Err(d) = policy.check_name(name, 443) {
                    let _ = writeln!(s, "    note: credential host unreachable on 443: {d}");
                }
            }
        }
    }
    if !policy.env.is_empty() {
        let names: Vec<&str> = policy.env.keys().map(String::as_str).collect();
        let _ = writeln!(s, "env: {}", names.join(", "));
    }
    for (h, a) in &policy.resolve {
        let _ = writeln!(s, "resolve: {h} -> {a}");
    }
    s
}
