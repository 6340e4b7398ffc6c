//! End-to-end trust tests: runtimes that read only their own default trust stores (Java's
//! `cacerts`, a PyPI-style certifi bundle) reach the API through the broker with certificate
//! verification on, on a writable and on a read-only (`sluice.rootflags=ro`) Debian root.
//!
//! Same harness as vm.rs (one VM at a time; `CI=true` turns skips into failures).

use std::path::PathBuf;
use std::time::Duration;

use sluice_e2e::gate::vm_test;
use sluice_e2e::image::InitrdSpec;
use sluice_e2e::scenario::{Scenario, ScenarioSpec};

/// Upper bound, not an expectation: the JVM compiles the single-file program under TCG.
const JAVA_RUN: Duration = Duration::from_secs(900);

fn guest_file(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("guest")
        .join(name)
}

fn bearer(s: &Scenario) -> String {
    format!("Bearer {}", s.canary)
}

fn spec(name: &str, cmdline_extra: &str) -> ScenarioSpec {
    ScenarioSpec {
        name: name.into(),
        initrd: InitrdSpec::new()
            .file(guest_file("trust.sh"), "/sluice/workload.sh", 0o755)
            .file(guest_file("Get.java"), "/sluice/Get.java", 0o644),
        cmdline: format!("sluice.mode=exec {cmdline_extra} sluice.exec=/run/sluice/workload.sh"),
        debian_root: true,
        broker: true,
        memory_mib: 1536,
    }
}

/// Boots, waits for the script, and checks every client got 200 and the upstream the real
/// value. Returns the console.
/// In systemd mode the unit powers off (systemd is PID 1, no agent status).
async fn run_clients(s: &mut Scenario, want_root: &str, systemd: bool) -> anyhow::Result<String> {
    s.vm.wait_for_console("workload: done", JAVA_RUN).await?;
    let exit = s.wait_exit(Duration::from_secs(300)).await?;
    if !systemd {
        assert_eq!(exit.agent_status, Some(0));
    }
    let console = s.console();
    let line = |prefix: &str| -> String {
        console
            .lines()
            .find(|l| l.contains(&format!("workload: {prefix}")))
            .map(|l| l.to_string())
            .unwrap_or_else(|| panic!("no `{prefix}` line on the console"))
    };
    assert!(
        line("root=").trim_end().ends_with(want_root),
        "{}",
        line("root=")
    );
    let certifi = line("certifi where=");
    assert!(
        certifi.contains("/opt/venv/lib/python3.11/site-packages/certifi/cacert.pem"),
        "requests must use the image's own certifi copy: {certifi}"
    );
    for (prefix, path) in [
        ("java-env ", "/v1/java-env"),
        ("java-envi ", "/v1/java-envi"),
        ("certifi-envi ", "/v1/certifi-envi"),
    ] {
        let l = line(prefix);
        assert!(
            l.contains(&format!("status=200 out=upstream-ok {path}")),
            "{l}"
        );
    }
    let curl = line("curl-envi=");
    assert!(
        curl.contains("curl-envi=0 out=upstream-ok /v1/curl-envi"),
        "{curl}"
    );
    for path in [
        "/v1/java-env",
        "/v1/java-envi",
        "/v1/certifi-envi",
        "/v1/curl-envi",
    ] {
        let req = s
            .upstream
            .wait_for_path(path, Duration::from_secs(5))
            .await?;
        assert_eq!(
            req.header("authorization"),
            Some(bearer(s).as_str()),
            "{path}: the upstream must receive the real value"
        );
        assert_eq!(req.sni.as_deref(), Some("api.example.com"), "{path}");
    }
    for l in console.lines().filter(|l| l.contains("-secs=")) {
        eprintln!("{l}");
    }
    assert!(
        !console.contains(&s.canary),
        "the real credential value appeared on the guest console"
    );
    Ok(console)
}

#[tokio::test]
async fn java_and_pypi_certifi_trust_the_vm_ca_by_default() -> anyhow::Result<()> {
    let Some(env) = vm_test("java_and_pypi_certifi_trust_the_vm_ca_by_default").await else {
        return Ok(());
    };
    let mut s = Scenario::boot(&env.platform, &env.artifacts, spec("trust-rw", "")).await?;
    let console = run_clients(&mut s, "rw", false).await?;
    let stores = console
        .lines()
        .find(|l| l.contains("VM CA trusted by:"))
        .expect("the agent names the stores it updated");
    for store in [
        "/etc/ssl/certs/ca-certificates.crt",
        "/etc/ssl/certs/java/cacerts",
        "/opt/venv/lib/python3.11/site-packages/certifi/cacert.pem",
    ] {
        assert!(stores.contains(store), "{store} missing: {stores}");
    }
    assert!(
        !console.contains("read-only root:"),
        "nothing is overlaid on a writable root"
    );
    s.passed();
    env.completed();
    Ok(())
}

/// systemd mode: the stores are written into /sysroot before the switch, and a unit gets
/// JAVA_TOOL_OPTIONS from the DefaultEnvironment= drop-in.
#[tokio::test]
async fn systemd_mode_java_and_certifi_trust_the_vm_ca() -> anyhow::Result<()> {
    let Some(env) = vm_test("systemd_mode_java_and_certifi_trust_the_vm_ca").await else {
        return Ok(());
    };
    let spec = ScenarioSpec {
        name: "trust-systemd".into(),
        initrd: InitrdSpec::new()
            .file(guest_file("trust.sh"), "/sluice/trust.sh", 0o755)
            .file(guest_file("Get.java"), "/sluice/Get.java", 0o644)
            .file(
                guest_file("sluice-trust.service"),
                "/sluice/units/sluice-trust.service",
                0o644,
            ),
        cmdline: "sluice.mode=systemd systemd.show_status=false".into(),
        debian_root: true,
        broker: true,
        memory_mib: 1536,
    };
    let mut s = Scenario::boot(&env.platform, &env.artifacts, spec).await?;
    run_clients(&mut s, "rw", true).await?;
    s.passed();
    env.completed();
    Ok(())
}

#[tokio::test]
async fn read_only_root_trust_stores_are_overlaid() -> anyhow::Result<()> {
    let Some(env) = vm_test("read_only_root_trust_stores_are_overlaid").await else {
        return Ok(());
    };
    let spec = spec("trust-ro", "sluice.rootflags=ro");
    let mut s = Scenario::boot(&env.platform, &env.artifacts, spec).await?;
    let console = run_clients(&mut s, "ro", false).await?;
    let overlaid = console
        .lines()
        .find(|l| l.contains("read-only root: tmpfs copies mounted over"))
        .expect("the agent says what it overlaid");
    for path in [
        "/etc/ssl/certs",
        "/opt/venv/lib/python3.11/site-packages/certifi/cacert.pem",
    ] {
        assert!(overlaid.contains(path), "{path} missing: {overlaid}");
    }
    s.passed();
    env.completed();
    Ok(())
}
