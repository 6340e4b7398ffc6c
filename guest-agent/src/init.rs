//! PID 1: bring the guest up, hand over, and power off with a documented status on any
//! failure. PID 1 must never exit (the kernel would panic), so every path ends in
//! [`power_off`] or in exec'ing the root's init.

use std::path::Path;
use std::time::Duration;

use nix::sys::reboot::{reboot, RebootMode};
use shared_proto::negotiate::GuestSettings;
use shared_proto::{AgentMessage, BootMode, GuestConfig};
use tracing::{info, warn};

use crate::broker::{self, BrokerError, Control};
use crate::cmdline::{self, Mode, Settings};
use crate::endpoint::Endpoint;
use crate::{
    console, dns_server, egress, env, exec, modules, mount, net, proxy, root, systemd, trust,
};

/// Exit statuses fixed by docs/architecture.md.
pub mod status {
    pub const UNAVAILABLE: u8 = 69;
    pub const SOFTWARE: u8 = 70;
    pub const OSFILE: u8 = 72;
    pub const PROTOCOL: u8 = 76;
    pub const CONFIG: u8 = 78;
}

/// A failure that ends the boot with `status`.
#[derive(Debug)]
pub struct Fatal {
    pub status: u8,
    pub message: String,
}

impl Fatal {
    fn new(status: u8, what: &str, err: impl std::fmt::Display) -> Self {
        Fatal {
            status,
            message: format!("{what}: {err}"),
        }
    }
}

impl From<BrokerError> for Fatal {
    fn from(e: BrokerError) -> Self {
        let status = match e {
            BrokerError::Unreachable { .. } | BrokerError::Timeout(_) => status::UNAVAILABLE,
            _ => status::PROTOCOL,
        };
        Fatal::new(status, "broker", e)
    }
}

/// Maps a root-filesystem error to status 72.
fn osfile<E: std::fmt::Display>(what: &'static str) -> impl FnOnce(E) -> Fatal {
    move |e| Fatal::new(status::OSFILE, what, e)
}

/// What PID 1 does once the async part is done.
enum Handover {
    PowerOff(u8),
    ExecInit(String),
}

/// Entry point when running as PID 1. Never returns.
pub fn run_pid1() -> ! {
    // A bug that panics must still end in a clean power-off, never in PID 1 exiting.
    let outcome = std::panic::catch_unwind(boot).unwrap_or_else(|_| {
        Err(Fatal {
            status: status::SOFTWARE,
            message: "internal error (panic)".into(),
        })
    });
    match outcome {
        Ok(Handover::PowerOff(status)) => power_off(status),
        Ok(Handover::ExecInit(init)) => {
            info!("handing over to {init}");
            let err = exec_init(&init);
            console::line(&format!("error: exec {init}: {err}"));
            power_off(status::OSFILE)
        }
        Err(f) => {
            console::line(&format!("error: {}", f.message));
            power_off(f.status)
        }
    }
}

