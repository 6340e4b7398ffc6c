//! Credential sources that change, end to end in-process: a rotated file reaches the next
//! request of an open connection, a failed refresh keeps the last good value and shows in
//! the metrics, and after a rotation an upstream echoing the *previous* value still gets it
//! scrubbed (issue 11).

mod common;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use host_broker::policy::{CredentialSpec, HostPattern, HostRule, SecretSource};
use host_broker::secrets::SecretValue;
use http_body_util::Full;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const OLD: &str = "sk-file-OLD-6a0e2b9d71";
const NEW: &str = "sk-file-NEW-f39c04a8e2";

fn policy(addr: std::net::SocketAddr, source: &str) -> String {
    format!(
        r#"{{
        "egress": {{"default": "deny",
            "allow": [{{"hosts": ["api.test"]}}, {{"cidrs": ["127.0.0.1/32"]}}]}},
        "credentials": {{"API_KEY": {{"source": {source}, "hosts": ["api.test"],
                                       "refresh_grace_secs": 3600}}}},
        "resolve": {{"api.test": "{addr}"}}
    }}"#
    )
}

#[tokio::test]
async fn rotated_file_reaches_open_connections_and_a_failed_refresh_shows_in_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "good", &["api.test"]);
    let up = spawn_upstream(Some(pki.server.clone())).await;
    let secret = dir.path().join("api-key");
    std::fs::write(&secret, format!("{OLD}\n")).unwrap();
    let source = format!(r#"{{"file": {:?}}}"#, secret.to_str().unwrap());
    let h = harness_in(
        dir,
        &policy(up.addr, &source),
        &[],
        vec![pki.ca_path.clone()],
    )
    .await;
    let mut c = intercepted_client(&h, "api.test", 443).await;
    let auth = |up: &Upstream| {
        up.requests()
            .last()
            .and_then(|s| s.header("authorization").map(str::to_owned))
    };
    let (status, _, _) = get(&mut c, "/a", &[("host", "api.test"), PLACEHOLDER_AUTH]).await;
    assert_eq!(status, 200);
    assert_eq!(auth(&up), Some(format!("Bearer {OLD}")));

    // Atomic rename, as a secret manager agent writes it.
    let tmp = secret.with_extension("tmp");
    std::fs::write(&tmp, format!("{NEW}\n")).unwrap();
    std::fs::rename(&tmp, &secret).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let (status, headers, _) =
            get(&mut c, "/b", &[("host", "api.test"), PLACEHOLDER_AUTH]).await;
        assert_eq!(status, 200);
        assert_eq!(headers["x-echo-authorization"], "Bearer mock-API_KEY");
        if auth(&up) == Some(format!("Bearer {NEW}")) {
            break;
        }
        assert_eq!(auth(&up), Some(format!("Bearer {OLD}")));
        assert!(
            tokio::time::Instant::now() < deadline,
            "rotation never applied"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }

    // The file disappears: the last good value stays in use, the metrics say so.
    std::fs::remove_file(&secret).unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let text = h.broker.metrics_text();
        if text.contains(r#"sluice_credential_stale{vm="vm1",credential="API_KEY"} 1"#) {
            assert!(text.contains(
                r#"sluice_credential_refresh_failures_total{vm="vm1",credential="API_KEY"}"#
            ));
            assert!(!text.contains(NEW) && !text.contains(OLD));
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no stale metric: {text}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let (status, _, _) = get(&mut c, "/c", &[("host", "api.test"), PLACEHOLDER_AUTH]).await;
    assert_eq!(status, 200);
    assert_eq!(auth(&up), Some(format!("Bearer {NEW}")));
}

/// A TLS upstream answering every request with `body()`.
async fn fixed_upstream(
    tls: Arc<rustls::ServerConfig>,
    body: Arc<Mutex<String>>,
) -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (tls, body) = (tls.clone(), body.clone());
            tokio::spawn(async move {
                let Ok(s) = tokio_rustls::TlsAcceptor::from(tls).accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |_req| {
                    let b = body.lock().unwrap().clone();
                    async move {
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(
                            Bytes::from(b),
                        )))
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    addr
}

#[tokio::test]
async fn upstream_echo_of_the_previous_value_is_scrubbed_after_a_rotation() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "good", &["api.test"]);
    let body = Arc::new(Mutex::new(String::new()));
    let addr = fixed_upstream(pki.server.clone(), body.clone()).await;
    let source = format!(r#"{{"value": "{OLD}"}}"#);
    let h = harness_in(dir, &policy(addr, &source), &[], vec![pki.ca_path.clone()]).await;
    let mut c = intercepted_client(&h, "api.test", 443).await;

    let mut spec = CredentialSpec::new(SecretSource::Value(SecretValue::new(NEW.into())));
    spec.hosts = Some(vec![HostRule::any_request(HostPattern::Exact(
        "api.test".into(),
    ))]);
    h.broker
        .set_credentials(&h.vm, BTreeMap::from([("API_KEY".to_owned(), Some(spec))]))
        .await
        .unwrap();
    // E.g. an API that lists the keys it has seen, or a log line with the old key.
    *body.lock().unwrap() = format!("keys seen: {OLD}, {NEW}");
    let (status, _, text) = get(&mut c, "/keys", &[("host", "api.test")]).await;
    assert_eq!(status, 200);
    assert_eq!(text, "keys seen: mock-API_KEY, mock-API_KEY");
}
