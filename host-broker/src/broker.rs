//! The embeddable [`Broker`]: register VMs, serve their streams, report events.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use std::collections::BTreeMap;

use tokio::sync::broadcast;
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument;

use crate::audit::EventSink;
use crate::inbox::Inbox;
use crate::metrics::{Metrics, VmStats};
use crate::policy::{CredentialSpec, Policy};
use crate::secrets::{CredentialError, CredentialSet, EnvSource, ProcessEnv};
use crate::state::{Shared, VmEntry, VmState};
use crate::tls::{CaError, LeafCache, SystemClock, VmCa};
use crate::transport::unix::{hybrid_listen_path, HybridListener};
use crate::transport::vsock::CidListener;
use crate::transport::{Origin, TransportError};
use crate::upstream::{self, TrustError};
use crate::vm_runtime::{VmPlacement, VmSlot, VmTask};

/// Broker-wide settings.
#[derive(Debug, Clone)]
pub struct BrokerConfig {
    /// Where per-VM state lives (`<state_dir>/vms/<id>/ca.{key,pem}`).
    pub state_dir: PathBuf,
    /// The vsock port guests connect to (hybrid: we listen on `<socket>_<port>`).
    pub vsock_port: u32,
    /// PEM files with extra upstream trust anchors, added to the host store.
    pub upstream_extra_roots: Vec<PathBuf>,
    /// Mode and group of every hybrid-vsock listener socket (the VMM must connect to it).
    pub listener_access: crate::transport::unix::SocketAccess,
}

/// How a VM's streams reach the broker.
#[derive(Debug, Clone)]
pub enum VmTransport {
    /// The VMM's hybrid vsock Unix socket; we listen on `<path>_<port>`.
    HybridSocket(PathBuf),
    /// Kernel AF_VSOCK: streams from this peer CID belong to the VM.
    Cid(u32),
}

/// A VM to register.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub id: String,
    pub transport: VmTransport,
    pub policy: Policy,
}

// `BrokerEvent` lives in `audit` (the event sink carries it), so that `audit` and
// `control` need nothing from this module.
pub use crate::audit::BrokerEvent;

