//! AWS SigV4 re-signing end to end, in-process: the "guest" signs with the placeholder key
//! id, secret and session token (as boto3 or the AWS CLI would with the placeholders in its
//! environment); an upstream named like an AWS endpoint verifies the signature with the
//! *real* secret and rejects anything else.

mod common;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use common::*;
use host_broker::secrets::sigv4::{self, SigV4Auth, SignedRequest};
use http::{HeaderMap, Request};
use http_body_util::{BodyExt, Full};
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

const HOST: &str = "sts.us-east-1.amazonaws.com";
const KEY_ID: &str = "AKIAREALKEYID0000001";
const SECRET: &str = "real/Secret+Key0123456789abcdefghijklmno";
const TOKEN: &str = "FwoGZXIvYXdzEREAL-session-token-0123";
const DATE: &str = "20260101T120000Z";
const SCOPE: &str = "20260101/us-east-1/sts/aws4_request";

/// Verifies every request with the real secret: 200 `verified <key id>` + an echo of the
/// session token, or 403.
async fn aws_upstream(
    tls: Arc<rustls::ServerConfig>,
) -> (std::net::SocketAddr, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let seen2 = seen.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let (tls, seen) = (tls.clone(), seen2.clone());
            tokio::spawn(async move {
                let Ok(s) = tokio_rustls::TlsAcceptor::from(tls).accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let seen = seen.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        let auth = parts
                            .headers
                            .get("authorization")
                            .and_then(|v| v.to_str().ok())
                            .and_then(SigV4Auth::parse);
                        let pq = parts.uri.path_and_query().unwrap().as_str().to_owned();
                        let (path, query) = pq.split_once('?').unwrap_or((&pq, ""));
                        let hash = sigv4::sha256_hex(&body);
                        let ok = auth.as_ref().is_some_and(|a| {
                            let req = SignedRequest {
                                method: parts.method.as_str(),
                                path,
                                query,
                                headers: &parts.headers,
                                authority: HOST,
                                payload_hash: &hash,
                            };
                            a.key_id == KEY_ID && sigv4::verify(&req, a, SECRET).is_ok()
                        });
                        let token = parts
                            .headers
                            .get("x-amz-security-token")
                            .map(|v| v.to_str().unwrap().to_owned())
                            .unwrap_or_default();
                        seen.lock().unwrap().push(format!("{ok} {token}"));
                        let (status, text) = if ok {
                            (200, format!("verified {KEY_ID} token {token}"))
                        } else {
                            (403, "SignatureDoesNotMatch".to_owned())
                        };
                        let mut resp = hyper::Response::new(Full::new(Bytes::from(text)));
                        *resp.status_mut() = http::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(s), svc)
                    .await;
            });
        }
    });
    (addr, seen)
}

