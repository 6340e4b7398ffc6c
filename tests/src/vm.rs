//! A running test VM: one launcher interface over QEMU (+ vhost-device-vsock) and Cloud
//! Hypervisor, in the spirit of Cloud Hypervisor's `test_infra::Guest`.
//!
//! Every process the VM needs is started with `kill_on_drop`, so dropping a [`Vm`] kills the
//! VMM and its vsock backend. Unless the test called [`Vm::passed`], dropping it also prints
//! the console log, so every failure (panic or `Err`) shows what the guest said.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};
use tokio::time::Instant;

use crate::console::Console;
use crate::error::HarnessError;
use crate::platform::{Accel, Backend, Platform};

/// Guest CID used for every test VM (each VM has its own vsock device, so they never clash).
pub const GUEST_CID: u32 = 3;

/// Per-VM scratch directory and the socket paths derived from it.
///
/// Created before the VM so the broker can register the VM's hybrid-vsock socket first.
#[derive(Debug)]
pub struct VmDir {
    dir: tempfile::TempDir,
    pub name: String,
}

impl VmDir {
    pub fn new(name: &str) -> Result<VmDir, HarnessError> {
        // Short prefix under /tmp: Unix socket paths are limited to 108 bytes.
        let dir = tempfile::Builder::new()
            .prefix(&format!("sluice-{name}-"))
            .tempdir_in("/tmp")
            .map_err(|e| HarnessError::file("/tmp", e))?;
        Ok(VmDir {
            dir,
            name: name.to_string(),
        })
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// The hybrid-vsock Unix socket: guest connects to host port P arrive on `<this>_P`.
    pub fn vsock_uds(&self) -> PathBuf {
        self.dir.path().join("vsock")
    }

    fn vhost_socket(&self) -> PathBuf {
        self.dir.path().join("vhost-user.sock")
    }

    fn console_log(&self) -> PathBuf {
        self.dir.path().join("console.log")
    }
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    /// `sluice.*` keys and workload arguments; console settings are added by the launcher.
    pub cmdline: String,
    /// Root disk (virtio-blk, `/dev/vda`). Never written: QEMU uses `snapshot=on`; Cloud
    /// Hypervisor gets a private copy.
    pub root_disk: Option<PathBuf>,
    pub memory_mib: u32,
}

/// How the VM ended.
#[derive(Debug, Clone)]
pub struct VmExit {
    /// The VMM process's exit status.
    pub vmm: ExitStatus,
    /// `N` from the agent's last `sluice-agent: powering off, status=N` line, if it printed one.
    pub agent_status: Option<i32>,
}

/// A booted VM.
#[derive(Debug)]
pub struct Vm {
    dir: VmDir,
    vmm: Child,
    vhost: Option<Child>,
    console: Console,
    platform: Platform,
    passed: bool,
    exited: Option<VmExit>,
}

/// The console line prefix the agent uses before powering off (docs/architecture.md).
pub const POWEROFF_PREFIX: &str = "sluice-agent: powering off, status=";

/// Parses the agent's exit status from a console log.
pub fn agent_status(console: &str) -> Option<i32> {
    console
        .lines()
        .rev()
        .find_map(|l| l.split(POWEROFF_PREFIX).nth(1))
        .and_then(|rest| rest.trim().parse().ok())
}

impl Vm {
    /// Boots `cfg` on `platform`, with the vsock device behind `dir.vsock_uds()`.
    pub async fn start(
        platform: &Platform,
        dir: VmDir,
        cfg: &VmConfig,
    ) -> Result<Vm, HarnessError> {
        let echo = std::env::var_os("SLUICE_E2E_ECHO").is_some();
        let extra = crate::artifacts::extra_kernel_args();
        let cmdline = format!("console=ttyS0 panic=-1 quiet {} {extra}", cfg.cmdline)
            .trim_end()
            .to_string();
        let (vmm, vhost) = match platform.backend {
            Backend::Qemu => start_qemu(platform, &dir, cfg, &cmdline).await?,
            Backend::CloudHypervisor => (start_ch(platform, &dir, cfg, &cmdline)?, None),
        };
        let mut vmm = vmm;
        let stdout = vmm.stdout.take().ok_or_else(|| HarnessError::Spawn {
            what: "VMM".into(),
            source: std::io::Error::other("no stdout pipe"),
        })?;
        let console = Console::capture(stdout, &dir.console_log(), echo)?;
        tracing::info!(vm = %dir.name, platform = %platform, console = %dir.console_log().display(), "VM started");
        Ok(Vm {
            dir,
            vmm,
            vhost,
            console,
            platform: platform.clone(),
            passed: false,
            exited: None,
        })
    }

