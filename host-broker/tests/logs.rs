//! A canary secret must never appear in logs, whatever happens to the requests that use it.
//! This binary installs a global subscriber at TRACE capturing everything the broker logs.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};

use common::*;

const CANARY: &str = "CANARY-7f3e9b2a-do-not-log";

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_secret_never_logged() {
    let cap = Capture::default();
    let writer = cap.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "good", &["api.test", "other.test"]);
    let up = spawn_upstream(Some(pki.server.clone())).await;
    let policy = format!(
        r#"{{
        "egress": {{"default": "deny", "allow": [{{"hosts": ["api.test", "other.test"]}}, {{"cidrs": ["127.0.0.1/32"]}}]}},
        "credentials": {{"API_KEY": {{"source": {{"env": "API_KEY"}}, "hosts": ["api.test"],
            "in": ["headers", "query", "body"],
            "inject": [{{"header": "x-injected", "format": "Key ${{value}}"}}]}}}},
        "resolve": {{"api.test": "{a}", "other.test": "{a}"}}
    }}"#,
        a = up.addr
    );
    let h = harness_with_key(dir, &policy, CANARY, &pki).await;

    // Substituted, echoed back (scrubbed), blocked elsewhere, and over plaintext.
    let mut c = intercepted_client(&h, "api.test", 443).await;
    let (s, hdrs, _) = get(&mut c, "/a", &[("host", "api.test"), PLACEHOLDER_AUTH]).await;
    assert_eq!(s, 200);
    assert!(!format!("{hdrs:?}").contains(CANARY));
    let mut c = intercepted_client(&h, "other.test", 443).await;
    let (s, _, _) = get(&mut c, "/b", &[("host", "other.test"), PLACEHOLDER_AUTH]).await;
    assert_eq!(s, 403);
    // Query and body substitution (and a blocked body toward the wrong host).
    for host in ["api.test", "other.test"] {
        let mut c = intercepted_client(&h, host, 443).await;
        let req = hyper::Request::post("/q?k=mock-API_KEY")
            .header("host", host)
            .body(http_body_util::Full::new(bytes::Bytes::from_static(
                b"{\"k\":\"mock-API_KEY\"}",
            )))
            .unwrap();
        c.ready().await.unwrap();
        let resp = c.send_request(req).await.unwrap();
        let want = if host == "api.test" { 200 } else { 403 };
        assert_eq!(resp.status(), want);
    }
    let seen = up.requests();
    assert!(seen.iter().any(|r| r.path == format!("/q?k={CANARY}")));
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {CANARY}").as_str())
    );

    let logs = String::from_utf8(cap.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("sluice::audit"), "audit events were captured");
    assert!(logs.contains("API_KEY"), "credential names are logged");
    assert!(!logs.contains(CANARY), "canary leaked into logs");
    // Debug of the broker and events never shows it either.
    assert!(!format!("{:?}", h.broker).contains(CANARY));
}
