//! Typed messages carried in frames.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a stream is for; the first frame of every stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHeader {
    pub kind: StreamKind,
}

/// The kinds of guest->host stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamKind {
    /// Agent <-> broker control conversation (hello, config, exit status).
    Control,
    /// An HTTP proxy connection accepted by the agent's local listener, tunnelled as-is.
    Proxy,
}

/// How the agent is bringing the guest up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum BootMode {
    /// The agent stays PID 1 and runs one workload.
    Exec,
    /// The agent prepares the root and hands over to systemd.
    Systemd,
    /// The agent runs only its local proxy (e.g. as a systemd unit, or on a host for tests).
    ProxyOnly,
}

/// Messages the agent sends on a control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AgentMessage {
    /// First message: who is asking for a configuration.
    Hello(AgentHello),
    /// The exec-mode workload ended.
    WorkloadExited(WorkloadExit),
    /// The agent failed before or while starting the workload.
    Failed { reason: String },
}

/// The agent's first control message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgentHello {
    pub protocol_version: u8,
    pub agent_version: String,
    pub boot_mode: BootMode,
}

/// How the workload ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkloadExit {
    /// Exit code, when the workload exited normally.
    pub code: Option<i32>,
    /// Signal number, when the workload was killed by a signal.
    pub signal: Option<i32>,
}

/// Messages the broker sends on a control stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum BrokerMessage {
    /// The configuration the guest should apply.
    Config(GuestConfig),
    /// The broker will not serve this guest; the reason is meant for the console.
    Refused { reason: String },
    /// Acknowledges an [`AgentMessage::WorkloadExited`] or [`AgentMessage::Failed`].
    Ack,
}

/// What the guest needs to route its egress through the broker.
///
/// Holds placeholders only: real credential values never leave the host.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct GuestConfig {
    /// The VM id the broker registered this guest under (informational).
    pub vm_id: String,
    /// PEM certificates the guest must trust (the VM's interception CA).
    pub ca_certs_pem: Vec<String>,
    /// Environment to set for the workload: credential placeholders and extra variables.
    /// Proxy and CA-bundle variables are composed by the agent.
    pub env: BTreeMap<String, String>,
    /// Port of the agent's local proxy listener (127.0.0.1 and [::1]).
    pub proxy_port: u16,
    /// Extra hosts the guest should not proxy (added to loopback in NO_PROXY).
    pub no_proxy: Vec<String>,
}
