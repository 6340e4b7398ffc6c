//! End-to-end trust tests: the client matrix (curl, wget, Debian's requests, httpx with PyPI's
//! own certifi, Node `https`, Java `HttpClient`, a static Go client) reaches the API through
//! the broker with certificate verification on, each with the agent's environment and under
//! `env -i` (where only the runtime's default trust store and the transparent capture help),
//! on a writable root, in systemd mode and on a read-only (`sluice.rootflags=ro`) root.
//!
//! Same harness as vm.rs (one VM at a time; `CI=true` turns skips into failures).

use std::time::Duration;

use sluice_e2e::artifacts::{go_client, guest_file};
use sluice_e2e::gate::vm_test;
use sluice_e2e::image::InitrdSpec;
use sluice_e2e::scenario::{Scenario, ScenarioSpec};

/// Upper bound, not an expectation: the JVM compiles the single-file program under TCG.
const JAVA_RUN: Duration = Duration::from_secs(900);

/// Every client of the matrix (trust.sh's names).
const ALL_CLIENTS: &[&str] = &["curl", "wget", "requests", "httpx", "node", "java", "go"];

fn bearer(s: &Scenario) -> String {
    format!("Bearer {}", s.canary)
}

/// The initrd for trust.sh at `script_dest` running `clients`.
fn initrd(script_dest: &str, clients: &[&str]) -> anyhow::Result<InitrdSpec> {
    Ok(InitrdSpec::new()
        .file(guest_file("trust.sh"), script_dest, 0o755)
        .file(guest_file("Get.java"), "/sluice/Get.java", 0o644)
        .file(go_client()?, "/sluice/goget", 0o755)
        .text(&clients.join(" "), "/sluice/clients", 0o644))
}

fn spec(name: &str, cmdline_extra: &str, clients: &[&str]) -> anyhow::Result<ScenarioSpec> {
    Ok(ScenarioSpec {
        name: name.into(),
        initrd: initrd("/sluice/workload.sh", clients)?,
        cmdline: format!("sluice.mode=exec {cmdline_extra} sluice.exec=/run/sluice/workload.sh"),
        debian_root: true,
        broker: true,
        memory_mib: 1536,
    })
}

/// Boots, waits for the script, and checks every client in both modes got 200 and the
/// upstream the real value with SNI api.example.com. Returns the console.
/// In systemd mode the unit powers off (systemd is PID 1, no agent status).
async fn run_clients(
    s: &mut Scenario,
    want_root: &str,
    systemd: bool,
    clients: &[&str],
) -> anyhow::Result<String> {
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
        "httpx must use PyPI's own certifi copy: {certifi}"
    );
    let mut failed = Vec::new();
    for c in clients {
        for mode in ["env", "envi"] {
            let name = format!("{c}-{mode}");
            let l = line(&format!("{name} "));
            if !l.contains(&format!("status=200 out=upstream-ok /v1/{name}")) {
                failed.push(l);
            }
        }
    }
    assert!(failed.is_empty(), "clients failed:\n{}", failed.join("\n"));
    for c in clients {
        for mode in ["env", "envi"] {
            let path = format!("/v1/{c}-{mode}");
            let req = s
                .upstream
                .wait_for_path(&path, Duration::from_secs(5))
                .await?;
            assert_eq!(
                req.header("authorization"),
                Some(bearer(s).as_str()),
                "{path}: the upstream must receive the real value"
            );
            assert_eq!(req.sni.as_deref(), Some("api.example.com"), "{path}");
        }
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
async fn client_matrix_trusts_the_vm_ca_by_default_env_and_env_i() -> anyhow::Result<()> {
    let Some(env) = vm_test("client_matrix_trusts_the_vm_ca_by_default_env_and_env_i").await else {
        return Ok(());
    };
    let spec = spec("trust-rw", "", ALL_CLIENTS)?;
    let mut s = Scenario::boot(&env.platform, &env.artifacts, spec).await?;
    let console = run_clients(&mut s, "rw", false, ALL_CLIENTS).await?;
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
    let clients = &["curl", "httpx", "java", "go"];
    let spec = ScenarioSpec {
        name: "trust-systemd".into(),
        initrd: initrd("/sluice/trust.sh", clients)?.file(
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
    run_clients(&mut s, "rw", true, clients).await?;
    s.passed();
    env.completed();
    Ok(())
}

#[tokio::test]
async fn read_only_root_trust_stores_are_overlaid() -> anyhow::Result<()> {
    let Some(env) = vm_test("read_only_root_trust_stores_are_overlaid").await else {
        return Ok(());
    };
    let clients = &["curl", "requests", "httpx", "node", "java"];
    let spec = spec("trust-ro", "sluice.rootflags=ro", clients)?;
    let mut s = Scenario::boot(&env.platform, &env.artifacts, spec).await?;
    let console = run_clients(&mut s, "ro", false, clients).await?;
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
