//! Loading a [`CredentialSet`] from a policy and building its automata.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aho_corasick::{AhoCorasick, MatchKind};
use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use zeroize::Zeroizing;

use super::env::EnvSource;
use super::error::CredentialError;
use super::refresh::{FileStamp, Health, Origin, Retired};
use super::scrub::{BaselineScrubber, Finder, Scrubber};
use super::value::SecretValue;
use crate::policy::{
    HostRule, InjectRule, Location, OnViolation, Policy, SecretSource, DEFAULT_REFRESH_GRACE_SECS,
    DEFAULT_SCRUB_RETIRED_SECS, SIGV4_SECRET_ENV, SIGV4_TOKEN_ENV,
};

/// Values shorter than this are accepted but warned about: scrubbing replaces every
/// occurrence, and short values occur by chance in ordinary responses.
const SHORT_VALUE_WARN: usize = 8;

/// One loaded credential.
#[derive(Clone)]
pub(crate) struct Credential {
    pub(crate) name: String,
    pub(crate) placeholder: String,
    pub(crate) value: SecretValue,
    pub(crate) hosts: Vec<HostRule>,
    pub(crate) in_headers: bool,
    /// Substituted in the query string (`in: ["query"]`).
    pub(crate) in_query: bool,
    /// Substituted in request bodies (`in: ["body"]`).
    pub(crate) in_body: bool,
    pub(crate) inject: Vec<InjectRule>,
    pub(crate) on_violation: OnViolation,
    /// How the value is refreshed (file and command sources).
    pub(crate) origin: Origin,
    pub(crate) health: Health,
    /// How long the last good value is used after a failed refresh.
    pub(crate) refresh_grace: Duration,
    /// How long a replaced value stays in the scrubber.
    pub(crate) scrub_retired: Duration,
    /// The secret key and session token of an `aws_sigv4` credential.
    pub(crate) sigv4: Option<SigV4Values>,
}

/// Real values and placeholders of an `aws_sigv4` credential's other halves.
#[derive(Clone)]
pub(crate) struct SigV4Values {
    /// Signs; never sent anywhere.
    pub(crate) secret: SecretValue,
    pub(crate) secret_placeholder: String,
    /// Sent in `x-amz-security-token` (real value, placeholder).
    pub(crate) token: Option<(SecretValue, String)>,
}

impl SigV4Values {
    /// (value, placeholder) pairs scrubbed from responses and detected in requests.
    fn pairs(&self) -> impl Iterator<Item = (&SecretValue, &String)> {
        std::iter::once((&self.secret, &self.secret_placeholder))
            .chain(self.token.as_ref().map(|(v, p)| (v, p)))
    }
}

/// Real values for one policy version plus the automata used to find placeholders and values.
/// Build once per policy version and share it behind an `Arc`.
pub struct CredentialSet {
    pub(crate) creds: Vec<Credential>,
    /// Replaced values still scrubbed from responses until their deadline.
    pub(crate) retired: Vec<Retired>,
    /// One automaton over every placeholder form; `placeholder_owner[pattern] = credential`.
    pub(crate) placeholders: AhoCorasick,
    pub(crate) placeholder_owner: Vec<usize>,
    /// Every real value form, found at any offset (shared with body scrubbers).
    pub(crate) finder: Arc<Finder>,
    /// The same patterns, ASCII case-insensitive: header names arrive lowercased (HTTP/2,
    /// and hyper's HeaderName), so a real value used as a name is found in any letter case.
    pub(crate) values_nocase: AhoCorasick,
    /// Replacement (placeholder in the same encoding) for each value pattern.
    pub(crate) value_replacements: Arc<[Vec<u8>]>,
    /// The same, JSON-escaped (for a value found through its JSON escapes).
    pub(crate) value_json_replacements: Arc<[Vec<u8>]>,
    /// The value patterns themselves, for the scrubber's hold-back decision.
    pub(crate) value_patterns: Arc<[Zeroizing<Vec<u8>>]>,
}

