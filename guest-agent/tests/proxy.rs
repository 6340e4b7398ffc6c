//! The real `guest-agent proxy` binary over a Unix socket to a stub broker: CONNECT relay,
//! 200 concurrent connections, and peers that vanish mid-stream.

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shared_proto::{StreamKind, TunnelStream};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpStream, UnixListener, UnixStream};
use tokio::sync::mpsc;

const LIMIT: Duration = Duration::from_secs(60);

/// Events the stub reports: (CONNECT target, how its tunnel ended).
type Events = mpsc::UnboundedSender<(String, &'static str)>;

/// Stub broker: reads the header, answers CONNECT with 200 and echoes bytes. A CONNECT to
/// `vanish:1` makes it drop the transport without an EOF chunk after the first bytes.
async fn stub_broker(
    listener: UnixListener,
    events: Events,
    seen: Arc<Mutex<HashMap<String, usize>>>,
) {
    loop {
        let (stream, _) = listener.accept().await.unwrap();
        let events = events.clone();
        let seen = seen.clone();
        tokio::spawn(async move {
            let (target, how) = serve_one(stream).await;
            *seen.lock().unwrap().entry(target.clone()).or_default() += 1;
            let _ = events.send((target, how));
        });
    }
}

async fn serve_one(mut stream: UnixStream) -> (String, &'static str) {
    let header = shared_proto::read_stream_header(&mut stream).await.unwrap();
    assert_eq!(header.kind, StreamKind::Proxy);
    let mut t = TunnelStream::new(stream);
    // Read the request head.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if t.read_exact(&mut byte).await.is_err() {
            return (String::new(), "closed-before-request");
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let target = head
        .strip_prefix("CONNECT ")
        .and_then(|r| r.split(' ').next())
        .unwrap_or("")
        .to_string();
    t.write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        .await
        .unwrap();
    t.flush().await.unwrap();
    if target == "vanish:1" {
        let mut buf = [0u8; 16];
        let _ = t.read(&mut buf).await;
        drop(t); // the transport closes without an EOF chunk
        return (target, "vanished");
    }
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match t.read(&mut buf).await {
            Ok(0) => {
                let _ = t.shutdown().await;
                return (target, "eof");
            }
            Ok(n) => {
                if t.write_all(&buf[..n]).await.is_err() {
                    return (target, "write-error");
                }
            }
            Err(_) => return (target, "read-error"),
        }
    }
}

struct Agent {
    child: tokio::process::Child,
    addr: String,
}

impl Agent {
    /// A `/proc/<pid>/status` memory figure in KiB (`VmRSS:` now, `VmHWM:` peak).
    fn mem_kib(&self, field: &str) -> u64 {
        let pid = self.child.id().unwrap();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
            .unwrap()
    }
}

/// Starts the agent binary and waits (bounded) for its "listening" line.
async fn start_agent(sock: &Path) -> Agent {
    // SLUICE_AGENT_BIN runs the same test against another build (e.g. the static musl one).
    let bin = std::env::var("SLUICE_AGENT_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_guest-agent").to_string());
    let mut child = tokio::process::Command::new(bin)
        .args(["proxy", "--listen", "127.0.0.1:0", "--connect"])
        .arg(format!("unix:{}", sock.display()))
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = tokio::time::timeout(LIMIT, async {
        while let Some(line) = lines.next_line().await.unwrap() {
            assert!(line.starts_with("sluice-agent: "), "{line}");
            if let Some(rest) = line.strip_prefix("sluice-agent: proxy listening on ") {
                return rest.split(',').next().unwrap().to_string();
            }
        }
        panic!("agent exited before listening");
    })
    .await
    .expect("agent listening in time");
    // Keep draining stderr so the agent never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Agent { child, addr }
}

async fn connect_tunnel(addr: &str, target: &str) -> TcpStream {
    let mut c = TcpStream::connect(addr).await.unwrap();
    c.write_all(format!("CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n").as_bytes())
        .await
        .unwrap();
    let want = b"HTTP/1.1 200 Connection established\r\n\r\n";
    let mut got = vec![0u8; want.len()];
    c.read_exact(&mut got).await.unwrap();
    assert_eq!(&got, want);
    c
}

fn payload(seed: u32, len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(31) ^ seed) as u8)
        .collect()
}

