//! Issue 11, "Tests that count": one VM floods the broker with every stream kind that used
//! to cost it without bound, all at once and held -- idle proxy streams far over its
//! `max_connections`, idle control streams, and control streams that announce a 1 MiB frame
//! and stall half-way -- while a second VM keeps making intercepted requests. Before the
//! per-VM budgets the broker held every one of those streams (3,000 idle control streams held
//! 3,000 fds; 400 stalled frames took it from 54 to 450 MB RSS; at a 1,024-fd limit every
//! request of the second VM failed).
//!
//! Asserted: the broker sheds the excess (the flood's streams still open come down to what
//! the budgets allow), its fd count and RSS stay under a ceiling, and every request of the
//! second VM succeeds, with its p99 under a starvation ceiling. The latency *ratio* is a
//! figure, not an assertion (benches/flood.rs prints it): this test only has to catch a VM
//! starved or failed by another. Alone in its binary, so the process's fds and RSS are the
//! broker's and this test's.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::*;
use host_broker::policy::Policy;
use host_broker::secrets::MapEnv;
use host_broker::{VmSpec, VmTransport};
use shared_proto::{write_stream_header, StreamHeader, StreamKind};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;

/// vm1's `max_connections`.
const VM1_LIMIT: usize = 32;
/// Over-limit proxy streams allowed to wait for a request (`proxy::MAX_REFUSING`).
const REFUSING: usize = 8;
/// Control streams per VM (`control::MAX_CONTROL_STREAMS`).
const CONTROL_CAP: usize = 8;
const IDLE_PROXY: usize = 300;
const IDLE_CONTROL: usize = 100;
const STALLED_FRAMES: usize = 100;
/// What one stalled stream sends of its announced 1 MiB frame.
const STALLED_BYTES: usize = 512 * 1024;
/// vm2's requests under the flood.
const REQUESTS: usize = 200;

fn policy(up: std::net::SocketAddr, limit: usize) -> String {
    format!(
        r#"{{"egress": {{"default": "deny", "allow": [{{"hosts": ["api.test"]}}, {{"cidrs": ["127.0.0.1/32"]}}]}},
            "credentials": {{"API_KEY": {{"source": {{"env": "API_KEY"}}, "hosts": ["api.test"]}}}},
            "max_connections": {limit}, "resolve": {{"api.test": "{up}"}}}}"#
    )
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

/// Resident set size of this process, in KiB.
fn rss_kib() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap()
}

/// Holds one flood stream until the broker closes it (EOF or error), counting it in `open`
/// while it is held; `first` is sent right after the stream header (shared, so this test's
/// own memory does not grow with the flood).
fn hold(listen: std::path::PathBuf, kind: StreamKind, first: Bytes, open: Arc<AtomicUsize>) {
    tokio::spawn(async move {
        let Ok(mut s) = UnixStream::connect(&listen).await else {
            return;
        };
        open.fetch_add(1, Ordering::SeqCst);
        if write_stream_header(&mut s, &StreamHeader { kind })
            .await
            .is_ok()
        {
            // A refused stream may be closed before all of `first` is written.
            let _ = s.write_all(&first).await;
            let mut b = [0u8; 256];
            while matches!(s.read(&mut b).await, Ok(n) if n > 0) {}
        }
        open.fetch_sub(1, Ordering::SeqCst);
    });
}

