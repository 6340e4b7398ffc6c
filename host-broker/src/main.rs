//! `host-broker`: the Sluice host broker daemon and operator CLI.

mod cli;

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use host_broker::config::DEFAULT_CONTROL_SOCKET;
use host_broker::policy::{summarize, Policy};

use cli::secrets::SourceArgs;

const AFTER_HELP: &str = "\
Typical flow (a VM manager or an operator):
  host-broker serve --config /etc/sluice/broker.toml          # the daemon (systemd unit in contrib/)
  host-broker vm add vm1 --hybrid-socket /run/vms/vm1.vsock --policy vm1.json
  host-broker vm add vm2 --hybrid-socket /run/vms/vm2.vsock --policy vm1.json --ca-from vm1   # a fork of vm1
  host-broker credentials set vm1 OPENAI_API_KEY --value-from-credential openai --hosts api.openai.com
  host-broker vm stats vm1
  host-broker vm rm vm1
The client commands talk to the daemon's control socket (--socket, $SLUICE_SOCKET,
default /run/sluice/control.sock). See host-broker/README.md and docs/operations.md.";

#[derive(Debug, Parser)]
#[command(
    name = "host-broker",
    version,
    about = "Sluice host broker: egress policy, TLS interception and credential substitution for microVMs",
    after_help = AFTER_HELP
)]
struct Cli {
    /// Log filter (RUST_LOG syntax), e.g. `info` or `warn,sluice::audit=info`.
    #[arg(long, env = "SLUICE_LOG", default_value = "info", global = true)]
    log: String,
    /// Log as JSON lines (for the audit log).
    #[arg(long, global = true)]
    json: bool,
    /// The daemon's control socket: where client commands connect, and where `serve`
    /// listens (over the config file's `control_socket`). Default /run/sluice/control.sock.
    #[arg(long, env = "SLUICE_SOCKET", global = true)]
    socket: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker daemon until SIGTERM/SIGINT: serves the VMs of the config file and of
    /// earlier `vm add` calls (persisted under state_dir), and the control API.
    Serve {
        /// TOML config file (see host-broker/README.md).
        #[arg(long)]
        config: PathBuf,
    },
    /// Register, change, remove and inspect VMs.
    #[command(subcommand)]
    Vm(VmCommand),
    /// Rotate a VM's credentials (takes effect on the next request, open connections
    /// included).
    #[command(subcommand)]
    Credentials(CredentialsCommand),
    /// The per-VM interception CA.
    #[command(subcommand)]
    Ca(CaCommand),
    /// Policy tools (offline, no daemon needed).
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Print the daemon's Prometheus metrics.
    Metrics,
}

#[derive(Debug, Subcommand)]
enum VmCommand {
    /// Register a VM (call it when the VMM creates, starts or restores the VM). Persisted:
    /// the daemon serves it again after a restart.
    #[command(group(clap::ArgGroup::new("transport").required(true).args(["hybrid_socket", "cid"])))]
    Add {
        /// VM id: 1-64 characters from [A-Za-z0-9._-].
        id: String,
        /// The VMM's hybrid vsock socket (Cloud Hypervisor `--vsock socket=`, Firecracker
        /// `uds_path`); the broker listens on `<PATH>_<vsock_port>`. It need not exist yet.
        #[arg(long, value_name = "PATH")]
        hybrid_socket: Option<PathBuf>,
        /// Kernel AF_VSOCK guest CID (QEMU vhost-vsock-pci guest-cid=).
        #[arg(long)]
        cid: Option<u32>,
        /// Policy file (.json or .toml); without it the VM may reach nothing.
        #[arg(long, value_name = "FILE")]
        policy: Option<PathBuf>,
        /// Use the interception CA of VM OTHER_ID (this VM is a fork or snapshot restore of
        /// it under a new id, so its guest already trusts that CA). OTHER_ID's CA must be in
        /// state_dir (registered now or earlier); a different CA of this id is never replaced.
        #[arg(long, value_name = "OTHER_ID")]
        ca_from: Option<String>,
    },
    /// Replace a VM's policy (egress rules apply to new connections; credentials to the next
    /// request).
    Update {
        id: String,
        #[arg(long, value_name = "FILE")]
        policy: PathBuf,
    },
    /// Unregister a VM: its listener closes, open streams end. Its CA stays in state_dir.
    Rm { id: String },
    /// List registered VMs.
    Ls,
    /// A VM's counters (connections, requests, bytes, substitutions, violations).
    Stats { id: String },
}

#[derive(Debug, Subcommand)]
enum CredentialsCommand {
    /// Add or rotate one credential; other credentials are untouched.
    ///
    /// Rotating an existing credential needs only a source; a new one also needs --hosts.
    Set {
        id: String,
        /// Credential name (the guest sees the placeholder `mock-<NAME>` unless set).
        name: String,
        #[command(flatten)]
        source: SourceArgs,
        /// Hosts the real value may be sent to (comma-separated patterns).
        #[arg(long, value_delimiter = ',')]
        hosts: Option<Vec<String>>,
        /// Placeholder the guest uses instead of `mock-<NAME>`.
        #[arg(long)]
        placeholder: Option<String>,
    },
    /// Remove one credential from a VM.
    Rm { id: String, name: String },
}

#[derive(Debug, Subcommand)]
enum CaCommand {
    /// Print the PEM of a VM's interception CA (what its guest trusts).
    Show { id: String },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate a policy file (.json or .toml) and print a summary (names, never values).
    Check { file: PathBuf },
}

/// Logs (audit lines included) go to stderr through a non-blocking writer: a request never
/// waits on the terminal or journald. It is not lossy: when its buffer is full, writers wait
/// rather than drop audit records. Colour only on a terminal. The guard flushes on drop.
fn init_logging(
    filter: &str,
    json: bool,
) -> anyhow::Result<tracing_appender::non_blocking::WorkerGuard> {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("--log: bad filter {filter:?}"))?;
    let ansi = std::io::stderr().is_terminal();
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .thread_name("sluice-log")
        .finish(std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(writer);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(guard)
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable chain, no backtrace: this is an operator-facing message.
            eprintln!("host-broker: error: {}", cli::error_chain(&e));
            std::process::ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    runtime_with(host_broker::config::DEFAULT_EVENT_INTERVAL)
}

/// The multi-thread runtime with `event_interval` task polls between I/O driver polls.
fn runtime_with(event_interval: u32) -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .event_interval(event_interval)
        .enable_all()
        .build()
        .context("starting the tokio runtime")
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let client_socket = cli
        .socket
        .clone()
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET));
    match cli.command {
        Command::Policy(PolicyCommand::Check { file }) => {
            // The error already names the file and the field.
            let policy = Policy::from_path(&file)?;
            println!("{}: ok", file.display());
            println!("{}", summarize(&policy));
            Ok(())
        }
        Command::Serve { config } => {
            let _log_guard = init_logging(&cli.log, cli.json)?;
            let mut cfg = host_broker::config::ServeConfig::from_path(&config)?;
            if let Some(socket) = cli.socket {
                cfg.control.socket = socket;
            }
            runtime_with(cfg.runtime.event_interval)?.block_on(cli::serve::serve(cfg))
        }
        Command::Vm(c) => runtime()?.block_on(cli::commands::vm(&client_socket, c)),
        Command::Credentials(c) => {
            runtime()?.block_on(cli::commands::credentials(&client_socket, c))
        }
        Command::Ca(CaCommand::Show { id }) => {
            runtime()?.block_on(cli::commands::ca_show(&client_socket, &id))
        }
        Command::Metrics => runtime()?.block_on(cli::commands::metrics(&client_socket)),
    }
}
