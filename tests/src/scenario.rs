//! One booted test VM with everything around it: a recording upstream, the in-process broker
//! (or deliberately none) and the per-test canary secret. Used by the e2e tests and the demo.

use std::time::Duration;

use crate::artifacts::Artifacts;
use crate::broker::TestBroker;
use crate::error::HarnessError;
use crate::image::InitrdSpec;
use crate::platform::Platform;
use crate::upstream::Upstream;
use crate::vm::{Vm, VmConfig, VmDir, VmExit};

/// What to boot.
#[derive(Debug)]
pub struct ScenarioSpec {
    /// VM id (also the broker's VM id); `[A-Za-z0-9._-]`.
    pub name: String,
    /// Files for the initrd (the agent and modules are always added).
    pub initrd: InitrdSpec,
    /// `sluice.*` keys and workload argv.
    pub cmdline: String,
    /// Attach the cached Debian root as `/dev/vda`.
    pub debian_root: bool,
    /// Register the VM with a broker (false: nothing listens on the vsock port).
    pub broker: bool,
    pub memory_mib: u32,
}

/// A running scenario. Dropping it kills the VM and stops the broker and upstream.
#[derive(Debug)]
pub struct Scenario {
    /// The real value of `API_KEY` for this run.
    pub canary: String,
    pub upstream: Upstream,
    pub broker: Option<TestBroker>,
    pub vm: Vm,
    /// The cached root image and its mtime at boot: VMs must never write to it.
    root_image: Option<(std::path::PathBuf, std::time::SystemTime)>,
}

fn mtime(path: &std::path::Path) -> Result<std::time::SystemTime, HarnessError> {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map_err(|e| HarnessError::file(path, e))
}

impl Scenario {
    /// Starts upstream and broker, builds the initrd and boots the VM.
    pub async fn boot(
        platform: &Platform,
        artifacts: &Artifacts,
        spec: ScenarioSpec,
    ) -> Result<Scenario, HarnessError> {
        Self::boot_with_policy(platform, artifacts, spec, |_| {}).await
    }

    /// Like [`Scenario::boot`], with `edit` applied to the VM's test policy before the VM
    /// starts (so the guest's first config already carries it: no race with the agent).
    pub async fn boot_with_policy(
        platform: &Platform,
        artifacts: &Artifacts,
        spec: ScenarioSpec,
        edit: impl FnOnce(&mut host_broker::policy::Policy),
    ) -> Result<Scenario, HarnessError> {
        let canary = crate::broker::canary();
        let upstream = Upstream::start().await?;
        let dir = VmDir::new(&spec.name)?;
        let broker = if spec.broker {
            Some(
                TestBroker::start(
                    &spec.name,
                    &dir.vsock_uds(),
                    upstream.addr(),
                    upstream.echo_addr(),
                    upstream.ca_pem_path(),
                    &canary,
                )
                .await?,
            )
        } else {
            None
        };
        if let Some(b) = &broker {
            let mut policy = b
                .broker
                .policy(&spec.name)
                .ok_or_else(|| HarnessError::Exited("test VM not registered".into()))?;
            edit(&mut policy);
            b.broker
                .update_vm(&spec.name, policy)
                .await
                .map_err(|e| HarnessError::Build(format!("test policy: {e}")))?;
        }
        let mut initrd = spec.initrd;
        if spec.debian_root {
            initrd = initrd.with_root();
        }
        let initrd = initrd.build(artifacts, &dir.path().join("initrd.img"))?;
        let mut cmdline = spec.cmdline;
        if spec.debian_root && !cmdline.contains("sluice.root=") {
            cmdline = format!("sluice.root=/dev/vda {cmdline}");
        }
        let cfg = VmConfig {
            kernel: artifacts.kernel.clone(),
            initrd,
            cmdline,
            root_disk: spec.debian_root.then(|| artifacts.rootfs.clone()),
            memory_mib: spec.memory_mib,
        };
        let root_image = match &cfg.root_disk {
            Some(p) => Some((p.clone(), mtime(p)?)),
            None => None,
        };
        let vm = Vm::start(platform, dir, &cfg).await?;
        Ok(Scenario {
            canary,
            upstream,
            broker,
            vm,
            root_image,
        })
    }

    /// Waits for the guest to power off, then checks the cached root image was not written.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<VmExit, HarnessError> {
        let exit = self.vm.wait_exit(timeout).await?;
        if let Some((path, before)) = &self.root_image {
            if mtime(path)? != *before {
                return Err(HarnessError::Exited(format!(
                    "the cached root image {} was modified by the VM",
                    path.display()
                )));
            }
        }
        Ok(exit)
    }

    /// Waits for the broker's `WorkloadExited` event for this VM and returns its exit code.
    pub async fn workload_exit_code(
        &mut self,
        timeout: Duration,
    ) -> Result<Option<i32>, HarnessError> {
        let broker = self
            .broker
            .as_mut()
            .ok_or_else(|| HarnessError::Exited("scenario has no broker".into()))?;
        broker
            .wait_event("WorkloadExited", timeout, |ev| match ev {
                host_broker::BrokerEvent::WorkloadExited { exit, .. } => Some(exit.code),
                _ => None,
            })
            .await
    }

    /// The broker's audit records received so far (empty without a broker).
    pub fn audit_records(&mut self) -> Vec<host_broker::AuditRecord> {
        self.broker
            .as_mut()
            .map(|b| b.drain_events())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|ev| match ev {
                host_broker::BrokerEvent::Request(rec) => Some(rec),
                _ => None,
            })
            .collect()
    }

    /// Everything the guest printed (its console).
    pub fn console(&self) -> String {
        self.vm.console().text()
    }

    /// Marks the run as passed (the console is not dumped on drop).
    pub fn passed(self) {
        self.vm.passed();
    }
}
