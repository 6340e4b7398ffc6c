//! Every policy in docs/recipes/ loads, validates and substitutes as docs/recipes.md says.
//! The test fails when a recipe is added without a case here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use host_broker::policy::{Policy, RequestScope};
use host_broker::secrets::{
    resolve_random_placeholders, CredentialSet, GateContext, MapEnv, Verdict,
};
use http::{HeaderMap, HeaderName, HeaderValue};

fn recipes_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/recipes")
}

fn load(name: &str, env: &MapEnv) -> (Policy, CredentialSet) {
    let path = recipes_dir().join(name);
    let mut p = Policy::from_path(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
    p.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
    let vm_dir = tempfile::tempdir().unwrap();
    resolve_random_placeholders(&mut p, vm_dir.path()).unwrap();
    let set = CredentialSet::load(&p, env).unwrap_or_else(|e| panic!("{name}: {e}"));
    (p, set)
}

fn ctx<'a>(host: &'a str, method: &'a str, path: &'a str) -> GateContext<'a> {
    GateContext {
        target_host: host,
        tls_verified: true,
        authority_matches: true,
        dialed_by_name: true,
        request: Some(RequestScope {
            port: 443,
            method,
            path,
        }),
    }
}

/// Headers as the upstream would get them, or the block reason.
fn send(
    set: &CredentialSet,
    host: &str,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<HeaderMap, String> {
    let mut h = HeaderMap::new();
    for (k, v) in headers {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    match set.apply_request_headers(&mut h, &ctx(host, method, path)) {
        Verdict::Forward { .. } => Ok(h),
        Verdict::Block { reason, .. } => Err(reason),
    }
}

#[test]
fn every_recipe_has_a_case() {
    let found: BTreeSet<String> = std::fs::read_dir(recipes_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    let tested: BTreeSet<String> = [
        "anthropic.toml",
        "aws.toml",
        "github.toml",
        "google.toml",
        "openai.toml",
    ]
    .into_iter()
    .map(String::from)
    .collect();
    assert_eq!(found, tested, "add a case for each recipe");
}

#[test]
fn openai() {
    let (p, set) = load(
        "openai.toml",
        &MapEnv::from_pairs([("OPENAI_API_KEY", "sk-proj-REAL")]),
    );
    assert!(p.check_name("api.openai.com", 443).is_ok());
    assert!(p.check_name("api.openai.com", 80).is_err());
    let h = send(
        &set,
        "api.openai.com",
        "POST",
        "/v1/chat/completions",
        &[("authorization", "Bearer mock-OPENAI_API_KEY")],
    )
    .unwrap();
    assert_eq!(h["authorization"], "Bearer sk-proj-REAL");
    // No header at all: injected.
    let h = send(&set, "api.openai.com", "GET", "/v1/models", &[]).unwrap();
    assert_eq!(h["authorization"], "Bearer sk-proj-REAL");
    assert!(send(
        &set,
        "evil.example",
        "GET",
        "/",
        &[("authorization", "Bearer mock-OPENAI_API_KEY")]
    )
    .is_err());
}

#[test]
fn anthropic() {
    let (p, set) = load(
        "anthropic.toml",
        &MapEnv::from_pairs([("ANTHROPIC_API_KEY", "sk-ant-REAL")]),
    );
    assert!(p.check_name("api.anthropic.com", 443).is_ok());
    let h = send(
        &set,
        "api.anthropic.com",
        "POST",
        "/v1/messages",
        &[("x-api-key", "mock-ANTHROPIC_API_KEY")],
    )
    .unwrap();
    assert_eq!(h["x-api-key"], "sk-ant-REAL");
    let h = send(&set, "api.anthropic.com", "POST", "/v1/messages", &[]).unwrap();
    assert_eq!(h["x-api-key"], "sk-ant-REAL");
}

#[test]
fn github_api_and_git_over_https() {
    let creds = tempfile::tempdir().unwrap();
    std::fs::write(creds.path().join("github-token"), "ghp_REALTOKEN0123\n").unwrap();
    let env = MapEnv::from_pairs([("CREDENTIALS_DIRECTORY", creds.path().to_str().unwrap())]);
    let (p, set) = load("github.toml", &env);
    let ph = set.guest_env()["GITHUB_TOKEN"].clone();
    assert!(
        ph.starts_with("mock-GITHUB_TOKEN-") && ph.len() == 18 + 32,
        "{ph}"
    );
    assert!(p.check_name("github.com", 443).is_ok());
    let bearer = format!("Bearer {ph}");
    // REST: read-only, acme only.
    let h = send(
        &set,
        "api.github.com",
        "GET",
        "/repos/acme/widgets/pulls",
        &[("authorization", &bearer)],
    )
    .unwrap();
    assert_eq!(h["authorization"], "Bearer ghp_REALTOKEN0123");
    for (method, path) in [
        ("DELETE", "/repos/acme/widgets"),
        ("GET", "/repos/other/widgets"),
        ("GET", "/user/keys"),
    ] {
        let e = send(
            &set,
            "api.github.com",
            method,
            path,
            &[("authorization", &bearer)],
        )
        .unwrap_err();
        assert!(e.contains("outside the bindings"), "{e}");
    }
    // git: Basic x-access-token:<placeholder>, substituted inside the payload.
    let basic = format!("Basic {}", STANDARD.encode(format!("x-access-token:{ph}")));
    for (method, path) in [
        ("GET", "/acme/widgets.git/info/refs"),
        ("POST", "/acme/widgets.git/git-upload-pack"),
        ("POST", "/acme/widgets/git-receive-pack"),
    ] {
        let h = send(
            &set,
            "github.com",
            method,
            path,
            &[("authorization", &basic)],
        )
        .unwrap();
        let want = format!(
            "Basic {}",
            STANDARD.encode("x-access-token:ghp_REALTOKEN0123")
        );
        assert_eq!(h["authorization"], want.as_str(), "{method} {path}");
    }
    let e = send(
        &set,
        "github.com",
        "GET",
        "/other/repo.git/info/refs",
        &[("authorization", &basic)],
    )
    .unwrap_err();
    assert!(e.contains("outside the bindings"), "{e}");
}

#[test]
fn google_api_key_in_query_or_header() {
    let (p, set) = load(
        "google.toml",
        &MapEnv::from_pairs([("GOOGLE_API_KEY", "AIzaREALKEY0123")]),
    );
    assert!(p
        .check_name("generativelanguage.googleapis.com", 443)
        .is_ok());
    let c = ctx(
        "generativelanguage.googleapis.com",
        "POST",
        "/v1beta/models/gemini-pro:generateContent",
    );
    let (v, new) = set.apply_request_target(
        "/v1beta/models/gemini-pro:generateContent?key=mock-GOOGLE_API_KEY&alt=json",
        &c,
        false,
    );
    assert!(matches!(v, Verdict::Forward { .. }));
    assert_eq!(
        new.as_deref().map(String::as_str),
        Some("/v1beta/models/gemini-pro:generateContent?key=AIzaREALKEY0123&alt=json")
    );
    let h = send(
        &set,
        "maps.googleapis.com",
        "GET",
        "/maps/api/geocode/json",
        &[("x-goog-api-key", "mock-GOOGLE_API_KEY")],
    )
    .unwrap();
    assert_eq!(h["x-goog-api-key"], "AIzaREALKEY0123");
    let (v, _) = set.apply_request_target(
        "/x?key=mock-GOOGLE_API_KEY",
        &ctx("googleapis.com.evil.example", "GET", "/x"),
        false,
    );
    assert!(matches!(v, Verdict::Block { .. }));
}

#[test]
fn aws_sigv4_re_signs_with_the_real_secret() {
    use host_broker::secrets::sigv4::{self, SigV4Auth, SignedRequest};
    let (p, set) = load(
        "aws.toml",
        &MapEnv::from_pairs([
            ("AWS_ACCESS_KEY_ID", "AKIAREALKEY000000001"),
            ("AWS_SECRET_ACCESS_KEY", "real-secret-key-0123456789"),
            ("AWS_SESSION_TOKEN", "real-session-token-0123"),
        ]),
    );
    assert!(p.check_name("s3.eu-west-1.amazonaws.com", 443).is_ok());
    let env = set.guest_env();
    assert_eq!(env["AWS_ACCESS_KEY_ID"], "mock-AWS_ACCESS_KEY_ID");
    assert_eq!(env["AWS_SECRET_ACCESS_KEY"], "mock-AWS_SECRET_ACCESS_KEY");
    assert_eq!(env["AWS_SESSION_TOKEN"], "mock-AWS_SESSION_TOKEN");
    let host = "s3.eu-west-1.amazonaws.com";
    let mut h = HeaderMap::new();
    h.insert(
        "host",
        HeaderValue::from_static("s3.eu-west-1.amazonaws.com"),
    );
    h.insert("x-amz-date", HeaderValue::from_static("20260101T000000Z"));
    h.insert(
        "x-amz-content-sha256",
        HeaderValue::from_static("UNSIGNED-PAYLOAD"),
    );
    h.insert(
        "x-amz-security-token",
        HeaderValue::from_static("mock-AWS_SESSION_TOKEN"),
    );
    let mut auth = SigV4Auth {
        key_id: "mock-AWS_ACCESS_KEY_ID".into(),
        scope: "20260101/eu-west-1/s3/aws4_request".into(),
        signed_headers: [
            "host",
            "x-amz-content-sha256",
            "x-amz-date",
            "x-amz-security-token",
        ]
        .map(String::from)
        .to_vec(),
        signature: String::new(),
    };
    let req = |h: &HeaderMap| -> (String, String) {
        let r = SignedRequest {
            method: "GET",
            path: "/bucket/key.txt",
            query: "",
            headers: h,
            authority: host,
            payload_hash: "UNSIGNED-PAYLOAD",
        };
        (
            String::new(),
            sigv4::sign(&r, &auth, "/bucket/key.txt", "mock-AWS_SECRET_ACCESS_KEY").unwrap(),
        )
    };
    auth.signature = req(&h).1;
    h.insert(
        "authorization",
        HeaderValue::from_str(&auth.header()).unwrap(),
    );
    let c = ctx(host, "GET", "/bucket/key.txt");
    assert!(matches!(
        set.apply_request_headers(&mut h, &c),
        Verdict::Forward { .. }
    ));
    let used = set
        .apply_sigv4(&mut h, "GET", "/bucket/key.txt", host, None, &c)
        .unwrap();
    assert_eq!(used, vec!["AWS_ACCESS_KEY_ID".to_owned()]);
    assert_eq!(h["x-amz-security-token"], "real-session-token-0123");
    let signed = SigV4Auth::parse(h["authorization"].to_str().unwrap()).unwrap();
    assert_eq!(signed.key_id, "AKIAREALKEY000000001");
    let r = SignedRequest {
        method: "GET",
        path: "/bucket/key.txt",
        query: "",
        headers: &h,
        authority: host,
        payload_hash: "UNSIGNED-PAYLOAD",
    };
    sigv4::verify(&r, &signed, "real-secret-key-0123456789").expect("valid with the real secret");
    // Responses echoing the real key id or token are scrubbed.
    let mut resp = HeaderMap::new();
    resp.insert(
        "x-echo",
        HeaderValue::from_static("AKIAREALKEY000000001 real-session-token-0123"),
    );
    set.scrub_response_headers(&mut resp);
    assert_eq!(
        resp["x-echo"],
        "mock-AWS_ACCESS_KEY_ID mock-AWS_SESSION_TOKEN"
    );
}