/// Errors of the broker API.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error(
        "state dir {0} is in use by another host-broker (it holds {0}/broker.lock); \
         one broker per state dir"
    )]
    StateDirInUse(PathBuf),
    #[error("VM id {0:?} is already registered")]
    DuplicateVm(String),
    #[error("VM id {0:?} is not registered")]
    UnknownVm(String),
    #[error(
        "VM id {0:?} is invalid: use 1-64 characters from [A-Za-z0-9._-], not starting with '.'"
    )]
    BadVmId(String),
    #[error("socket {path} is already used by VM {vm:?}")]
    DuplicateSocket { path: PathBuf, vm: String },
    #[error("CID {cid} is already used by VM {vm:?}")]
    DuplicateCid { cid: u32, vm: String },
    #[error("VM {vm:?}: policy: {source}")]
    Policy {
        vm: String,
        #[source]
        source: crate::policy::PolicyError,
    },
    #[error("VM {vm:?}: credentials: {source}")]
    Credentials {
        vm: String,
        #[source]
        source: CredentialError,
    },
    #[error("VM {vm:?}: {source}")]
    Placeholders {
        vm: String,
        #[source]
        source: crate::secrets::PlaceholderError,
    },
    /// `ca_from` names no usable CA (bad id, or no `ca.key` + `ca.pem` under its state dir).
    #[error("VM {vm:?}: ca_from {from:?}: {reason}")]
    BadCaFrom {
        vm: String,
        from: String,
        reason: String,
    },
    /// `ca_from` was given but the new id already has a different CA of its own.
    #[error("VM {vm:?}: ca_from {from:?}: {source}")]
    CaConflict {
        vm: String,
        from: String,
        #[source]
        source: CaError,
    },
    #[error("VM {vm:?}: CA: {source}")]
    Ca {
        vm: String,
        #[source]
        source: CaError,
    },
    #[error(transparent)]
    Transport(#[from] TransportError),
    #[error(transparent)]
    Trust(#[from] TrustError),
    /// The VM's own thread (`VmPlacement::OwnThread`) could not be started.
    #[error("VM {vm:?}: starting its thread: {source}")]
    VmThread {
        vm: String,
        #[source]
        source: std::io::Error,
    },
    #[error("state_dir {path}: {source}")]
    StateDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A VM served over kernel AF_VSOCK: where the shared accept loop routes its streams.
#[derive(Debug)]
struct CidVm {
    id: String,
    inbox: Inbox<crate::transport::Accepted>,
}

struct Registered {
    entry: Arc<VmEntry>,
    /// The VM's accept loop (hybrid transport: owns the listener) or stream queue (AF_VSOCK:
    /// see `inbox`); it owns the VM's connections.
    task: Option<VmTask>,
    socket: Option<PathBuf>,
    cid: Option<u32>,
}

/// What [`Broker::list_vms`] reports about one VM.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VmInfo {
    pub id: String,
    /// Hybrid transport: the `<socket>_<port>` path the broker listens on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen_path: Option<PathBuf>,
    /// AF_VSOCK transport: the guest CID.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cid: Option<u32>,
    /// Credential names (never values).
    pub credentials: Vec<String>,
}

struct Inner {
    config: BrokerConfig,
    /// Serializes read-modify-write updates of one VM's policy/credentials.
    update_lock: tokio::sync::Mutex<()>,
    shared: Arc<Shared>,
    vms: RwLock<HashMap<String, Registered>>,
    cids: Arc<RwLock<HashMap<u32, CidVm>>>,
    vsock_task: Mutex<Option<JoinHandle<()>>>,
    /// Where the streams of VMs registered from now on are served.
    placement: Mutex<VmPlacement>,
    /// Exclusive lock on `<state_dir>/broker.lock`, held until [`Broker::shutdown`] (or the
    /// process ends): a second broker on the same state dir is refused before it touches any
    /// VM socket.
    state_lock: Mutex<Option<nix::fcntl::Flock<std::fs::File>>>,
}

/// The host broker.
pub struct Broker {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && !id.starts_with('.')
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

/// Takes `<state_dir>/broker.lock` (flock, exclusive, non-blocking; released when the
/// process or the broker goes away, however it ends).
fn lock_state_dir(dir: &Path) -> Result<nix::fcntl::Flock<std::fs::File>, BrokerError> {
    let path = dir.join("broker.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|source| BrokerError::StateDir {
            path: path.clone(),
            source,
        })?;
    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock)
        .map_err(|_| BrokerError::StateDirInUse(dir.to_path_buf()))
}

