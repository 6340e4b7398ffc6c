//! `guest-agent`: `/init` in the Sluice initrd, or `guest-agent proxy ...` as a subcommand.

use std::net::SocketAddr;
use std::process::ExitCode;

use guest_agent::endpoint::Endpoint;
use guest_agent::{console, init, proxy};

const USAGE: &str =
    "usage: guest-agent proxy [--listen ADDR]... --connect unix:PATH|vsock:CID:PORT \
[--capture] [--log LEVEL]\n       (as PID 1 it runs the init component; see docs/guest-agent.md)";

fn main() -> ExitCode {
    if std::process::id() == 1 {
        init::run_pid1();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("proxy") => match proxy_cmd(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                console::line(&format!("error: {e:#}"));
                ExitCode::from(1)
            }
        },
        Some("--version") => {
            println!("guest-agent {}", env!("CARGO_PKG_VERSION"));
            ExitCode::SUCCESS
        }
        _ => {
            eprintln!("{USAGE}");
            ExitCode::from(64)
        }
    }
}

/// Parsed `proxy` arguments.
#[derive(Debug)]
struct ProxyArgs {
    listen: Vec<SocketAddr>,
    connect: Endpoint,
    /// Also capture every TCP connection and answer DNS (needs root and /dev/net/tun).
    capture: bool,
    log: tracing::Level,
}

fn parse_proxy_args(args: &[String]) -> anyhow::Result<ProxyArgs> {
    use anyhow::{anyhow, bail, Context};
    let mut listen = Vec::new();
    let mut connect = None;
    let mut log = tracing::Level::INFO;
    let mut capture = false;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || {
            it.next()
                .ok_or_else(|| anyhow!("{flag} needs a value\n{USAGE}"))
        };
        match flag.as_str() {
            "--listen" => {
                let v = value()?;
                listen.push(v.parse().with_context(|| format!("--listen {v}"))?)
            }
            "--connect" => connect = Some(value()?.parse::<Endpoint>()?),
            "--capture" => capture = true,
            "--log" => {
                let v = value()?;
                log = v
                    .parse()
                    .map_err(|_| anyhow!("--log {v}: expected error..trace"))?
            }
            other => bail!("unknown argument `{other}`\n{USAGE}"),
        }
    }
    Ok(ProxyArgs {
        listen,
        connect: connect.ok_or_else(|| anyhow!("--connect is required\n{USAGE}"))?,
        capture,
        log,
    })
}

fn proxy_cmd(args: &[String]) -> anyhow::Result<()> {
    let args = parse_proxy_args(args)?;
    console::init(args.log);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async move {
        let listeners = if args.listen.is_empty() {
            proxy::bind_loopback(proxy::DEFAULT_PORT).await?
        } else {
            let mut v = Vec::new();
            for addr in &args.listen {
                match proxy::bind(*addr).await {
                    Ok(l) => v.push(l),
                    // [::1] is optional: a guest without IPv6 still gets the IPv4 listener.
                    Err(e) if addr.is_ipv6() && addr.ip().is_loopback() => {
                        tracing::warn!("{e}; continuing without it")
                    }
                    Err(e) => return Err(e.into()),
                }
            }
            v
        };
        if args.capture {
            let broker = std::sync::Arc::new(args.connect.clone());
            guest_agent::egress::start_transparent(broker).await?;
        }
        proxy::serve(listeners, args.connect).await;
        Ok(())
    })
}
