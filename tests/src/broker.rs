//! The real host broker, run in-process through its library API, with the test policy.
//!
//! Policy (see [`test_policy_json`]): egress default deny; `api.example.com` and
//! `other.example.com` on 443 allowed and resolved to the loopback upstream, whose exact
//! address is allowed by an explicit CIDR rule (private networks stay denied otherwise);
//! `denied.example.com` denied; `db.example.com` on raw TCP port 5432 resolved to the
//! upstream's echo service; credential `API_KEY` (placeholder `mock-API_KEY`) only for
//! `api.example.com`, its real value a fresh random canary per test.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use host_broker::{Broker, BrokerConfig, BrokerEvent, VmSpec, VmTransport};
use tokio::sync::broadcast;
use tokio::time::Instant;

use crate::error::HarnessError;

/// Credential name and placeholder used by every test.
pub const CREDENTIAL: &str = "API_KEY";
pub const PLACEHOLDER: &str = "mock-API_KEY";
/// The raw TCP port of `db.example.com` (relayed as bytes, not intercepted).
pub const RAW_PORT: u16 = 5432;
/// The vsock port the broker listens on (the agent's default).
pub const VSOCK_PORT: u32 = shared_proto::DEFAULT_VSOCK_PORT;

/// A fresh random secret value: if it shows up anywhere it must not, the test catches it.
/// (Seeded from the OS through std's `RandomState`; unpredictability is not needed, only
/// uniqueness and zero chance of appearing by accident.)
pub fn canary() -> String {
    let mut out = String::from("sk-canary-");
    for _ in 0..2 {
        let mut h = RandomState::new().build_hasher();
        h.write_u128(
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default(),
        );
        out.push_str(&format!("{:016x}", h.finish()));
    }
    out
}

/// The test policy as JSON, for an upstream at `upstream` and the real value `canary`.
pub fn test_policy_json(upstream: SocketAddr, echo: SocketAddr, canary: &str) -> String {
    serde_json::json!({
        "egress": {
            "default": "deny",
            "allow": [
                {"hosts": ["api.example.com", "other.example.com"], "ports": [443]},
                {"hosts": ["db.example.com"], "ports": [RAW_PORT]},
                // Ports in rules are the requested port (443), not the override's.
                {"cidrs": [format!("{}/32", upstream.ip())], "ports": [443, RAW_PORT]}
            ],
            "deny": [{"hosts": ["denied.example.com"]}],
            "private_networks": "deny"
        },
        "raw_tcp_ports": [RAW_PORT],
        "credentials": {
            CREDENTIAL: {
                "source": {"value": canary},
                "hosts": ["api.example.com"],
                "placeholder": PLACEHOLDER
            }
        },
        "resolve": {
            "api.example.com": upstream.to_string(),
            "other.example.com": upstream.to_string(),
            "db.example.com": echo.to_string()
        }
    })
    .to_string()
}

/// A broker serving one test VM.
#[derive(Debug)]
pub struct TestBroker {
    pub broker: Broker,
    events: broadcast::Receiver<BrokerEvent>,
    _state: tempfile::TempDir,
}

impl TestBroker {
    /// Starts a broker trusting `upstream_ca` and registers VM `vm_id` on `vsock_uds`.
    pub async fn start(
        vm_id: &str,
        vsock_uds: &Path,
        upstream: SocketAddr,
        echo: SocketAddr,
        upstream_ca: &Path,
        canary: &str,
    ) -> Result<TestBroker, HarnessError> {
        let state = tempfile::tempdir().map_err(|e| HarnessError::file("tempdir", e))?;
        let broker = Broker::start(BrokerConfig {
            state_dir: state.path().to_path_buf(),
            vsock_port: VSOCK_PORT,
            upstream_extra_roots: vec![upstream_ca.to_path_buf()],
            listener_access: Default::default(),
        })
        .await
        .map_err(|e| HarnessError::Build(format!("starting the broker: {e}")))?;
        let events = broker.subscribe();
        let policy =
            host_broker::policy::Policy::from_json_str(&test_policy_json(upstream, echo, canary))
                .map_err(|e| HarnessError::Build(format!("test policy: {e}")))?;
        broker
            .register_vm(VmSpec {
                id: vm_id.to_string(),
                transport: VmTransport::HybridSocket(vsock_uds.to_path_buf()),
                policy,
            })
            .await
            .map_err(|e| HarnessError::Build(format!("registering VM {vm_id}: {e}")))?;
        Ok(TestBroker {
            broker,
            events,
            _state: state,
        })
    }

    /// Every event received and not yet consumed, without waiting.
    pub fn drain_events(&mut self) -> Vec<BrokerEvent> {
        let mut out = Vec::new();
        loop {
            match self.events.try_recv() {
                Ok(ev) => out.push(ev),
                Err(broadcast::error::TryRecvError::Lagged(_)) => continue,
                Err(_) => return out,
            }
        }
    }

    /// Waits for the first event `pick` accepts; other events are skipped.
    pub async fn wait_event<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut pick: impl FnMut(&BrokerEvent) -> Option<T>,
    ) -> Result<T, HarnessError> {
        let deadline = Instant::now() + timeout;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Err(_) => {
                    return Err(HarnessError::Timeout {
                        what: format!("broker event: {what}"),
                        timeout,
                    })
                }
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => continue,
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    return Err(HarnessError::Exited("broker event channel closed".into()))
                }
                Ok(Ok(ev)) => {
                    if let Some(v) = pick(&ev) {
                        return Ok(v);
                    }
                }
            }
        }
    }
}
