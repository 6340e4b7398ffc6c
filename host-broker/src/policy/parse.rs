//! Parsing from JSON/TOML with field paths in errors (serde_path_to_error), then validation.

use std::path::Path;

use super::error::PolicyError;
use super::model::Policy;

impl Policy {
    /// Parses and validates a JSON policy.
    pub fn from_json_str(s: &str) -> Result<Policy, PolicyError> {
        let mut de = serde_json::Deserializer::from_str(s);
        let policy: Policy =
            serde_path_to_error::deserialize(&mut de).map_err(|e| PolicyError::Parse {
                path: path_or_root(e.path().to_string()),
                message: e.into_inner().to_string(),
            })?;
        de.end().map_err(|e| PolicyError::Parse {
            path: "(root)".into(),
            message: e.to_string(),
        })?;
        policy.validate()?;
        Ok(policy)
    }

    /// Parses and validates a TOML policy.
    pub fn from_toml_str(s: &str) -> Result<Policy, PolicyError> {
        let de = toml::Deserializer::new(s);
        let policy: Policy =
            serde_path_to_error::deserialize(de).map_err(|e| PolicyError::Parse {
                path: path_or_root(e.path().to_string()),
                message: toml_message(s, e.inner()),
            })?;
        policy.validate()?;
        Ok(policy)
    }

    /// Reads a policy file; the format is chosen by extension (`.json` or `.toml`).
    pub fn from_path(p: &Path) -> Result<Policy, PolicyError> {
        let shown = p.display().to_string();
        let ext = p
            .extension()
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        let parse: fn(&str) -> Result<Policy, PolicyError> = match ext.as_deref() {
            Some("json") => Policy::from_json_str,
            Some("toml") => Policy::from_toml_str,
            _ => return Err(PolicyError::UnknownFormat { path: shown }),
        };
        let text = std::fs::read_to_string(p).map_err(|source| PolicyError::Read {
            path: shown.clone(),
            source,
        })?;
        parse(&text).map_err(|e| match e {
            PolicyError::Parse { path, message } => PolicyError::Parse {
                path: format!("{shown}: {path}"),
                message,
            },
            PolicyError::Invalid { path, message } => PolicyError::Invalid {
                path: format!("{shown}: {path}"),
                message,
            },
            other => other,
        })
    }
}

fn path_or_root(p: String) -> String {
    if p.is_empty() || p == "." {
        "(root)".into()
    } else {
        p
    }
}

/// The TOML error message with its position, but without the source snippet that
/// `toml::de::Error`'s Display adds: that line could hold an inline secret value. Also used
/// for the serve config (`daemon::config`), which can hold inline policies.
pub(crate) fn toml_message(src: &str, e: &toml::de::Error) -> String {
    match e.span() {
        Some(span) => {
            let before = &src[..span.start.min(src.len())];
            let line = before.matches('\n').count() + 1;
            let col = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!("{} at line {line} column {col}", e.message().trim_end())
        }
        None => e.message().trim_end().to_string(),
    }
}
