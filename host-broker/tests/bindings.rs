//! Request-scoped credential bindings end to end, in-process: a credential bound to
//! `GET /repos/acme/**` on port 443 of api.test is substituted there and nowhere else on the
//! same host; a placeholder outside the binding is refused (403 with the reason) and never
//! reaches the upstream.

mod common;

use common::*;

const SECRET: &str = "ghp-REAL-bound-0123456789";

#[tokio::test]
async fn placeholder_outside_its_binding_is_blocked_inside_is_substituted() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "good", &["api.test"]);
    let up = spawn_upstream(Some(pki.server.clone())).await;
    let policy = format!(
        r#"{{
        "egress": {{"default": "deny",
            "allow": [{{"hosts": ["api.test"]}}, {{"cidrs": ["127.0.0.1/32"]}}]}},
        "credentials": {{
            "API_KEY": {{"source": {{"env": "API_KEY"}},
              "hosts": [{{"host": "api.test", "ports": [443], "methods": ["GET"],
                          "paths": ["/repos/acme/**"]}}]}}
        }},
        "resolve": {{"api.test": "{a}"}}
    }}"#,
        a = up.addr
    );
    let h = harness_with_key(dir, &policy, SECRET, &pki).await;
    let mut c = intercepted_client(&h, "api.test", 443).await;

    let (status, headers, _) = get(
        &mut c,
        "/repos/acme/widgets?per_page=5",
        &[("host", "api.test"), PLACEHOLDER_AUTH],
    )
    .await;
    assert_eq!(status, 200, "{headers:?}");
    assert_eq!(headers["x-echo-authorization"], "Bearer mock-API_KEY");

    for path in ["/repos/evil/widgets", "/repos/acme/../../user/keys"] {
        let (status, headers, body) =
            get(&mut c, path, &[("host", "api.test"), PLACEHOLDER_AUTH]).await;
        assert_eq!(status, 403, "{path}: {body}");
        let reason = headers["x-sluice-reason"].to_str().unwrap().to_owned();
        assert!(
            reason.contains("credential API_KEY may not be sent to api.test (GET ")
                && reason.contains("outside the bindings"),
            "{reason}"
        );
        assert!(!reason.contains(SECRET) && !body.contains(SECRET));
    }
    // Same path, another port of the same host: the port is outside the binding too.
    let mut c8443 = intercepted_client(&h, "api.test", 8443).await;
    let (status, headers, _) = get(
        &mut c8443,
        "/repos/acme/widgets",
        &[("host", "api.test"), PLACEHOLDER_AUTH],
    )
    .await;
    assert_eq!(status, 403);
    assert!(headers["x-sluice-reason"]
        .to_str()
        .unwrap()
        .contains("on port 8443"));

    let seen = up.requests();
    assert_eq!(
        seen.len(),
        1,
        "only the bound request reached the upstream: {seen:?}"
    );
    assert_eq!(seen[0].path, "/repos/acme/widgets?per_page=5");
    assert_eq!(
        seen[0].header("authorization"),
        Some(format!("Bearer {SECRET}").as_str())
    );
}
