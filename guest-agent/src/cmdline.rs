//! Typed settings from the kernel command line (`sluice.*` keys, argv after `--`).
//!
//! Parsing works on a string so it is unit-testable; `/proc/cmdline` is read by the caller.
//! Keys and defaults are fixed by docs/architecture.md.

use std::time::Duration;

/// How the agent brings the guest up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Stay PID 1 and run one workload.
    Exec,
    /// Prepare the root and hand over to its init (systemd).
    Systemd,
}

/// Agent settings with defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    pub mode: Mode,
    pub port: u32,
    pub root: Option<String>,
    pub rootfstype: String,
    pub read_only: bool,
    pub init: String,
    /// Workload argv for exec mode (`sluice.exec` first, then the words after `--`).
    pub argv: Vec<String>,
    pub timeout: Duration,
    pub log: tracing::Level,
    /// Transparent capture of all TCP and DNS (`sluice.capture=on|off`, default on).
    pub capture: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            mode: Mode::Exec,
            port: shared_proto::DEFAULT_VSOCK_PORT,
            root: None,
            rootfstype: "ext4".into(),
            read_only: false,
            init: "/sbin/init".into(),
            argv: Vec::new(),
            timeout: Duration::from_secs(30),
            log: tracing::Level::INFO,
            capture: true,
        }
    }
}

/// A bad `sluice.*` setting; always names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CmdlineError {
    #[error("unknown setting `{0}`")]
    UnknownKey(String),
    #[error("`{key}`: bad value `{value}`: {expected}")]
    BadValue {
        key: &'static str,
        value: String,
        expected: &'static str,
    },
    #[error("`{0}` is required: {1}")]
    Missing(&'static str, &'static str),
    #[error("unterminated quote on the kernel command line")]
    UnterminatedQuote,
}

