//! Where `credentials set` / `vm add --credential` get a credential's source.
//!
//! Two kinds: a *reference* the broker resolves itself (`--env VAR`, `--file PATH`: stored as
//! the reference, re-read on restart), or a *value* this CLI reads and sends over the 0600
//! control socket (`--value-from-env`, `--value-from-file`, `--value-from-credential` for
//! systemd's `$CREDENTIALS_DIRECTORY`, `--value-stdin`); the broker keeps such a value in a
//! 0600 file under its state dir. Values are never taken from the command line (ps shows it).

use std::io::Read;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::Args;
use serde_json::{json, Value};

/// Exactly one source for a credential.
#[derive(Debug, Clone, Args)]
#[group(required = true, multiple = false)]
pub struct SourceArgs {
    /// Broker-side: the broker reads this variable of *its own* environment.
    #[arg(long, value_name = "VAR")]
    pub env: Option<String>,
    /// Broker-side: the broker reads this file (relative: under the broker's
    /// $CREDENTIALS_DIRECTORY).
    #[arg(long, value_name = "PATH")]
    pub file: Option<PathBuf>,
    /// Read the value now from this CLI's environment variable VAR and send it.
    #[arg(long, value_name = "VAR")]
    pub value_from_env: Option<String>,
    /// Read the value now from a file (one trailing newline is dropped) and send it.
    #[arg(long, value_name = "PATH")]
    pub value_from_file: Option<PathBuf>,
    /// Read the value now from $CREDENTIALS_DIRECTORY/NAME (systemd LoadCredential=).
    #[arg(long, value_name = "NAME")]
    pub value_from_credential: Option<String>,
    /// Read the value from standard input (one trailing newline is dropped).
    #[arg(long)]
    pub value_stdin: bool,
}

fn trim_newline(mut s: String) -> String {
    if s.ends_with("\r\n") {
        s.truncate(s.len() - 2);
    } else if s.ends_with('\n') {
        s.truncate(s.len() - 1);
    }
    s
}

fn read_file(p: &std::path::Path) -> anyhow::Result<String> {
    let s = std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display()))?;
    Ok(trim_newline(s))
}

impl SourceArgs {
    /// The `source` JSON object for the control API.
    pub fn to_source(&self) -> anyhow::Result<Value> {
        if let Some(v) = &self.env {
            return Ok(json!({ "env": v }));
        }
        if let Some(p) = &self.file {
            return Ok(json!({ "file": p }));
        }
        let value = if let Some(var) = &self.value_from_env {
            std::env::var(var).with_context(|| format!("--value-from-env: {var} is not set"))?
        } else if let Some(p) = &self.value_from_file {
            read_file(p)?
        } else if let Some(name) = &self.value_from_credential {
            let dir = std::env::var("CREDENTIALS_DIRECTORY")
                .context("--value-from-credential: $CREDENTIALS_DIRECTORY is not set")?;
            read_file(&PathBuf::from(dir).join(name))?
        } else if self.value_stdin {
            let mut s = String::new();
            std::io::stdin()
                .read_to_string(&mut s)
                .context("reading the value from stdin")?;
            trim_newline(s)
        } else {
            bail!("no credential source given");
        };
        if value.is_empty() {
            bail!("the credential value is empty");
        }
        Ok(json!({ "value": value }))
    }
}
