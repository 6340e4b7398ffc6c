//! A broker that appears only after the agent started waiting is still found.
//!
//! Alone in its own test binary: it observes the agent's "waiting" log through a *global*
//! tracing subscriber, which a thread-local one next to other tests did not do reliably.

mod stub_broker;

use std::time::{Duration, Instant};

use guest_agent::broker;
use guest_agent::endpoint::Endpoint;
use shared_proto::{BootMode, BrokerMessage, GuestConfig};
use tokio::net::UnixListener;

/// Serves one control stream: answers the hello with `reply`.
async fn one_shot(listener: UnixListener, reply: BrokerMessage) {
    stub_broker::answer_hello(listener, reply).await;
}

#[tokio::test]
async fn a_broker_that_appears_late_is_found() {
    let (tx, rx) = std::sync::mpsc::channel();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || WaitSignal(tx.clone()))
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("late.sock");
    let ep = Endpoint::Unix(path.clone());
    let client = tokio::spawn(async move {
        broker::fetch_config(&ep, BootMode::Exec, Duration::from_secs(20)).await
    });
    // Bind only once the agent has failed and said it is waiting (bounded wait).
    let deadline = Instant::now() + Duration::from_secs(20);
    while rx.try_recv().is_err() {
        assert!(Instant::now() < deadline, "agent never reported waiting");
        tokio::task::yield_now().await;
    }
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(one_shot(
        listener,
        BrokerMessage::Config(GuestConfig::default()),
    ));
    let (_, cfg) = client.await.unwrap().unwrap();
    assert_eq!(cfg.config, GuestConfig::default());
}

/// A log writer that signals when the agent reports it is waiting for the broker.
#[derive(Clone)]
struct WaitSignal(std::sync::mpsc::Sender<()>);

impl std::io::Write for WaitSignal {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if String::from_utf8_lossy(buf).contains("waiting for the broker") {
            let _ = self.0.send(());
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
