//! The `host-broker serve --config FILE` TOML file.
//!
//! ```toml
//! state_dir = "/var/lib/sluice"
//! vsock_port = 7070                 # optional, default 7070
//! upstream_extra_roots = []         # optional: PEM files trusted for upstreams
//! control_socket = "/run/sluice/control.sock"  # optional, this default
//! allowed_uids = [0, 990]           # optional, default: the daemon's uid and 0
//! metrics_listen = "127.0.0.1:9464" # optional: also serve /metrics over TCP
//! listener_mode = "0660"            # optional: mode of every VM's `<socket>_<port>` listener
//! listener_group = "kvm"            # optional: its group (name or gid), e.g. the VMM's
//! event_interval = 61               # optional: task polls between I/O driver polls
//! fair_scheduling = false           # optional: per-VM CPU fairness (fair.rs)
//!
//! [[vms]]
//! id = "vm1"
//! hybrid_socket = "/run/sluice/vm1.vsock"   # or: cid = 3
//! policy_file = "/etc/sluice/vm1.json"      # or an inline [vms.policy] table
//! ```
//! Relative paths are resolved against the config file's directory.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::policy::Policy;
use crate::{BrokerConfig, VmSpec, VmTransport};

/// Errors reading the serve config; each names the file and field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {field}: {message}")]
    Field {
        path: PathBuf,
        field: String,
        message: String,
    },
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    state_dir: Option<PathBuf>,
    vsock_port: Option<u32>,
    #[serde(default)]
    upstream_extra_roots: Vec<PathBuf>,
    control_socket: Option<PathBuf>,
    allowed_uids: Option<Vec<u32>>,
    metrics_listen: Option<std::net::SocketAddr>,
    listener_mode: Option<String>,
    listener_group: Option<String>,
    event_interval: Option<u32>,
    #[serde(default)]
    fair_scheduling: bool,
    vm_threads: Option<bool>,
    #[serde(default)]
    vms: Vec<RawVm>,
}

/// tokio's own `event_interval` (the default here too).
pub const DEFAULT_EVENT_INTERVAL: u32 = crate::vm_runtime::DEFAULT_EVENT_INTERVAL;

/// How the daemon runs its tasks (docs/operations.md, "Sharing the broker between VMs").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeConfig {
    /// Task polls between two polls of the runtime's I/O driver
    /// (`tokio::runtime::Builder::event_interval`). While one VM keeps every worker busy, a
    /// second VM's readiness is only seen at the next driver poll: lower values cut its
    /// latency under such a flood and cost a single VM some throughput and p99.
    pub event_interval: u32,
    /// Per-VM CPU fairness (`Broker::set_fair_scheduling`).
    pub fair_scheduling: bool,
    /// Each VM's streams on a thread of its own (default) rather than on the daemon's
    /// runtime (`Broker::set_vm_placement`); its runtime uses `event_interval` too.
    pub vm_threads: bool,
}

impl RuntimeConfig {
    /// Where the daemon serves VM streams.
    pub fn placement(&self) -> crate::VmPlacement {
        if self.vm_threads {
            crate::VmPlacement::OwnThread {
                event_interval: self.event_interval,
            }
        } else {
            crate::VmPlacement::Shared
        }
    }
}

/// Where the control API listens by default.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/sluice/control.sock";

/// The daemon's control API settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ControlConfig {
    /// Unix socket of the control API (created 0600).
    pub socket: PathBuf,
    /// Peer uids allowed on the socket (SO_PEERCRED).
    pub allowed_uids: Vec<u32>,
    /// Optional TCP address serving `/metrics` only.
    pub metrics_listen: Option<std::net::SocketAddr>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVm {
    id: Option<String>,
    hybrid_socket: Option<PathBuf>,
    cid: Option<u32>,
    policy_file: Option<PathBuf>,
    policy: Option<toml::Value>,
}

/// A validated serve config.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub broker: BrokerConfig,
    pub control: ControlConfig,
    pub runtime: RuntimeConfig,
    /// VMs declared in the file (not persisted: the file is their source of truth).
    pub vms: Vec<VmSpec>,
}