    pub fn console(&self) -> &Console {
        &self.console
    }

    pub fn dir(&self) -> &VmDir {
        &self.dir
    }

    pub fn platform(&self) -> &Platform {
        &self.platform
    }

    /// Waits for a console line containing `needle`.
    pub async fn wait_for_console(
        &self,
        needle: &str,
        timeout: Duration,
    ) -> Result<String, HarnessError> {
        self.console.wait_for(needle, timeout).await
    }

    /// Waits for the VMM to exit (the guest powered off) and drains the console.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Result<VmExit, HarnessError> {
        if let Some(exit) = &self.exited {
            return Ok(exit.clone());
        }
        let deadline = Instant::now() + timeout;
        let status = tokio::time::timeout_at(deadline, self.vmm.wait())
            .await
            .map_err(|_| HarnessError::Timeout {
                what: format!("VM {} to power off", self.dir.name),
                timeout,
            })?
            .map_err(|e| HarnessError::Exited(format!("waiting for the VMM: {e}")))?;
        // The pipe closes with the process; give the reader its bounded chance to drain.
        self.console.wait_closed(Duration::from_secs(10)).await.ok();
        let exit = VmExit {
            vmm: status,
            agent_status: agent_status(&self.console.text()),
        };
        self.exited = Some(exit.clone());
        Ok(exit)
    }

    /// Marks the test as passed: the console log is not printed on drop.
    pub fn passed(mut self) {
        self.passed = true;
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.vmm.start_kill();
        if let Some(v) = &mut self.vhost {
            let _ = v.start_kill();
        }
        if !self.passed {
            eprintln!(
                "===== console of VM {} ({}) =====\n{}===== end of console ({}) =====",
                self.dir.name,
                self.platform,
                self.console.text(),
                self.console.path().display()
            );
        }
    }
}

