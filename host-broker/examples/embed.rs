//! Embedding the broker core in a VM manager (such as hypeman): the calls for each step of a
//! VM's life -- create, start, standby, restore under a new id, delete -- plus audit events,
//! credential rotation and stats. Builds against the core alone (no control API, persistence,
//! serve config or CLI: `default-features = false`) and runs without a VM: the `guest_*`
//! functions below play the guest agent on the VM's hybrid vsock socket.
//!
//! ```sh
//! cargo run -p host-broker --no-default-features --example embed
//! ```
//!
//! | manager event | broker call |
//! |---|---|
//! | create (before the VMM boots) | [`Broker::register_vm`]; [`Broker::ca_pem`] for the image's trust store |
//! | start | nothing: the agent's hello arrives as [`BrokerEvent::AgentHello`] |
//! | pause / resume | nothing (streams stall; idle keep-alive connections close after 30 s) |
//! | standby (snapshot, VMM exits) | keep the registration (one listening socket), or [`Broker::unregister_vm`] and on resume [`Broker::register_vm`] with the **same id** (same CA) |
//! | restore / fork under a new id | [`Broker::register_vm_with_ca_from`]: the restored memory trusts the source's CA |
//! | delete | [`Broker::unregister_vm`]; remove `<state_dir>/vms/<id>/` to forget its CA |
//! | manager exits | [`Broker::shutdown`] (releases the state dir) |
//!
//! The core keeps only per-VM key material in `state_dir` (`vms/<id>/`: the CA, random
//! placeholders). The registrations themselves are the manager's: after a restart it
//! registers its running VMs again, under the same ids, and they keep their CAs. (The daemon
//! layer's `persist` does exactly that for VMs added through its control API.)

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::ensure;
use host_broker::policy::{CredentialSpec, Policy, SecretSource};
use host_broker::secrets::SecretValue;
use host_broker::{Broker, BrokerConfig, BrokerEvent, VmSpec, VmTransport};
use shared_proto::{
    read_message, write_message, write_stream_header, AgentHello, AgentMessage, BootMode,
    BrokerMessage, GuestConfig, StreamHeader, StreamKind, TunnelStream, PROTOCOL_VERSION,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;

    // One broker per host (it locks its state dir); it listens on nothing until VMs register.
    let broker = Broker::start(BrokerConfig {
        state_dir: dir.path().join("state"),
        vsock_port: shared_proto::DEFAULT_VSOCK_PORT,
        upstream_extra_roots: Vec::new(),
        listener_access: Default::default(),
    })
    .await?;
    let mut events = broker.subscribe();

    // --- create: register before the VMM boots, so the listener exists when the guest
    //     dials. The policy is the same JSON the control API takes (docs/policy.md).
    let policy = Policy::from_json_str(
        r#"{
            "egress": {"default": "deny", "allow": [{"hosts": ["api.openai.com"], "ports": [443]}]},
            "credentials": {"OPENAI_API_KEY": {"source": {"value": "sk-example-first"},
                                               "hosts": ["api.openai.com"]}}
        }"#,
    )?;
    let vm1_socket = dir.path().join("vm1.vsock"); // Cloud Hypervisor --vsock socket=...
    broker
        .register_vm(VmSpec {
            id: "vm1".into(),
            transport: VmTransport::HybridSocket(vm1_socket.clone()),
            policy: policy.clone(),
        })
        .await?;
    let listen = broker.listen_path("vm1").expect("hybrid VM");
    println!(
        "create: vm1 registered; broker listens on {}",
        listen.display()
    );
    // The CA the guest must trust. The agent also receives it in its GuestConfig and installs
    // it for the workload; a manager that wants it in the image's system trust store (for
    // processes outside the agent's environment) writes this PEM there.
    let ca1 = broker.ca_pem("vm1").expect("registered");
    println!(
        "create: vm1 CA for the image: {}",
        ca1.lines().next().unwrap_or_default()
    );

    // --- start: nothing to call. The agent's control stream: hello -> GuestConfig with
    //     placeholders only; the manager sees the hello as an event.
    let (control, cfg) = guest_hello(&listen).await?;
    println!("start: guest env {:?}", cfg.env); // {"OPENAI_API_KEY": "mock-OPENAI_API_KEY"}
    ensure!(
        cfg.ca_certs_pem == vec![ca1.clone()],
        "the guest trusts vm1's CA"
    );
    match events.recv().await? {
        BrokerEvent::AgentHello {
            vm, agent_version, ..
        } => {
            println!("start: event AgentHello from {vm} (agent {agent_version})")
        }
        other => println!("start: event {other:?}"),
    }

    // Running: a proxy stream asking for a host the policy does not allow, and its audit
    // event (one per decision; names only, never values).
    println!(
        "running: guest got {}",
        guest_connect(&listen, "evil.example:443").await?
    );
    loop {
        match events.recv().await? {
            BrokerEvent::Request(rec) => {
                println!(
                    "running: audit {} {} -> {}",
                    rec.method, rec.host, rec.verdict
                );
                break;
            }
            other => println!("running: event {other:?}"),
        }
    }

    // Rotate the credential (merge: only OPENAI_API_KEY changes). Open connections use the
    // new value from their next request on.
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
    println!("running: rotated OPENAI_API_KEY");

    // Stats and Prometheus metrics (the manager serves the text wherever it likes).
    println!("running: stats {:?}", broker.stats("vm1"));
    let metrics = broker.metrics_text();
    for l in metrics
        .lines()
        .filter(|l| l.starts_with("sluice_vm_requests"))
    {
        println!("running: metric {l}");
    }

    // --- standby: the VMM snapshots the VM and exits; its vsock connections are gone.
    //     Either keep the registration (one idle listening socket; on resume the agent just
    //     reconnects and nothing is called), or free it as here and register the same id
    //     again on resume. Note: the policy given on resume is what applies, so pass the
    //     current one (here: with the rotated credential).
    drop(control);
    let current = broker.policy("vm1").expect("registered");
    broker.unregister_vm("vm1").await?;
    println!("standby: vm1 unregistered: {:?}", broker.list_vms());
    broker
        .register_vm(VmSpec {
            id: "vm1".into(),
            transport: VmTransport::HybridSocket(vm1_socket),
            policy: current.clone(),
        })
        .await?;
    ensure!(
        broker.ca_pem("vm1") == Some(ca1.clone()),
        "same id, same CA: the resumed guest's trust store still matches"
    );
    let (_control1, _) = guest_hello(&broker.listen_path("vm1").expect("hybrid")).await?;
    println!("resume: vm1 registered again with its CA; its agent said hello");

    // --- restore under a new id (a fork, or a restore that must not clash with vm1): the
    //     snapshot's memory trusts vm1's CA, so vm2 is served with a copy of it. vm1 need not
    //     be registered any more (a removed VM's CA stays in the state dir).
    broker
        .register_vm_with_ca_from(
            VmSpec {
                id: "vm2".into(),
                transport: VmTransport::HybridSocket(dir.path().join("vm2.vsock")),
                policy: current,
            },
            "vm1",
        )
        .await?;
    let (_control2, cfg2) = guest_hello(&broker.listen_path("vm2").expect("hybrid")).await?;
    ensure!(cfg2.vm_id == "vm2" && cfg2.ca_certs_pem == vec![ca1.clone()]);
    println!("restore: vm2 (from vm1's snapshot) serves with vm1's CA");

    // --- delete: unregister (open streams end, the socket file goes). The CA stays under
    //     <state_dir>/vms/<id>/ so a re-registered or forked VM keeps it; remove that
    //     directory to forget it once no snapshot of the VM will be restored.
    for id in ["vm1", "vm2"] {
        broker.unregister_vm(id).await?;
        std::fs::remove_dir_all(broker.state_dir().join("vms").join(id))?;
    }
    println!("delete: vm1 and vm2 gone: {:?}", broker.list_vms());

    // --- the manager exits: stop everything and release the state dir.
    broker.shutdown().await;
    println!("shutdown: done");
    Ok(())
}

/// The guest agent's control stream: stream header, hello, then the broker's GuestConfig.
/// The stream stays open while the returned `UnixStream` lives.
async fn guest_hello(listen: &Path) -> anyhow::Result<(UnixStream, GuestConfig)> {
    let mut control = UnixStream::connect(listen).await?;
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
    match read_message(&mut control).await? {
        BrokerMessage::Config(cfg) => Ok((control, cfg)),
        other => anyhow::bail!("expected the GuestConfig, got {other:?}"),
    }
}

/// The guest's proxy stream: one `CONNECT`, returns the broker's status line.
async fn guest_connect(listen: &Path, authority: &str) -> anyhow::Result<String> {
    let mut s = UnixStream::connect(listen).await?;
    write_stream_header(
        &mut s,
        &StreamHeader {
            kind: StreamKind::Proxy,
        },
    )
    .await?;
    let mut proxy = TunnelStream::new(s);
    proxy
        .write_all(format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = [0u8; 256];
    let n = proxy.read(&mut buf).await?;
    Ok(String::from_utf8_lossy(&buf[..n])
        .lines()
        .next()
        .unwrap_or_default()
        .to_owned())
}
