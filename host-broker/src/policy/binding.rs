//! Request-scoped credential bindings: one entry of a credential's `hosts`, optionally
//! limited to ports, methods and paths.
//!
//! An entry is either a host pattern string (`"api.github.com"`: any port, method and path)
//! or an object `{"host": "api.github.com", "ports": [443], "methods": ["GET"],
//! "paths": ["/repos/acme/**"]}`. A request may carry the credential when **some** entry
//! whose `host` matches the target admits it; within an entry every limit given must hold
//! (absent = any). See docs/policy.md "Request-scoped bindings".
//!
//! Paths are matched on the raw request path (no query), case-sensitively, and only when
//! the path is canonical: no `.` / `..` segments, no empty segments (`//`), no backslash and
//! no percent-encoded `/`, `\` or `.`. An upstream may normalise those forms into a path the
//! binding never meant, so a non-canonical path matches no path limit (fails closed).

use std::fmt;

use serde::{Deserialize, Deserializer};

use super::host_pattern::HostPattern;

/// One entry of a credential's `hosts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostRule {
    pub host: HostPattern,
    /// Ports the guest asked for (the CONNECT port); `None` = any.
    pub ports: Option<Vec<u16>>,
    /// Request methods, case-sensitive (upper case); `None` = any.
    pub methods: Option<Vec<String>>,
    /// Path patterns; `None` = any path.
    pub paths: Option<Vec<PathPattern>>,
}

impl HostRule {
    /// An entry with no limits.
    pub fn any_request(host: HostPattern) -> HostRule {
        HostRule {
            host,
            ports: None,
            methods: None,
            paths: None,
        }
    }

    /// Whether the entry limits anything beyond the host.
    pub fn is_scoped(&self) -> bool {
        self.ports.is_some() || self.methods.is_some() || self.paths.is_some()
    }

    /// Whether `req` is inside this entry's limits (the host is checked by the caller).
    /// Without request facts (`None`) only an unscoped entry admits.
    pub fn admits(&self, req: Option<&RequestScope<'_>>) -> bool {
        let Some(req) = req else {
            return !self.is_scoped();
        };
        if let Some(ports) = &self.ports {
            if !ports.contains(&req.port) {
                return false;
            }
        }
        if let Some(methods) = &self.methods {
            if !methods.iter().any(|m| m == req.method) {
                return false;
            }
        }
        if let Some(paths) = &self.paths {
            let path = req.path.split(['?', '#']).next().unwrap_or_default();
            if !is_canonical_path(path) || !paths.iter().any(|p| p.matches(path)) {
                return false;
            }
        }
        true
    }
}

/// What a binding is checked against: facts about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestScope<'a> {
    /// The port the guest asked for (CONNECT port, or the captured destination port).
    pub port: u16,
    /// The request method as sent (`GET`, ...).
    pub method: &'a str,
    /// The request path, query allowed (it is ignored).
    pub path: &'a str,
}

impl fmt::Display for RequestScope<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let path = self.path.split(['?', '#']).next().unwrap_or_default();
        // Guest-supplied: bounded, and never the query (it may hold tokens).
        let shown: String = path.chars().take(120).collect();
        let more = if shown.len() < path.len() { "..." } else { "" };
        write!(f, "{} {shown}{more} on port {}", self.method, self.port)?;
        if !is_canonical_path(path) {
            f.write_str(", path not canonical")?;
        }
        Ok(())
    }
}

/// Whether `path` has no form an upstream could normalise into another path.
pub fn is_canonical_path(path: &str) -> bool {
    if !path.starts_with('/') || path.contains('\\') {
        return false;
    }
    let lower = path.to_ascii_lowercase();
    if lower.contains("%2f") || lower.contains("%5c") || lower.contains("%2e") {
        return false;
    }
    // Segments after the leading '/'; a trailing '/' (empty last segment) is fine.
    let segs: Vec<&str> = path[1..].split('/').collect();
    let last = segs.len() - 1;
    segs.iter()
        .enumerate()
        .all(|(i, s)| *s != "." && *s != ".." && (!s.is_empty() || i == last))
}

