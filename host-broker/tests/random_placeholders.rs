//! `"placeholder": "random"` end to end in-process: the guest gets an unguessable
//! placeholder in its GuestConfig env, it is substituted for that VM only, another VM gets
//! another one, and a restarted broker gives the same VM the same placeholder.

mod common;

use common::*;
use host_broker::policy::Policy;
use host_broker::secrets::MapEnv;
use host_broker::{VmSpec, VmTransport};
use shared_proto::{BootMode, BrokerMessage};
use tokio::net::UnixStream;

const SECRET: &str = "sk-live-RANDOM-PH-0a1b2c3d4e";

fn policy(addr: std::net::SocketAddr) -> String {
    format!(
        r#"{{
        "egress": {{"default": "deny",
            "allow": [{{"hosts": ["api.test"]}}, {{"cidrs": ["127.0.0.1/32"]}}]}},
        "credentials": {{"API_KEY": {{"source": {{"env": "API_KEY"}}, "hosts": ["api.test"],
                                       "placeholder": "random"}}}},
        "resolve": {{"api.test": "{addr}"}}
    }}"#
    )
}

async fn guest_env_placeholder(listen: &std::path::Path) -> String {
    let mut s = UnixStream::connect(listen).await.unwrap();
    open_control(&mut s).await;
    let BrokerMessage::Config(cfg) = agent_hello(&mut s, "test-0", BootMode::Exec).await else {
        panic!("no config");
    };
    cfg.env["API_KEY"].clone()
}

#[tokio::test]
async fn random_placeholder_is_per_vm_in_the_guest_env_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "good", &["api.test"]);
    let up = spawn_upstream(Some(pki.server.clone())).await;
    let policy = policy(up.addr);
    let h = harness_with_key(dir, &policy, SECRET, &pki).await;

    let ph = guest_env_placeholder(&h.listen).await;
    assert!(
        ph.starts_with("mock-API_KEY-") && ph.len() == 13 + 32,
        "{ph}"
    );
    let mut c = intercepted_client(&h, "api.test", 443).await;
    let auth = format!("Bearer {ph}");
    let (status, headers, _) = get(
        &mut c,
        "/a",
        &[("host", "api.test"), ("authorization", &auth)],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        headers["x-echo-authorization"],
        auth.as_str(),
        "scrubbed back"
    );
    assert_eq!(
        up.requests()[0].header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    // The default form means nothing for this VM.
    let (status, _, _) = get(&mut c, "/b", &[("host", "api.test"), PLACEHOLDER_AUTH]).await;
    assert_eq!(status, 200);
    assert_eq!(
        up.requests()[1].header("authorization"),
        Some("Bearer mock-API_KEY")
    );

    // A second VM with the same policy draws another placeholder; VM1's is nothing there.
    let sock2 = h.dir.path().join("vm2.vsock");
    h.broker
        .register_vm_with_env(
            VmSpec {
                id: "vm2".into(),
                transport: VmTransport::HybridSocket(sock2.clone()),
                policy: Policy::from_json_str(&policy).unwrap(),
            },
            &MapEnv::from_pairs([("API_KEY", SECRET)]),
        )
        .await
        .unwrap();
    let listen2 = h.dir.path().join("vm2.vsock_7070");
    let ph2 = guest_env_placeholder(&listen2).await;
    assert_ne!(ph2, ph);
    let proxy2 = spawn_bridge(listen2).await;
    let (st, head, s) = connect_via(proxy2, "api.test:443").await;
    assert_eq!(st, 200, "{head}");
    let mut c2 = http1(
        tls_over(s, "api.test", &h.broker.ca_pem("vm2").unwrap())
            .await
            .unwrap(),
    )
    .await;
    let (status, _, _) = get(
        &mut c2,
        "/c",
        &[("host", "api.test"), ("authorization", &auth)],
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(
        up.requests()[2].header("authorization"),
        Some(auth.as_str()),
        "VM1's placeholder is not substituted for VM2"
    );

    // A restarted broker on the same state dir: the same placeholder for vm1.
    h.broker.shutdown().await;
    let broker = start_broker(h.dir.path(), vec![pki.ca_path.clone()]).await;
    broker
        .register_vm_with_env(
            VmSpec {
                id: "vm1".into(),
                transport: VmTransport::HybridSocket(h.dir.path().join("vm1.vsock")),
                policy: Policy::from_json_str(&policy).unwrap(),
            },
            &MapEnv::from_pairs([("API_KEY", SECRET)]),
        )
        .await
        .unwrap();
    assert_eq!(guest_env_placeholder(&h.listen).await, ph);
    assert_eq!(
        broker.policy("vm1").unwrap().credentials["API_KEY"]
            .placeholder
            .as_deref(),
        Some(ph.as_str())
    );
}
