//! Per-VM statistics and Prometheus metrics, both derived from the audit records (every
//! request/decision passes through `audit::emit`, which feeds [`Metrics::record`]) and from
//! stream starts.
//!
//! Layering: the event sink (`audit`) holds and feeds the metrics, so this module does not
//! know audit records; it counts what `audit` hands it, indexed by the typed [`Outcome`].
//!
//! Label sets are bounded: `vm` (registered VMs only; a VM's series are removed when it is
//! unregistered) and `verdict` (the fixed set [`Outcome::ALL`]). No host, path, query or
//! credential value is ever a label.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::outcome::Outcome;

/// Counters of one VM since it was registered (in this broker process).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmStats {
    /// Proxy streams opened by the guest (one per guest TCP connection).
    pub connections: u64,
    /// Audit records: CONNECTs, requests and refusals.
    pub requests: u64,
    /// Response body bytes sent back to the guest.
    pub bytes: u64,
    /// Credential substitutions in forwarded requests (one per credential per request).
    pub substitutions: u64,
    /// Requests refused by the egress policy (`denied`) or a credential/authority gate
    /// (`blocked`).
    pub violations: u64,
    /// Records per verdict.
    pub verdicts: BTreeMap<String, u64>,
}

#[derive(Debug, Default)]
struct VmCounters {
    connections: AtomicU64,
    requests: AtomicU64,
    bytes: AtomicU64,
    substitutions: AtomicU64,
    violations: AtomicU64,
    verdicts: [AtomicU64; Outcome::ALL.len()],
    series: VmSeries,
}

