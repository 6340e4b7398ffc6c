//! curl (a real client) through the broker: `--proxy` at the agent bridge and `--cacert` the
//! VM CA (never -k: trust is the point).

mod common;

use common::*;

const SECRET: &str = "curl-REAL-secret-42";

async fn curl(args: &[&str]) -> (String, String) {
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new("curl")
            .args(["-sS", "--max-time", "15"])
            .args(args)
            .output(),
    )
    .await
    .unwrap()
    .expect("curl is installed");
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn curl_through_the_broker() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "good", &["api.test", "other.test"]);
    let up = spawn_upstream(Some(pki.server.clone())).await;
    let plain = spawn_upstream(None).await;
    let policy = format!(
        r#"{{
        "egress": {{"default": "deny", "allow": [{{"hosts": ["api.test", "other.test", "plain.test"]}}, {{"cidrs": ["127.0.0.1/32"]}}]}},
        "credentials": {{"API_KEY": {{"source": {{"env": "API_KEY"}}, "hosts": ["api.test", "plain.test"]}}}},
        "resolve": {{"api.test": "{a}", "other.test": "{a}", "plain.test": "{p}"}}
    }}"#,
        a = up.addr,
        p = plain.addr
    );
    let h = harness_with_key(dir, &policy, SECRET, &pki).await;
    let proxy = format!("http://{}", h.proxy);
    let cacert = h.vm_ca_path.to_str().unwrap().to_owned();
    let auth = "Authorization: Bearer mock-API_KEY";

    // Allowed host: substituted, two requests on one connection (keep-alive).
    let (out, err) = curl(&[
        "--proxy",
        &proxy,
        "--cacert",
        &cacert,
        "-H",
        auth,
        "-w",
        " %{http_code}\n",
        "https://api.test/v1/one?k=v",
        "https://api.test/v1/two",
    ])
    .await;
    assert_eq!(out, "ok 200\nok 200\n", "stderr: {err}");
    let seen = up.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
    assert_eq!(seen[1].path, "/v1/two");

    // Host not in the credential's hosts: 403 with the reason, upstream gets nothing new.
    let (out, err) = curl(&[
        "--proxy",
        &proxy,
        "--cacert",
        &cacert,
        "-H",
        auth,
        "-D",
        "-",
        "https://other.test/x",
    ])
    .await;
    // curl negotiates h2 with the broker's leaf (ALPN h2, http/1.1).
    assert!(out.contains("HTTP/2 403"), "{out} {err}");
    assert!(
        out.to_ascii_lowercase().contains("x-sluice-reason: "),
        "{out}"
    );
    assert_eq!(up.requests().len(), 2);

    // Plaintext with the placeholder: refused, plain upstream untouched.
    let (out, err) = curl(&[
        "--proxy",
        &proxy,
        "-H",
        auth,
        "-w",
        "%{http_code}",
        "-o",
        "/dev/null",
        "http://plain.test/p",
    ])
    .await;
    assert_eq!(out, "403", "{err}");
    assert!(plain.requests().is_empty());

    // Without the VM CA, curl refuses the intercepted leaf (trust really is the VM CA).
    let empty_ca = h.dir.path().join("empty.pem");
    std::fs::write(&empty_ca, &pki.ca_pem).unwrap();
    let (out, err) = curl(&[
        "--proxy",
        &proxy,
        "--cacert",
        empty_ca.to_str().unwrap(),
        "https://api.test/",
    ])
    .await;
    assert!(
        out.is_empty() && !err.is_empty(),
        "curl must reject a leaf not from its CA: {out}"
    );
}
