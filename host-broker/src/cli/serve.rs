//! `host-broker serve`: broker + persisted VMs + control API until SIGTERM/SIGINT.

use std::sync::Arc;

use anyhow::Context;
use host_broker::api::{ApiState, ControlServer};
use host_broker::config::ServeConfig;
use host_broker::Broker;

pub async fn serve(cfg: ServeConfig) -> anyhow::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut int = signal(SignalKind::interrupt()).context("installing SIGINT handler")?;
    let broker = Arc::new(Broker::start(cfg.broker).await?);
    broker.set_fair_scheduling(cfg.runtime.fair_scheduling);
    broker.set_vm_placement(cfg.runtime.placement());
    for vm in cfg.vms {
        let id = vm.id.clone();
        broker
            .register_vm(vm)
            .await
            .with_context(|| format!("registering VM {id:?}"))?;
    }
    // VMs registered through the API before a restart (config-file ids win).
    let state = Arc::new(ApiState::restore(broker.clone()).await);
    let control = ControlServer::start(
        state,
        &cfg.control.socket,
        cfg.control.allowed_uids.clone(),
        cfg.control.metrics_listen,
    )
    .await?;
    tracing::info!(vms = broker.list_vms().len(), "host-broker serving");
    tokio::select! {
        _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
        _ = int.recv() => tracing::info!("SIGINT: shutting down"),
    }
    control.stop().await;
    broker.shutdown().await;
    Ok(())
}