fn exec_init(init: &str) -> nix::Error {
    let Ok(path) = std::ffi::CString::new(init) else {
        return nix::Error::EINVAL;
    };
    match nix::unistd::execv(&path, &[path.as_c_str()]) {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

/// Prints the contract's last line, syncs and powers off. Never returns.
pub fn power_off(status: u8) -> ! {
    console::line(&format!("powering off, status={status}"));
    nix::unistd::sync();
    // Leave a mounted root filesystem clean (best effort; the initramfs root just refuses).
    let _ = nix::mount::mount(
        None::<&str>,
        "/",
        None::<&str>,
        nix::mount::MsFlags::MS_REMOUNT | nix::mount::MsFlags::MS_RDONLY,
        None::<&str>,
    );
    let err = reboot(RebootMode::RB_POWER_OFF);
    console::line(&format!("error: power off failed: {err:?}"));
    // Exiting PID 1 would panic the kernel: wait for the VMM to stop us instead.
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

fn boot() -> Result<Handover, Fatal> {
    // Errors before the subscriber exists go straight to the console via `Fatal`.
    mount::mount_early().map_err(|e| Fatal::new(status::SOFTWARE, "early mounts", e))?;
    let line = std::fs::read_to_string("/proc/cmdline")
        .map_err(|e| Fatal::new(status::SOFTWARE, "/proc/cmdline", e))?;
    let settings =
        cmdline::parse(&line).map_err(|e| Fatal::new(status::CONFIG, "bad settings", e))?;
    console::init(settings.log);
    let n = modules::load_listed(Path::new(modules::ORDER_FILE));
    info!("loaded {n} kernel modules");
    if let Err(e) = net::loopback_up() {
        warn!("bringing up lo: {e}");
    }
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Fatal::new(status::SOFTWARE, "starting the runtime", e))?;
    let handover = rt.block_on(run(settings));
    // Threads and sockets of the runtime end here, before exec or power-off.
    drop(rt);
    handover
}

async fn run(settings: Settings) -> Result<Handover, Fatal> {
    let endpoint = Endpoint::Vsock {
        cid: shared_proto::HOST_CID,
        port: settings.port,
    };
    let boot_mode = match settings.mode {
        Mode::Exec => BootMode::Exec,
        Mode::Systemd => BootMode::Systemd,
    };
    info!("contacting the broker at {endpoint}");
    let (mut control, offered) =
        broker::fetch_config(&endpoint, boot_mode, settings.timeout).await?;
    let capture = settings.capture && capture_served(&offered);
    let settings = Settings {
        capture,
        ..settings
    };
    let config = offered.config;
    let result = match settings.mode {
        Mode::Exec => run_exec(&settings, &mut control, &config, endpoint).await,
        Mode::Systemd => prepare_systemd(&settings, &config).await,
    };
    if let Err(f) = &result {
        // Best effort: tell the broker why, so the operator sees it without the console.
        let msg = AgentMessage::Failed {
            reason: f.message.clone(),
        };
        if let Err(e) = control.report(msg, Duration::from_secs(2)).await {
            warn!("reporting the failure to the broker: {e}");
        }
    }
    result
}

/// Transparent capture needs the broker to serve both TCP and DNS streams; an older broker
/// that does not announce them leaves the guest with its proxy variables only.
fn capture_served(offered: &GuestSettings) -> bool {
    use shared_proto::negotiate::feature;
    let served = offered.has(feature::TCP_CAPTURE) && offered.has(feature::DNS);
    if !served {
        warn!(
            features = ?offered.features,
            "the broker does not serve transparent capture; only clients that honour the proxy variables get out"
        );
    }
    served
}

fn proxy_port(config: &GuestConfig) -> u16 {
    if config.proxy_port == 0 {
        proxy::DEFAULT_PORT
    } else {
        config.proxy_port
    }
}

fn compose_env(
    config: &GuestConfig,
    root: &Path,
) -> Result<std::collections::BTreeMap<String, String>, Fatal> {
    let trust = trust::install(root, &config.ca_certs_pem)
        .map_err(|e| Fatal::new(status::SOFTWARE, "installing the CA", e))?;
    info!(
        bundles = trust.distro_bundles.len(),
        links = ?trust.hash_links,
        "installed the VM CA"
    );
    env::compose(config, &trust, proxy_port(config))
        .map_err(|e| Fatal::new(status::PROTOCOL, "guest config env", e))
}

async fn run_exec(
    settings: &Settings,
    control: &mut Control,
    config: &GuestConfig,
    endpoint: Endpoint,
) -> Result<Handover, Fatal> {
    if let Some(device) = &settings.root {
        root::mount_root(settings, device)
            .await
            .map_err(osfile("root"))?;
    }
    root::copy_sluice_files(Path::new("/sluice"), Path::new("/run/sluice"))
        .map_err(osfile("copying /sluice to /run/sluice"))?;
    if settings.root.is_some() {
        root::switch_root().map_err(osfile("root"))?;
    }
    let vars = compose_env(config, Path::new("/"))?;
    let listeners = proxy::bind_loopback(proxy_port(config))
        .await
        .map_err(|e| Fatal::new(status::SOFTWARE, "proxy", e))?;
    if settings.capture {
        dns_server::install_resolv_conf(Path::new("/")).map_err(osfile("/etc/resolv.conf"))?;
        egress::start_transparent(std::sync::Arc::new(endpoint.clone()))
            .await
            .map_err(|e| Fatal::new(status::SOFTWARE, "transparent capture", e))?;
    }
    let proxy_task = tokio::spawn(proxy::serve(listeners, endpoint));

    let exit = exec::run(&settings.argv, &env::with_base(&vars), true)
        .await
        .map_err(|e| Fatal::new(status::SOFTWARE, "workload", e))?;
    let status = exec::exit_status(&exit);
    info!(?exit, "workload ended");
    if let Err(e) = control.workload_exited(exit).await {
        warn!("reporting the exit status to the broker: {e}");
    }
    proxy_task.abort();
    Ok(Handover::PowerOff(status))
}

async fn prepare_systemd(settings: &Settings, config: &GuestConfig) -> Result<Handover, Fatal> {
    let device = settings.root.as_deref().ok_or(Fatal {
        status: status::CONFIG,
        message: "sluice.root is required in systemd mode".into(),
    })?;
    root::mount_root(settings, device)
        .await
        .map_err(osfile("root"))?;
    let sysroot = Path::new(root::SYSROOT);
    let vars = compose_env(config, sysroot)?;
    systemd::install_env(sysroot, &vars).map_err(osfile("environment"))?;
    if settings.capture {
        dns_server::install_resolv_conf(sysroot).map_err(osfile("/etc/resolv.conf"))?;
    }
    root::copy_sluice_files(Path::new("/sluice"), Path::new("/run/sluice"))
        .map_err(osfile("copying /sluice to /run/sluice"))?;
    let names = systemd::install_units(
        Path::new("/run"),
        Path::new("/proc/self/exe"),
        Path::new("/sluice/units"),
        settings.port,
        proxy_port(config),
        settings.capture,
        settings.log,
    )
    .map_err(osfile("units"))?;
    info!("installed runtime units: {}", names.join(", "));
    root::switch_root().map_err(osfile("root"))?;
    Ok(Handover::ExecInit(settings.init.clone()))
}