impl Broker {
    /// Loads upstream trust, prepares the state dir. Listens on nothing until VMs register.
    pub async fn start(config: BrokerConfig) -> Result<Broker, BrokerError> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(config.state_dir.join("vms"))
            .map_err(|source| BrokerError::StateDir {
                path: config.state_dir.clone(),
                source,
            })?;
        let state_lock = lock_state_dir(&config.state_dir)?;
        let upstream_tls = upstream::client_config(&config.upstream_extra_roots)?;
        let events = EventSink::new(1024, Arc::new(Metrics::new()));
        Ok(Broker {
            inner: Arc::new(Inner {
                config,
                update_lock: tokio::sync::Mutex::new(()),
                shared: Arc::new(Shared {
                    events,
                    upstream_tls,
                    fair: crate::fair::Scheduler::for_host(),
                }),
                vms: RwLock::default(),
                cids: Arc::default(),
                vsock_task: Mutex::new(None),
                placement: Mutex::new(VmPlacement::default()),
                state_lock: Mutex::new(Some(state_lock)),
            }),
        })
    }

    /// Registers a VM and starts listening for it. An id registered twice is an error.
    pub async fn register_vm(&self, spec: VmSpec) -> Result<(), BrokerError> {
        self.register_vm_with_env(spec, &ProcessEnv).await
    }

    /// Like [`Broker::register_vm`], reading `env` credential sources from `env`.
    pub async fn register_vm_with_env(
        &self,
        spec: VmSpec,
        env: &dyn EnvSource,
    ) -> Result<(), BrokerError> {
        self.register(spec, env, None).await
    }

    /// Registers a VM that must use the interception CA of VM `ca_from` (a VM forked or
    /// restored from a snapshot of `ca_from` under a new id already trusts that CA).
    ///
    /// `ca_from` need not be registered: its `ca.key` + `ca.pem` must exist under
    /// `<state_dir>/vms/<ca_from>/` (a removed VM's CA stays there). They are copied into
    /// the new VM's state dir (key 0600, atomic writes) before the VM is served. If the new
    /// id already has a CA, it must be the same one ([`BrokerError::CaConflict`] otherwise:
    /// a CA some guest may trust is never replaced; delete `<state_dir>/vms/<id>/ca.*` by
    /// hand first if that is really meant). The copy stays if a later step fails, so a retry
    /// is harmless.
    pub async fn register_vm_with_ca_from(
        &self,
        spec: VmSpec,
        ca_from: &str,
    ) -> Result<(), BrokerError> {
        self.register(spec, &ProcessEnv, Some(ca_from)).await
    }

    /// Whether the VM `id` has a complete CA in the state dir (`ca.key` and `ca.pem`).
    pub fn has_persisted_ca(&self, id: &str) -> bool {
        valid_id(id) && {
            let dir = self.inner.config.state_dir.join("vms").join(id);
            dir.join("ca.key").is_file() && dir.join("ca.pem").is_file()
        }
    }

    async fn register(
        &self,
        spec: VmSpec,
        env: &dyn EnvSource,
        ca_from: Option<&str>,
    ) -> Result<(), BrokerError> {
        let id = spec.id.clone();
        if !valid_id(&id) {
            return Err(BrokerError::BadVmId(id));
        }
        if self.read_vms().contains_key(&id) {
            return Err(BrokerError::DuplicateVm(id));
        }
        let vm_dir = self.inner.config.state_dir.join("vms").join(&id);
        let mut spec = spec;
        if let Some(from) = ca_from.filter(|f| valid_id(f)) {
            // A restored snapshot holds `from`'s random placeholders in its memory.
            let from_dir = self.inner.config.state_dir.join("vms").join(from);
            crate::secrets::copy_random_placeholders(&from_dir, &vm_dir).map_err(|e| {
                BrokerError::Placeholders {
                    vm: id.clone(),
                    source: e,
                }
            })?;
        }
        let creds = checked_credentials(&id, &mut spec.policy, env, &vm_dir)?;
        // Everything that can refuse the registration cheaply comes before a CA is minted
        // or copied: a failed add must leave no CA behind (a retry with `ca_from` would
        // then conflict with it).
        let listener = match &spec.transport {
            VmTransport::HybridSocket(vmm_socket) => {
                let path = hybrid_listen_path(vmm_socket, self.inner.config.vsock_port);
                // Binding would replace the other VM's listener socket: refuse instead.
                if let Some(other) = self
                    .read_vms()
                    .values()
                    .find(|r| r.socket.as_deref() == Some(path.as_path()))
                {
                    return Err(BrokerError::DuplicateSocket {
                        path,
                        vm: other.entry.id.clone(),
                    });
                }
                Some((
                    HybridListener::bind_with(&path, &self.inner.config.listener_access)?,
                    path,
                ))
            }
            VmTransport::Cid(cid) => {
                self.ensure_vsock_listener()?;
                let cids = self.inner.cids.read().unwrap_or_else(|e| e.into_inner());
                if let Some(other) = cids.get(cid) {
                    return Err(BrokerError::DuplicateCid {
                        cid: *cid,
                        vm: other.id.clone(),
                    });
                }
                None
            }
        };
        // The VM's thread is started before its CA: it is the one step below that can fail
        // for want of host resources.
        let slot = self.reserve_slot(&id)?;
        if let Some(from) = ca_from {
            self.copy_ca(&id, from, &vm_dir)?;
        }
        let ca =
            Arc::new(
                VmCa::load_or_create(&vm_dir, &id).map_err(|source| BrokerError::Ca {
                    vm: id.clone(),
                    source,
                })?,
            );
        let leaves = Arc::new(LeafCache::new(
            ca.clone(),
            Arc::new(SystemClock),
            crate::tls::leaf::DEFAULT_LEAF_CACHE_CAPACITY,
        ));
        let (closed_tx, closed_rx) = tokio::sync::watch::channel(false);
        let entry = Arc::new(VmEntry::new(
            VmState::new(id.clone(), spec.policy, creds, ca, leaves, closed_rx),
            closed_tx,
            self.inner.shared.fair.account(),
        ));
        let mut reg = Registered {
            entry: entry.clone(),
            task: None,
            socket: None,
            cid: None,
        };
        let for_refresh = entry.clone();
        match (&spec.transport, listener) {
            (VmTransport::HybridSocket(_), Some((listener, path))) => {
                tracing::info!(vm = %id, path = %path.display(), "listening for VM streams");
                reg.socket = Some(path);
                let vm_loop = vm_loop(listener, entry, self.inner.shared.clone());
                reg.task = Some(slot.run(vm_loop));
            }
            (VmTransport::Cid(cid), _) => {
                let mut cids = self.inner.cids.write().unwrap_or_else(|e| e.into_inner());
                if let Some(other) = cids.get(cid) {
                    return Err(BrokerError::DuplicateCid {
                        cid: *cid,
                        vm: other.id.clone(),
                    });
                }
                let (inbox, task) = cid_inbox(*cid, entry, self.inner.shared.clone());
                let task = slot.run(task);
                cids.insert(
                    *cid,
                    CidVm {
                        id: id.clone(),
                        inbox,
                    },
                );
                reg.task = Some(task);
                reg.cid = Some(*cid);
            }
            (VmTransport::HybridSocket(_), None) => unreachable!("bound above"),
        }
        let lost_race = {
            let mut vms = self.inner.vms.write().unwrap_or_else(|e| e.into_inner());
            if vms.contains_key(&id) {
                Some(reg)
            } else {
                vms.insert(id.clone(), reg);
                self.inner.shared.events.metrics().add_vm(&id);
                None
            }
        };
        if let Some(reg) = lost_race {
            // A concurrent registration of the same id won.
            stop(reg, &self.inner.cids).await;
            return Err(BrokerError::DuplicateVm(id));
        }
        crate::refresher::spawn(for_refresh, self.inner.shared.clone());
        Ok(())
    }

    /// Copies the CA of VM `from` into `vm_dir` (the new VM `id`'s state dir).
    fn copy_ca(&self, id: &str, from: &str, vm_dir: &Path) -> Result<(), BrokerError> {
        let bad = |reason: &str| BrokerError::BadCaFrom {
            vm: id.to_owned(),
            from: from.to_owned(),
            reason: reason.to_owned(),
        };
        if !valid_id(from) {
            return Err(bad(
                "not a valid VM id (1-64 characters from [A-Za-z0-9._-], not starting with '.')",
            ));
        }
        let src = self.inner.config.state_dir.join("vms").join(from);
        match VmCa::copy_files(&src, vm_dir) {
            Ok(done) => {
                tracing::info!(vm = %id, ca_from = %from, outcome = ?done, "VM uses the CA of another VM");
                Ok(())
            }
            Err(CaError::SourceMissing { .. }) => Err(bad(
                "no such VM CA (neither registered nor present in the state dir)",
            )),
            Err(source @ CaError::Conflict { .. }) => Err(BrokerError::CaConflict {
                vm: id.to_owned(),
                from: from.to_owned(),
                source,
            }),
            Err(source) => Err(BrokerError::Ca {
                vm: id.to_owned(),
                source,
            }),
        }
    }

    /// Replaces a VM's policy (and reloads its credentials) without touching its listener or
    /// CA. Streams opened afterwards use the new version; open streams keep the old one.
    pub async fn update_vm(&self, id: &str, policy: Policy) -> Result<(), BrokerError> {
        self.update_vm_with_env(id, policy, &ProcessEnv).await
    }

    /// Like [`Broker::update_vm`], reading `env` credential sources from `env`.
    pub async fn update_vm_with_env(
        &self,
        id: &str,
        policy: Policy,
        env: &dyn EnvSource,
    ) -> Result<(), BrokerError> {
        let _guard = self.inner.update_lock.lock().await;
        let entry = self.entry(id)?;
        let mut policy = policy;
        let creds = checked_credentials(id, &mut policy, env, &self.vm_dir(id))?;
        let next = entry.current().with_policy(policy);
        next.set_credentials(creds);
        entry.replace(next);
        tracing::info!(vm = %id, "VM policy updated");
        Ok(())
    }

    /// Rotates credentials with merge semantics: each named credential is replaced
    /// (`Some(spec)`, also adds a new one) or removed (`None`); others are untouched. Takes
    /// effect for the next request of every connection of the VM, open keep-alive connections
    /// included. Egress rules are unchanged. Nothing changes if the result is invalid.
    pub async fn set_credentials(
        &self,
        id: &str,
        changes: BTreeMap<String, Option<CredentialSpec>>,
    ) -> Result<(), BrokerError> {
        self.set_credentials_with_env(id, changes, &ProcessEnv)
            .await
    }

    /// Like [`Broker::set_credentials`], reading `env` credential sources from `env`.
    pub async fn set_credentials_with_env(
        &self,
        id: &str,
        changes: BTreeMap<String, Option<CredentialSpec>>,
        env: &dyn EnvSource,
    ) -> Result<(), BrokerError> {
        let _guard = self.inner.update_lock.lock().await;
        let entry = self.entry(id)?;
        let current = entry.current();
        let mut policy = current.policy.clone();
        for (name, change) in changes {
            match change {
                Some(spec) => policy.credentials.insert(name, spec),
                None => policy.credentials.remove(&name),
            };
        }
        let creds = checked_credentials(id, &mut policy, env, &self.vm_dir(id))?;
        // The shared cell reaches open connections; the new version carries the merged specs
        // for later rotations.
        current.set_credentials(creds);
        entry.replace(current.with_policy(policy));
        tracing::info!(vm = %id, "VM credentials updated");
        Ok(())
    }

    /// The VM's policy as currently in force (credential values are redacted in Debug).
    pub fn policy(&self, id: &str) -> Option<Policy> {
        self.read_vms()
            .get(id)
            .map(|r| r.entry.current().policy.clone())
    }

    /// Counters of a registered VM since it was registered in this process.
    pub fn stats(&self, id: &str) -> Option<VmStats> {
        self.inner.shared.events.metrics().stats(id)
    }

    /// Prometheus text exposition of the broker's metrics.
    pub fn metrics_text(&self) -> String {
        self.inner.shared.events.metrics().encode()
    }

    /// The registered VMs, sorted by id.
    pub fn list_vms(&self) -> Vec<VmInfo> {
        let mut v: Vec<VmInfo> = self
            .read_vms()
            .iter()
            .map(|(id, r)| VmInfo {
                id: id.clone(),
                listen_path: r.socket.clone(),
                cid: r.cid,
                credentials: r
                    .entry
                    .current()
                    .policy
                    .credentials
                    .keys()
                    .cloned()
                    .collect(),
            })
            .collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Whether `id` is registered.
    pub fn has_vm(&self, id: &str) -> bool {
        self.read_vms().contains_key(id)
    }

    fn entry(&self, id: &str) -> Result<Arc<VmEntry>, BrokerError> {
        self.read_vms()
            .get(id)
            .map(|r| r.entry.clone())
            .ok_or_else(|| BrokerError::UnknownVm(id.to_owned()))
    }

    /// Stops serving a VM: closes its listener and its connections, removes its socket file.
    /// Its CA stays in the state dir (a re-registered VM keeps trusting the same CA).
    pub async fn unregister_vm(&self, id: &str) -> Result<(), BrokerError> {
        let reg = self
            .inner
            .vms
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(id)
            .ok_or_else(|| BrokerError::UnknownVm(id.to_owned()))?;
        self.inner.shared.events.metrics().remove_vm(id);
        stop(reg, &self.inner.cids).await;
        tracing::info!(vm = %id, "VM unregistered");
        Ok(())
    }

    /// The PEM of the VM's interception CA.
    pub fn ca_pem(&self, id: &str) -> Option<String> {
        self.read_vms()
            .get(id)
            .map(|r| r.entry.current().ca.pem().to_owned())
    }

    /// Events: agent hello/exit/failure and one record per proxied request.
    pub fn subscribe(&self) -> broadcast::Receiver<BrokerEvent> {
        self.inner.shared.events.subscribe()
    }

    /// Stops every listener and connection, then releases the state dir (another broker,
    /// e.g. a restarted one, may then serve it).
    pub async fn shutdown(&self) {
        let regs: Vec<Registered> = self
            .inner
            .vms
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .drain()
            .map(|(_, r)| r)
            .collect();
        for reg in regs {
            stop(reg, &self.inner.cids).await;
        }
        let task = self
            .inner
            .vsock_task
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(t) = task {
            t.abort();
            let _ = t.await;
        }
        self.inner
            .state_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
    }

    fn read_vms(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Registered>> {
        self.inner.vms.read().unwrap_or_else(|e| e.into_inner())
    }

    fn ensure_vsock_listener(&self) -> Result<(), BrokerError> {
        let mut task = self
            .inner
            .vsock_task
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        if task.is_none() {
            let listener = CidListener::bind(self.inner.config.vsock_port)?;
            *task = Some(spawn_cid_loop(listener, self.inner.cids.clone()));
        }
        Ok(())
    }

    /// The `<socket>_<port>` path the broker listens on for a hybrid-socket VM.
    pub fn listen_path(&self, id: &str) -> Option<PathBuf> {
        self.read_vms().get(id).and_then(|r| r.socket.clone())
    }

    /// Turns per-VM CPU fairness on or off (off by default: benches/flood.rs shows a gain
    /// only with a runtime `event_interval` of 2, host-broker/README.md "Benchmark"), for
    /// streams accepted from now on; the daemon's `fair_scheduling` setting.
    /// On, a VM using more than its share of the broker's CPU has its work deferred while
    /// another VM has work to run (docs/architecture.md, "CPU fairness"); off, tasks run in
    /// tokio's first-in, first-out order whatever VM they serve.
    pub fn set_fair_scheduling(&self, on: bool) {
        self.inner.shared.fair.set_enabled(on);
    }

    /// Where the streams of VMs registered from now on are served: each VM on a thread of
    /// its own (the default: the OS shares the cores between VMs, so a VM keeping its thread
    /// busy leaves the others' latency near their baseline) or all on the runtime the broker
    /// was started on (`vm_runtime`); the daemon's `vm_threads` setting.
    pub fn set_vm_placement(&self, placement: VmPlacement) {
        *self
            .inner
            .placement
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = placement;
    }

    /// The place VM `id`'s loop will run, as [`Broker::set_vm_placement`] says.
    fn reserve_slot(&self, id: &str) -> Result<VmSlot, BrokerError> {
        let placement = *self
            .inner
            .placement
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        VmSlot::reserve(placement, id).map_err(|source| BrokerError::VmThread {
            vm: id.to_owned(),
            source,
        })
    }

    /// The configured state directory.
    pub fn state_dir(&self) -> &Path {
        &self.inner.config.state_dir
    }

    /// `<state_dir>/vms/<id>`.
    fn vm_dir(&self, id: &str) -> PathBuf {
        self.inner.config.state_dir.join("vms").join(id)
    }
}

async fn stop(reg: Registered, cids: &RwLock<HashMap<u32, CidVm>>) {
    reg.entry.close();
    if let Some(cid) = reg.cid {
        cids.write().unwrap_or_else(|e| e.into_inner()).remove(&cid);
    }
    if let Some(task) = reg.task {
        task.stop().await;
    }
    if let Some(path) = reg.socket {
        let _ = std::fs::remove_file(path);
    }
}

/// Pause between accepts for a VM that has no room left for any stream
/// (`proxy::saturated`): at most ~200 streams/s refused per flooding VM.
const SATURATED_ACCEPT_PAUSE: std::time::Duration = std::time::Duration::from_millis(5);

/// How often a hybrid listener checks that its socket file still exists.
const SOCKET_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// Accept loop of one hybrid-socket VM. Connections live in a JoinSet owned by the loop, so
/// stopping the loop (unregister) also ends them. If the listener's socket file disappears
/// (someone cleaned the directory), the loop binds it again so the VMM can still connect;
/// open streams are unaffected.
fn vm_loop(
    listener: HybridListener,
    vm: Arc<VmEntry>,
    shared: Arc<Shared>,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    let span = tracing::info_span!("vm", vm = %vm.id);
    async move {
            let mut listener = listener;
            let mut conns = JoinSet::new();
            let mut check = tokio::time::interval(SOCKET_CHECK_INTERVAL);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    acc = listener.accept() => match acc {
                        Ok(acc) => {
                            conns.spawn(crate::fair::bind(
                                Some(vm.fair.clone()),
                                crate::dispatch::serve_stream(acc, vm.clone(), shared.clone())
                                    .in_current_span(),
                            ));
                            // A VM with no room left is accepted from at a bounded rate.
                            if crate::proxy::saturated(&vm.current()) {
                                tokio::time::sleep(SATURATED_ACCEPT_PAUSE).await;
                            }
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "accept failed");
                            // Avoid a hot loop on persistent errors (e.g. EMFILE).
                            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        }
                    },
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                    _ = check.tick() => {
                        let path = listener.path().to_path_buf();
                        if let Err(e) = std::fs::symlink_metadata(&path) {
                            if e.kind() == std::io::ErrorKind::NotFound {
                                match HybridListener::bind(&path) {
                                    Ok(l) => {
                                        tracing::warn!(path = %path.display(), "listener socket file disappeared: bound it again");
                                        // The old listener's Drop removes `path`, which is now
                                        // the new socket: forget the old path first.
                                        let old = std::mem::replace(&mut listener, l);
                                        old.disown_path();
                                    }
                                    Err(e) => tracing::warn!(error = %e, "listener socket file disappeared and binding it again failed"),
                                }
                            }
                        }
                    }
                }
            }
        }
        .instrument(span)
}

