//! Embedding the broker in a VM manager: register a VM, watch its audit events, rotate a
//! credential, read its stats, unregister it. Runs without a VM: a few lines below play the
//! guest agent on the VM's hybrid vsock socket.
//!
//! ```sh
//! cargo run -p host-broker --example embed
//! ```

use std::collections::BTreeMap;

use host_broker::policy::{CredentialSpec, Policy, SecretSource};
use host_broker::secrets::SecretValue;
use host_broker::{Broker, BrokerConfig, BrokerEvent, VmSpec, VmTransport};
use shared_proto::{
    read_message, write_message, write_stream_header, AgentHello, AgentMessage, BootMode,
    BrokerMessage, StreamHeader, StreamKind, TunnelStream, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;

    // 1. One broker per host; it listens on nothing until VMs register.
    let broker = Broker::start(BrokerConfig {
        state_dir: dir.path().join("state"),
        vsock_port: shared_proto::DEFAULT_VSOCK_PORT,
        upstream_extra_roots: Vec::new(),
        listener_access: Default::default(),
    })
    .await?;
    let mut events = broker.subscribe();

    // 2. When the VMM creates/starts/restores a VM: register it. The policy is the same JSON
    //    the control API takes (docs/policy.md).
    let policy = Policy::from_json_str(
        r#"{
            "egress": {"default": "deny", "allow": [{"hosts": ["api.openai.com"], "ports": [443]}]},
            "credentials": {"OPENAI_API_KEY": {"source": {"value": "sk-example-first"},
                                               "hosts": ["api.openai.com"]}}
        }"#,
    )?;
    let vmm_socket = dir.path().join("vm1.vsock"); // Cloud Hypervisor --vsock socket=...
    broker
        .register_vm(VmSpec {
            id: "vm1".into(),
            transport: VmTransport::HybridSocket(vmm_socket),
            policy,
        })
        .await?;
    let listen = broker.listen_path("vm1").expect("hybrid VM");
    println!("vm1 registered; broker listens on {}", listen.display());
    let ca = broker.ca_pem("vm1").expect("registered");
    println!("vm1 CA: {}", ca.lines().next().unwrap_or_default());

    // 3. (The guest agent) control stream: hello -> GuestConfig with placeholders only.
    let mut control = tokio::net::UnixStream::connect(&listen).await?;
    write_stream_header(
        &mut control,
        &StreamHeader {
            kind: StreamKind::Control,
        },
    )
    .await?;
    write_message(
        &mut control,
        &AgentMessage::Hello(AgentHello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "example".into(),
            boot_mode: BootMode::Exec,
        }),
    )
    .await?;
    if let BrokerMessage::Config(cfg) = read_message(&mut control).await? {
        println!("guest env: {:?}", cfg.env); // {"OPENAI_API_KEY": "mock-OPENAI_API_KEY"}
    }

    // 4. (The guest) a proxy stream asking for a host the policy does not allow.
    let mut proxy = TunnelStream::new({
        let mut s = tokio::net::UnixStream::connect(&listen).await?;
        write_stream_header(
            &mut s,
            &StreamHeader {
                kind: StreamKind::Proxy,
            },
        )
        .await?;
        s
    });
    proxy
        .write_all(b"CONNECT evil.example:443 HTTP/1.1\r\nHost: evil.example:443\r\n\r\n")
        .await?;
    let mut buf = [0u8; 256];
    let n = proxy.read(&mut buf).await?;
    let status_line = String::from_utf8_lossy(&buf[..n]);
    println!(
        "guest got: {}",
        status_line.lines().next().unwrap_or_default()
    );

    // 5. Audit events: one per decision (names only, never values).
    loop {
        match events.recv().await? {
            BrokerEvent::Request(rec) => {
                println!("audit: {} {} -> {}", rec.method, rec.host, rec.verdict);
                break;
            }
            other => println!("event: {other:?}"),
        }
    }

    // 6. Rotate the credential (merge: only OPENAI_API_KEY changes). Open connections use
    //    the new value from their next request on.
    let mut spec: CredentialSpec = broker
        .policy("vm1")
        .and_then(|p| p.credentials.get("OPENAI_API_KEY").cloned())
        .expect("credential exists");
    spec.source = SecretSource::Value(SecretValue::new("sk-example-rotated".into()));
    broker
        .set_credentials(
            "vm1",
            BTreeMap::from([("OPENAI_API_KEY".into(), Some(spec))]),
        )
        .await?;
    println!("rotated OPENAI_API_KEY");

    // 7. Stats and Prometheus metrics.
    println!("stats: {:?}", broker.stats("vm1"));
    let metrics = broker.metrics_text();
    for l in metrics
        .lines()
        .filter(|l| l.starts_with("sluice_vm_requests"))
    {
        println!("metric: {l}");
    }

    // 8. When the VMM stops/suspends/deletes the VM: unregister (open streams end).
    broker.unregister_vm("vm1").await?;
    println!("vm1 unregistered: {:?}", broker.list_vms());
    broker.shutdown().await;
    Ok(())
}
