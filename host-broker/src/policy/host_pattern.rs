//! Host patterns used by egress rules and credential `hosts`.
//!
//! Semantics (documented in docs/policy.md):
//! - exact name: case-insensitive, one trailing dot ignored;
//! - `*.suffix`: one or more labels below `suffix`, never `suffix` itself, never
//!   `evil-suffix`, never `suffix.evil.net`;
//! - `*`: every host (names and IP literals);
//! - IP literal (v4, v6 with or without brackets): that address only; name patterns never
//!   match an IP literal and IP patterns never match a name.

use std::fmt;
use std::net::IpAddr;

use serde::{Deserialize, Deserializer};

/// A parsed host pattern.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostPattern {
    /// `"*"`.
    Any,
    /// A normalized host name.
    Exact(String),
    /// `*.suffix`; holds the normalized suffix (without `*.`).
    Suffix(String),
    /// An IP literal.
    Ip(IpAddr),
}

/// Lowercases, strips one trailing dot and IPv6 brackets. Does not validate.
pub fn normalize_host(host: &str) -> String {
    let h = host.strip_suffix('.').unwrap_or(host);
    let h = h
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(h);
    h.to_ascii_lowercase()
}

/// Parses an IP literal, accepting `[v6]`.
pub fn parse_ip_literal(host: &str) -> Option<IpAddr> {
    let h = host
        .strip_prefix('[')
        .and_then(|x| x.strip_suffix(']'))
        .unwrap_or(host);
    h.parse().ok()
}

/// Checks that a normalized name is a syntactically valid DNS host name (LDH labels plus `_`,
/// 1..=63 bytes each, 253 in total). Non-ASCII names must be sent as punycode.
pub(crate) fn check_hostname(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty host name".into());
    }
    if name.len() > 253 {
        return Err("host name longer than 253 bytes".into());
    }
    for label in name.split('.') {
        if label.is_empty() {
            return Err("empty label in host name".into());
        }
        if label.len() > 63 {
            return Err("label longer than 63 bytes in host name".into());
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err("invalid character in host name (use punycode for IDN)".into());
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err("label starts or ends with '-' in host name".into());
        }
    }
    Ok(())
}

impl HostPattern {
    /// Parses a pattern; the error message quotes the input (patterns are not secret).
    pub fn parse(s: &str) -> Result<HostPattern, String> {
        let trimmed = s.trim();
        if trimmed != s || s.is_empty() {
            return Err(format!(
                "invalid host pattern {s:?}: empty or surrounding spaces"
            ));
        }
        if s == "*" {
            return Ok(HostPattern::Any);
        }
        if let Some(ip) = parse_ip_literal(s) {
            return Ok(HostPattern::Ip(ip));
        }
        if let Some(suffix) = s.strip_prefix("*.") {
            let suffix = normalize_host(suffix);
            if suffix.contains('*') {
                return Err(format!(
                    "invalid host pattern {s:?}: '*' is only allowed as the whole first label"
                ));
            }
            check_hostname(&suffix).map_err(|e| format!("invalid host pattern {s:?}: {e}"))?;
            return Ok(HostPattern::Suffix(suffix));
        }
        if s.contains('*') {
            return Err(format!(
                "invalid host pattern {s:?}: '*' is only allowed alone or as \"*.suffix\""
            ));
        }
        let name = normalize_host(s);
        check_hostname(&name).map_err(|e| format!("invalid host pattern {s:?}: {e}"))?;
        Ok(HostPattern::Exact(name))
    }

    /// Whether `host` (as sent by the guest; normalized here) matches.
    pub fn matches(&self, host: &str) -> bool {
        let h = normalize_host(host);
        match self {
            HostPattern::Any => true,
            HostPattern::Ip(ip) => parse_ip_literal(&h) == Some(*ip),
            HostPattern::Exact(name) => parse_ip_literal(&h).is_none() && h == *name,
            HostPattern::Suffix(suffix) => {
                parse_ip_literal(&h).is_none()
                    && h.len() > suffix.len() + 1
                    && h.ends_with(suffix.as_str())
                    && h.as_bytes()[h.len() - suffix.len() - 1] == b'.'
                    && !h[..h.len() - suffix.len() - 1]
                        .split('.')
                        .any(str::is_empty)
            }
        }
    }