/// (p50, p99, failures) of `n` sequential GETs on `c`.
async fn gets(
    c: &mut hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>,
    n: usize,
) -> (Duration, Duration, usize) {
    let headers = [
        ("host", "api.test"),
        ("authorization", "Bearer mock-API_KEY"),
    ];
    let mut lat = Vec::with_capacity(n);
    let mut failed = 0;
    for _ in 0..n {
        let t = Instant::now();
        let (status, _, _) = get(c, "/small", &headers).await;
        if status != 200 {
            failed += 1;
        }
        lat.push(t.elapsed());
    }
    lat.sort();
    let at = |p: f64| lat[((lat.len() - 1) as f64 * p).round() as usize];
    (at(0.5), at(0.99), failed)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_every_stream_kind_leaves_another_vm_served_and_the_broker_bounded() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "flood", &["api.test"]);
    let up = spawn_upstream(Some(pki.server.clone())).await;
    let env = [("API_KEY", "flood-test-secret-value-0123456789")];
    let vm1 = harness_in(
        dir,
        &policy(up.addr, VM1_LIMIT),
        &env,
        vec![pki.ca_path.clone()],
    )
    .await;
    let sock2 = vm1.dir.path().join("vm2.vsock");
    vm1.broker
        .register_vm_with_env(
            VmSpec {
                id: "vm2".into(),
                transport: VmTransport::HybridSocket(sock2),
                policy: Policy::from_json_str(&policy(up.addr, 256)).unwrap(),
            },
            &MapEnv::from_pairs(env),
        )
        .await
        .unwrap();
    let proxy2 = spawn_bridge(vm1.dir.path().join("vm2.vsock_7070")).await;
    let ca2 = vm1.broker.ca_pem("vm2").unwrap();
    let (status, head, s) = connect_via(proxy2, "api.test:443").await;
    assert_eq!(status, 200, "{head}");
    let mut c = http1(tls_over(s, "api.test", &ca2).await.unwrap()).await;
    let (base50, base99, failed) = gets(&mut c, REQUESTS).await;
    assert_eq!(failed, 0, "vm2 alone");
    let (fds_before, rss_before) = (open_fds(), rss_kib());

    // vm1's flood, every stream held until the broker closes it.
    let flood_start = Instant::now();
    let open = Arc::new(AtomicUsize::new(0));
    for _ in 0..IDLE_PROXY {
        hold(
            vm1.listen.clone(),
            StreamKind::Proxy,
            Bytes::new(),
            open.clone(),
        );
    }
    for _ in 0..IDLE_CONTROL {
        hold(
            vm1.listen.clone(),
            StreamKind::Control,
            Bytes::new(),
            open.clone(),
        );
    }
    let mut frame = (1u32 << 20).to_be_bytes().to_vec();
    frame.extend(std::iter::repeat_n(b'{', STALLED_BYTES));
    let frame = Bytes::from(frame);
    for _ in 0..STALLED_FRAMES {
        hold(
            vm1.listen.clone(),
            StreamKind::Control,
            frame.clone(),
            open.clone(),
        );
    }
    let total = IDLE_PROXY + IDLE_CONTROL + STALLED_FRAMES;
    // Peaks of fds and RSS while the flood lasts, sampled every 10 ms.
    let peaks = Arc::new((AtomicUsize::new(0), AtomicUsize::new(0)));
    let sampler = {
        let peaks = peaks.clone();
        tokio::spawn(async move {
            loop {
                peaks.0.fetch_max(open_fds(), Ordering::SeqCst);
                peaks.1.fetch_max(rss_kib(), Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };

    // vm2 is served while the flood is at its peak and being shed.
    let (p50, p99, failed) = gets(&mut c, REQUESTS).await;
    println!(
        "vm2 p50 {base50:?} -> {p50:?} ({:.2}x), p99 {base99:?} -> {p99:?} ({:.2}x) under \
         vm1's flood of {total} streams",
        p50.as_secs_f64() / base50.as_secs_f64(),
        p99.as_secs_f64() / base99.as_secs_f64()
    );
    assert_eq!(failed, 0, "every vm2 request under the flood succeeds");
    assert!(
        p99 < Duration::from_secs(2),
        "vm2 starved: p99 {p99:?} under the flood"
    );

    // The broker sheds what no budget allows: at most vm1's slots, the refusal queue and the
    // control cap stay open. The refusal wait is 2 s; the deadline stays under the 10 s Hello
    // and frame timeouts, so the budgets, not those timeouts, must have done the shedding.
    let allowed = VM1_LIMIT + REFUSING + CONTROL_CAP;
    let shed_within = Duration::from_secs(8);
    let deadline = flood_start + shed_within;
    while open.load(Ordering::SeqCst) > allowed && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let still_open = open.load(Ordering::SeqCst);
    sampler.abort();
    let fds = open_fds();
    let (peak_fds, rss) = (
        peaks.0.load(Ordering::SeqCst),
        peaks.1.load(Ordering::SeqCst),
    );
    println!(
        "flood streams still open {still_open} of {total} after {:?}; process fds \
         {fds_before} -> {fds} (peak {peak_fds} while connecting), RSS {rss_before} -> peak \
         {rss} KiB",
        flood_start.elapsed()
    );
    assert!(
        still_open <= allowed,
        "{still_open} of vm1's {total} flood streams still open after {shed_within:?} (budgets \
         allow {allowed})"
    );
    // With the flood still held: each stream left open costs an fd at both ends (this
    // test's and the broker's). The peak while 500 streams connect at once is not asserted:
    // it counts this test's own ends and streams accepted and not yet refused.
    let fd_ceiling = fds_before + 2 * allowed + 16;
    assert!(fds <= fd_ceiling, "process fds {fds} > {fd_ceiling}");
    // Stalled frames: at most the control cap of them can be buffered (1 MiB each).
    let rss_ceiling = rss_before + (CONTROL_CAP + 24) * 1024;
    assert!(
        rss <= rss_ceiling,
        "RSS {rss} KiB > {rss_ceiling} KiB with {STALLED_FRAMES} stalled 1 MiB frames"
    );

    // And vm2 is still served after the flood.
    let (_, _, failed) = gets(&mut c, 20).await;
    assert_eq!(failed, 0, "vm2 after the flood");
    vm1.broker.shutdown().await;
}
