//! `cargo bench -p host-broker --bench flood`: a second VM's request latency while a first
//! VM floods the broker, against its baseline, and the ratio (issue 11: "within a small
//! factor"). In-process on loopback with the test fixtures; one broker, two VMs.
//!
//! Two floods from vm1 (its `max_connections` is 32), each measured on its own:
//! - **resource flood** (what the per-VM budgets are for): 64 tasks reopening a proxy stream
//!   that sends nothing (the 32 slots fill, then the refusal budget of 8, the rest are closed
//!   at once), 16 tasks reopening a control stream that sends nothing and 16 that start a
//!   1 MiB control frame and stall (per-VM control cap 8, the rest refused);
//! - **busy flood** (plain CPU competition): 16 intercepted keep-alive connections sending
//!   GETs back to back. No budget changes this; per-VM CPU fairness (`src/fair.rs`) does:
//!   without it the broker serves vm2's one connection as one of 17 runnable tasks in
//!   tokio's FIFO order, so with 2 cores its latency grows with vm1's concurrency.
//!
//! The busy flood runs with fairness off (`Broker::set_fair_scheduling(false)`, the old
//! behaviour) and on, in the same run, in two topologies:
//! - **split**: each VM's guest side (clients, the bridge standing in for the agent) and its
//!   upstream run on runtimes of their own (vm1: 2 workers, vm2: 1), so that the broker's
//!   runtime holds only the broker's tasks, as in production (guests are other processes,
//!   upstreams other hosts); the OS shares the cores between the threads;
//! - **shared**: everything on the broker's runtime (the bench's first topology): vm2's
//!   client and upstream tasks also queue behind vm1's client and upstream tasks, which no
//!   broker-side scheduling can reorder.
//!
//! vm2 measures sequential GETs on one intercepted keep-alive connection, alone and under
//! each flood. Figures depend on the machine (the CI box has 2 shared cores). `cargo bench
//! --bench flood -- busy` skips the resource flood (and its 45 s wait); `FLOOD_REPS` (3) sets
//! how many off/on pairs the split topology runs.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use host_broker::policy::Policy;
use host_broker::secrets::MapEnv;
use host_broker::{VmSpec, VmTransport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

const REQUESTS: usize = 1000;
const BUSY_CONNS: usize = 16;
const IDLE_TASKS: usize = 64;
const CONTROL_TASKS: usize = 16;

type Sender = hyper::client::conn::http1::SendRequest<http_body_util::Full<bytes::Bytes>>;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn client(proxy: std::net::SocketAddr, ca_pem: &str) -> Sender {
    let (status, head, s) = connect_via(proxy, "api.test:443").await;
    assert_eq!(status, 200, "{head}");
    http1(tls_over(s, "api.test", ca_pem).await.unwrap()).await
}

const HEADERS: &[(&str, &str)] = &[
    ("host", "api.test"),
    ("authorization", "Bearer mock-API_KEY"),
];

/// (p50, p99, mean) of `REQUESTS` sequential GETs.
async fn measure(c: &mut Sender) -> (Duration, Duration, Duration) {
    for _ in 0..50 {
        get(c, "/small", HEADERS).await;
    }
    let mut lat = Vec::with_capacity(REQUESTS);
    for _ in 0..REQUESTS {
        let t = Instant::now();
        let (s, _, _) = get(c, "/small", HEADERS).await;
        assert_eq!(s, 200);
        lat.push(t.elapsed());
    }
    let mean = lat.iter().sum::<Duration>() / REQUESTS as u32;
    lat.sort();
    (pct(&lat, 0.5), pct(&lat, 0.99), mean)
}

fn policy(up: std::net::SocketAddr, limit: usize) -> String {
    format!(
        r#"{{"egress": {{"default": "deny", "allow": [{{"hosts": ["api.test"]}}, {{"cidrs": ["127.0.0.1/32"]}}]}},
            "credentials": {{"API_KEY": {{"source": {{"env": "API_KEY"}}, "hosts": ["api.test"]}}}},
            "max_connections": {limit}, "resolve": {{"api.test": "{up}"}}}}"#
    )
}

