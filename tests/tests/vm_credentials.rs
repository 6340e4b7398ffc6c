//! End-to-end credential tests in a real VM: the AWS CLI and boto3 (Debian packages in the
//! guest) sign with the placeholders the agent put in their environment; the broker verifies
//! and re-signs; the upstream's recorded requests must verify with the *real* secret.
//!
//! Same harness as vm.rs (one VM at a time; `CI=true` turns skips into failures).

use std::time::Duration;

use host_broker::policy::{
    CredentialSpec, HostPattern, HostRule, PathPattern, SecretSource, SigV4Spec,
};
use host_broker::secrets::sigv4::{self, SigV4Auth, SignedRequest};
use host_broker::secrets::SecretValue;
use hyper::HeaderMap;
use sluice_e2e::artifacts::guest_file;
use sluice_e2e::gate::vm_test;
use sluice_e2e::image::InitrdSpec;
use sluice_e2e::scenario::{Scenario, ScenarioSpec};

const KEY_ID: &str = "AKIAE2EREALKEY000001";
const SECRET: &str = "e2e/Real+Secret0123456789abcdefghijklmnop";
const TOKEN: &str = "FwoGZXIvYXdzE2E-real-session-token-0123456789";

fn secret(v: &str) -> SecretSource {
    SecretSource::Value(SecretValue::new(v.to_owned()))
}

/// An exec-mode VM on the Debian root running `script` from tests/guest.
fn exec_spec(name: &str, script: &str) -> ScenarioSpec {
    ScenarioSpec {
        name: name.into(),
        initrd: InitrdSpec::new().file(guest_file(script), "/sluice/workload.sh", 0o755),
        cmdline: "sluice.mode=exec sluice.exec=/run/sluice/workload.sh".into(),
        debian_root: true,
        broker: true,
        memory_mib: 1024,
    }
}

#[tokio::test]
async fn awscli_and_boto3_sign_with_placeholders_and_the_broker_re_signs() -> anyhow::Result<()> {
    let Some(env) =
        vm_test("awscli_and_boto3_sign_with_placeholders_and_the_broker_re_signs").await
    else {
        return Ok(());
    };
    let name = "cred-aws";
    let spec = exec_spec(name, "credentials-aws.sh");
    // The AWS credential is in the policy before the VM starts.
    let mut s = Scenario::boot_with_policy(&env.platform, &env.artifacts, spec, |policy| {
        let mut aws = CredentialSpec::new(secret(KEY_ID));
        aws.hosts = Some(vec![HostRule::any_request(HostPattern::Exact(
            "api.example.com".into(),
        ))]);
        aws.aws_sigv4 = Some(SigV4Spec {
            secret_access_key: secret(SECRET),
            session_token: Some(secret(TOKEN)),
        });
        policy.credentials.insert("AWS_ACCESS_KEY_ID".into(), aws);
    })
    .await?;
    s.vm.wait_for_console("workload: done", Duration::from_secs(600))
        .await?;
    s.wait_exit(Duration::from_secs(120)).await?;
    let console = s.console();
    for l in console.lines().filter(|l| l.contains("workload: ")) {
        eprintln!("{l}");
    }
    assert!(
        console.contains(
            "aws-env key=mock-AWS_ACCESS_KEY_ID secret=mock-AWS_SECRET_ACCESS_KEY \
             token=mock-AWS_SESSION_TOKEN"
        ),
        "the guest environment holds the three placeholders"
    );
    let signed: Vec<_> = s
        .upstream
        .requests()
        .into_iter()
        .filter(|r| {
            r.header("authorization")
                .is_some_and(|a| a.starts_with("AWS4-"))
        })
        .collect();
    let agents: Vec<String> = signed
        .iter()
        .map(|r| r.header("user-agent").unwrap_or_default().to_owned())
        .collect();
    assert!(
        agents.iter().any(|a| a.starts_with("aws-cli/"))
            && agents.iter().any(|a| a.contains("Boto3/")),
        "both clients reached the upstream: {agents:?}"
    );
    for r in &signed {
        let auth = SigV4Auth::parse(r.header("authorization").unwrap()).unwrap();
        assert_eq!(auth.key_id, KEY_ID, "the real key id went upstream");
        assert_eq!(r.header("x-amz-security-token"), Some(TOKEN));
        let mut headers = HeaderMap::new();
        for (k, v) in &r.headers {
            headers.append(
                hyper::header::HeaderName::from_bytes(k.as_bytes())?,
                v.parse()?,
            );
        }
        let hash = match r.header("x-amz-content-sha256") {
            Some(h) => h.to_owned(),
            None => sigv4::sha256_hex(&r.body),
        };
        let req = SignedRequest {
            method: &r.method,
            path: &r.path,
            query: "",
            headers: &headers,
            authority: "api.example.com",
            payload_hash: &hash,
        };
        sigv4::verify(&req, &auth, SECRET)
            .unwrap_or_else(|e| panic!("signature must verify with the real secret: {e}"));
        assert!(sigv4::verify(&req, &auth, "mock-AWS_SECRET_ACCESS_KEY").is_err());
    }
    for needle in [KEY_ID, SECRET, TOKEN] {
        assert!(
            !console.contains(needle),
            "a real value reached the guest console"
        );
    }
    s.passed();
    env.completed();
    Ok(())
}

