//! The control stream: hello -> GuestConfig, then exit/failure reports -> Ack. Per VM at
//! most [`MAX_CONTROL_STREAMS`] at once; Hello and every started frame are time-bounded.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use shared_proto::negotiate::{self, feature, GuestSettings};
use shared_proto::{
    decode_frame, write_message, AgentMessage, BrokerMessage, GuestConfig, ProtoError,
    MAX_FRAME_LEN,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite};

use crate::audit::{BrokerEvent, Untrusted};
use crate::state::{Shared, VmState};

/// Port of the agent's local proxy listener, sent in every GuestConfig.
pub const GUEST_PROXY_PORT: u16 = 3128;

/// The configuration a VM's agent receives: CA, placeholders + policy env, proxy port.
pub(crate) fn guest_config(vm: &VmState) -> GuestConfig {
    let mut env = vm.current_credentials().guest_env();
    for (k, v) in &vm.policy.env {
        env.insert(k.clone(), v.clone());
    }
    GuestConfig {
        vm_id: vm.id.clone(),
        ca_certs_pem: vec![vm.ca.pem().to_owned()],
        env,
        proxy_port: GUEST_PROXY_PORT,
        no_proxy: Vec::new(),
    }
}

/// What the VM's agent is told in a negotiated (v2+) hello: the v1 fields plus the broker's
/// version and the optional stream kinds it serves.
pub(crate) fn guest_settings(vm: &VmState) -> GuestSettings {
    GuestSettings {
        config: guest_config(vm),
        protocol_version: 0,
        broker_version: env!("CARGO_PKG_VERSION").into(),
        features: vec![feature::TCP_CAPTURE.into(), feature::DNS.into()],
    }
}

/// Control streams one VM may hold open at once. An agent uses one for the VM's lifetime
/// (a rebooting guest briefly two); more are refused with a logged reason.
pub const MAX_CONTROL_STREAMS: usize = 8;
/// From stream start to a complete Hello.
pub const HELLO_TIMEOUT: Duration = Duration::from_secs(10);
/// Once a frame's first byte has arrived, the whole frame must arrive within this.
pub const FRAME_TIMEOUT: Duration = Duration::from_secs(10);

/// One of a VM's [`MAX_CONTROL_STREAMS`] slots, released on drop.
struct ControlSlot(Arc<AtomicUsize>);

impl ControlSlot {
    fn acquire(open: &Arc<AtomicUsize>) -> Result<ControlSlot, usize> {
        open.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_CONTROL_STREAMS).then_some(n + 1)
        })
        .map(|_| ControlSlot(open.clone()))
    }
}

