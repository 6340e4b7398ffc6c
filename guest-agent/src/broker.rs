//! The control stream: reach the broker, say hello, get the guest's settings.
//!
//! The broker may come up after the VM (it is registered by a VMM manager), so connecting
//! retries with exponential backoff, telling the console, until `sluice.timeout`.
//!
//! The hello asks for the newest control protocol this agent speaks; the broker answers in
//! the newest both speak (shared_proto::negotiate). A broker that only speaks 1 refuses any
//! other version, so the agent then says hello again in v1.

use std::time::{Duration, Instant};

use shared_proto::negotiate::{self, GuestSettings, NegotiateError};
use shared_proto::{
    AgentMessage, BootMode, BrokerMessage, ProtoError, StreamHeader, StreamKind, WorkloadExit,
};
use tracing::{info, warn};

use crate::endpoint::{BoxedIo, Endpoint};

/// How the control conversation failed; each maps to a documented exit status.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker at {endpoint} unreachable for {secs} s (last error: {last})")]
    Unreachable {
        endpoint: String,
        secs: u64,
        last: String,
    },
    #[error("broker refused this guest: {0}")]
    Refused(String),
    #[error("broker protocol error: {0}")]
    Protocol(#[from] ProtoError),
    #[error("broker protocol error: {0}")]
    Negotiation(#[from] NegotiateError),
    #[error("broker sent {0} where a config was expected")]
    Unexpected(&'static str),
    #[error("broker did not answer within {0} s")]
    Timeout(u64),
}

/// An open control stream after a successful hello.
pub struct Control {
    io: BoxedIo,
}

impl std::fmt::Debug for Control {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Control").finish_non_exhaustive()
    }
}

/// Connects with backoff until `timeout` has passed since the first attempt.
pub async fn connect_with_backoff(
    endpoint: &Endpoint,
    timeout: Duration,
) -> Result<BoxedIo, BrokerError> {
    let start = Instant::now();
    let mut delay = Duration::from_millis(100);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let remaining = timeout.saturating_sub(start.elapsed());
        let last = match tokio::time::timeout(remaining, endpoint.connect()).await {
            Ok(Ok(io)) => return Ok(io),
            Ok(Err(e)) => e.to_string(),
            Err(_) => "connect timed out".to_string(),
        };
        let remaining = timeout.saturating_sub(start.elapsed());
        if remaining.is_zero() {
            return Err(BrokerError::Unreachable {
                endpoint: endpoint.to_string(),
                secs: timeout.as_secs(),
                last,
            });
        }
        if attempt == 1 || attempt.is_multiple_of(5) {
            warn!(
                "waiting for the broker at {endpoint} ({last}); retrying for {:.1} s more",
                remaining.as_secs_f32()
            );
        }
        tokio::time::sleep(delay.min(remaining)).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Opens the control stream and exchanges hello -> config, all within `timeout`; falls back
/// to a v1 hello once if the broker only speaks v1.
pub async fn fetch_config(
    endpoint: &Endpoint,
    mode: BootMode,
    timeout: Duration,
) -> Result<(Control, GuestSettings), BrokerError> {
    let start = Instant::now();
    match fetch_in(endpoint, mode, timeout, negotiate::MAX_PROTOCOL_VERSION).await {
        Err(BrokerError::Refused(reason)) if reason.contains(negotiate::V1_ONLY_REFUSAL) => {
            info!("the broker speaks only control protocol 1; saying hello again in v1");
            let left = timeout
                .saturating_sub(start.elapsed())
                .max(Duration::from_secs(5));
            fetch_in(endpoint, mode, left, 1).await
        }
        other => other,
    }
}

async fn fetch_in(
    endpoint: &Endpoint,
    mode: BootMode,
    timeout: Duration,
    version: u8,
) -> Result<(Control, GuestSettings), BrokerError> {
    let start = Instant::now();
    let io = connect_with_backoff(endpoint, timeout).await?;
    let remaining = timeout
        .saturating_sub(start.elapsed())
        .max(Duration::from_secs(5));
    tokio::time::timeout(remaining, hello(io, mode, version))
        .await
        .map_err(|_| BrokerError::Timeout(remaining.as_secs()))?
}

/// The hello exchange on an already connected stream, asking for protocol `version` at most.
pub async fn hello(
    mut io: BoxedIo,
    mode: BootMode,
    version: u8,
) -> Result<(Control, GuestSettings), BrokerError> {
    let header = StreamHeader {
        kind: StreamKind::Control,
    };
    shared_proto::write_stream_header(&mut io, &header).await?;
    let msg = negotiate::hello(env!("CARGO_PKG_VERSION"), mode, version);
    shared_proto::write_message(&mut io, &msg).await?;
    let reply = shared_proto::read_message::<_, BrokerMessage>(&mut io).await?;
    if let Some(cfg) = negotiate::settings_from(&reply, version)? {
        info!(
            vm_id = %cfg.config.vm_id,
            protocol = cfg.protocol_version,
            features = ?cfg.features,
            cas = cfg.config.ca_certs_pem.len(),
            vars = cfg.config.env.len(),
            "received guest config"
        );
        return Ok((Control { io }, cfg));
    }
    match reply {
        BrokerMessage::Refused { reason } => Err(BrokerError::Refused(reason)),
        _ => Err(BrokerError::Unexpected("Ack")),
    }
}

impl Control {
    /// Reports a message (exit status or failure) and waits for the Ack, bounded.
    pub async fn report(&mut self, msg: AgentMessage, wait: Duration) -> Result<(), BrokerError> {
        let secs = wait.as_secs();
        tokio::time::timeout(wait, async {
            shared_proto::write_message(&mut self.io, &msg).await?;
            match shared_proto::read_message::<_, BrokerMessage>(&mut self.io).await? {
                BrokerMessage::Ack => Ok(()),
                BrokerMessage::Config(_) | BrokerMessage::Negotiated(_) => {
                    Err(BrokerError::Unexpected("Config"))
                }
                BrokerMessage::Refused { reason } => Err(BrokerError::Refused(reason)),
            }
        })
        .await
        .map_err(|_| BrokerError::Timeout(secs))?
    }

    /// Reports the workload's end.
    pub async fn workload_exited(&mut self, exit: WorkloadExit) -> Result<(), BrokerError> {
        self.report(AgentMessage::WorkloadExited(exit), Duration::from_secs(5))
            .await
    }
}
