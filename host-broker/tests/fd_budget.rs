//! Issue 11: `max_connections` bounds file descriptors. Streams over a VM's limit used to be
//! served a `503` after reading a request head, with the 30 s header timeout: idle ones sat
//! 30 s each, and a VM that kept opening them held any number of fds. Now at most
//! `MAX_REFUSING` (8) over-limit streams per VM wait (2 s) for a request to answer; the
//! rest are closed at once.

mod common;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use common::*;

/// Open file descriptors of this process (the broker runs in-process).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test]
async fn idle_streams_over_the_limit_are_closed_promptly_and_fds_stay_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "fd", &["api.test"]);
    let up = spawn_upstream(Some(pki.server.clone())).await;
    let policy = format!(
        r#"{{
        "egress": {{"default": "deny", "allow": [{{"hosts": ["api.test"]}}, {{"cidrs": ["127.0.0.1/32"]}}]}},
        "max_connections": 1,
        "resolve": {{"api.test": "{}"}}
    }}"#,
        up.addr
    );
    let h = harness_with_key(dir, &policy, "unused-secret-value", &pki).await;
    // The VM's one slot, held by a tunnel.
    let (status, head, _held) = connect_via(h.proxy, "api.test:443").await;
    assert_eq!(status, 200, "{head}");
    let before = open_fds();

    // 40 streams over the limit that never send a byte.
    let mut idle = Vec::new();
    for _ in 0..40 {
        idle.push(TcpStream::connect(h.proxy).await.unwrap());
    }
    for (i, s) in idle.iter_mut().enumerate() {
        let mut buf = [0u8; 256];
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("idle stream {i} over the limit still open after the wait"));
        // Closed (EOF or reset), not answered: there was no request.
        assert!(matches!(n, Ok(0) | Err(_)), "stream {i}: {n:?}");
    }
    drop(idle);

    // A well-behaved client over the limit still gets the 503 with the reason.
    let mut s = TcpStream::connect(h.proxy).await.unwrap();
    s.write_all(b"GET http://api.test/ HTTP/1.1\r\nHost: api.test\r\n\r\n")
        .await
        .unwrap();
    let head = read_head(&mut s).await;
    assert!(head.starts_with("HTTP/1.1 503"), "{head}");
    assert!(
        head.contains("per-VM connection limit (1) reached"),
        "{head}"
    );
    drop(s);

    // Every over-limit stream is gone: the fd count is back near where it was (the test's
    // own client sockets and the bridge's are in this process too, hence the slack).
    let after = open_fds();
    assert!(after <= before + 8, "fds: {before} before, {after} after");
}