/// The stream queue of an AF_VSOCK VM: its streams, routed by the shared accept loop, are
/// served by a task of its own that pauses while the VM is saturated (`inbox`), so a
/// flooding VM never stalls another VM's accepts.
fn cid_inbox(
    cid: u32,
    vm: Arc<VmEntry>,
    shared: Arc<Shared>,
) -> (
    Inbox<crate::transport::Accepted>,
    impl std::future::Future<Output = ()> + Send + 'static,
) {
    let for_saturated = vm.clone();
    Inbox::new(
        move |acc: crate::transport::Accepted| {
            let (vm, shared) = (vm.clone(), shared.clone());
            let span = tracing::info_span!("vm", vm = %vm.id, cid);
            crate::fair::bind(
                Some(vm.fair.clone()),
                async move {
                    tokio::select! {
                        _ = crate::dispatch::serve_stream(acc, vm.clone(), shared) => {}
                        _ = vm.closed() => tracing::info!("VM unregistered: closing stream"),
                    }
                }
                .instrument(span),
            )
        },
        move || crate::proxy::saturated(&for_saturated.current()),
        SATURATED_ACCEPT_PAUSE,
    )
}

/// The broker-wide AF_VSOCK accept loop: routes each stream to the queue of the VM of its
/// peer CID, never waiting for it (see `inbox`).
fn spawn_cid_loop(listener: CidListener, cids: Arc<RwLock<HashMap<u32, CidVm>>>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok(acc) => {
                    let Origin::Cid(cid) = acc.origin else {
                        continue;
                    };
                    let cids = cids.read().unwrap_or_else(|e| e.into_inner());
                    match cids.get(&cid) {
                        Some(vm) => {
                            if vm.inbox.offer(acc).is_err() {
                                tracing::debug!(vm = %vm.id, cid, "VM's stream queue is full: closing stream");
                            }
                        }
                        None => tracing::warn!(cid, "closing stream from an unregistered CID"),
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "vsock accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    })
}

/// Validates `policy`, resolves its random placeholders (stored under `vm_dir`) and loads
/// its credentials: what every registration or update of VM `id` must pass before anything
/// changes.
fn checked_credentials(
    id: &str,
    policy: &mut Policy,
    env: &dyn EnvSource,
    vm_dir: &Path,
) -> Result<CredentialSet, BrokerError> {
    policy.validate().map_err(|source| BrokerError::Policy {
        vm: id.to_owned(),
        source,
    })?;
    crate::secrets::resolve_random_placeholders(policy, vm_dir).map_err(|source| {
        BrokerError::Placeholders {
            vm: id.to_owned(),
            source,
        }
    })?;
    CredentialSet::load(policy, env).map_err(|source| BrokerError::Credentials {
        vm: id.to_owned(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm_runtime::test_hooks::FAIL_NEXT_RESERVE;

    /// A VM whose thread cannot be started is refused with a reason and leaves no CA and no
    /// listener socket behind, so registering it again (after the host recovers) works.
    #[tokio::test]
    async fn a_failed_thread_start_leaves_no_ca_and_no_socket() {
        let dir = tempfile::tempdir().unwrap();
        let broker = Broker::start(BrokerConfig {
            state_dir: dir.path().join("state"),
            vsock_port: shared_proto::DEFAULT_VSOCK_PORT,
            upstream_extra_roots: vec![],
            listener_access: Default::default(),
        })
        .await
        .unwrap();
        let sock = dir.path().join("vm1.vsock");
        let spec = || VmSpec {
            id: "vm1".into(),
            transport: VmTransport::HybridSocket(sock.clone()),
            policy: Policy::from_json_str(r#"{"egress": {"default": "deny"}}"#).unwrap(),
        };
        FAIL_NEXT_RESERVE.with(|f| f.set(true));
        let err = broker.register_vm(spec()).await.unwrap_err();
        assert!(matches!(err, BrokerError::VmThread { .. }), "{err}");
        assert!(err.to_string().contains("starting its thread"), "{err}");
        assert!(
            !broker.has_persisted_ca("vm1"),
            "a failed add left a CA behind"
        );
        let listen = hybrid_listen_path(&sock, shared_proto::DEFAULT_VSOCK_PORT);
        assert!(!listen.exists(), "a failed add left {listen:?} behind");
        assert!(broker.list_vms().is_empty());
        broker.register_vm(spec()).await.unwrap();
        assert!(broker.has_persisted_ca("vm1"));
    }
}
