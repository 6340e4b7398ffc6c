//! The intercepting proxy end to end, in-process: real rustls upstream on loopback, the
//! guest-agent bridge, and a tokio-rustls + hyper client trusting only the VM CA.

mod common;

use common::*;
use host_broker::BrokerEvent;

const SECRET: &str = "sk-live-REAL-0123456789abcdef";

struct World {
    h: Harness,
    tls_up: Upstream,
    bad_up: Upstream,
    plain_up: Upstream,
}

/// Policy: api.test/other.test/bad.test/plain.test allowed, loopback explicitly allowed by
/// CIDR (the upstreams live there), API_KEY only for api.test, LOG_KEY (on_violation log)
/// for plain.test.
async fn world(allow_loopback: bool) -> World {
    let dir = tempfile::tempdir().unwrap();
    let good = make_pki(dir.path(), "good", &["api.test", "other.test", "127.0.0.1"]);
    let untrusted = make_pki(dir.path(), "untrusted", &["bad.test"]);
    let tls_up = spawn_upstream(Some(good.server.clone())).await;
    let bad_up = spawn_upstream(Some(untrusted.server.clone())).await;
    let plain_up = spawn_upstream(None).await;
    // Loopback is private: reachable only through an explicit CIDR allow (and an IP literal
    // host is only listed when loopback is meant to be reachable).
    let (ip_host, cidr_rule) = if allow_loopback {
        (r#", "127.0.0.1""#, r#", {"cidrs": ["127.0.0.1/32"]}"#)
    } else {
        ("", "")
    };
    let policy = format!(
        r#"{{
        "egress": {{"default": "deny",
            "allow": [{{"hosts": ["api.test", "other.test", "bad.test", "plain.test"{ip_host}]}}{cidr_rule}]}},
        "credentials": {{
            "API_KEY": {{"source": {{"env": "API_KEY"}}, "hosts": ["api.test", "plain.test"]}},
            "LOG_KEY": {{"source": {{"env": "LOG_KEY"}}, "hosts": ["plain.test"], "on_violation": "log"}}
        }},
        "env": {{"LOG_LEVEL": "debug"}},
        "resolve": {{"api.test": "{a}", "other.test": "{a}", "bad.test": "{b}", "plain.test": "{p}"}}
    }}"#,
        a = tls_up.addr,
        b = bad_up.addr,
        p = plain_up.addr
    );
    let h = harness_in(
        dir,
        &policy,
        &[("API_KEY", SECRET), ("LOG_KEY", "log-key-REAL-value")],
        vec![good.ca_path.clone()],
    )
    .await;
    World {
        h,
        tls_up,
        bad_up,
        plain_up,
    }
}

#[tokio::test]
async fn placeholder_becomes_real_value_at_allowed_host_and_response_is_scrubbed() {
    let w = world(true).await;
    let mut events = w.h.broker.subscribe();
    let mut c = intercepted_client(&w.h, "api.test", 443).await;
    // Two requests on one keep-alive connection.
    for i in 0..2 {
        let (status, headers, body) = get(
            &mut c,
            &format!("/v1/models?token=abc&i={i}"),
            &[("host", "api.test"), PLACEHOLDER_AUTH],
        )
        .await;
        assert_eq!(status, 200, "{headers:?} {body}");
        assert_eq!(body, "ok");
        // The upstream echoed the real value back; the guest sees the placeholder.
        assert_eq!(
            headers.get("x-echo-authorization").unwrap(),
            "Bearer mock-API_KEY"
        );
    }
    // An upstream echoing the value in a body: the guest gets the placeholder.
    let (status, _, body) = get(
        &mut c,
        "/echo-body",
        &[("host", "api.test"), PLACEHOLDER_AUTH],
    )
    .await;
    assert_eq!((status, body.as_str()), (200, "Bearer mock-API_KEY"));
    let seen = w.tls_up.requests();
    assert_eq!(seen.len(), 3);
    for s in &seen[..2] {
        assert_eq!(
            s.header("authorization"),
            Some(format!("Bearer {SECRET}").as_str())
        );
        assert!(s.path.starts_with("/v1/models?token=abc"));
    }
    // Audit: CONNECT decision, then one forwarded record per request, names only.
    let mut forwarded = 0;
    while forwarded < 2 {
        let ev = tokio::time::timeout(WAIT, events.recv())
            .await
            .unwrap()
            .unwrap();
        if let BrokerEvent::Request(r) = ev {
            assert_eq!(r.vm, "vm1");
            assert_eq!(r.host, "api.test");
            if r.verdict == "forwarded" {
                assert_eq!(r.credentials, vec!["API_KEY".to_owned()]);
                assert_eq!(r.path, "/v1/models", "query string must not be audited");
                assert_eq!(r.status, 200);
                assert_eq!(r.bytes, 2);
                forwarded += 1;
            }
        }
    }
}

