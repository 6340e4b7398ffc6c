//! Typed messages carried in frames.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What a stream is for; the first frame of every stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamHeader {
    pub kind: StreamKind,
}

/// The kinds of guest->host stream.
///
/// New kinds are only ever appended: the encoding of the existing ones stays byte-identical,
/// so an older agent keeps working against a newer broker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum StreamKind {
    /// Agent <-> broker control conversation (hello, config, exit status).
    Control,
    /// An HTTP proxy connection accepted by the agent's local listener, tunnelled as-is.
    Proxy,
    /// A guest TCP connection captured transparently by the agent, with its original
    /// destination. The broker answers one [`TcpReply`] frame, then (if open) the stream is a
    /// byte tunnel in [`crate::tunnel`] chunks.
    Tcp(TcpTarget),
    /// A DNS question the agent's resolver received. The broker answers one [`DnsReply`]
    /// frame and closes the stream.
    Dns(DnsQuestion),
}

/// Where a captured TCP connection was going.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpTarget {
    /// The name the guest resolved through the agent's DNS (when the destination was one of
    /// the agent's synthetic addresses), else the destination IP literal.
    pub host: String,
    pub port: u16,
}

/// The broker's answer on a [`StreamKind::Tcp`] stream, before any tunnel byte.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TcpReply {
    /// The destination is allowed; tunnel chunks follow.
    Open,
    /// Refused by policy or unreachable; the stream closes. The reason is for the guest's log.
    Refused { reason: String },
}

/// Record types the agent's resolver asks about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DnsRecordType {
    A,
    Aaaa,
    /// Any other type (MX, TXT, ...): decided like an address question, answered without data.
    Other(u16),
}

/// One name the guest looked up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DnsQuestion {
    /// Lower-case name without the trailing dot.
    pub name: String,
    pub record_type: DnsRecordType,
}

/// The broker's decision on a name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DnsReply {
    /// The policy can reach this name: the agent answers with a synthetic address that maps
    /// back to it, valid for `ttl_secs`.
    Allowed { ttl_secs: u32 },
    /// The policy can never reach this name: NXDOMAIN.
    Denied { reason: String },
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
    /// The configuration, for an agent whose hello asked for protocol 2 or newer (appended:
    /// a v1 agent is never sent it). See [`crate::negotiate`].
    Negotiated(NegotiatedConfig),
}

/// A configuration in the negotiated protocol version: a self-describing JSON object, so
/// fields can be added without a version bump (a reader ignores fields it does not know and
/// defaults the optional ones it misses).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NegotiatedConfig {
    /// The version the broker chose: the newest both sides speak.
    pub protocol_version: u8,
    /// JSON of [`crate::negotiate::GuestSettings`].
    pub config_json: String,
}

/// What the guest needs to route its egress through the broker.
///
/// Holds placeholders only: real credential values never leave the host.
///
/// Its v1 encoding (positional, inside [`BrokerMessage::Config`]) is frozen: deployed agents
/// decode exactly these five fields in this order. New fields go into
/// [`crate::negotiate::GuestSettings`] instead, which is sent as JSON from protocol 2 on.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
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
