//! Sluice host broker: serves guest streams arriving over (hybrid) vsock, applies egress
//! policy, intercepts TLS with a per-VM CA and substitutes credential placeholders only where
//! every gate holds. See host-broker/README.md and docs/architecture.md.
//!
//! Two layers (docs/architecture.md, "Layers"): the core (everything an embedder such as a
//! VM manager needs: [`Broker`], policy, secrets, TLS, proxy, transports, events) and, behind
//! the default `daemon` feature, the daemon layer on top of it (control API, persistence,
//! serve config; the `host-broker` binary). The core never uses the daemon layer. Embed with
//! `default-features = false`.
#![forbid(unsafe_code)]

// The core.
pub mod audit;
mod broker;
mod control;
mod dispatch;
mod dns;
mod fair;
mod fsutil;
mod idle;
mod inbox;
pub mod metrics;
mod outcome;
pub mod policy;
pub mod proxy;
mod refresher;
pub mod secrets;
mod state;
pub mod tls;
pub mod transport;
pub mod upstream;
mod vm_runtime;

// The daemon layer, on top of the core. `host_broker::{api, config, persist}` stay valid
// paths (the binary and the daemon tests use them).
#[cfg(feature = "daemon")]
pub mod daemon;
#[cfg(feature = "daemon")]
pub use daemon::{api, config, persist};

pub use audit::{AuditRecord, Outcome};
pub use broker::{Broker, BrokerConfig, BrokerError, BrokerEvent, VmInfo, VmSpec, VmTransport};
pub use control::GUEST_PROXY_PORT;
pub use dispatch::HEADER_TIMEOUT;
pub use metrics::VmStats;
pub use transport::unix::SocketAccess;
pub use vm_runtime::VmPlacement;