async fn start_qemu(
    platform: &Platform,
    dir: &VmDir,
    cfg: &VmConfig,
    cmdline: &str,
) -> Result<(Child, Option<Child>), HarnessError> {
    let vhost_bin = platform
        .vhost_vsock
        .as_ref()
        .ok_or_else(|| HarnessError::Unavailable("vhost-device-vsock missing".into()))?;
    let vhost_sock = dir.vhost_socket();
    let vhost_log = dir.path().join("vhost-device-vsock.log");
    let log = std::fs::File::create(&vhost_log).map_err(|e| HarnessError::file(&vhost_log, e))?;
    let mut vhost = Command::new(vhost_bin)
        .arg("--vm")
        .arg(format!(
            "guest-cid={GUEST_CID},socket={},uds-path={}",
            vhost_sock.display(),
            dir.vsock_uds().display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| HarnessError::Spawn {
            what: vhost_bin.display().to_string(),
            source: e,
        })?;
    // The backend creates its vhost-user socket once it is ready; QEMU must not start earlier.
    wait_for_path(&vhost_sock, &mut vhost, Duration::from_secs(15)).await?;

    let mem = format!("{}M", cfg.memory_mib);
    let (accel, cpu, smp) = match platform.accel {
        Accel::Kvm => ("kvm", "host", "2"),
        Accel::Tcg => ("tcg", "max", "1"),
    };
    let mut cmd = Command::new(&platform.vmm);
    cmd.args(["-machine", &format!("q35,accel={accel},memory-backend=mem")])
        .args(["-cpu", cpu, "-smp", smp, "-m", &mem])
        .args([
            "-object",
            &format!("memory-backend-memfd,id=mem,size={mem},share=on"),
        ])
        .args(["-display", "none", "-nodefaults", "-no-user-config"])
        .args([
            "-serial",
            "stdio",
            "-monitor",
            "none",
            "-nic",
            "none",
            "-no-reboot",
        ])
        .arg("-kernel")
        .arg(&cfg.kernel)
        .arg("-initrd")
        .arg(&cfg.initrd)
        .args(["-append", cmdline])
        .args([
            "-chardev",
            &format!("socket,id=vsk0,path={}", vhost_sock.display()),
        ])
        .args(["-device", "vhost-user-vsock-pci,chardev=vsk0"]);
    if let Some(disk) = &cfg.root_disk {
        cmd.args([
            "-drive",
            &format!(
                "file={},if=none,id=root,format=raw,snapshot=on",
                disk.display()
            ),
        ])
        .args(["-device", "virtio-blk-pci,drive=root"]);
    }
    // snapshot=on keeps its overlay in TMPDIR: keep it in the VM's scratch dir.
    cmd.env("TMPDIR", dir.path());
    let vmm = spawn_vmm(cmd, &platform.vmm)?;
    Ok((vmm, Some(vhost)))
}

fn start_ch(
    platform: &Platform,
    dir: &VmDir,
    cfg: &VmConfig,
    cmdline: &str,
) -> Result<Child, HarnessError> {
    let mut cmd = Command::new(&platform.vmm);
    cmd.arg("--kernel")
        .arg(&cfg.kernel)
        .arg("--initramfs")
        .arg(&cfg.initrd)
        .args(["--cmdline", cmdline])
        .args(["--cpus", "boot=2"])
        .args(["--memory", &format!("size={}M", cfg.memory_mib)])
        .args([
            "--vsock",
            &format!("cid={GUEST_CID},socket={}", dir.vsock_uds().display()),
        ])
        .args(["--serial", "tty", "--console", "off"]);
    if let Some(disk) = &cfg.root_disk {
        // Cloud Hypervisor has no snapshot mode: boot a private copy so the cache stays clean.
        let copy = dir.path().join("root.img");
        std::fs::copy(disk, &copy).map_err(|e| HarnessError::file(disk, e))?;
        // image_type=raw: CH v54 deprecates auto-detection (and then refuses sector-0 writes).
        cmd.arg("--disk")
            .arg(format!("path={},image_type=raw", copy.display()));
    }
    spawn_vmm(cmd, &platform.vmm)
}

fn spawn_vmm(mut cmd: Command, bin: &Path) -> Result<Child, HarnessError> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| HarnessError::Spawn {
            what: bin.display().to_string(),
            source: e,
        })
}

/// Waits (bounded) for `path` to appear, failing early if `owner` exits.
async fn wait_for_path(
    path: &Path,
    owner: &mut Child,
    timeout: Duration,
) -> Result<(), HarnessError> {
    let deadline = Instant::now() + timeout;
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    while !path.exists() {
        if let Ok(Some(status)) = owner.try_wait() {
            return Err(HarnessError::Exited(format!(
                "vhost-device-vsock exited with {status} before creating {}",
                path.display()
            )));
        }
        if Instant::now() >= deadline {
            return Err(HarnessError::Timeout {
                what: format!("{} to appear", path.display()),
                timeout,
            });
        }
        tick.tick().await;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_status_takes_the_last_poweroff_line() {
        let log =
            "x\nsluice-agent: powering off, status=3\nsluice-agent: powering off, status=69\n";
        assert_eq!(agent_status(log), Some(69));
        assert_eq!(agent_status("no such line"), None);
    }
}
