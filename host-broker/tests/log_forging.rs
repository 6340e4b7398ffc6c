//! Issue 11: guest-supplied text in the host's logs. A guest's Hello `agent_version` and
//! `Failed { reason }` must not start a forged log line (newline) or carry terminal escapes,
//! in the text or the JSON log format.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;
use shared_proto::{read_message, write_message, AgentMessage, BootMode, BrokerMessage};
use tokio::net::UnixStream;
use tracing_subscriber::layer::SubscriberExt;

#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

const FORGED: &str = "\n2026-01-01T00:00:00.000000Z ERROR sluice::audit: FORGED-LINE \u{1b}[31mred";

#[tokio::test]
async fn guest_strings_cannot_forge_log_lines() {
    let (text, json) = (Capture::default(), Capture::default());
    let (t, j) = (text.clone(), json.clone());
    let subscriber = tracing_subscriber::registry()
        .with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || t.clone()),
        )
        .with(
            tracing_subscriber::fmt::layer()
                .json()
                .with_writer(move || j.clone()),
        );
    // The broker's tasks run on this (current-thread) runtime, so a thread default is enough.
    let _guard = tracing::subscriber::set_default(subscriber);

    let h = harness_in(
        tempfile::tempdir().unwrap(),
        r#"{"credentials": {}}"#,
        &[],
        vec![],
    )
    .await;
    let mut s = UnixStream::connect(&h.listen).await.unwrap();
    open_control(&mut s).await;
    let version = format!("0.1.0{FORGED}");
    assert!(matches!(
        agent_hello(&mut s, &version, BootMode::Exec).await,
        BrokerMessage::Config(_)
    ));
    write_message(
        &mut s,
        &AgentMessage::Failed {
            reason: format!("boom{FORGED}"),
        },
    )
    .await
    .unwrap();
    let ack: BrokerMessage = tokio::time::timeout(WAIT, read_message(&mut s))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ack, BrokerMessage::Ack);

    for (format, logs) in [("text", text.text()), ("json", json.text())] {
        assert!(
            logs.contains("agent hello"),
            "{format}: hello logged:\n{logs}"
        );
        assert!(
            logs.contains("agent reported a failure"),
            "{format}: failure logged:\n{logs}"
        );
        assert!(
            logs.contains("FORGED-LINE"),
            "{format}: the text is kept, escaped"
        );
        for line in logs.lines() {
            assert!(
                !line.starts_with("2026-01-01T00:00:00.000000Z"),
                "{format}: forged line in the log:\n{logs}"
            );
        }
        assert!(
            !logs.contains('\u{1b}'),
            "{format}: raw escape in the log:\n{logs:?}"
        );
    }
}
