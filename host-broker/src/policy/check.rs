//! Evaluation of egress rules on names and on dialed addresses.
//!
//! Decision for a connection to `host:port` dialed at `ip`:
//! 1. a deny rule whose ports match and whose hosts match `host` (or name `ip`), or whose
//!    cidrs contain `ip` => denied (deny wins over allow);
//! 2. otherwise an allow rule whose ports match and whose hosts match `host`, or whose cidrs
//!    (or IP-literal hosts) contain `ip` => allowed; else `egress.default`;
//! 3. finally, if `ip` is private (see `ip_class`), it passes only when an allow rule lists a
//!    CIDR or IP literal containing it, or `private_networks` is `"allow"`.
//!
//! `check_name` applies the parts that need no IP; CIDR-only allow rules defer the decision to
//! the address check.

use std::net::{IpAddr, SocketAddr};

use super::error::Denial;
use super::host_pattern::{check_hostname, normalize_host, parse_ip_literal};
use super::ip_class::{canonical, classify_private};
use super::model::{DefaultAction, EgressRule, Policy, PrivateNetworks};

impl EgressRule {
    fn port_ok(&self, port: u16) -> bool {
        match &self.ports {
            None => true,
            Some(ps) => ps.contains(&port),
        }
    }

    fn host_matches(&self, host: &str) -> bool {
        self.hosts.iter().any(|p| p.matches(host))
    }

    /// CIDRs or IP-literal hosts containing `ip`: an explicit mention of the address.
    fn names_ip(&self, ip: IpAddr) -> bool {
        self.cidrs.iter().any(|c| c.contains(ip)) || self.hosts.iter().any(|p| p.is_ip(ip))
    }
}

/// Quotes a guest-supplied host for a reason string: bounded length, ASCII only.
fn shown(host: &str) -> String {
    let mut s: String = host.chars().take(255).collect();
    if s.len() < host.len() {
        s.push_str("...");
    }
    if s.bytes().all(|b| b.is_ascii_graphic()) {
        s
    } else {
        // ASCII-only escape: the reason goes into an HTTP header (x-sluice-reason).
        format!("\"{}\"", s.escape_default())
    }
}

impl Policy {
    /// Host rules before any DNS: deny rules, allow rules by host pattern/port, default.
    /// An IP-literal host gets the full address check at once.
    pub fn check_name(&self, host: &str, port: u16) -> Result<(), Denial> {
        let h = normalize_host(host);
        if let Some(ip) = parse_ip_literal(&h) {
            return self.check_target(&h, port, SocketAddr::new(ip, port));
        }
        check_hostname(&h).map_err(|e| Denial::new(format!("{}: {e}; denied", shown(host))))?;
        if let Some(i) = self
            .egress
            .deny
            .iter()
            .position(|r| r.port_ok(port) && r.host_matches(&h))
        {
            return Err(Denial::new(format!(
                "{h}:{port} is denied by egress.deny[{i}]"
            )));
        }
        let allowed = self.egress.default == DefaultAction::Allow
            || self
                .egress
                .allow
                .iter()
                .any(|r| r.port_ok(port) && (r.host_matches(&h) || !r.cidrs.is_empty()));
        if allowed {
            Ok(())
        } else {
            Err(self.not_allowed(&h, port))
        }
    }

    /// Rules on the IP actually dialed: CIDR rules and private_networks. Port rules are
    /// matched against `addr.port()`; [`super::resolve_target`] checks with the port the
    /// guest requested instead, so callers need not call this again after it.
    pub fn check_addr(&self, host: &str, addr: SocketAddr) -> Result<(), Denial> {
        self.check_target(&normalize_host(host), addr.port(), addr)
    }

    /// Full check of `host` (normalized) requested on `port`, to be dialed at `addr`.
    pub(crate) fn check_target(&self, h: &str, port: u16, addr: SocketAddr) -> Result<(), Denial> {
        let ip = canonical(addr.ip());
        let literal = parse_ip_literal(h).is_some();
        let subject = if literal {
            ip.to_string()
        } else {
            format!("{h} resolves to {ip}")
        };
        if let Some(i) = self
            .egress
            .deny
            .iter()
            .position(|r| r.port_ok(port) && (r.host_matches(h) || r.names_ip(ip)))
        {
            return Err(Denial::new(format!(
                "{subject} (port {port}); denied by egress.deny[{i}]"
            )));
        }
        let explicit = self
            .egress
            .allow
            .iter()
            .any(|r| r.port_ok(port) && r.names_ip(ip));
        let by_host = self
            .egress
            .allow
            .iter()
            .any(|r| r.port_ok(port) && r.host_matches(h));
        if !(explicit || by_host || self.egress.default == DefaultAction::Allow) {
            return Err(if literal {
                self.not_allowed(h, port)
            } else {
                Denial::new(format!(
                    "{subject}, which no egress.allow rule permits on port {port} (default deny)"
                ))
            });
        }
        if let Some(class) = classify_private(ip) {
            if !explicit && self.egress.private_networks == PrivateNetworks::Deny {
                return Err(Denial::new(format!(
                    "{subject} ({class}); denied by egress.private_networks \
                     (an egress.allow rule with a CIDR containing {ip} would permit it)"
                )));
            }
        }
        Ok(())
    }

    /// Whether the guest's DNS may answer `name` (with a synthetic address): some port of
    /// some host rule (or `default: allow`) can reach it, and no deny rule for every port
    /// matches it. Names reachable only through CIDR rules are not answered: telling that
    /// would mean sending the name to a real resolver, an exfiltration channel for any name.
    /// IP literals are not names; they are refused here too.
    pub fn check_dns_name(&self, name: &str) -> Result<(), Denial> {
        let h = normalize_host(name);
        if parse_ip_literal(&h).is_some() {
            return Err(Denial::new(format!(
                "{} is an address, not a name",
                shown(name)
            )));
        }
        check_hostname(&h).map_err(|e| Denial::new(format!("{}: {e}; denied", shown(name))))?;
        if let Some(i) = self
            .egress
            .deny
            .iter()
            .position(|r| r.ports.is_none() && r.host_matches(&h))
        {
            return Err(Denial::new(format!("{h} is denied by egress.deny[{i}]")));
        }
        let allowed = self.egress.default == DefaultAction::Allow
            || self.egress.allow.iter().any(|r| r.host_matches(&h));
        if allowed {
            Ok(())
        } else {
            Err(Denial::new(format!(
                "{h} matches no host in egress.allow (default deny); not resolved"
            )))
        }
    }

    fn not_allowed(&self, h: &str, port: u16) -> Denial {
        let shown_host = if h.contains(':') {
            format!("[{h}]")
        } else {
            h.to_string()
        };
        Denial::new(format!(
            "{shown_host}:{port} is not allowed by egress.allow (default deny)"
        ))
    }

    /// The static `resolve` override for a normalized host, if any.
    pub(crate) fn resolve_override(&self, h: &str) -> Option<SocketAddr> {
        self.resolve
            .iter()
            .find(|(k, _)| normalize_host(k) == h)
            .map(|(_, a)| *a)
    }
}