/// A path limit: a prefix (no `*`) or a glob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PathPattern {
    /// `/v1/chat`: that path and everything below it (`/v1/chat/x`), on segment boundaries
    /// (never `/v1/chatty`). A pattern ending in `/` matches only below it.
    Prefix(String),
    /// `*` matches within one segment (no `/`), `**` any run of characters including `/`;
    /// the whole path must match.
    Glob(String),
}

impl PathPattern {
    /// Parses a pattern; the error names what is wrong (patterns are not secret).
    pub fn parse(s: &str) -> Result<PathPattern, String> {
        if !s.starts_with('/') {
            return Err(format!("{s:?} must start with '/'"));
        }
        if s.contains(['?', '#']) {
            return Err(format!("{s:?}: paths never include the query or fragment"));
        }
        if s.bytes().any(|b| !b.is_ascii_graphic()) {
            return Err(format!("{s:?}: must be printable ASCII without spaces"));
        }
        if s.contains("***") {
            return Err(format!("{s:?}: use * (one segment) or ** (any depth)"));
        }
        if s.contains('*') {
            Ok(PathPattern::Glob(s.to_owned()))
        } else {
            Ok(PathPattern::Prefix(s.to_owned()))
        }
    }

    /// Whether `path` (no query) matches.
    pub fn matches(&self, path: &str) -> bool {
        match self {
            PathPattern::Prefix(p) => {
                path == p
                    || (path.starts_with(p.as_str())
                        && (p.ends_with('/') || path.as_bytes()[p.len()] == b'/'))
            }
            PathPattern::Glob(g) => glob_match(g.as_bytes(), path.as_bytes()),
        }
    }
}

/// Glob match by dynamic programming (no backtracking blow-up): `dp[j]` = whether the
/// pattern prefix read so far matches `text[..j]`.
fn glob_match(pat: &[u8], text: &[u8]) -> bool {
    let n = text.len();
    let mut dp = vec![false; n + 1];
    dp[0] = true;
    let mut i = 0;
    while i < pat.len() {
        let mut next = vec![false; n + 1];
        if pat[i] == b'*' {
            let any_depth = pat.get(i + 1) == Some(&b'*');
            // Extend every reachable position over the run the star may consume.
            for j in 0..=n {
                if dp[j] {
                    next[j] = true;
                    let mut k = j;
                    while k < n && (any_depth || text[k] != b'/') {
                        k += 1;
                        next[k] = true;
                    }
                }
            }
            i += if any_depth { 2 } else { 1 };
        } else {
            for j in 0..n {
                if dp[j] && text[j] == pat[i] {
                    next[j + 1] = true;
                }
            }
            i += 1;
        }
        dp = next;
    }
    dp[n]
}

impl fmt::Display for PathPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PathPattern::Prefix(p) | PathPattern::Glob(p) => f.write_str(p),
        }
    }
}

impl fmt::Display for HostRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.host)?;
        if !self.is_scoped() {
            return Ok(());
        }
        let mut parts = Vec::new();
        if let Some(p) = &self.ports {
            let p: Vec<String> = p.iter().map(u16::to_string).collect();
            parts.push(format!("ports {}", p.join(",")));
        }
        if let Some(m) = &self.methods {
            parts.push(format!("methods {}", m.join(",")));
        }
        if let Some(p) = &self.paths {
            let p: Vec<String> = p.iter().map(PathPattern::to_string).collect();
            parts.push(format!("paths {}", p.join(",")));
        }
        write!(f, " ({})", parts.join("; "))
    }
}

impl<'de> Deserialize<'de> for PathPattern {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        PathPattern::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// The object form of a [`HostRule`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleObject {
    host: HostPattern,
    #[serde(default)]
    ports: Option<Vec<u16>>,
    #[serde(default)]
    methods: Option<Vec<String>>,
    #[serde(default)]
    paths: Option<Vec<PathPattern>>,
}

