//! The control stream: hello -> GuestConfig, then exit/failure reports -> Ack.

use std::sync::Arc;

use shared_proto::{
    read_message, write_message, AgentMessage, BrokerMessage, GuestConfig, ProtoError,
    PROTOCOL_VERSION,
};
use tokio::io::{AsyncRead, AsyncWrite};

use crate::audit::Untrusted;
use crate::state::{Shared, VmState};
use crate::BrokerEvent;

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

pub(crate) async fn serve<S>(mut io: S, vm: Arc<VmState>, shared: Arc<Shared>)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    loop {
        let msg: AgentMessage = match read_message(&mut io).await {
            Ok(m) => m,
            Err(ProtoError::Truncated("frame length prefix")) => {
                tracing::debug!("control stream closed by the agent");
                return;
            }
            Err(e) => {
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
                if hello.protocol_version != PROTOCOL_VERSION {
                    BrokerMessage::Refused {
                        reason: format!(
                            "agent speaks protocol {}, broker speaks {PROTOCOL_VERSION}",
                            hello.protocol_version
                        ),
                    }
                } else {
                    BrokerMessage::Config(guest_config(&vm))
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