/// Signs like an AWS SDK in the guest, with the placeholders it was given.
fn guest_signed(
    method: &str,
    pq: &str,
    body: &str,
    secret: &str,
    extra: &[(&str, &str)],
) -> Request<Full<Bytes>> {
    let mut h = HeaderMap::new();
    h.insert("host", HOST.parse().unwrap());
    h.insert("x-amz-date", DATE.parse().unwrap());
    h.insert(
        "x-amz-security-token",
        "mock-AWS_SESSION_TOKEN".parse().unwrap(),
    );
    h.insert(
        "content-type",
        "application/x-www-form-urlencoded".parse().unwrap(),
    );
    for (k, v) in extra {
        h.insert(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    let (path, query) = pq.split_once('?').unwrap_or((pq, ""));
    let hash = sigv4::sha256_hex(body.as_bytes());
    let mut signed: Vec<String> = h.keys().map(|k| k.as_str().to_owned()).collect();
    signed.sort();
    let mut auth = SigV4Auth {
        key_id: "mock-AWS_ACCESS_KEY_ID".into(),
        scope: SCOPE.into(),
        signed_headers: signed,
        signature: String::new(),
    };
    let req = SignedRequest {
        method,
        path,
        query,
        headers: &h,
        authority: HOST,
        payload_hash: &hash,
    };
    // Most services sign the path URI-encoded twice.
    let uri = path.replace('%', "%25");
    auth.signature = sigv4::sign(&req, &auth, &uri, secret).unwrap();
    h.insert("authorization", auth.header().parse().unwrap());
    let mut b = Request::builder().method(method).uri(pq);
    *b.headers_mut().unwrap() = h;
    b.body(Full::new(Bytes::from(body.to_owned()))).unwrap()
}

#[tokio::test]
async fn placeholder_signed_requests_are_verified_and_re_signed_with_the_real_secret() {
    let dir = tempfile::tempdir().unwrap();
    let pki = make_pki(dir.path(), "aws", &[HOST, "api.test"]);
    let (addr, seen) = aws_upstream(pki.server.clone()).await;
    let policy = format!(
        r#"{{
        "egress": {{"default": "deny",
            "allow": [{{"hosts": ["*.amazonaws.com", "api.test"]}}, {{"cidrs": ["127.0.0.1/32"]}}]}},
        "credentials": {{"AWS_ACCESS_KEY_ID": {{
            "source": {{"env": "KEY_ID"}}, "hosts": ["*.amazonaws.com"],
            "aws_sigv4": {{"secret_access_key": {{"env": "SECRET"}},
                           "session_token": {{"env": "TOKEN"}}}}}}}},
        "resolve": {{"{HOST}": "{addr}", "api.test": "{addr}"}}
    }}"#
    );
    let h = harness_in(
        dir,
        &policy,
        &[("KEY_ID", KEY_ID), ("SECRET", SECRET), ("TOKEN", TOKEN)],
        vec![pki.ca_path.clone()],
    )
    .await;
    let mut c = intercepted_client(&h, HOST, 443).await;
    let body = "Action=GetCallerIdentity&Version=2011-06-15";

    // POST with a form body (no x-amz-content-sha256: the broker hashes the body).
    let (status, _, text) = send(
        &mut c,
        guest_signed("POST", "/", body, "mock-AWS_SECRET_ACCESS_KEY", &[]),
    )
    .await;
    assert_eq!(status, 200, "{text}");
    // The upstream saw the real key id and token; the guest sees placeholders.
    assert_eq!(
        text,
        "verified mock-AWS_ACCESS_KEY_ID token mock-AWS_SESSION_TOKEN"
    );
    assert_eq!(seen.lock().unwrap()[0], format!("true {TOKEN}"));
    // GET with a query and an encoded path, S3-style payload header.
    let (status, _, text) = send(
        &mut c,
        guest_signed(
            "GET",
            "/a%20b/c?Version=2011-06-15&Action=GetCallerIdentity",
            "",
            "mock-AWS_SECRET_ACCESS_KEY",
            &[("x-amz-content-sha256", sigv4::EMPTY_SHA256)],
        ),
    )
    .await;
    assert_eq!(status, 200, "{text}");

    // Refusals, each with a reason; nothing reaches the upstream.
    let before = seen.lock().unwrap().len();
    let cases = [
        (guest_signed("POST", "/", body, "guessed-real-secret", &[]), "does not verify with the placeholder secret"),
        (guest_signed("PUT", "/obj", "x", "mock-AWS_SECRET_ACCESS_KEY",
            &[("x-amz-content-sha256", "STREAMING-AWS4-HMAC-SHA256-PAYLOAD")]), "streaming SigV4 payloads"),
        (guest_signed("GET", "/?X-Amz-Credential=mock-AWS_ACCESS_KEY_ID%2F20260101%2Fus-east-1%2Fsts%2Faws4_request", "",
            "mock-AWS_SECRET_ACCESS_KEY", &[]), "presigned SigV4 URLs"),
    ];
    for (req, want) in cases {
        let (status, headers, body) = send(&mut c, req).await;
        assert_eq!(status, 403, "{body}");
        let reason = headers["x-sluice-reason"].to_str().unwrap();
        assert!(reason.contains(want), "{reason}");
        assert!(!reason.contains(SECRET) && !reason.contains(KEY_ID));
    }
    assert_eq!(seen.lock().unwrap().len(), before);

    // The same placeholders toward a host outside the credential's hosts: blocked.
    let mut other = intercepted_client(&h, "api.test", 443).await;
    let mut req = guest_signed("POST", "/", body, "mock-AWS_SECRET_ACCESS_KEY", &[]);
    req.headers_mut()
        .insert("host", "api.test".parse().unwrap());
    let (status, headers, _) = send(&mut other, req).await;
    assert_eq!(status, 403);
    assert!(headers["x-sluice-reason"]
        .to_str()
        .unwrap()
        .contains("AWS_ACCESS_KEY_ID"));
    assert_eq!(seen.lock().unwrap().len(), before);
}