impl std::fmt::Debug for CredentialSet {
    // Never print the automata: they contain the real values.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialSet")
            .field(
                "credentials",
                &self.creds.iter().map(|c| &c.name).collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Loads one source: the value, a description of where it came from (for errors, never the
/// value) and how to refresh it.
fn load_value(
    name: &str,
    source: &SecretSource,
    env: &dyn EnvSource,
) -> Result<(SecretValue, String, Origin), CredentialError> {
    match source {
        SecretSource::Env(var) => {
            let v = env.var(var).ok_or_else(|| CredentialError::MissingEnv {
                credential: name.to_string(),
                var: var.clone(),
            })?;
            Ok((SecretValue::new(v), format!("env {var}"), Origin::Fixed))
        }
        SecretSource::File(p) => {
            let path = file_path(p, env);
            // Stamp first: a change racing the read is seen (again) by the next check.
            let stamp = FileStamp::of(&path);
            let value = read_file(name, &path)?;
            let from = format!("file {}", path.display());
            Ok((value, from, Origin::File { path, stamp }))
        }
        SecretSource::Value(v) => Ok((v.clone(), "inline value".to_string(), Origin::Fixed)),
        SecretSource::Command(c) => {
            let from = format!("command {}", c.program());
            let value = super::command::run(c).map_err(|e| CredentialError::Command {
                credential: name.to_string(),
                reason: e.to_string(),
            })?;
            Ok((value, from, Origin::Command(c.clone())))
        }
    }
}

/// A file's content with exactly one trailing newline removed.
pub(crate) fn read_file(name: &str, path: &Path) -> Result<SecretValue, CredentialError> {
    let shown = path.display().to_string();
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| CredentialError::File {
        credential: name.to_string(),
        path: shown.clone(),
        source,
    })?);
    let mut s = String::from_utf8(bytes.to_vec()).map_err(|e| {
        let mut raw = e.into_bytes();
        zeroize::Zeroize::zeroize(&mut raw);
        CredentialError::NotUtf8 {
            credential: name.to_string(),
            from: format!("file {shown}"),
        }
    })?;
    // Trim exactly one trailing newline (`echo` and most editors add one).
    if s.ends_with("\r\n") {
        s.truncate(s.len() - 2);
    } else if s.ends_with('\n') {
        s.truncate(s.len() - 1);
    }
    Ok(SecretValue::new(s))
}

/// Rejects values that cannot go into an HTTP header; warns about short ones.
pub(crate) fn check_value(
    name: &str,
    value: &SecretValue,
    from: &str,
) -> Result<(), CredentialError> {
    if value.is_empty() {
        return Err(CredentialError::Empty {
            credential: name.to_owned(),
            from: from.to_owned(),
        });
    }
    if value.expose().chars().any(|c| c.is_control() && c != '\t') {
        return Err(CredentialError::ControlChars {
            credential: name.to_owned(),
            from: from.to_owned(),
        });
    }
    if value.len() < SHORT_VALUE_WARN {
        tracing::warn!(
            credential = %name,
            "credential value is shorter than {SHORT_VALUE_WARN} bytes; response \
             scrubbing may replace unrelated text"
        );
    }
    Ok(())
}

/// Relative paths are taken under `$CREDENTIALS_DIRECTORY` (systemd `LoadCredential=`) when it
/// is set, else relative to the working directory.
fn file_path(p: &Path, env: &dyn EnvSource) -> PathBuf {
    if p.is_relative() {
        if let Some(dir) = env.var("CREDENTIALS_DIRECTORY").filter(|d| !d.is_empty()) {
            return Path::new(&dir).join(p);
        }
    }
    p.to_path_buf()
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
pub(crate) fn percent_encode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    for &b in s {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// A percent-encoding with lower-case hex digits (`%2f`: what some encoders emit).
fn lower_hex(s: &[u8]) -> Vec<u8> {
    let mut out = s.to_vec();
    for i in 0..out.len() {
        if out[i] == b'%' {
            for b in out.iter_mut().skip(i + 1).take(2) {
                b.make_ascii_lowercase();
            }
        }
    }
    out
}

/// A placeholder form as it is written inside a JSON string.
fn json_escape(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    for &b in s {
        if b == b'"' || b == b'\\' {
            out.push(b'\\');
        }
        out.push(b);
    }
    out
}

/// The forms of a string searched for: (form of the real value, same form of the placeholder).
fn forms(value: &[u8], placeholder: &[u8]) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut v: Vec<(Vec<u8>, Vec<u8>)> = vec![(value.to_vec(), placeholder.to_vec())];
    for engine in [&STANDARD, &STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
        v.push((
            engine.encode(value).into_bytes(),
            engine.encode(placeholder).into_bytes(),
        ));
    }
    v.extend(super::base64_forms::unaligned_base64_forms(
        value,
        placeholder,
    ));
    let (pv, pp) = (percent_encode(value), percent_encode(placeholder));
    v.push((lower_hex(&pv), lower_hex(&pp)));
    v.push((pv, pp));
    let mut seen = std::collections::BTreeSet::new();
    v.retain(|(f, _)| seen.insert(f.clone()));
    v
}

impl CredentialSet {
    /// Loads every credential's value and builds the automata. Errors name the credential
    /// and the source, never a value. The policy should already be validated.
    pub fn load(policy: &Policy, env: &dyn EnvSource) -> Result<CredentialSet, CredentialError> {
        let mut creds = Vec::with_capacity(policy.credentials.len());
        let now = Instant::now();
        for (name, spec) in &policy.credentials {
            if spec.placeholder.as_deref() == Some(super::placeholders::RANDOM_PLACEHOLDER) {
                // Never use the word itself: the broker resolves it per VM first.
                return Err(CredentialError::Invalid {
                    credential: name.clone(),
                    message: "placeholder \"random\" is drawn per VM when the VM is registered \
                              (resolve_random_placeholders); it cannot be loaded as such"
                        .into(),
                });
            }
            let (value, from, origin) = load_value(name, &spec.source, env)?;
            check_value(name, &value, &from)?;
            let Some(hosts) = spec.hosts.clone() else {
                return Err(CredentialError::Invalid {
                    credential: name.clone(),
                    message: "hosts is required".into(),
                });
            };
            let secs = |v: Option<u64>, d: u64| Duration::from_secs(v.unwrap_or(d));
            let sigv4 = match &spec.aws_sigv4 {
                None => None,
                Some(s) => {
                    let load = |src: &SecretSource| -> Result<SecretValue, CredentialError> {
                        let (v, from, _) = load_value(name, src, env)?;
                        check_value(name, &v, &from)?;
                        Ok(v)
                    };
                    Some(SigV4Values {
                        secret: load(&s.secret_access_key)?,
                        secret_placeholder: format!("mock-{SIGV4_SECRET_ENV}"),
                        token: match &s.session_token {
                            Some(t) => Some((load(t)?, format!("mock-{SIGV4_TOKEN_ENV}"))),
                            None => None,
                        },
                    })
                }
            };
            creds.push(Credential {
                name: name.clone(),
                placeholder: spec.placeholder_for(name),
                value,
                hosts,
                // An aws_sigv4 key id is applied by re-signing (secrets/aws.rs), never by a
                // plain header substitution (that would break the signature).
                in_headers: sigv4.is_none() && spec.locations.contains(&Location::Headers),
                in_query: spec.locations.contains(&Location::Query),
                in_body: spec.locations.contains(&Location::Body),
                inject: spec.inject.clone(),
                on_violation: spec.on_violation,
                origin,
                health: Health::fresh(now),
                refresh_grace: secs(spec.refresh_grace_secs, DEFAULT_REFRESH_GRACE_SECS),
                scrub_retired: secs(spec.scrub_retired_secs, DEFAULT_SCRUB_RETIRED_SECS),
                sigv4,
            });
        }
        Self::build(creds, Vec::new())
    }

    pub(crate) fn build(
        creds: Vec<Credential>,
        retired: Vec<Retired>,
    ) -> Result<CredentialSet, CredentialError> {
        let automaton_err = |e: aho_corasick::BuildError| CredentialError::Invalid {
            credential: "(all)".into(),
            message: format!("cannot build search automaton: {e}"),
        };
        // Placeholders: raw and base64 (alignment 0) forms; percent/JSON forms are found by
        // decoding the header value first (see headers.rs).
        let mut ph_patterns: Vec<Vec<u8>> = Vec::new();
        let mut placeholder_owner = Vec::new();
        for (i, c) in creds.iter().enumerate() {
            let p = c.placeholder.as_bytes();
            ph_patterns.push(p.to_vec());
            placeholder_owner.push(i);
            for engine in [&STANDARD_NO_PAD, &URL_SAFE_NO_PAD] {
                let enc = engine.encode(p).into_bytes();
                if enc != p {
                    ph_patterns.push(enc);
                    placeholder_owner.push(i);
                }
            }
            // The secret/token placeholders of an aws_sigv4 credential: detected (a
            // violation toward a wrong host), never substituted by the header path.
            for (_, ph) in c.sigv4.iter().flat_map(SigV4Values::pairs) {
                ph_patterns.push(ph.as_bytes().to_vec());
                placeholder_owner.push(i);
            }
        }
        let placeholders = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(&ph_patterns)
            .map_err(automaton_err)?;

        let mut value_patterns: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        let mut replacements = Vec::new();
        // Current values first, then retired ones (still scrubbed for their grace period;
        // a retired form equal to a current form is skipped).
        let current = creds.iter().map(|c| (&c.value, &c.placeholder)).chain(
            creds
                .iter()
                .flat_map(|c| c.sigv4.iter().flat_map(SigV4Values::pairs)),
        );
        let old = retired.iter().map(|r| (&r.value, &r.placeholder));
        for (value, placeholder) in current.chain(old) {
            for (form, repl) in forms(value.expose().as_bytes(), placeholder.as_bytes()) {
                if value_patterns.iter().any(|p| **p == form) {
                    continue;
                }
                value_patterns.push(Zeroizing::new(form));
                replacements.push(repl);
            }
        }
        let value_patterns: Arc<[Zeroizing<Vec<u8>>]> = value_patterns.into();
        let finder = Finder::new(value_patterns.clone()).map_err(automaton_err)?;
        let json_replacements: Vec<Vec<u8>> = replacements.iter().map(|r| json_escape(r)).collect();
        let values_nocase = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .ascii_case_insensitive(true)
            .build(value_patterns.iter().map(|p| p.as_slice()))
            .map_err(automaton_err)?;
        Ok(CredentialSet {
            creds,
            retired,
            placeholders,
            placeholder_owner,
            finder: Arc::new(finder),
            values_nocase,
            value_replacements: replacements.into(),
            value_json_replacements: json_replacements.into(),
            value_patterns,
        })
    }

    /// Placeholder env for the guest: NAME -> placeholder (default `mock-<NAME>`).
    pub fn guest_env(&self) -> BTreeMap<String, String> {
        let mut env: BTreeMap<String, String> = self
            .creds
            .iter()
            .map(|c| (c.name.clone(), c.placeholder.clone()))
            .collect();
        for s in self.creds.iter().filter_map(|c| c.sigv4.as_ref()) {
            env.insert(SIGV4_SECRET_ENV.into(), s.secret_placeholder.clone());
            if let Some((_, ph)) = &s.token {
                env.insert(SIGV4_TOKEN_ENV.into(), ph.clone());
            }
        }
        env
    }

    /// Whether the policy has no credentials.
    pub fn is_empty(&self) -> bool {
        self.creds.is_empty()
    }

    /// Whether some credential may be sent to `host` (its `hosts` match): such a host is
    /// always intercepted, also under `intercept: auto`.
    pub fn applies_to_host(&self, host: &str) -> bool {
        self.creds
            .iter()
            .any(|c| c.hosts.iter().any(|p| p.host.matches(host)))
    }

    /// Credential names, in policy order.
    pub fn names(&self) -> Vec<String> {
        self.creds.iter().map(|c| c.name.clone()).collect()
    }

    /// A streaming scrubber for response bodies (shares this set's value finder).
    pub fn scrubber(&self) -> Scrubber {
        Scrubber::new(
            self.finder.clone(),
            self.value_replacements.clone(),
            self.value_json_replacements.clone(),
        )
    }

    /// The scrubber as it was before the sampled-gram finder and JSON escapes: the baseline
    /// of `benches/scrub.rs` only.
    #[doc(hidden)]
    pub fn baseline_scrubber(&self) -> BaselineScrubber {
        let values = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(self.value_patterns.iter().map(|p| p.as_slice()))
            .expect("built before, in values_nocase");
        BaselineScrubber::new(
            Arc::new(values),
            self.value_replacements.clone(),
            self.value_patterns.clone(),
        )
    }

    /// Number of patterns in the placeholder automaton (tests, metrics).
    pub fn placeholder_pattern_count(&self) -> usize {
        self.placeholders.patterns_len()
    }
}