#[tokio::test]
async fn placeholder_blocked_at_host_not_in_credential_hosts() {
    let w = world(true).await;
    let mut c = intercepted_client(&w.h, "other.test", 443).await;
    let (status, headers, body) = get(
        &mut c,
        "/steal",
        &[("host", "other.test"), PLACEHOLDER_AUTH],
    )
    .await;
    assert_eq!(status, 403);
    let reason = headers.get("x-sluice-reason").unwrap().to_str().unwrap();
    assert!(
        reason.contains("API_KEY"),
        "reason names the credential: {reason}"
    );
    assert!(body.contains(reason), "body carries the reason: {body}");
    assert!(!body.contains(SECRET) && !reason.contains(SECRET));
    assert!(w.tls_up.requests().is_empty(), "upstream must get nothing");
    // The same connection still works without a placeholder: the route itself is fine.
    let (status, _, _) = get(&mut c, "/fine", &[("host", "other.test")]).await;
    assert_eq!(status, 200);
    let seen = w.tls_up.requests();
    assert_eq!(seen.len(), 1);
    assert_eq!(seen[0].path, "/fine");
}

#[tokio::test]
async fn host_header_different_from_connect_host_refused() {
    let w = world(true).await;
    let mut c = intercepted_client(&w.h, "api.test", 443).await;
    let (status, headers, _) = get(&mut c, "/x", &[("host", "other.test"), PLACEHOLDER_AUTH]).await;
    assert_eq!(status, 403);
    assert!(headers
        .get("x-sluice-reason")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("does not match the CONNECT host"));
    assert!(w.tls_up.requests().is_empty());
}

#[tokio::test]
async fn sni_different_from_connect_host_refused() {
    let w = world(true).await;
    let (status, _, s) = connect_via(w.h.proxy, "api.test:443").await;
    assert_eq!(status, 200);
    // Client claims other.test in SNI inside a tunnel opened for api.test.
    assert!(tls_over(s, "other.test", &w.h.vm_ca_pem).await.is_err());
    assert!(w.tls_up.requests().is_empty());
}

#[tokio::test]
async fn untrusted_upstream_cert_is_502_and_upstream_gets_no_request() {
    let w = world(true).await;
    let (status, head, _) = connect_via(w.h.proxy, "bad.test:443").await;
    assert_eq!(status, 502, "{head}");
    let lower = head.to_ascii_lowercase();
    assert!(lower.contains("x-sluice-reason:"), "{head}");
    assert!(lower.contains("bad.test"), "{head}");
    assert!(
        *w.bad_up.accepted.lock().unwrap() >= 1,
        "the broker did dial it"
    );
    assert!(
        w.bad_up.requests().is_empty(),
        "no request reached the upstream"
    );
}

#[tokio::test]
async fn plaintext_http_never_carries_the_real_value() {
    let w = world(true).await;
    let s = tokio::net::TcpStream::connect(w.h.proxy).await.unwrap();
    let mut c = http1(s).await;
    // Block (default on_violation): refused, upstream untouched.
    let (status, headers, _) = get(
        &mut c,
        "http://plain.test/p?x=1",
        &[("host", "plain.test"), PLACEHOLDER_AUTH],
    )
    .await;
    assert_eq!(status, 403);
    assert!(headers.contains_key("x-sluice-reason"));
    assert!(w.plain_up.requests().is_empty());
    // on_violation=log: forwarded, but with the placeholder, never the value.
    let (status, _, _) = get(
        &mut c,
        "http://plain.test/q",
        &[("host", "plain.test"), ("x-api-key", "mock-LOG_KEY")],
    )
    .await;
    assert_eq!(status, 200);
    // No placeholder at all: forwarded as-is.
    let (status, _, body) = get(&mut c, "http://plain.test/r", &[]).await;
    assert_eq!((status, body.as_str()), (200, "ok"));
    let seen = w.plain_up.requests();
    assert_eq!(seen.len(), 2);
    assert_eq!(seen[0].header("x-api-key"), Some("mock-LOG_KEY"));
    for s in &seen {
        for (_, v) in &s.headers {
            assert!(!v.contains("REAL"), "real value over plaintext: {v}");
        }
    }
}