impl ServeConfig {
    pub fn from_path(path: &Path) -> Result<ServeConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        Self::from_toml_str(&text, path, base)
    }

    /// Parses `text` (named `path` in errors), resolving relative paths against `base`.
    pub fn from_toml_str(text: &str, path: &Path, base: &Path) -> Result<ServeConfig, ConfigError> {
        // Never `e.to_string()`: toml's Display quotes the offending source line, which can
        // be an inline credential value of a [vms.policy] table.
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            message: crate::policy::toml_message(text, &e),
        })?;
        let field = |field: String, message: &str| ConfigError::Field {
            path: path.to_path_buf(),
            field,
            message: message.to_owned(),
        };
        let abs = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let state_dir = raw
            .state_dir
            .ok_or_else(|| field("state_dir".into(), "required"))?;
        let vsock_port = raw.vsock_port.unwrap_or(shared_proto::DEFAULT_VSOCK_PORT);
        if vsock_port == 0 {
            return Err(field("vsock_port".into(), "must be 1..=4294967295"));
        }
        let event_interval = raw.event_interval.unwrap_or(DEFAULT_EVENT_INTERVAL);
        if event_interval == 0 {
            return Err(field("event_interval".into(), "must be at least 1"));
        }
        let listener_access = crate::SocketAccess {
            mode: match raw.listener_mode.as_deref() {
                None => crate::SocketAccess::default().mode,
                Some(m) => parse_mode(m).ok_or_else(|| {
                    field(
                        "listener_mode".into(),
                        "an octal mode string such as \"0660\" (at most 0777)",
                    )
                })?,
            },
            gid: match raw.listener_group.as_deref() {
                None => None,
                Some(g) => Some(resolve_group(g).map_err(|m| field("listener_group".into(), &m))?),
            },
        };
        let mut vms = Vec::new();
        let mut seen = std::collections::BTreeSet::new();
        for (i, vm) in raw.vms.into_iter().enumerate() {
            let at = |f: &str| format!("vms[{i}].{f}");
            let id = vm.id.ok_or_else(|| field(at("id"), "required"))?;
            if !seen.insert(id.clone()) {
                return Err(field(at("id"), &format!("duplicate id {id:?}")));
            }
            let transport = match (vm.hybrid_socket, vm.cid) {
                (Some(p), None) => VmTransport::HybridSocket(abs(p)),
                (None, Some(c)) if c > 2 => VmTransport::Cid(c),
                (None, Some(_)) => return Err(field(at("cid"), "guest CIDs start at 3")),
                _ => {
                    return Err(field(
                        at("hybrid_socket"),
                        "exactly one of hybrid_socket or cid is required",
                    ))
                }
            };
            let policy = match (vm.policy_file, vm.policy) {
                (Some(f), None) => Policy::from_path(&abs(f))
                    .map_err(|e| field(at("policy_file"), &e.to_string()))?,
                (None, Some(v)) => {
                    let s = toml::to_string(&v).map_err(|e| field(at("policy"), &e.to_string()))?;
                    Policy::from_toml_str(&s).map_err(|e| field(at("policy"), &e.to_string()))?
                }
                _ => {
                    return Err(field(
                        at("policy_file"),
                        "exactly one of policy_file or an inline policy table is required",
                    ))
                }
            };
            vms.push(VmSpec {
                id,
                transport,
                policy,
            });
        }
        let mut allowed_uids = raw.allowed_uids.unwrap_or_else(|| {
            let me = nix::unistd::getuid().as_raw();
            if me == 0 {
                vec![0]
            } else {
                vec![me, 0]
            }
        });
        allowed_uids.dedup();
        Ok(ServeConfig {
            control: ControlConfig {
                socket: abs(raw
                    .control_socket
                    .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET))),
                allowed_uids,
                metrics_listen: raw.metrics_listen,
            },
            broker: BrokerConfig {
                state_dir: abs(state_dir),
                vsock_port,
                upstream_extra_roots: raw.upstream_extra_roots.into_iter().map(abs).collect(),
                listener_access,
            },
            runtime: RuntimeConfig {
                event_interval,
                fair_scheduling: raw.fair_scheduling,
                vm_threads: raw.vm_threads.unwrap_or(true),
            },
            vms,
        })
    }
}

/// `"0660"` / `"660"` -> 0o660; nothing above 0o777.
fn parse_mode(s: &str) -> Option<u32> {
    let m = u32::from_str_radix(s.trim_start_matches("0o"), 8).ok()?;
    (m <= 0o777).then_some(m)
}

