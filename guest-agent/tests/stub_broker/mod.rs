//! The stub broker's side of the control conversation, shared by the broker test binaries.

use shared_proto::{AgentMessage, BootMode, BrokerMessage, StreamKind};
use tokio::net::{UnixListener, UnixStream};

/// Accepts one control stream, checks the agent's Hello (exec mode) and answers it with
/// `reply`; returns the stream for what the test does next.
pub async fn answer_hello(listener: UnixListener, reply: BrokerMessage) -> UnixStream {
    let (mut s, _) = listener.accept().await.unwrap();
    let h = shared_proto::read_stream_header(&mut s).await.unwrap();
    assert_eq!(h.kind, StreamKind::Control);
    let hello: AgentMessage = shared_proto::read_message(&mut s).await.unwrap();
    assert!(matches!(hello, AgentMessage::Hello(h) if h.boot_mode == BootMode::Exec));
    shared_proto::write_message(&mut s, &reply).await.unwrap();
    s
}
