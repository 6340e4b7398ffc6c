//! `host-broker`: the Sluice host broker daemon and operator CLI.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use host_broker::config::ServeConfig;
use host_broker::policy::{summarize, Policy};
use host_broker::Broker;

#[derive(Debug, Parser)]
#[command(name = "host-broker", version, about = "Sluice host broker")]
struct Cli {
    /// Log filter (RUST_LOG syntax), e.g. `info` or `info,sluice::audit=info`.
    #[arg(long, env = "SLUICE_LOG", default_value = "info", global = true)]
    log: String,
    /// Log as JSON lines (for the audit log).
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the broker until SIGTERM/SIGINT.
    Serve {
        /// TOML config file (see host-broker/README.md).
        #[arg(long)]
        config: PathBuf,
    },
    /// Policy tools.
    Policy {
        #[command(subcommand)]
        command: PolicyCommand,
    },
}

#[derive(Debug, Subcommand)]
enum PolicyCommand {
    /// Validate a policy file (.json or .toml) and print a summary (names, never values).
    Check { file: PathBuf },
}

fn init_logging(filter: &str, json: bool) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(filter)
        .with_context(|| format!("--log: bad filter {filter:?}"))?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
    Ok(())
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One readable chain, no backtrace: this is an operator-facing message.
            eprintln!("host-broker: error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Policy {
            command: PolicyCommand::Check { file },
        } => {
            // The error already names the file and the field.
            let policy = Policy::from_path(&file)?;
            println!("{}: ok", file.display());
            println!("{}", summarize(&policy));
            Ok(())
        }
        Command::Serve { config } => {
            init_logging(&cli.log, cli.json)?;
            let cfg = ServeConfig::from_path(&config)?;
            tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("starting the tokio runtime")?
                .block_on(serve(cfg))
        }
    }
}

async fn serve(cfg: ServeConfig) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let broker = Broker::start(cfg.broker).await?;
    for vm in cfg.vms {
        let id = vm.id.clone();
        broker
            .register_vm(vm)
            .await
            .with_context(|| format!("registering VM {id:?}"))?;
    }
    tracing::info!("host-broker serving");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    broker.shutdown().await;
    Ok(())
}