#[tokio::test]
async fn loopback_target_refused_unless_explicitly_allowed() {
    let w = world(false).await;
    let (status, head, _) = connect_via(w.h.proxy, "api.test:443").await;
    assert_eq!(status, 403, "{head}");
    assert!(head.to_ascii_lowercase().contains("x-sluice-reason:"));
    let (status, head, _) =
        connect_via(w.h.proxy, &format!("127.0.0.1:{}", w.tls_up.addr.port())).await;
    assert_eq!(status, 403, "{head}");
    assert_eq!(*w.tls_up.accepted.lock().unwrap(), 0, "nothing dialed");
}

#[tokio::test]
async fn ip_literal_target_gets_an_ip_san_leaf_and_no_credentials() {
    let w = world(true).await;
    let ip = "127.0.0.1";
    let port = w.tls_up.addr.port();
    let (status, head, s) = connect_via(w.h.proxy, &format!("{ip}:{port}")).await;
    assert_eq!(status, 200, "{head}");
    // Verifies the leaf against the VM CA for the IP (needs an IP SAN).
    let tls = tls_over(s, ip, &w.h.vm_ca_pem).await.unwrap();
    let mut c = http1(tls).await;
    let (status, _, _) = get(&mut c, "/ip", &[("host", ip)]).await;
    assert_eq!(status, 200);
    let (status, _, _) = get(&mut c, "/ip2", &[("host", ip), PLACEHOLDER_AUTH]).await;
    assert_eq!(
        status, 403,
        "a CONNECT to an IP literal never gets a credential"
    );
    assert_eq!(w.tls_up.requests().len(), 1);
}

#[tokio::test]
async fn egress_denied_host_is_403_with_reason() {
    let w = world(true).await;
    // An address no rule allows (with the loopback CIDR rule any name may be tried; one that
    // does not resolve is a 502 upstream failure, see below).
    let (status, head, _) = connect_via(w.h.proxy, "192.0.2.1:443").await;
    assert_eq!(status, 403, "{head}");
    assert!(head.to_ascii_lowercase().contains("x-sluice-reason:"));
}

#[tokio::test]
async fn unregistering_the_vm_ends_its_open_tunnels() {
    let w = world(true).await;
    let mut c = intercepted_client(&w.h, "api.test", 443).await;
    let (status, _, _) = get(&mut c, "/before", &[("host", "api.test")]).await;
    assert_eq!(status, 200);
    w.h.broker.unregister_vm("vm1").await.unwrap();
    // The connection is closed by the broker: the client's connection task ends.
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            if c.is_closed() {
                return;
            }
            if c.ready().await.is_err() {
                return;
            }
            let req = http::Request::get("/after")
                .header("host", "api.test")
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            if c.send_request(req).await.is_err() {
                return;
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "tunnel still open after unregister");
    assert!(w.tls_up.requests().iter().all(|s| s.path != "/after"));
}

/// A name the policy allows that DNS cannot resolve is an upstream failure (502 `failed`),
/// not a policy denial: not a 403 and not counted as a violation. (`.invalid` never
/// resolves, RFC 6761; a resolver that does not answer at all ends the same way, after the
/// resolve timeout.)
#[tokio::test]
async fn an_allowed_name_that_does_not_resolve_is_502_failed_not_a_violation() {
    let dir = tempfile::tempdir().unwrap();
    let policy =
        r#"{"egress": {"default": "deny", "allow": [{"hosts": ["sluice-test.invalid"]}]}}"#;
    let h = harness_in(dir, policy, &[], vec![]).await;
    let (status, head, _) = connect_via(h.proxy, "sluice-test.invalid:443").await;
    assert_eq!(status, 502, "{head}");
    assert!(head.contains("cannot resolve"), "{head}");
    let stats = h.broker.stats("vm1").unwrap();
    assert_eq!(stats.violations, 0, "{stats:?}");
}
