//! Sluice host broker: serves guest streams arriving over (hybrid) vsock, applies egress
//! policy, intercepts TLS with a per-VM CA and substitutes credential placeholders only where
//! every gate holds. See host-broker/README.md and docs/architecture.md.
#![forbid(unsafe_code)]

pub mod api;
pub mod audit;
mod broker;
pub mod config;
mod control;
mod dispatch;
mod dns;
pub mod metrics;
pub mod persist;
pub mod policy;
pub mod proxy;
mod refresher;
pub mod secrets;
mod state;
pub mod tls;
pub mod transport;
pub mod upstream;

pub use audit::AuditRecord;
pub use broker::{Broker, BrokerConfig, BrokerError, BrokerEvent, VmInfo, VmSpec, VmTransport};
pub use control::GUEST_PROXY_PORT;
pub use dispatch::HEADER_TIMEOUT;
pub use metrics::VmStats;
pub use transport::unix::SocketAccess;