/// The VM's Prometheus series, each looked up in its family once (on first use, so a series
/// appears only once it has counted something) and then updated through its handle: a
/// family lookup hashes an owned label set, about a fifth of the per-request metrics cost.
/// The handles share their values with the registry; `remove_vm` drops both.
#[derive(Debug, Default)]
struct VmSeries {
    connections: OnceLock<Counter>,
    requests: [OnceLock<Counter>; Outcome::ALL.len()],
    bytes: OnceLock<Counter>,
    substitutions: OnceLock<Counter>,
    latency: OnceLock<Histogram>,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VmLabel {
    vm: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VmVerdictLabel {
    vm: String,
    verdict: &'static str,
}

/// A credential NAME (bounded by the policy; never a value).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VmCredentialLabel {
    vm: String,
    credential: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerdictLabel {
    verdict: &'static str,
}

fn vm_label(vm: &str) -> VmLabel {
    VmLabel { vm: vm.to_owned() }
}

fn latency_histogram() -> Histogram {
    // 1 ms .. ~65 s
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The broker's statistics and metrics registry.
pub struct Metrics {
    registry: Registry,
    per_vm: RwLock<HashMap<String, Arc<VmCounters>>>,
    vms: Gauge,
    requests: Family<VmVerdictLabel, Counter>,
    requests_all: Family<VerdictLabel, Counter>,
    connections: Family<VmLabel, Counter>,
    connections_all: Counter,
    bytes: Family<VmLabel, Counter>,
    bytes_all: Counter,
    substitutions: Family<VmLabel, Counter>,
    substitutions_all: Counter,
    latency: Family<VmLabel, Histogram, fn() -> Histogram>,
    latency_all: Histogram,
    /// `requests_all`'s series per verdict, looked up once.
    requests_all_series: [OnceLock<Counter>; Outcome::ALL.len()],
    refresh_failures: Family<VmCredentialLabel, Counter>,
    credential_stale: Family<VmCredentialLabel, Gauge>,
    credential_unavailable: Family<VmCredentialLabel, Gauge>,
    /// Credential names with series, per VM (removed with the VM).
    credential_series: RwLock<HashMap<String, std::collections::BTreeSet<String>>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("sluice");
        let m = Metrics {
            registry: Registry::default(),
            per_vm: RwLock::default(),
            vms: Gauge::default(),
            requests: Family::default(),
            requests_all: Family::default(),
            connections: Family::default(),
            connections_all: Counter::default(),
            bytes: Family::default(),
            bytes_all: Counter::default(),
            substitutions: Family::default(),
            substitutions_all: Counter::default(),
            latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            latency_all: latency_histogram(),
            requests_all_series: Default::default(),
            refresh_failures: Family::default(),
            credential_stale: Family::default(),
            credential_unavailable: Family::default(),
            credential_series: RwLock::default(),
        };
        registry.register(
            "credential_refresh_failures",
            "Failed refreshes of a file or command credential source, per VM and credential",
            m.refresh_failures.clone(),
        );
        registry.register(
            "credential_stale",
            "1 while a credential serves its last good value after a failed refresh",
            m.credential_stale.clone(),
        );
        registry.register(
            "credential_unavailable",
            "1 when a credential's refresh grace ran out (its placeholder is refused)",
            m.credential_unavailable.clone(),
        );
        registry.register("vms", "Registered VMs", m.vms.clone());
        registry.register(
            "vm_requests",
            "Audit records (requests, CONNECTs, refusals) per VM and verdict",
            m.requests.clone(),
        );
        registry.register(
            "requests",
            "Audit records of all VMs per verdict",
            m.requests_all.clone(),
        );
        registry.register(
            "vm_connections",
            "Proxy streams opened per VM",
            m.connections.clone(),
        );
        registry.register(
            "connections",
            "Proxy streams opened (all VMs)",
            m.connections_all.clone(),
        );
        registry.register(
            "vm_response_bytes",
            "Response body bytes sent to the guest per VM",
            m.bytes.clone(),
        );
        registry.register(
            "response_bytes",
            "Response body bytes sent to guests (all VMs)",
            m.bytes_all.clone(),
        );
        registry.register(
            "vm_substitutions",
            "Credential substitutions per VM",
            m.substitutions.clone(),
        );
        registry.register(
            "substitutions",
            "Credential substitutions (all VMs)",
            m.substitutions_all.clone(),
        );
        registry.register(
            "vm_request_duration_seconds",
            "Forwarded request duration (request forwarded to response body end) per VM",
            m.latency.clone(),
        );
        registry.register(
            "request_duration_seconds",
            "Forwarded request duration (all VMs)",
            m.latency_all.clone(),
        );
        Metrics { registry, ..m }
    }

    /// Starts counting for `vm` (registration).
    pub fn add_vm(&self, vm: &str) {
        let mut map = self.per_vm.write().unwrap_or_else(|e| e.into_inner());
        map.entry(vm.to_owned()).or_default();
        self.vms.set(map.len() as i64);
    }

    /// Forgets `vm` and removes its series (unregistration keeps label sets bounded).
    pub fn remove_vm(&self, vm: &str) {
        let mut map = self.per_vm.write().unwrap_or_else(|e| e.into_inner());
        map.remove(vm);
        self.vms.set(map.len() as i64);
        let l = VmLabel { vm: vm.to_owned() };
        self.connections.remove(&l);
        self.bytes.remove(&l);
        self.substitutions.remove(&l);
        self.latency.remove(&l);
        let names = self
            .credential_series
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(vm)
            .unwrap_or_default();
        for credential in names {
            let l = VmCredentialLabel {
                vm: vm.to_owned(),
                credential,
            };
            self.refresh_failures.remove(&l);
            self.credential_stale.remove(&l);
            self.credential_unavailable.remove(&l);
        }
        for o in Outcome::ALL {
            self.requests.remove(&VmVerdictLabel {
                vm: vm.to_owned(),
                verdict: o.as_str(),
            });
        }
    }

    fn counters(&self, vm: &str) -> Option<Arc<VmCounters>> {
        self.per_vm
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .get(vm)
            .cloned()
    }

    /// A proxy stream of `vm` started.
    pub fn connection(&self, vm: &str) {
        let Some(c) = self.counters(vm) else { return };
        c.connections.fetch_add(1, Ordering::Relaxed);
        c.series
            .connections
            .get_or_init(|| self.connections.get_or_create(&vm_label(vm)).clone())
            .inc();
        self.connections_all.inc();
    }

    /// Counts one audit record of `vm` (its verdict, the number of credentials it names and
    /// the response bytes); `duration` is set for forwarded requests.
    pub fn record(
        &self,
        vm: &str,
        outcome: Outcome,
        credentials: usize,
        bytes: u64,
        duration: Option<Duration>,
    ) {
        let Some(c) = self.counters(vm) else {
            return;
        };
        let verdict = outcome.as_str();
        // A forwarded record names the credentials substituted; any other names violated
        // ones (or none).
        let subs = if outcome == Outcome::Forwarded {
            credentials as u64
        } else {
            0
        };
        c.requests.fetch_add(1, Ordering::Relaxed);
        c.bytes.fetch_add(bytes, Ordering::Relaxed);
        c.substitutions.fetch_add(subs, Ordering::Relaxed);
        if outcome.is_violation() {
            c.violations.fetch_add(1, Ordering::Relaxed);
        }
        c.verdicts[outcome.index()].fetch_add(1, Ordering::Relaxed);
        let s = &c.series;
        s.requests[outcome.index()]
            .get_or_init(|| {
                self.requests
                    .get_or_create(&VmVerdictLabel {
                        vm: vm.to_owned(),
                        verdict,
                    })
                    .clone()
            })
            .inc();
        self.requests_all_series[outcome.index()]
            .get_or_init(|| {
                self.requests_all
                    .get_or_create(&VerdictLabel { verdict })
                    .clone()
            })
            .inc();
        s.bytes
            .get_or_init(|| self.bytes.get_or_create(&vm_label(vm)).clone())
            .inc_by(bytes);
        self.bytes_all.inc_by(bytes);
        if subs > 0 {
            s.substitutions
                .get_or_init(|| self.substitutions.get_or_create(&vm_label(vm)).clone())
                .inc_by(subs);
            self.substitutions_all.inc_by(subs);
        }
        if let Some(d) = duration {
            s.latency
                .get_or_init(|| self.latency.get_or_create(&vm_label(vm)).clone())
                .observe(d.as_secs_f64());
            self.latency_all.observe(d.as_secs_f64());
        }
    }

    /// Credential refresh state of `vm` after a refresh step: `failed` names the attempts
    /// that failed in it; `health` is the state of every credential of the set in force.
    pub fn credential_refresh(
        &self,
        vm: &str,
        failed: &[String],
        health: &[crate::secrets::CredentialHealth],
    ) {
        if self.counters(vm).is_none() {
            return;
        }
        let label = |credential: &str| VmCredentialLabel {
            vm: vm.to_owned(),
            credential: credential.to_owned(),
        };
        let mut series = self
            .credential_series
            .write()
            .unwrap_or_else(|e| e.into_inner());
        let names = series.entry(vm.to_owned()).or_default();
        for name in failed {
            names.insert(name.clone());
            self.refresh_failures.get_or_create(&label(name)).inc();
        }
        for h in health.iter().filter(|h| h.refreshing) {
            names.insert(h.name.clone());
            self.credential_stale
                .get_or_create(&label(&h.name))
                .set(i64::from(h.stale));
            self.credential_unavailable
                .get_or_create(&label(&h.name))
                .set(i64::from(h.unavailable));
        }
    }

    /// The counters of `vm`, if registered.
    pub fn stats(&self, vm: &str) -> Option<VmStats> {
        let c = self.counters(vm)?;
        let verdicts = Outcome::ALL
            .iter()
            .filter_map(|o| {
                let n = c.verdicts[o.index()].load(Ordering::Relaxed);
                (n > 0).then(|| (o.as_str().to_owned(), n))
            })
            .collect();
        Some(VmStats {
            connections: c.connections.load(Ordering::Relaxed),
            requests: c.requests.load(Ordering::Relaxed),
            bytes: c.bytes.load(Ordering::Relaxed),
            substitutions: c.substitutions.load(Ordering::Relaxed),
            violations: c.violations.load(Ordering::Relaxed),
            verdicts,
        })
    }

    /// The Prometheus text exposition (OpenMetrics text format).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_vm_and_removes_series() {
        let m = Metrics::new();
        m.add_vm("a");
        m.connection("a");
        m.record(
            "a",
            Outcome::Forwarded,
            1,
            10,
            Some(Duration::from_millis(3)),
        );
        m.record("a", Outcome::Denied, 0, 5, None);
        m.record("unregistered", Outcome::Forwarded, 0, 5, None);
        let s = m.stats("a").unwrap();
        assert_eq!(
            (
                s.connections,
                s.requests,
                s.bytes,
                s.substitutions,
                s.violations
            ),
            (1, 2, 15, 1, 1)
        );
        let text = m.encode();
        assert!(text.contains("sluice_vm_requests_total{vm=\"a\",verdict=\"denied\"} 1"));
        assert!(!text.contains("secret-path") && !text.contains("api.example.com"));
        assert!(!text.contains("unregistered"));
        m.remove_vm("a");
        assert!(m.stats("a").is_none());
        assert!(!m.encode().contains("vm=\"a\""));
    }
}