/// vm1's busy flood: `BUSY_CONNS` clients on `rt`, counting requests in `counts[0]`.
fn busy_on(
    rt: &tokio::runtime::Handle,
    proxy: std::net::SocketAddr,
    ca: &str,
    stop: Arc<AtomicBool>,
    counts: Arc<[AtomicU64; 3]>,
) {
    // FLOOD_BODY=n: each flood request is a POST of n bytes, which the broker buffers and
    // scans for placeholders in every decoded form (cheap to send, costly to inspect).
    let body_len: usize = std::env::var("FLOOD_BODY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let body = bytes::Bytes::from(
        b"{\"q\": \"a%20b\\u0041c\"}, "
            .iter()
            .copied()
            .cycle()
            .take(body_len)
            .collect::<Vec<u8>>(),
    );
    for _ in 0..BUSY_CONNS {
        let (ca, stop, counts, body) = (ca.to_owned(), stop.clone(), counts.clone(), body.clone());
        rt.spawn(async move {
            let mut c = client(proxy, &ca).await;
            while !stop.load(Ordering::Relaxed) {
                if body.is_empty() {
                    get(&mut c, "/small", HEADERS).await;
                } else {
                    let mut req = hyper::Request::post("/small");
                    for (n, v) in HEADERS {
                        req = req.header(*n, *v);
                    }
                    let req = req.body(http_body_util::Full::new(body.clone())).unwrap();
                    send(&mut c, req).await;
                }
                counts[0].fetch_add(1, Ordering::Relaxed);
            }
        });
    }
}

/// Starts vm1's flood; returns the counters (requests, idle proxy reopenings, control
/// reopenings). Tasks end when `stop` is set.
fn flood(h: &Harness, stop: Arc<AtomicBool>) -> Arc<[AtomicU64; 3]> {
    let counts: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
    for _ in 0..IDLE_TASKS {
        let (proxy, stop, counts) = (h.proxy, stop.clone(), counts.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = TcpStream::connect(proxy).await else {
                    continue;
                };
                let mut b = [0u8; 64];
                let _ = tokio::time::timeout(Duration::from_secs(40), s.read(&mut b)).await;
                counts[1].fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    for i in 0..CONTROL_TASKS * 2 {
        let (listen, stop, counts) = (h.listen.clone(), stop.clone(), counts.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut s) = UnixStream::connect(&listen).await else {
                    continue;
                };
                open_control(&mut s).await;
                if i % 2 == 1 {
                    // A 1 MiB frame announced, 4 KiB of it sent, then nothing.
                    let mut start = (1u32 << 20).to_be_bytes().to_vec();
                    start.extend(vec![b'{'; 4096]);
                    let _ = s.write_all(&start).await;
                }
                let mut b = [0u8; 64];
                let _ = tokio::time::timeout(Duration::from_secs(40), s.read(&mut b)).await;
                counts[2].fetch_add(1, Ordering::Relaxed);
            }
        });
    }
    counts
}

type Figures = (Duration, Duration, Duration);

/// vm2's figures measured on `rt` (a fresh connection through `proxy`).
async fn measure_on(rt: &tokio::runtime::Handle, proxy: std::net::SocketAddr, ca: &str) -> Figures {
    let ca = ca.to_owned();
    rt.spawn(async move {
        let mut c = client(proxy, &ca).await;
        measure(&mut c).await
    })
    .await
    .unwrap()
}

fn ratio(a: Duration, b: Duration) -> f64 {
    a.as_secs_f64() / b.as_secs_f64()
}

/// vm2's figures under vm1's resource flood, printed with the ratio to `base`.
async fn under(vm1: &Harness, name: &str, proxy2: std::net::SocketAddr, ca2: &str, base: Figures) {
    let stop = Arc::new(AtomicBool::new(false));
    let counts = flood(vm1, stop.clone());
    // Let the flood ramp up (slots filled, budgets reached).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let fds = std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0);
    let start = Instant::now();
    let before = [0, 1, 2].map(|i| counts[i].load(Ordering::Relaxed));
    let mut c = client(proxy2, ca2).await;
    let (f50, f99, fmean) = measure(&mut c).await;
    let secs = start.elapsed().as_secs_f64();
    let rates = [0, 1, 2].map(|i| (counts[i].load(Ordering::Relaxed) - before[i]) as f64 / secs);
    stop.store(true, Ordering::Relaxed);
    println!("  {name:<32} {f50:>12?} {f99:>12?} {fmean:>12?}");
    println!(
        "  {:<32} {:>12.2} {:>12.2} {:>12.2}",
        "  ratio to alone",
        ratio(f50, base.0),
        ratio(f99, base.1),
        ratio(fmean, base.2)
    );
    println!(
        "  {:<32} {:.0} req/s, {:.0} idle proxy / {:.0} control streams closed per s; \
         process fds {fds}",
        "  vm1 meanwhile", rates[0], rates[1], rates[2]
    );
}