    /// Whether this pattern names exactly this IP (used for explicit private allows).
    pub fn is_ip(&self, ip: IpAddr) -> bool {
        matches!(self, HostPattern::Ip(p) if *p == ip)
    }
}

impl fmt::Display for HostPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HostPattern::Any => f.write_str("*"),
            HostPattern::Exact(n) => f.write_str(n),
            HostPattern::Suffix(s) => write!(f, "*.{s}"),
            HostPattern::Ip(IpAddr::V6(ip)) => write!(f, "[{ip}]"),
            HostPattern::Ip(ip) => write!(f, "{ip}"),
        }
    }
}

impl<'de> Deserialize<'de> for HostPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        HostPattern::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> HostPattern {
        HostPattern::parse(s).unwrap()
    }

    #[test]
    fn wildcard_edge_cases() {
        let w = p("*.example.com");
        assert!(w.matches("api.example.com"));
        assert!(w.matches("a.b.example.com"));
        assert!(w.matches("API.Example.COM"));
        assert!(w.matches("api.example.com."));
        assert!(!w.matches("example.com"));
        assert!(!w.matches("example.com."));
        assert!(!w.matches("evil-example.com"));
        assert!(!w.matches("example.com.evil.net"));
        assert!(!w.matches("xexample.com"));
        assert!(!w.matches(".example.com"));
        assert!(!w.matches("a..example.com"));
        assert!(!w.matches("127.0.0.1"));
    }

    #[test]
    fn exact_is_case_insensitive_and_ignores_trailing_dot() {
        let e = p("API.example.com.");
        assert_eq!(e, HostPattern::Exact("api.example.com".into()));
        assert!(e.matches("api.example.com"));
        assert!(e.matches("Api.Example.Com."));
        assert!(!e.matches("x.api.example.com"));
        assert!(!e.matches("api.example.com.evil.net"));
    }

    #[test]
    fn any_and_ip_literals() {
        assert!(p("*").matches("anything.example"));
        assert!(p("*").matches("10.0.0.1"));
        let v4 = p("10.1.2.3");
        assert!(v4.matches("10.1.2.3"));
        assert!(!v4.matches("10.1.2.4"));
        let v6 = p("[::1]");
        assert!(v6.matches("::1"));
        assert!(v6.matches("[::1]"));
        assert!(v6.matches("[0:0::1]"));
        assert_eq!(p("::1"), v6);
        assert!(!p("localhost").matches("127.0.0.1"));
    }

    #[test]
    fn rejects_bad_patterns() {
        for bad in [
            "",
            " a.com",
            "a*.com",
            "*a.com",
            "a.*.com",
            "*.*.com",
            "*.",
            "a..b",
            "-a.com",
            "a b.com",
            "ünï.com",
            "*.com*",
        ] {
            assert!(
                HostPattern::parse(bad).is_err(),
                "{bad:?} should be rejected"
            );
        }
    }

    proptest::proptest! {
        /// `*.suffix` against a label-list model: matches iff the host's labels end with the
        /// suffix's labels and there is at least one more label, whatever the case/dot.
        #[test]
        fn suffix_matches_label_model(
            host in proptest::collection::vec("[a-cA-C-]{1,3}", 1..5),
            suffix in proptest::collection::vec("[a-c]{1,3}", 1..3),
            dot in proptest::bool::ANY,
        ) {
            let suffix_s = suffix.join(".");
            let Ok(pat) = HostPattern::parse(&format!("*.{suffix_s}")) else {
                return Ok(());
            };
            let mut h = host.join(".");
            if dot {
                h.push('.');
            }
            let labels: Vec<String> = host.iter().map(|l| l.to_ascii_lowercase()).collect();
            let want = labels.len() > suffix.len() && labels.ends_with(&suffix);
            proptest::prop_assert_eq!(pat.matches(&h), want, "{} vs {}", h, suffix_s);
        }
    }

    #[test]
    fn display_round_trips() {
        for s in ["*", "api.example.com", "*.example.com", "10.0.0.1", "[::1]"] {
            assert_eq!(p(s).to_string(), s);
            assert_eq!(p(&p(s).to_string()), p(s));
        }
    }
}