async fn echo_roundtrip(addr: String, target: String, data: Vec<u8>) {
    let c = connect_tunnel(&addr, &target).await;
    let (mut r, mut w) = c.into_split();
    let sent = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await.unwrap();
        w.shutdown().await.unwrap();
    });
    let mut back = Vec::new();
    r.read_to_end(&mut back).await.unwrap();
    writer.await.unwrap();
    assert_eq!(back.len(), data.len(), "{target}");
    assert!(back == data, "{target}: echoed bytes differ");
}

struct Setup {
    _dir: tempfile::TempDir,
    agent: Agent,
    events: mpsc::UnboundedReceiver<(String, &'static str)>,
    seen: Arc<Mutex<HashMap<String, usize>>>,
}

async fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("broker.sock_7070");
    let listener = UnixListener::bind(&sock).unwrap();
    let (tx, events) = mpsc::unbounded_channel();
    let seen = Arc::new(Mutex::new(HashMap::new()));
    tokio::spawn(stub_broker(listener, tx, seen.clone()));
    let agent = start_agent(&sock).await;
    Setup {
        _dir: dir,
        agent,
        events,
        seen,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_a_connect_tunnel_with_half_close() {
    let mut s = setup().await;
    tokio::time::timeout(
        LIMIT,
        echo_roundtrip(
            s.agent.addr.clone(),
            "api.example.com:443".into(),
            payload(1, 300_000),
        ),
    )
    .await
    .unwrap();
    let ev = tokio::time::timeout(LIMIT, s.events.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ev, ("api.example.com:443".to_string(), "eof"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn survives_200_concurrent_connections_and_vanishing_peers() {
    let mut s = setup().await;
    let addr = s.agent.addr.clone();
    let idle_rss = s.agent.mem_kib("VmRSS:");

    // A long-lived tunnel that stays open across everything below.
    let mut survivor = connect_tunnel(&addr, "survivor:443").await;
    survivor.write_all(b"first half ").await.unwrap();

    // The broker side of one tunnel vanishes mid-stream: its client sees the end...
    let mut doomed = connect_tunnel(&addr, "vanish:1").await;
    doomed.write_all(b"hello").await.unwrap();
    let mut rest = Vec::new();
    let end = tokio::time::timeout(LIMIT, doomed.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(end.is_err() || rest.is_empty(), "vanished tunnel must end");

    // ...and a client that resets mid-stream ends its broker stream, not others.
    {
        let c = connect_tunnel(&addr, "client-reset:443").await;
        c.set_zero_linger().unwrap();
        let mut c = c;
        c.write_all(b"partial").await.unwrap();
        drop(c);
    }

    // 200 concurrent echo tunnels.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200u32 {
        tasks.spawn(echo_roundtrip(
            addr.clone(),
            format!("host{i}:443"),
            payload(i, 64 * 1024),
        ));
    }
    tokio::time::timeout(LIMIT, async {
        while let Some(r) = tasks.join_next().await {
            r.unwrap();
        }
    })
    .await
    .expect("200 tunnels in time");
    let busy_rss = s.agent.mem_kib("VmRSS:");
    let peak_rss = s.agent.mem_kib("VmHWM:");

    // The survivor still works end to end.
    survivor.write_all(b"second half").await.unwrap();
    survivor.shutdown().await.unwrap();
    let mut back = Vec::new();
    tokio::time::timeout(LIMIT, survivor.read_to_end(&mut back))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back, b"first half second half");

    // Every tunnel reached the broker once and ended; the reset one ended too.
    let mut ended = HashMap::new();
    tokio::time::timeout(LIMIT, async {
        while ended.len() < 203 {
            let (target, how) = s.events.recv().await.unwrap();
            ended.insert(target, how);
        }
    })
    .await
    .expect("all broker streams ended");
    assert_eq!(ended["vanish:1"], "vanished");
    // The reset client's stream ended without a clean EOF chunk from the agent.
    assert!(
        matches!(ended["client-reset:443"], "read-error" | "write-error"),
        "{}",
        ended["client-reset:443"]
    );
    assert_eq!(ended["survivor:443"], "eof");
    for i in 0..200 {
        assert_eq!(ended[&format!("host{i}:443")], "eof");
    }
    assert!(s.seen.lock().unwrap().values().all(|n| *n == 1));
    eprintln!(
        "guest-agent proxy RSS: idle {idle_rss} KiB, after 200 tunnels {busy_rss} KiB, \
         peak {peak_rss} KiB"
    );
}