/// Where each side of a busy-flood measurement runs.
struct Topology {
    /// vm1's guest side and the proxy address its clients use.
    flood_rt: tokio::runtime::Handle,
    flood_proxy: std::net::SocketAddr,
    flood_ca: String,
    /// vm2's.
    probe_rt: tokio::runtime::Handle,
    probe_proxy: std::net::SocketAddr,
    probe_ca: String,
}

/// One row per `(label, topology, fairness)` setting, `reps` times, alternating: vm2 alone,
/// vm2 under vm1's busy flood, vm1's rate.
async fn busy_rows(broker: &host_broker::Broker, rows: &[(&str, &Topology, bool)], reps: usize) {
    for (name, t, on) in (0..reps).flat_map(|_| rows.iter().copied()) {
        broker.set_fair_scheduling(on);
        let base = measure_on(&t.probe_rt, t.probe_proxy, &t.probe_ca).await;
        let stop = Arc::new(AtomicBool::new(false));
        let counts: Arc<[AtomicU64; 3]> = Arc::new(Default::default());
        busy_on(
            &t.flood_rt,
            t.flood_proxy,
            &t.flood_ca,
            stop.clone(),
            counts.clone(),
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        let start = Instant::now();
        let before = counts[0].load(Ordering::Relaxed);
        let f = measure_on(&t.probe_rt, t.probe_proxy, &t.probe_ca).await;
        let rate =
            (counts[0].load(Ordering::Relaxed) - before) as f64 / start.elapsed().as_secs_f64();
        stop.store(true, Ordering::Relaxed);
        let fair = if on { "fair on " } else { "fair off" };
        println!(
            "  {name:<8} {fair} vm2 alone p50 {:>10?} p99 {:>10?} | busy flood p50 {:>10?} ({:>5.2}x) \
             p99 {:>10?} ({:>5.2}x) | vm1 {rate:>6.0} req/s",
            base.0,
            base.1,
            f.0,
            ratio(f.0, base.0),
            f.1,
            ratio(f.1, base.1),
        );
        // The flood's connections close; let them go before the next row.
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// A runtime with `workers` threads for one side of the bench (kept alive by the caller),
/// every thread of it on `cpu` when one is given.
fn side_runtime(workers: usize, cpu: Option<usize>) -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .on_thread_start(move || pin_to(cpu))
        .enable_all()
        .build()
        .unwrap()
}

/// Pins the calling thread to `cpu` (nothing when `None`).
fn pin_to(cpu: Option<usize>) {
    let Some(cpu) = cpu else { return };
    let mut set = nix::sched::CpuSet::new();
    set.set(cpu).expect("cpu index in range");
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set).expect("sched_setaffinity");
}

fn main() {
    let busy_only = std::env::args().any(|a| a == "busy");
    // Off/on pairs in the split topology (the figures are noisy on a shared machine).
    let reps: usize = std::env::var("FLOOD_REPS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    // FLOOD_PIN=1: the broker's runtime (one worker) on CPU 0, both guest sides and their
    // upstreams on CPU 1, so the broker's CPU is what vm1 saturates and the OS does not
    // share it with the bench's clients.
    let pinned = std::env::var("FLOOD_PIN").is_ok_and(|v| v == "1");
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let (broker_cpu, side_cpu) = if pinned {
        (Some(0), Some(1))
    } else {
        (None, None)
    };
    let mut b = tokio::runtime::Builder::new_multi_thread();
    if pinned {
        b.worker_threads(1);
    }
    // The daemon's default (serve config `event_interval`, tokio's 61); FLOOD_EVENT_INTERVAL
    // sets another value (2 halves vm2's p50 under the 8 KiB POST flood, README).
    let event_interval = std::env::var("FLOOD_EVENT_INTERVAL")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(host_broker::config::DEFAULT_EVENT_INTERVAL);
    b.event_interval(event_interval);
    let rt = b
        .on_thread_start(move || pin_to(broker_cpu))
        .enable_all()
        .build()
        .unwrap();
    pin_to(broker_cpu);
    let (flood_side, probe_side) = (side_runtime(2, side_cpu), side_runtime(1, side_cpu));
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let pki = make_pki(dir.path(), "flood", &["api.test"]);
        let up = spawn_upstream(Some(pki.server.clone())).await;
        let server = pki.server.clone();
        let up_flood = flood_side
            .spawn(async move { spawn_upstream(Some(server)).await.addr })
            .await
            .unwrap();
        let server = pki.server.clone();
        let up_probe = probe_side
            .spawn(async move { spawn_upstream(Some(server)).await.addr })
            .await
            .unwrap();
        let env = [("API_KEY", "flood-secret-value-0123456789")];
        let vm1 = harness_in(
            tempfile::tempdir().unwrap(),
            &policy(up.addr, 32),
            &env,
            vec![pki.ca_path.clone()],
        )
        .await;
        // vm2 on the same broker; vm3 and vm4 are vm1 and vm2 of the split topology with
        // every VM on the broker's runtime (`VmPlacement::Shared`), vm5 and vm6 the same with
        // each VM on a thread of its own (the default, as vm1 and vm2).
        let mut proxies = Vec::new();
        let threads = host_broker::VmPlacement::OwnThread { event_interval };
        for (id, addr, limit, placement) in [
            ("vm2", up.addr, 256, threads),
            ("vm3", up_flood, 32, host_broker::VmPlacement::Shared),
            ("vm4", up_probe, 256, host_broker::VmPlacement::Shared),
            ("vm5", up_flood, 32, threads),
            ("vm6", up_probe, 256, threads),
        ] {
            vm1.broker.set_vm_placement(placement);
            let sock = vm1.dir.path().join(format!("{id}.vsock"));
            vm1.broker
                .register_vm_with_env(
                    VmSpec {
                        id: id.into(),
                        transport: VmTransport::HybridSocket(sock),
                        policy: Policy::from_json_str(&policy(addr, limit)).unwrap(),
                    },
                    &MapEnv::from_pairs(env),
                )
                .await
                .unwrap();
            let listen = vm1.dir.path().join(format!("{id}.vsock_7070"));
            let proxy = match id {
                "vm2" => spawn_bridge(listen).await,
                "vm3" | "vm5" => flood_side.spawn(spawn_bridge(listen)).await.unwrap(),
                _ => probe_side.spawn(spawn_bridge(listen)).await.unwrap(),
            };
            proxies.push((proxy, vm1.broker.ca_pem(id).unwrap()));
        }
        let (proxy2, ca2) = proxies[0].clone();

        println!(
            "host-broker flood bench (loopback, {} cores{}): vm2 latency, {REQUESTS} sequential \
             intercepted GETs on one connection; broker event_interval {event_interval}; flood \
             body {} bytes; loadavg {}",
            cores,
            if pinned {
                ", FLOOD_PIN=1: broker on CPU 0 (1 worker), guests and upstreams on CPU 1"
            } else {
                ""
            },
            std::env::var("FLOOD_BODY").unwrap_or_else(|_| "0".into()),
            std::fs::read_to_string("/proc/loadavg")
                .unwrap_or_default()
                .trim()
        );
        let here = tokio::runtime::Handle::current();
        let split = |flood: usize, probe: usize| Topology {
            flood_rt: flood_side.handle().clone(),
            flood_proxy: proxies[flood].0,
            flood_ca: proxies[flood].1.clone(),
            probe_rt: probe_side.handle().clone(),
            probe_proxy: proxies[probe].0,
            probe_ca: proxies[probe].1.clone(),
        };
        let (on_runtime, own_threads) = (split(1, 2), split(3, 4));
        println!(
            "  [split: each VM's guest side and upstream on runtimes of their own; \
             'runtime': every VM on the broker's runtime, 'threads': each VM on its own thread]"
        );
        busy_rows(
            &vm1.broker,
            &[
                ("runtime", &on_runtime, false),
                ("runtime", &on_runtime, true),
                ("threads", &own_threads, false),
            ],
            reps,
        )
        .await;
        println!(
            "  [shared: guests and upstream on the broker's runtime, each VM on its own thread]"
        );
        busy_rows(
            &vm1.broker,
            &[(
                "threads",
                &Topology {
                    flood_rt: here.clone(),
                    flood_proxy: vm1.proxy,
                    flood_ca: vm1.vm_ca_pem.clone(),
                    probe_rt: here.clone(),
                    probe_proxy: proxy2,
                    probe_ca: ca2.clone(),
                },
                false,
            )],
            1,
        )
        .await;
        if busy_only {
            return;
        }
        println!("  resource flood (fair on):");
        let fds = std::fs::read_dir("/proc/self/fd")
            .map(|d| d.count())
            .unwrap_or(0);
        let mut c = client(proxy2, &ca2).await;
        let base = measure(&mut c).await;
        drop(c);
        println!("  {:<32} {:>12} {:>12} {:>12}", "", "p50", "p99", "mean");
        println!(
            "  {:<32} {:>12?} {:>12?} {:>12?}   (process fds {fds})",
            "vm2 alone", base.0, base.1, base.2
        );
        under(&vm1, "vm2, vm1 resource flood", proxy2, &ca2, base).await;
    });
}
