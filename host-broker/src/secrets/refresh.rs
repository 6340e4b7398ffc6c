//! Sources that change: `file` sources are re-read when the file changes, `command` sources
//! run again after their TTL; a failed refresh keeps the last good value for a bounded
//! grace, then the credential is unavailable. Replaced values stay in the scrubber for
//! `scrub_retired_secs` (an upstream may echo the previous value after a rotation).
//!
//! [`CredentialSet::refresh`] is a pure step over one set: it returns a new set when
//! anything changed (a value, a failure state, an expired retired value) and `None`
//! otherwise, so the broker's per-VM refresher (one tick a second) swaps sets only when
//! needed. It blocks (file reads, commands): run it with `spawn_blocking`.
//!
//! File changes are detected by `stat` through symlinks (device, inode, size, mtime,
//! ctime): an in-place write and an atomic rename (`mv new token`, or Kubernetes' swap of the
//! `..data` symlink) both change the stamp.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::error::CredentialError;
use super::set::{check_value, read_file, Credential, CredentialSet};
use super::value::SecretValue;
use crate::policy::CommandSource;

/// A failed command is retried after this long (or its TTL, if shorter).
const COMMAND_RETRY: Duration = Duration::from_secs(5);

/// Replaced values kept per credential name (newest first); older ones are dropped early.
const MAX_RETIRED_PER_CREDENTIAL: usize = 8;

/// How a credential's value is refreshed.
#[derive(Clone)]
pub(crate) enum Origin {
    /// `env` and `value`: only an update of the policy changes them.
    Fixed,
    /// Re-read when the stamp changes (or while failing).
    File {
        path: PathBuf,
        stamp: Option<FileStamp>,
    },
    /// Run again after its TTL.
    Command(CommandSource),
}

/// What `stat` says about a file, through symlinks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    dev: u64,
    ino: u64,
    len: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl FileStamp {
    pub(crate) fn of(path: &std::path::Path) -> Option<FileStamp> {
        let m = std::fs::metadata(path).ok()?;
        Some(FileStamp {
            dev: m.dev(),
            ino: m.ino(),
            len: m.len(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }
}

/// Refresh state of one credential.
#[derive(Debug, Clone)]
pub(crate) struct Health {
    /// When the current value was obtained.
    pub fetched: Instant,
    /// Last refresh attempt (successful or not).
    pub attempted: Instant,
    /// Since when refreshing fails, and why (names the source, never a value).
    pub failing: Option<(Instant, String)>,
    /// The grace after a failure ran out: the value is not used any more.
    pub unavailable: bool,
}

impl Health {
    pub(crate) fn fresh(now: Instant) -> Health {
        Health {
            fetched: now,
            attempted: now,
            failing: None,
            unavailable: false,
        }
    }
}

/// A replaced value, scrubbed from responses until `until`.
#[derive(Clone)]
pub(crate) struct Retired {
    pub name: String,
    pub placeholder: String,
    pub value: SecretValue,
    pub until: Instant,
}

/// The refresh state of one credential, for metrics and status (no value).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CredentialHealth {
    pub name: String,
    /// `file` or `command`: the value can change without a policy update.
    pub refreshing: bool,
    /// The last refresh failed; the last good value is still used (within the grace).
    pub stale: bool,
    /// The grace ran out; requests carrying the placeholder are refused.
    pub unavailable: bool,
}

/// What one refresh step did.
#[derive(Default)]
pub struct RefreshOutcome {
    /// The set to swap in, when anything changed.
    pub set: Option<CredentialSet>,
    /// Credentials whose refresh attempt failed in this step.
    pub failed: Vec<String>,
}

impl std::fmt::Debug for RefreshOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshOutcome")
            .field("changed", &self.set.is_some())
            .field("failed", &self.failed)
            .finish()
    }
}

/// Result of checking one credential's source.
enum Step {
    Unchanged,
    NewValue(SecretValue),
    Failed(String),
}

fn check_source(c: &mut Credential, now: Instant) -> Step {
    match &mut c.origin {
        Origin::Fixed => Step::Unchanged,
        Origin::File { path, stamp } => {
            let now_stamp = FileStamp::of(path);
            if now_stamp == *stamp && now_stamp.is_some() && c.health.failing.is_none() {
                return Step::Unchanged;
            }
            c.health.attempted = now;
            let read = read_file(&c.name, path).and_then(|v| {
                check_value(&c.name, &v, &format!("file {}", path.display())).map(|_| v)
            });
            match read {
                Ok(v) => {
                    *stamp = now_stamp;
                    Step::NewValue(v)
                }
                Err(e) => Step::Failed(e.to_string()),
            }
        }
        Origin::Command(cmd) => {
            let due = match c.health.failing {
                None => now.saturating_duration_since(c.health.fetched) >= cmd.ttl(),
                Some(_) => {
                    now.saturating_duration_since(c.health.attempted)
                        >= COMMAND_RETRY.min(cmd.ttl())
                }
            };
            if !due {
                return Step::Unchanged;
            }
            c.health.attempted = now;
            let from = format!("command {}", cmd.program());
            let run = super::command::run(cmd)
                .map_err(|e| {
                    CredentialError::Command {
                        credential: c.name.clone(),
                        reason: e.to_string(),
                    }
                    .to_string()
                })
                .and_then(|v| {
                    check_value(&c.name, &v, &from)
                        .map(|_| v)
                        .map_err(|e| e.to_string())
                });
            match run {
                Ok(v) => Step::NewValue(v),
                Err(reason) => Step::Failed(reason),
            }
        }
    }
}