impl Drop for ControlSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why reading the next control frame ended.
#[derive(Debug)]
enum ReadEnd {
    /// The agent closed the stream between frames.
    Closed,
    TimedOut(&'static str),
    Proto(ProtoError),
}

/// Reads one agent message. Before the Hello (`first`) the whole frame must arrive within
/// [`HELLO_TIMEOUT`]; after it the wait for a frame's first byte is unbounded (the agent
/// holds the stream for the workload's lifetime), but a started frame must be complete
/// within [`FRAME_TIMEOUT`]. The body buffer grows with the bytes that actually arrive, so
/// a stalled frame announcing 1 MiB holds only what was sent, and only for that long.
async fn read_frame<S: AsyncRead + Unpin>(
    io: &mut S,
    first: bool,
) -> Result<AgentMessage, ReadEnd> {
    let whole = async {
        let mut prefix = [0u8; 4];
        let n = io
            .read(&mut prefix[..1])
            .await
            .map_err(|e| ReadEnd::Proto(ProtoError::Io(e)))?;
        if n == 0 {
            return Err(ReadEnd::Closed);
        }
        let rest = async {
            io.read_exact(&mut prefix[1..])
                .await
                .map_err(|e| ReadEnd::Proto(truncated_or_io(e, "frame length prefix")))?;
            let len = u32::from_be_bytes(prefix) as usize;
            if len > MAX_FRAME_LEN {
                return Err(ReadEnd::Proto(ProtoError::Oversize {
                    len,
                    max: MAX_FRAME_LEN,
                }));
            }
            let mut frame = prefix.to_vec();
            let got = (&mut *io)
                .take(len as u64)
                .read_to_end(&mut frame)
                .await
                .map_err(|e| ReadEnd::Proto(ProtoError::Io(e)))?;
            if got < len {
                return Err(ReadEnd::Proto(ProtoError::Truncated("frame body")));
            }
            decode_frame(&frame).map_err(ReadEnd::Proto)
        };
        if first {
            rest.await
        } else {
            tokio::time::timeout(FRAME_TIMEOUT, rest)
                .await
                .map_err(|_| ReadEnd::TimedOut("a started frame was not complete within 10s"))?
        }
    };
    if first {
        tokio::time::timeout(HELLO_TIMEOUT, whole)
            .await
            .map_err(|_| ReadEnd::TimedOut("no complete Hello within 10s"))?
    } else {
        whole.await
    }
}

fn truncated_or_io(e: std::io::Error, what: &'static str) -> ProtoError {
    if e.kind() == std::io::ErrorKind::UnexpectedEof {
        ProtoError::Truncated(what)
    } else {
        ProtoError::Io(e)
    }
}

pub(crate) async fn serve<S>(mut io: S, vm: Arc<VmState>, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let _slot = match ControlSlot::acquire(&vm.open_control) {
        Ok(slot) => slot,
        Err(open) => {
            let reason = format!(
                "VM {} already has {open} control streams open (limit {MAX_CONTROL_STREAMS})",
                vm.id
            );
            tracing::warn!(%reason, "refusing control stream");
            // Best effort and bounded: a flooding guest need not read it.
            let refused = BrokerMessage::Refused { reason };
            let _ = tokio::time::timeout(Duration::from_secs(1), write_message(&mut io, &refused))
                .await;
            return;
        }
    };
    let mut first = true;
    loop {
        let read = tokio::select! {
            r = read_frame(&mut io, first) => r,
            _ = vm.closed() => {
                tracing::debug!("closing control stream: VM unregistered");
                return;
            }
        };
        first = false;
        let msg: AgentMessage = match read {
            Ok(m) => m,
            Err(ReadEnd::Closed) => {
                tracing::debug!("control stream closed by the agent");
                return;
            }
            Err(ReadEnd::TimedOut(why)) => {
                tracing::warn!(reason = why, "closing control stream");
                return;
            }
            Err(ReadEnd::Proto(e)) => {
                tracing::warn!(reason = %Untrusted(&e.to_string()), "closing control stream");
                return;
            }
        };
        let reply = match msg {
            AgentMessage::Hello(hello) => {
                tracing::info!(
                    agent_version = %Untrusted(&hello.agent_version),
                    boot_mode = ?hello.boot_mode,
                    "agent hello"
                );
                let _ = shared.events.send(BrokerEvent::AgentHello {
                    vm: vm.id.clone(),
                    agent_version: hello.agent_version.clone(),
                    boot_mode: hello.boot_mode,
                });
                match negotiate::choose(hello.protocol_version) {
                    Ok(version) => {
                        tracing::debug!(version, "control protocol negotiated");
                        negotiate::config_message(version, &guest_settings(&vm))
                    }
                    Err(e) => BrokerMessage::Refused {
                        reason: e.to_string(),
                    },
                }
            }
            AgentMessage::WorkloadExited(exit) => {
                tracing::info!(code = ?exit.code, signal = ?exit.signal, "workload exited");
                let _ = shared.events.send(BrokerEvent::WorkloadExited {
                    vm: vm.id.clone(),
                    exit,
                });
                BrokerMessage::Ack
            }
            AgentMessage::Failed { reason } => {
                tracing::warn!(reason = %Untrusted(&reason), "agent reported a failure");
                let _ = shared.events.send(BrokerEvent::AgentFailed {
                    vm: vm.id.clone(),
                    reason,
                });
                BrokerMessage::Ack
            }
        };
        if let Err(e) = write_message(&mut io, &reply).await {
            tracing::warn!(reason = %Untrusted(&e.to_string()), "control stream write failed");
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test(start_paused = true)]
    async fn no_hello_is_cut_off_after_the_hello_timeout() {
        let (_guest, mut host) = tokio::io::duplex(64);
        let t = tokio::time::Instant::now();
        let r = read_frame(&mut host, true).await;
        assert!(matches!(r, Err(ReadEnd::TimedOut(_))), "{r:?}");
        assert_eq!(t.elapsed(), HELLO_TIMEOUT);
    }

    #[tokio::test(start_paused = true)]
    async fn a_stalled_frame_is_cut_off_and_holds_only_what_arrived() {
        let (mut guest, mut host) = tokio::io::duplex(64 * 1024);
        // Announces a 1 MiB frame, sends 10 bytes of it, then stalls.
        guest
            .write_all(&(MAX_FRAME_LEN as u32).to_be_bytes())
            .await
            .unwrap();
        guest.write_all(&[0u8; 10]).await.unwrap();
        let t = tokio::time::Instant::now();
        let r = read_frame(&mut host, false).await;
        assert!(matches!(r, Err(ReadEnd::TimedOut(_))), "{r:?}");
        assert_eq!(t.elapsed(), FRAME_TIMEOUT);
        // Between frames, the wait itself is not bounded (the agent idles for the
        // workload's lifetime): nothing sent, still waiting after an hour.
        let (_guest, mut host) = tokio::io::duplex(64);
        let idle = tokio::time::timeout(Duration::from_secs(3600), read_frame(&mut host, false));
        assert!(idle.await.is_err());
    }

    #[tokio::test]
    async fn frames_still_decode_and_a_close_between_frames_is_clean() {
        let (mut guest, mut host) = tokio::io::duplex(64 * 1024);
        let msg = AgentMessage::Failed {
            reason: "x".repeat(100_000),
        };
        let frame = shared_proto::encode_frame(&msg).unwrap();
        tokio::spawn(async move {
            guest.write_all(&frame).await.unwrap();
        });
        assert_eq!(read_frame(&mut host, true).await.unwrap(), msg);
        assert!(matches!(
            read_frame(&mut host, false).await,
            Err(ReadEnd::Closed)
        ));
    }
}