/// A per-VM random placeholder bound to `GET /v1/allowed/**`: curl in the guest (agent
/// environment and `env -i`) gets the real value substituted inside the binding and a 403
/// naming the binding gate outside it; the upstream never sees the request outside.
#[tokio::test]
async fn curl_with_a_random_placeholder_is_substituted_only_inside_its_binding(
) -> anyhow::Result<()> {
    let Some(env) =
        vm_test("curl_with_a_random_placeholder_is_substituted_only_inside_its_binding").await
    else {
        return Ok(());
    };
    let name = "cred-scoped";
    let spec = exec_spec(name, "credentials-scoped.sh");
    let mut s = Scenario::boot_with_policy(&env.platform, &env.artifacts, spec, |policy| {
        let cred = policy
            .credentials
            .get_mut(sluice_e2e::broker::CREDENTIAL)
            .expect("the test policy has API_KEY");
        cred.placeholder = Some("random".into());
        cred.hosts = Some(vec![HostRule {
            host: HostPattern::Exact("api.example.com".into()),
            ports: None,
            methods: Some(vec!["GET".into()]),
            paths: Some(vec![PathPattern::parse("/v1/allowed/**").unwrap()]),
        }]);
    })
    .await?;
    s.vm.wait_for_console("workload: done", Duration::from_secs(300))
        .await?;
    s.wait_exit(Duration::from_secs(120)).await?;
    let console = s.console();
    let line = |prefix: &str| -> String {
        console
            .lines()
            .find(|l| l.contains(&format!("workload: {prefix}")))
            .unwrap_or_else(|| panic!("no `{prefix}` line on the console"))
            .to_string()
    };
    let ph = line("placeholder=");
    let ph = ph.split("placeholder=").nth(1).unwrap_or_default().trim();
    let suffix = ph.strip_prefix("mock-API_KEY-").unwrap_or_default();
    assert!(
        suffix.len() == 32 && suffix.bytes().all(|b| b.is_ascii_hexdigit()),
        "a per-VM random placeholder: {ph:?}"
    );
    for mode in ["", "-envi"] {
        let inside = line(&format!("scoped inside{mode} "));
        assert!(inside.contains("status=200"), "{inside}");
        let outside = line(&format!("scoped outside{mode} "));
        assert!(
            outside.contains("status=403") && outside.contains("binding"),
            "{outside}"
        );
    }
    let bearer = format!("Bearer {}", s.canary);
    for path in ["/v1/allowed/env", "/v1/allowed/envi"] {
        let req = s
            .upstream
            .wait_for_path(path, Duration::from_secs(5))
            .await?;
        assert_eq!(req.header("authorization"), Some(bearer.as_str()), "{path}");
    }
    assert!(
        !s.upstream
            .requests()
            .iter()
            .any(|r| r.path.starts_with("/v1/other")),
        "a request outside the binding reached the upstream"
    );
    assert!(
        !console.contains(&s.canary),
        "the real value reached the guest"
    );
    s.passed();
    env.completed();
    Ok(())
}
