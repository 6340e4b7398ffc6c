//! The per-VM upstream connection pool (issues 12, 13): connections are reused across a
//! VM's tunnels, never across VMs, and a request whose upstream response is slow never
//! holds up another stream of the same guest connection.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use host_broker::policy::Policy;
use host_broker::secrets::MapEnv;
use host_broker::{VmSpec, VmTransport};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Notify};

const SECRET: &str = "pool-secret-value-0123456789";

fn policy(addr: std::net::SocketAddr) -> String {
    format!(
        r#"{{"egress": {{"default": "deny", "allow": [{{"hosts": ["api.test"]}}, {{"cidrs": ["127.0.0.1/32"]}}]}},
            "credentials": {{"API_KEY": {{"source": {{"env": "API_KEY"}}, "hosts": ["api.test"]}}}},
            "resolve": {{"api.test": "{addr}"}}}}"#
    )
}

/// An HTTP/1.1 TLS upstream: `/slow` answers only once `release` is notified (and reports
/// its arrival on `arrived`); anything else answers at once. `answered` records the order.
struct SlowUpstream {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    answered: Arc<Mutex<Vec<String>>>,
    release: Arc<Notify>,
    arrived: mpsc::UnboundedReceiver<()>,
}

async fn slow_upstream(tls: Arc<rustls::ServerConfig>) -> SlowUpstream {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let accepted = Arc::new(AtomicUsize::new(0));
    let answered: Arc<Mutex<Vec<String>>> = Arc::default();
    let release = Arc::new(Notify::new());
    let (tx, arrived) = mpsc::unbounded_channel();
    let (acc, ans, rel) = (accepted.clone(), answered.clone(), release.clone());
    tokio::spawn(async move {
        while let Ok((tcp, _)) = l.accept().await {
            acc.fetch_add(1, Ordering::SeqCst);
            let (tls, ans, rel, tx) = (tls.clone(), ans.clone(), rel.clone(), tx.clone());
            tokio::spawn(async move {
                let Ok(s) = tokio_rustls::TlsAcceptor::from(tls).accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: Request<Incoming>| {
                    let (ans, rel, tx) = (ans.clone(), rel.clone(), tx.clone());
                    async move {
                        let path = req.uri().path().to_owned();
                        if path == "/slow" {
                            let _ = tx.send(());
                            rel.notified().await;
                        }
                        ans.lock().unwrap().push(path.clone());
                        Ok::<_, std::convert::Infallible>(Response::new(Full::new(Bytes::from(
                            path,
                        ))))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    SlowUpstream {
        addr,
        accepted,
        answered,
        release,
        arrived,
    }
}

fn h2_config(ca_pem: &str) -> Arc<rustls::ClientConfig> {
    let mut cfg = (*client_trusting(ca_pem)).clone();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(cfg)
}

type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

async fn h2_client(h: &Harness) -> H2 {
    let (status, head, s) = connect_via(h.proxy, "api.test:443").await;
    assert_eq!(status, 200, "{head}");
    let name = rustls::pki_types::ServerName::try_from("api.test").unwrap();
    let tls = tokio_rustls::TlsConnector::from(h2_config(&h.vm_ca_pem))
        .connect(name, s)
        .await
        .unwrap();
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tls))
            .await
            .unwrap();
    tokio::spawn(conn);
    sender
}

async fn h2_get(mut c: H2, path: &str) -> String {
    let req = Request::get(format!("https://api.test{path}"))
        .header(PLACEHOLDER_AUTH.0, PLACEHOLDER_AUTH.1)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let resp = c.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8_lossy(&body).into_owned()
}

#[tokio::test]
async fn a_slow_upstream_response_does_not_stall_other_streams() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "pool", &["api.test"]);
    let mut up = slow_upstream(pki.server.clone()).await;
    let h = harness_with_key(tempfile::tempdir().unwrap(), &policy(up.addr), SECRET, &pki).await;
    let c = h2_client(&h).await;
    let slow = tokio::spawn(h2_get(c.clone(), "/slow"));
    // The slow request is at the upstream, waiting for its response head.
    tokio::time::timeout(WAIT, up.arrived.recv()).await.unwrap();
    // Another stream on the same guest connection completes meanwhile.
    let fast = tokio::time::timeout(WAIT, h2_get(c.clone(), "/fast"))
        .await
        .expect("a stream waited behind another stream's slow upstream response");
    assert_eq!(fast, "/fast");
    assert!(!slow.is_finished());
    up.release.notify_one();
    assert_eq!(
        tokio::time::timeout(WAIT, slow).await.unwrap().unwrap(),
        "/slow"
    );
    assert_eq!(*up.answered.lock().unwrap(), ["/fast", "/slow"]);
}

#[tokio::test]
async fn upstream_connections_are_reused_across_tunnels_of_one_vm_only() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "pool", &["api.test"]);
    let up = slow_upstream(pki.server.clone()).await;
    let h = harness_with_key(tempfile::tempdir().unwrap(), &policy(up.addr), SECRET, &pki).await;
    for _ in 0..3 {
        // A new tunnel each time (CONNECT, TLS, one request, closed).
        let mut c = intercepted_client(&h, "api.test", 443).await;
        let (status, _, body) = get(&mut c, "/x", &[("host", "api.test"), PLACEHOLDER_AUTH]).await;
        assert_eq!((status, body.as_str()), (200, "/x"));
    }
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        1,
        "one upstream connection for VM 1"
    );

    // A second VM of the same broker, same host and address: its own connection.
    let sock = h.dir.path().join("vm2.vsock");
    h.broker
        .register_vm_with_env(
            VmSpec {
                id: "vm2".into(),
                transport: VmTransport::HybridSocket(sock),
                policy: Policy::from_json_str(&policy(up.addr)).unwrap(),
            },
            &MapEnv::from_pairs([("API_KEY", SECRET)]),
        )
        .await
        .unwrap();
    let proxy2 = spawn_bridge(h.dir.path().join("vm2.vsock_7070")).await;
    let ca2 = h.broker.ca_pem("vm2").unwrap();
    for _ in 0..2 {
        let (status, head, s) = connect_via(proxy2, "api.test:443").await;
        assert_eq!(status, 200, "{head}");
        let mut c = http1(tls_over(s, "api.test", &ca2).await.unwrap()).await;
        let (status, _, _) = get(&mut c, "/y", &[("host", "api.test"), PLACEHOLDER_AUTH]).await;
        assert_eq!(status, 200);
    }
    assert_eq!(
        up.accepted.load(Ordering::SeqCst),
        2,
        "VM 2 got a connection of its own"
    );
}
