//! `sluice-demo`: boots one VM whose workload calls a local HTTPS "API" with a placeholder,
//! then shows what the guest sent and what the upstream received.
//!
//! The real value is a random canary made for this run. It is still printed masked (prefix
//! only, plus an equality check against the configured value): the demo is the first thing
//! people copy, and the project rule is that real values never reach output.

use std::time::Duration;

use anyhow::Context;
use sluice_e2e::artifacts::Artifacts;
use sluice_e2e::gate::init_tracing;
use sluice_e2e::image::InitrdSpec;
use sluice_e2e::platform::Platform;
use sluice_e2e::scenario::{Scenario, ScenarioSpec};

fn mask(v: &str) -> String {
    let keep: String = v.chars().take("Bearer sk-canary-".len() + 4).collect();
    format!("{keep}… ({} chars, masked)", v.chars().count())
}

/// The interesting part of the workload's `curl -v` output: what was sent and received, and
/// the certificate verification, not the TLS record chatter.
fn demo_line(l: &str) -> bool {
    let Some(rest) = l.strip_prefix("demo| ") else {
        return l.starts_with("demo:");
    };
    rest.starts_with("> ")
        || rest.starts_with("< ")
        || rest.starts_with("upstream-ok")
        || rest.contains("issuer:")
        || rest.contains("certificate verify")
        || rest.contains("CAfile:")
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    init_tracing();
    let platform = Platform::detect().context("choosing a VMM")?;
    let artifacts = Artifacts::locate().context("locating kernel, rootfs and guest binaries")?;
    println!("== Sluice demo: booting a VM on {platform}");
    let script = sluice_e2e::artifacts::guest_file("demo.sh");
    let spec = ScenarioSpec {
        name: "demo".into(),
        initrd: InitrdSpec::new().file(script, "/sluice/workload.sh", 0o755),
        cmdline: "sluice.mode=exec sluice.exec=/run/sluice/workload.sh".into(),
        debian_root: true,
        broker: true,
        memory_mib: 768,
    };
    let started = std::time::Instant::now();
    let mut s = Scenario::boot(&platform, &artifacts, spec).await?;
    let exit = s.wait_exit(Duration::from_secs(300)).await?;
    println!(
        "== VM powered off after {:.1}s, agent status {:?}",
        started.elapsed().as_secs_f64(),
        exit.agent_status
    );

    println!("\n== What the guest printed (curl -v: '>' sent by the guest, '<' received):");
    for line in s.console().lines().filter(|l| demo_line(l)) {
        println!("  {line}");
    }
    println!("\n== What the upstream (https://api.example.com on 127.0.0.1) received:");
    let reqs = s.upstream.requests();
    for r in &reqs {
        println!("  {} {} (TLS SNI {:?})", r.method, r.path, r.sni);
        for (k, v) in &r.headers {
            let shown = if v.contains(&s.canary) {
                mask(v)
            } else {
                v.clone()
            };
            println!("    {k}: {shown}");
        }
    }
    let swapped = reqs
        .iter()
        .any(|r| r.header("authorization") == Some(&format!("Bearer {}", s.canary)));
    let leaked = s.console().contains(&s.canary);
    println!("\n== Result");
    println!("  upstream received the real value: {swapped}");
    println!("  real value visible inside the guest: {leaked}");
    let ok = swapped && !leaked && exit.agent_status == Some(0);
    if ok {
        s.passed();
        println!("  demo OK");
        Ok(())
    } else {
        anyhow::bail!("demo failed (console log printed above)")
    }
}