impl<'de> Deserialize<'de> for HostRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = HostRule;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a host pattern or {\"host\", \"ports\", \"methods\", \"paths\"}")
            }
            fn visit_str<E: serde::de::Error>(self, s: &str) -> Result<HostRule, E> {
                HostPattern::parse(s)
                    .map(HostRule::any_request)
                    .map_err(E::custom)
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, map: A) -> Result<HostRule, A::Error> {
                let o = RuleObject::deserialize(serde::de::value::MapAccessDeserializer::new(map))?;
                Ok(HostRule {
                    host: o.host,
                    ports: o.ports,
                    methods: o.methods,
                    paths: o.paths,
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathPattern {
        PathPattern::parse(s).unwrap()
    }

    #[test]
    fn prefix_on_segment_boundaries() {
        let pat = p("/v1/chat");
        assert!(pat.matches("/v1/chat"));
        assert!(pat.matches("/v1/chat/completions"));
        assert!(!pat.matches("/v1/chatty"));
        assert!(!pat.matches("/v1"));
        let dir = p("/v1/");
        assert!(dir.matches("/v1/models"));
        assert!(!dir.matches("/v1"));
        assert!(p("/").matches("/anything/at/all"));
    }

    #[test]
    fn glob_star_is_one_segment_double_star_any_depth() {
        let one = p("/repos/acme/*");
        assert!(one.matches("/repos/acme/widgets"));
        assert!(!one.matches("/repos/acme/widgets/issues"));
        assert!(!one.matches("/repos/acme"));
        let deep = p("/repos/acme/**");
        assert!(deep.matches("/repos/acme/widgets/issues/1"));
        assert!(!deep.matches("/repos/acmeco/x"));
        let mid = p("/*/info/refs");
        assert!(mid.matches("/acme.git/info/refs"));
        assert!(!mid.matches("/a/b.git/info/refs"));
        assert!(p("/**/git-upload-pack").matches("/acme/widgets.git/git-upload-pack"));
        assert!(p("/v1/*.json").matches("/v1/x.json"));
        assert!(!p("/v1/*.json").matches("/v1/x.jsonp"));
    }

    #[test]
    fn glob_has_no_exponential_blowup() {
        let pat = p("/**a**a**a**a**a**a**a**b");
        let text = format!("/{}", "a".repeat(5000));
        assert!(!pat.matches(&text));
    }

    #[test]
    fn non_canonical_paths_never_match_a_path_limit() {
        let rule = HostRule {
            paths: Some(vec![p("/repos/acme/**")]),
            ..HostRule::any_request(HostPattern::Any)
        };
        let req = |path| RequestScope {
            port: 443,
            method: "GET",
            path,
        };
        assert!(rule.admits(Some(&req("/repos/acme/w?x=/../.."))));
        for bad in [
            "/repos/acme/../../orgs/evil",
            "/repos/acme/./x",
            "/repos/acme/%2e%2e/x",
            "/repos/acme%2F..%2Fevil",
            "/repos/acme//x",
            "/repos/acme/x\\..\\y",
            "repos/acme/x",
        ] {
            assert!(!rule.admits(Some(&req(bad))), "{bad}");
        }
    }

    #[test]
    fn limits_and_together_and_absent_facts_fail_closed() {
        let rule = HostRule {
            ports: Some(vec![443]),
            methods: Some(vec!["GET".into()]),
            ..HostRule::any_request(HostPattern::Any)
        };
        let ok = RequestScope {
            port: 443,
            method: "GET",
            path: "/",
        };
        assert!(rule.admits(Some(&ok)));
        assert!(!rule.admits(Some(&RequestScope { port: 8443, ..ok })));
        assert!(!rule.admits(Some(&RequestScope {
            method: "POST",
            ..ok
        })));
        assert!(!rule.admits(Some(&RequestScope {
            method: "get",
            ..ok
        })));
        assert!(!rule.admits(None));
        assert!(HostRule::any_request(HostPattern::Any).admits(None));
    }
}
