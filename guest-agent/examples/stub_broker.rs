//! A stand-in broker for smoke-testing the agent in a VM before the real host-broker exists:
//! listens on a hybrid-vsock Unix socket (`<uds>_<port>`), answers Hello with a GuestConfig
//! holding the given CA, acks WorkloadExited, and echoes proxy tunnels after a `200` reply.
//!
//! `cargo run -p guest-agent --example stub_broker -- /tmp/vsock.sock_7070 ca.pem`

use std::collections::BTreeMap;

use shared_proto::{AgentMessage, BrokerMessage, GuestConfig, StreamKind, TunnelStream};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [path, ca] = args.as_slice() else {
        anyhow::bail!("usage: stub_broker SOCKET_PATH CA_PEM");
    };
    let ca = std::fs::read_to_string(ca)?;
    let _ = std::fs::remove_file(path);
    let listener = UnixListener::bind(path)?;
    eprintln!("stub: listening on {path}");
    loop {
        let (s, _) = listener.accept().await?;
        let ca = ca.clone();
        tokio::spawn(async move {
            if let Err(e) = serve(s, ca).await {
                eprintln!("stub: stream ended: {e}");
            }
        });
    }
}

async fn serve(mut s: UnixStream, ca: String) -> anyhow::Result<()> {
    let header = shared_proto::read_stream_header(&mut s).await?;
    match header.kind {
        StreamKind::Control => {
            let hello: AgentMessage = shared_proto::read_message(&mut s).await?;
            eprintln!("stub: control: {hello:?}");
            let config = GuestConfig {
                vm_id: "smoke".into(),
                ca_certs_pem: vec![ca],
                env: BTreeMap::from([(
                    "OPENAI_API_KEY".to_string(),
                    "mock-OPENAI_API_KEY".to_string(),
                )]),
                proxy_port: 3128,
                no_proxy: vec![],
            };
            shared_proto::write_message(&mut s, &BrokerMessage::Config(config)).await?;
            loop {
                let msg: AgentMessage = shared_proto::read_message(&mut s).await?;
                eprintln!("stub: control: {msg:?}");
                shared_proto::write_message(&mut s, &BrokerMessage::Ack).await?;
            }
        }
        StreamKind::Proxy => {
            let mut t = TunnelStream::new(s);
            let mut head = Vec::new();
            let mut b = [0u8; 1];
            while !head.ends_with(b"\r\n\r\n") {
                t.read_exact(&mut b).await?;
                head.push(b[0]);
            }
            eprintln!(
                "stub: proxy: {}",
                String::from_utf8_lossy(&head).lines().next().unwrap_or("")
            );
            t.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                .await?;
            let mut buf = vec![0u8; 16384];
            loop {
                let n = t.read(&mut buf).await?;
                if n == 0 {
                    t.shutdown().await?;
                    return Ok(());
                }
                t.write_all(&buf[..n]).await?;
            }
        }
        other => {
            // The stub serves the explicit proxy only; captured TCP and DNS need the real broker.
            eprintln!("stub: refusing {other:?}");
            Ok(())
        }
    }
}