/// Splits a kernel command line into words, honouring double quotes like the kernel does
/// (`key="a b"` is one word, the quotes removed).
fn split_words(line: &str) -> Result<Vec<String>, CmdlineError> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut in_quote = false;
    for c in line.chars() {
        match c {
            '"' => {
                in_quote = !in_quote;
                in_word = true;
            }
            c if c.is_whitespace() && !in_quote => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_quote {
        return Err(CmdlineError::UnterminatedQuote);
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

fn bad(key: &'static str, value: &str, expected: &'static str) -> CmdlineError {
    CmdlineError::BadValue {
        key,
        value: value.to_string(),
        expected,
    }
}

/// Parses a kernel command line. Keys other than `sluice.*` are ignored.
pub fn parse(line: &str) -> Result<Settings, CmdlineError> {
    let mut s = Settings::default();
    let mut exec: Option<String> = None;
    let mut rest: Vec<String> = Vec::new();
    let words = split_words(line)?;
    let mut iter = words.into_iter();
    for word in iter.by_ref() {
        if word == "--" {
            break;
        }
        let Some(key) = word.strip_prefix("sluice.") else {
            continue;
        };
        let (key, value) = key.split_once('=').unwrap_or((key, ""));
        match key {
            "mode" => {
                s.mode = match value {
                    "exec" => Mode::Exec,
                    "systemd" => Mode::Systemd,
                    _ => return Err(bad("sluice.mode", value, "expected exec or systemd")),
                }
            }
            "port" => {
                s.port = value
                    .parse::<u32>()
                    .ok()
                    .filter(|p| *p > 0)
                    .ok_or_else(|| bad("sluice.port", value, "expected a port number 1..2^32"))?
            }
            "root" => {
                if !value.starts_with('/') {
                    return Err(bad(
                        "sluice.root",
                        value,
                        "expected a device path like /dev/vda",
                    ));
                }
                s.root = Some(value.to_string())
            }
            "rootfstype" => {
                if value.is_empty() || !value.chars().all(|c| c.is_ascii_alphanumeric()) {
                    return Err(bad(
                        "sluice.rootfstype",
                        value,
                        "expected a filesystem name",
                    ));
                }
                s.rootfstype = value.to_string()
            }
            "rootflags" => {
                s.read_only = match value {
                    "rw" => false,
                    "ro" => true,
                    _ => return Err(bad("sluice.rootflags", value, "expected rw or ro")),
                }
            }
            "init" => {
                if !value.starts_with('/') {
                    return Err(bad("sluice.init", value, "expected an absolute path"));
                }
                s.init = value.to_string()
            }
            "exec" => {
                if value.is_empty() {
                    return Err(bad("sluice.exec", value, "expected a program path"));
                }
                exec = Some(value.to_string())
            }
            "timeout" => {
                s.timeout = value
                    .parse::<u64>()
                    .ok()
                    .filter(|t| (1..=3600).contains(t))
                    .map(Duration::from_secs)
                    .ok_or_else(|| bad("sluice.timeout", value, "expected seconds, 1..=3600"))?
            }
            "capture" => {
                s.capture = match value {
                    "on" => true,
                    "off" => false,
                    _ => return Err(bad("sluice.capture", value, "expected on or off")),
                }
            }
            "log" => {
                s.log = match value {
                    "error" => tracing::Level::ERROR,
                    "warn" => tracing::Level::WARN,
                    "info" => tracing::Level::INFO,
                    "debug" => tracing::Level::DEBUG,
                    "trace" => tracing::Level::TRACE,
                    _ => {
                        return Err(bad(
                            "sluice.log",
                            value,
                            "expected error|warn|info|debug|trace",
                        ))
                    }
                }
            }
            _ => return Err(CmdlineError::UnknownKey(format!("sluice.{key}"))),
        }
    }
    rest.extend(iter);
    s.argv = exec.into_iter().chain(rest).collect();
    match s.mode {
        Mode::Exec if s.argv.is_empty() => {
            return Err(CmdlineError::Missing(
                "sluice.exec",
                "exec mode needs a workload (sluice.exec=PATH or arguments after --)",
            ))
        }
        Mode::Systemd if s.root.is_none() => {
            return Err(CmdlineError::Missing(
                "sluice.root",
                "systemd mode needs the root block device",
            ))
        }
        _ => {}
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_with_a_workload() {
        let s = parse("console=ttyS0 quiet panic=-1 -- /bin/sh -c 'echo'").unwrap();
        assert_eq!(s.mode, Mode::Exec);
        assert_eq!(s.port, 7070);
        assert_eq!(s.timeout, Duration::from_secs(30));
        assert_eq!(s.argv, ["/bin/sh", "-c", "'echo'"]);
        assert_eq!(s.root, None);
        assert_eq!(s.rootfstype, "ext4");
        assert!(!s.read_only);
        assert_eq!(s.init, "/sbin/init");
        assert_eq!(s.log, tracing::Level::INFO);
        assert!(s.capture);
    }

    #[test]
    fn every_key_parses() {
        let s = parse(
            "sluice.mode=systemd sluice.port=5000 sluice.root=/dev/vda sluice.rootfstype=xfs \
             sluice.rootflags=ro sluice.init=/lib/systemd/systemd sluice.timeout=5 sluice.log=debug \
             sluice.capture=off",
        )
        .unwrap();
        assert_eq!(s.mode, Mode::Systemd);
        assert_eq!(s.port, 5000);
        assert_eq!(s.root.as_deref(), Some("/dev/vda"));
        assert_eq!(s.rootfstype, "xfs");
        assert!(s.read_only);
        assert_eq!(s.init, "/lib/systemd/systemd");
        assert_eq!(s.timeout, Duration::from_secs(5));
        assert_eq!(s.log, tracing::Level::DEBUG);
        assert!(!s.capture);
    }

    #[test]
    fn exec_comes_before_trailing_args_and_quotes_group() {
        let s = parse(r#"sluice.exec="/usr/bin/my tool" -- --flag "two words""#).unwrap();
        assert_eq!(s.argv, ["/usr/bin/my tool", "--flag", "two words"]);
    }

    #[test]
    fn sluice_keys_after_dashdash_belong_to_the_workload() {
        let s = parse("sluice.exec=/bin/echo -- sluice.mode=bogus").unwrap();
        assert_eq!(s.argv, ["/bin/echo", "sluice.mode=bogus"]);
    }

    #[test]
    fn bad_settings_name_their_key() {
        for (line, key) in [
            ("sluice.mode=vm -- x", "sluice.mode"),
            ("sluice.port=0 -- x", "sluice.port"),
            ("sluice.port=http -- x", "sluice.port"),
            ("sluice.root=vda -- x", "sluice.root"),
            ("sluice.rootflags=noatime -- x", "sluice.rootflags"),
            ("sluice.timeout=0 -- x", "sluice.timeout"),
            ("sluice.timeout=forever -- x", "sluice.timeout"),
            ("sluice.log=loud -- x", "sluice.log"),
            ("sluice.capture=yes -- x", "sluice.capture"),
            ("sluice.init=sbin/init -- x", "sluice.init"),
            ("sluice.rootfstype=a/b -- x", "sluice.rootfstype"),
            ("sluice.colour=blue -- x", "sluice.colour"),
            ("sluice.mode=exec", "sluice.exec"),
            ("sluice.mode=systemd", "sluice.root"),
        ] {
            let err = parse(line).unwrap_err().to_string();
            assert!(err.contains(key), "{line}: {err}");
        }
        assert_eq!(
            parse(r#"sluice.exec="/bin/x"#).unwrap_err(),
            CmdlineError::UnterminatedQuote
        );
    }
}
