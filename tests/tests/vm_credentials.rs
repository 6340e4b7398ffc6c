//! End-to-end credential tests in a real VM: the AWS CLI and boto3 (Debian packages in the
//! guest) sign with the placeholders the agent put in their environment; the broker verifies
//! and re-signs; the upstream's recorded requests must verify with the *real* secret.
//!
//! Same harness as vm.rs (one VM at a time; `CI=true` turns skips into failures).

use std::time::Duration;

use host_broker::policy::{CredentialSpec, HostPattern, HostRule, SecretSource, SigV4Spec};
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

#[tokio::test]
async fn awscli_and_boto3_sign_with_placeholders_and_the_broker_re_signs() -> anyhow::Result<()> {
    let Some(env) =
        vm_test("awscli_and_boto3_sign_with_placeholders_and_the_broker_re_signs").await
    else {
        return Ok(());
    };
    let name = "cred-aws";
    let spec = ScenarioSpec {
        name: name.into(),
        initrd: InitrdSpec::new().file(
            guest_file("credentials-aws.sh"),
            "/sluice/workload.sh",
            0o755,
        ),
        cmdline: "sluice.mode=exec sluice.exec=/run/sluice/workload.sh".into(),
        debian_root: true,
        broker: true,
        memory_mib: 1024,
    };
    let mut s = Scenario::boot(&env.platform, &env.artifacts, spec).await?;
    // The AWS credential, before the guest's agent asks for its config (it boots for
    // seconds under any VMM; the update takes milliseconds).
    {
        let broker = &s.broker.as_ref().expect("broker").broker;
        let mut policy = broker.policy(name).expect("registered");
        let mut aws = CredentialSpec::new(secret(KEY_ID));
        aws.hosts = Some(vec![HostRule::any_request(HostPattern::Exact(
            "api.example.com".into(),
        ))]);
        aws.aws_sigv4 = Some(SigV4Spec {
            secret_access_key: secret(SECRET),
            session_token: Some(secret(TOKEN)),
        });
        policy.credentials.insert("AWS_ACCESS_KEY_ID".into(), aws);
        broker.update_vm(name, policy).await?;
    }
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
    Ok(())
}