impl CredentialSet {
    /// Whether [`CredentialSet::refresh`] can ever change this set (a refreshing source, or
    /// retired values that will expire).
    pub fn has_refresh_work(&self) -> bool {
        !self.retired.is_empty()
            || self
                .creds
                .iter()
                .any(|c| !matches!(c.origin, Origin::Fixed))
    }

    /// One refresh step at time `now` (see the module doc). Blocking.
    pub fn refresh(&self, now: Instant) -> RefreshOutcome {
        let mut out = RefreshOutcome::default();
        if !self.has_refresh_work() {
            return out;
        }
        let mut creds = self.creds.clone();
        let mut changed = false;
        for c in &mut creds {
            let was_failing = c.health.failing.is_some();
            match check_source(c, now) {
                Step::Unchanged => {}
                Step::NewValue(v) => {
                    // Also a same value: the new stamp / fetch time must be kept.
                    changed = true;
                    if was_failing {
                        tracing::info!(credential = %c.name, "credential source works again");
                    }
                    c.health = Health::fresh(now);
                    if v.expose() != c.value.expose() {
                        tracing::info!(credential = %c.name, "credential value rotated (source changed)");
                        c.value = v;
                    }
                }
                Step::Failed(reason) => {
                    changed = true; // the attempt time paces the retries
                    out.failed.push(c.name.clone());
                    if !was_failing {
                        tracing::warn!(
                            credential = %c.name,
                            %reason,
                            grace_secs = c.refresh_grace.as_secs(),
                            "credential refresh failed; the last good value stays in use for the grace period"
                        );
                        c.health.failing = Some((now, reason));
                    }
                }
            }
            if let Some((since, reason)) = &c.health.failing {
                if !c.health.unavailable && now.saturating_duration_since(*since) >= c.refresh_grace
                {
                    tracing::error!(
                        credential = %c.name,
                        %reason,
                        "credential refresh kept failing beyond its grace: the credential is \
                         unavailable until its source works again"
                    );
                    c.health.unavailable = true;
                    changed = true;
                }
            }
        }
        let expired = self.retired.iter().any(|r| r.until <= now);
        if !changed && !expired {
            return out;
        }
        let retired = self.retired_after(Some(&creds), now);
        match Self::build(creds, retired) {
            Ok(set) => out.set = Some(set),
            Err(e) => tracing::error!(error = %e, "credential refresh: cannot rebuild the set"),
        }
        out
    }

    /// This set's retired values still in their grace at `now`, plus (when `next` is given)
    /// this set's current values that `next` no longer holds under the same name.
    fn retired_after(&self, next: Option<&[Credential]>, now: Instant) -> Vec<Retired> {
        let mut out: Vec<Retired> = Vec::new();
        if let Some(next) = next {
            for c in &self.creds {
                let kept = next
                    .iter()
                    .any(|n| n.name == c.name && n.value.expose() == c.value.expose());
                if !kept && !c.scrub_retired.is_zero() {
                    out.push(Retired {
                        name: c.name.clone(),
                        placeholder: c.placeholder.clone(),
                        value: c.value.clone(),
                        until: now + c.scrub_retired,
                    });
                }
            }
        }
        out.extend(self.retired.iter().filter(|r| r.until > now).cloned());
        // A value current again (rotated back) is not "retired"; bound each name's list.
        if let Some(next) = next {
            out.retain(|r| !next.iter().any(|c| c.value.expose() == r.value.expose()));
        }
        let mut per_name: std::collections::BTreeMap<String, usize> = Default::default();
        out.retain(|r| {
            let n = per_name.entry(r.name.clone()).or_default();
            *n += 1;
            *n <= MAX_RETIRED_PER_CREDENTIAL
        });
        out
    }

    /// `self` (a newly loaded set replacing `previous`, e.g. an API rotation) with the
    /// values `previous` held and `self` does not still scrubbed for their grace period.
    pub fn retiring(self, previous: &CredentialSet, now: Instant) -> CredentialSet {
        let retired = previous.retired_after(Some(&self.creds), now);
        if retired.is_empty() {
            return self;
        }
        match Self::build(self.creds.clone(), retired) {
            Ok(s) => s,
            Err(e) => {
                tracing::error!(error = %e, "credential set: cannot rebuild with retired values");
                self
            }
        }
    }

    /// Refresh state of every credential (names only; for metrics).
    pub fn health(&self) -> Vec<CredentialHealth> {
        self.creds
            .iter()
            .map(|c| CredentialHealth {
                name: c.name.clone(),
                refreshing: !matches!(c.origin, Origin::Fixed),
                stale: c.health.failing.is_some() && !c.health.unavailable,
                unavailable: c.health.unavailable,
            })
            .collect()
    }

    /// Number of retired values still scrubbed (tests, status).
    pub fn retired_count(&self) -> usize {
        self.retired.len()
    }
}
