//! The control conversation against stub brokers on Unix sockets: config, refusal,
//! absence (bounded retry), and the exit-status report.

mod stub_broker;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use guest_agent::broker::{self, BrokerError};
use guest_agent::endpoint::Endpoint;
use guest_agent::init::{status, Fatal};
use shared_proto::{AgentMessage, BootMode, BrokerMessage, GuestConfig, WorkloadExit};
use tokio::net::UnixListener;

/// Serves one control stream: answers the hello with `reply`, then acks one message and
/// returns it.
async fn one_shot(listener: UnixListener, reply: BrokerMessage) -> Option<AgentMessage> {
    let mut s = stub_broker::answer_hello(listener, reply).await;
    let next: AgentMessage = shared_proto::read_message(&mut s).await.ok()?;
    shared_proto::write_message(&mut s, &BrokerMessage::Ack)
        .await
        .unwrap();
    Some(next)
}

/// `fetch_config` (exec mode) against the stub broker at `path`, which must fail.
async fn fetch_error(path: PathBuf) -> BrokerError {
    broker::fetch_config(
        &Endpoint::Unix(path),
        BootMode::Exec,
        Duration::from_secs(10),
    )
    .await
    .unwrap_err()
}

#[tokio::test]
async fn config_then_exit_report() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.sock");
    let listener = UnixListener::bind(&path).unwrap();
    let cfg = GuestConfig {
        vm_id: "vm-7".into(),
        proxy_port: 3128,
        ..Default::default()
    };
    let server = tokio::spawn(one_shot(listener, BrokerMessage::Config(cfg.clone())));
    let ep = Endpoint::Unix(path);
    let (mut control, got) = broker::fetch_config(&ep, BootMode::Exec, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(got.config, cfg);
    let exit = WorkloadExit {
        code: Some(4),
        signal: None,
    };
    control.workload_exited(exit).await.unwrap();
    assert_eq!(
        server.await.unwrap(),
        Some(AgentMessage::WorkloadExited(exit))
    );
}

#[tokio::test]
async fn refusal_maps_to_protocol_status() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("b.sock");
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(one_shot(
        listener,
        BrokerMessage::Refused {
            reason: "unknown VM".into(),
        },
    ));
    let err = fetch_error(path).await;
    assert!(
        matches!(&err, BrokerError::Refused(r) if r == "unknown VM"),
        "{err}"
    );
    assert_eq!(Fatal::from(err).status, status::PROTOCOL);
}

#[tokio::test]
async fn absent_broker_gives_up_after_the_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let ep = Endpoint::Unix(dir.path().join("nobody.sock"));
    let start = Instant::now();
    let err = broker::fetch_config(&ep, BootMode::Exec, Duration::from_secs(1))
        .await
        .unwrap_err();
    let took = start.elapsed();
    assert!(
        matches!(err, BrokerError::Unreachable { secs: 1, .. }),
        "{err}"
    );
    assert!(
        took >= Duration::from_millis(900) && took < Duration::from_secs(5),
        "{took:?}"
    );
    assert_eq!(Fatal::from(err).status, status::UNAVAILABLE);
}

#[tokio::test]
async fn garbage_from_the_broker_is_a_protocol_error() {
    use tokio::io::AsyncWriteExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("g.sock");
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        let _ = shared_proto::read_stream_header(&mut s).await;
        let _: Result<AgentMessage, _> = shared_proto::read_message(&mut s).await;
        s.write_all(&[0xff; 12]).await.unwrap();
    });
    let err = fetch_error(path).await;
    assert!(matches!(err, BrokerError::Protocol(_)), "{err}");
    assert_eq!(Fatal::from(err).status, status::PROTOCOL);
}