/// A group name or numeric gid -> gid.
fn resolve_group(g: &str) -> Result<u32, String> {
    if let Ok(gid) = g.parse::<u32>() {
        return Ok(gid);
    }
    match nix::unistd::Group::from_name(g) {
        Ok(Some(group)) => Ok(group.gid.as_raw()),
        Ok(None) => Err(format!("no group named {g:?} on this host")),
        Err(e) => Err(format!("looking up group {g:?}: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_settings_default_to_tokios_and_are_checked() {
        let d = parse("state_dir = \"/s\"").unwrap();
        assert_eq!(
            d.runtime,
            RuntimeConfig {
                event_interval: 61,
                fair_scheduling: false,
                vm_threads: true
            }
        );
        let c = parse("state_dir = \"/s\"\nevent_interval = 2\nfair_scheduling = true").unwrap();
        assert_eq!(c.runtime.event_interval, 2);
        assert!(c.runtime.fair_scheduling);
        assert_eq!(
            c.runtime.placement(),
            crate::VmPlacement::OwnThread { event_interval: 2 }
        );
        let shared = parse("state_dir = \"/s\"\nvm_threads = false").unwrap();
        assert_eq!(shared.runtime.placement(), crate::VmPlacement::Shared);
        let e = parse("state_dir = \"/s\"\nevent_interval = 0")
            .unwrap_err()
            .to_string();
        assert!(e.contains("event_interval: must be at least 1"), "{e}");
    }

    #[test]
    fn listener_mode_and_group_parsed_and_checked() {
        let c =
            parse("state_dir = \"/s\"\nlistener_mode = \"0640\"\nlistener_group = \"0\"").unwrap();
        assert_eq!(c.broker.listener_access.mode, 0o640);
        assert_eq!(c.broker.listener_access.gid, Some(0));
        let d = parse("state_dir = \"/s\"").unwrap();
        assert_eq!(d.broker.listener_access, crate::SocketAccess::default());
        assert_eq!(d.broker.listener_access.mode, 0o660);
        let e = parse("state_dir = \"/s\"\nlistener_mode = \"1777\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listener_mode"), "{e}");
        let e = parse("state_dir = \"/s\"\nlistener_mode = \"rw\"")
            .unwrap_err()
            .to_string();
        assert!(e.contains("listener_mode"), "{e}");
        let e = parse("state_dir = \"/s\"\nlistener_group = \"no-such-group-sluice\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("listener_group") && e.contains("no group named"),
            "{e}"
        );
    }

    fn parse(s: &str) -> Result<ServeConfig, ConfigError> {
        ServeConfig::from_toml_str(s, Path::new("t.toml"), Path::new("/etc/sluice"))
    }

    #[test]
    fn missing_state_dir_named() {
        let e = parse("").unwrap_err().to_string();
        assert!(e.contains("state_dir"), "{e}");
    }

    #[test]
    fn vm_without_transport_named() {
        let e = parse("state_dir = \"/s\"\n[[vms]]\nid = \"a\"\npolicy_file = \"p.json\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("vms[0].hybrid_socket"), "{e}");
    }

    #[test]
    fn unknown_field_rejected() {
        let e = parse("state_dir = \"/s\"\nbogus = 1\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("bogus"), "{e}");
    }

    #[test]
    fn toml_syntax_errors_never_quote_the_offending_line() {
        const CANARY: &str = "CANARY-5c1e-inline-secret";
        for bad in [
            // Unterminated string, bare garbage after a value, a broken table header.
            format!("state_dir = \"/s\"\n[[vms]]\nid = \"a\"\n[vms.policy.credentials.K.source]\nvalue = \"{CANARY}\n"),
            format!("state_dir = \"/s\"\n[[vms]]\nid = \"a\"\n[vms.policy.credentials.K.source]\nvalue = \"{CANARY}\" x\n"),
            format!("state_dir = \"/s\"\n[vms.policy {CANARY}\n"),
        ] {
            let e = parse(&bad).unwrap_err().to_string();
            assert!(!e.contains(CANARY), "the offending line was printed");
            assert!(e.starts_with("t.toml: "), "{e}");
            assert!(e.contains(" at line "), "{e}");
        }
    }

    #[test]
    fn relative_paths_resolved() {
        let c = parse("state_dir = \"state\"\n").unwrap();
        assert_eq!(c.broker.state_dir, PathBuf::from("/etc/sluice/state"));
        assert_eq!(c.broker.vsock_port, 7070);
        assert_eq!(c.control.socket, PathBuf::from(DEFAULT_CONTROL_SOCKET));
        assert!(c.control.allowed_uids.contains(&0));
    }

    #[test]
    fn control_settings_parsed() {
        let c = parse(
            "state_dir = \"/s\"\ncontrol_socket = \"ctl.sock\"\nallowed_uids = [1000]\nmetrics_listen = \"127.0.0.1:9464\"\n",
        )
        .unwrap();
        assert_eq!(c.control.socket, PathBuf::from("/etc/sluice/ctl.sock"));
        assert_eq!(c.control.allowed_uids, vec![1000]);
        assert_eq!(
            c.control.metrics_listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
    }
}
