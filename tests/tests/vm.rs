//! End-to-end tests: real VMs (see tests/src), the real broker, the real agent.
//!
//! One VM at a time (the harness serialises them); each test combines the checks that share a
//! boot. With `CI=true` a machine that cannot boot VMs fails these tests instead of skipping.

use std::time::Duration;

use sluice_e2e::artifacts::guest_file;
use sluice_e2e::broker::{CREDENTIAL, PLACEHOLDER};
use sluice_e2e::gate::vm_test;
use sluice_e2e::image::InitrdSpec;
use sluice_e2e::scenario::{Scenario, ScenarioSpec};

/// Upper bounds, not expectations: TCG boots take seconds, systemd ones tens of seconds.
const INITRD_BOOT: Duration = Duration::from_secs(120);
const DEBIAN_RUN: Duration = Duration::from_secs(300);
const SYSTEMD_RUN: Duration = Duration::from_secs(420);

/// The canary (real value) must not appear in anything the guest printed or received.
fn assert_no_leak(s: &Scenario) {
    assert!(
        !s.console().contains(&s.canary),
        "the real credential value appeared on the guest console"
    );
}

/// The guest has no network device: every interface is virtual (`lo`, the agent's `sluice0`).
fn assert_no_nic(lines: &[&str]) {
    let ifaces = lines
        .iter()
        .find(|l| l.contains("workload: ifaces="))
        .expect("ifaces line");
    let names: Vec<&str> = ifaces
        .split("ifaces=")
        .nth(1)
        .unwrap_or("")
        .split_whitespace()
        .collect();
    assert_eq!(names, ["lo", "sluice0"], "{ifaces}");
    let nics = lines
        .iter()
        .find(|l| l.contains("workload: nics="))
        .expect("nics line");
    assert!(nics.trim_end().ends_with("nics=[]"), "{nics}");
}

fn bearer(s: &Scenario) -> String {
    format!("Bearer {}", s.canary)
}

#[tokio::test]
async fn exec_initrd_only_static_client_gets_the_swap() -> anyhow::Result<()> {
    let Some(env) = vm_test("exec_initrd_only_static_client_gets_the_swap").await else {
        return Ok(());
    };
    let spec = ScenarioSpec {
        name: "exec-initrd".into(),
        initrd: InitrdSpec::new().file(&env.artifacts.probe, "/sluice/sluice-probe", 0o755),
        cmdline: "sluice.mode=exec -- /sluice/sluice-probe https://api.example.com/v1/probe \
                  --auth-env API_KEY"
            .into(),
        debian_root: false,
        broker: true,
        memory_mib: 512,
    };
    let mut s = Scenario::boot(&env.platform, &env.artifacts, spec).await?;
    s.vm.wait_for_console("probe: status=200", INITRD_BOOT)
        .await?;
    let req = s
        .upstream
        .wait_for_path("/v1/probe", Duration::from_secs(5))
        .await?;
    assert_eq!(req.header("authorization"), Some(bearer(&s).as_str()));
    assert_eq!(req.sni.as_deref(), Some("api.example.com"));
    assert_eq!(s.workload_exit_code(INITRD_BOOT).await?, Some(0));
    let exit = s.wait_exit(INITRD_BOOT).await?;
    assert_eq!(exit.agent_status, Some(0), "agent's poweroff status");
    assert_no_leak(&s);
    s.passed();
    env.completed();
    Ok(())
}

#[tokio::test]
async fn exec_debian_root_curl_and_python_requests() -> anyhow::Result<()> {
    let Some(env) = vm_test("exec_debian_root_curl_and_python_requests").await else {
        return Ok(());
    };
    let spec = ScenarioSpec {
        name: "exec-debian".into(),
        initrd: InitrdSpec::new().file(guest_file("exec-debian.sh"), "/sluice/workload.sh", 0o755),
        cmdline: "sluice.mode=exec sluice.exec=/run/sluice/workload.sh".into(),
        debian_root: true,
        broker: true,
        memory_mib: 768,
    };
    let mut s = Scenario::boot(&env.platform, &env.artifacts, spec).await?;
    let start = s.vm.wait_for_console("workload: start", DEBIAN_RUN).await?;
    assert!(
        start.ends_with(&format!("API_KEY={PLACEHOLDER}")),
        "guest env holds the placeholder: {start}"
    );
    let curl =
        s.vm.wait_for_console("workload: curl-exit=", DEBIAN_RUN)
            .await?;
    assert!(
        curl.contains("curl-exit=0 out=upstream-ok /v1/curl"),
        "{curl}"
    );
    let py =
        s.vm.wait_for_console("workload: python-", DEBIAN_RUN)
            .await?;
    assert!(
        py.contains("python-status=200 out=upstream-ok /v1/python"),
        "{py}"
    );
    for path in ["/v1/curl", "/v1/python"] {
        let req = s
            .upstream
            .wait_for_path(path, Duration::from_secs(5))
            .await?;
        assert_eq!(
            req.header("authorization"),
            Some(bearer(&s).as_str()),
            "{path}: upstream must receive the real value"
        );
    }
    assert_eq!(s.workload_exit_code(DEBIAN_RUN).await?, Some(7));
    let exit = s.wait_exit(DEBIAN_RUN).await?;
    assert_eq!(
        exit.agent_status,
        Some(7),
        "workload status becomes the VM's"
    );
    assert_no_leak(&s);
    s.passed();
    env.completed();
    Ok(())
}

#[tokio::test]
async fn systemd_mode_oneshot_unit_curl() -> anyhow::Result<()> {
    let Some(env) = vm_test("systemd_mode_oneshot_unit_curl").await else {
        return Ok(());
    };
    let spec = ScenarioSpec {
        name: "systemd".into(),
        initrd: InitrdSpec::new()
            .file(
                guest_file("systemd-workload.sh"),
                "/sluice/systemd-workload.sh",
                0o755,
            )
            .file(
                guest_file("sluice-e2e.service"),
                "/sluice/units/sluice-e2e.service",
                0o644,
            ),
        cmdline: "sluice.mode=systemd systemd.show_status=false".into(),
        debian_root: true,
        broker: true,
        memory_mib: 768,
    };
    let mut s = Scenario::boot(&env.platform, &env.artifacts, spec).await?;
    let env_line =
        s.vm.wait_for_console("workload: systemd", SYSTEMD_RUN)
            .await?;
    assert!(
        env_line.ends_with(&format!("API_KEY={PLACEHOLDER}")),
        "systemd services get the placeholder env: {env_line}"
    );
    let curl =
        s.vm.wait_for_console("workload: curl-exit=", SYSTEMD_RUN)
            .await?;
    assert!(
        curl.contains("curl-exit=0 out=upstream-ok /v1/systemd"),
        "{curl}"
    );
    let envi =
        s.vm.wait_for_console("workload: envi-curl-exit=", SYSTEMD_RUN)
            .await?;
    assert!(
        envi.contains("envi-curl-exit=0 out=upstream-ok /v1/systemd-envi"),
        "transparent capture in systemd mode: {envi}"
    );
    for path in ["/v1/systemd", "/v1/systemd-envi"] {
        let req = s
            .upstream
            .wait_for_path(path, Duration::from_secs(5))
            .await?;
        assert_eq!(
            req.header("authorization"),
            Some(bearer(&s).as_str()),
            "{path}"
        );
    }
    // The unit powers the VM off; systemd (not the agent) is PID 1 by then.
    s.wait_exit(SYSTEMD_RUN).await?;
    assert_no_leak(&s);
    s.passed();
    env.completed();
    Ok(())
}

#[tokio::test]
async fn containment_no_nic_no_direct_egress_denials_visible_no_leak() -> anyhow::Result<()> {
    let Some(env) = vm_test("containment_no_nic_no_direct_egress_denials_visible_no_leak").await
    else {
        return Ok(());
    };
    let spec = ScenarioSpec {
        name: "containment".into(),
        initrd: InitrdSpec::new().file(guest_file("containment.sh"), "/sluice/workload.sh", 0o755),
        cmdline: "sluice.mode=exec sluice.exec=/run/sluice/workload.sh".into(),
        debian_root: true,
        broker: true,
        memory_mib: 768,
    };
    let mut s = Scenario::boot(&env.platform, &env.artifacts, spec).await?;
    s.vm.wait_for_console("workload: done", DEBIAN_RUN).await?;
    let exit = s.wait_exit(DEBIAN_RUN).await?;
    assert_eq!(exit.agent_status, Some(0));
    let console = s.console();
    let lines: Vec<&str> = console.lines().collect();

    // No NIC inside the guest: loopback and the agent's capture device, neither backed by
    // a device.
    assert_no_nic(&lines);
    // Direct TCP connects to IPs are captured and refused by the broker: closed without a
    // byte, never connected anywhere.
    let direct: Vec<&&str> = lines
        .iter()
        .filter(|l| l.contains("workload: direct "))
        .collect();
    assert_eq!(direct.len(), 3, "{direct:?}");
    assert!(
        direct
            .iter()
            .all(|l| l.contains(" closed=b''") || l.contains(" failed: ")),
        "{direct:?}"
    );

    // A denied host: the broker's refusal and reason reach the client.
    let has = |prefix: &str, needle: &str| {
        lines.iter().any(|l| {
            l.starts_with(prefix)
                && l.to_ascii_lowercase()
                    .contains(&needle.to_ascii_lowercase())
        })
    };
    assert!(has("denied|", "< HTTP/1.1 403"), "denied host gets 403");
    assert!(
        has("denied|", "< x-sluice-reason:"),
        "denied host: reason header visible"
    );
    // The placeholder sent to a host outside the credential's list is blocked with a reason.
    // Inside the tunnel curl speaks h2 or HTTP/1.1 (the broker offers both by ALPN).
    assert!(
        has("wrong|", "< HTTP/1.1 403") || has("wrong|", "< HTTP/2 403"),
        "placeholder to wrong host is refused"
    );
    assert!(
        has("wrong|", "< x-sluice-reason:"),
        "wrong host: reason header visible"
    );
    assert!(
        s.upstream
            .requests()
            .iter()
            .all(|r| r.path != "/v1/wrong-host"),
        "the blocked request never reached the upstream"
    );
    assert!(
        s.upstream
            .requests()
            .iter()
            .all(|r| r.path == "/v1/echo-auth" || !r.contains(&s.canary)),
        "the real value went only to the allowed request"
    );
    // The broker's audit trail names the decisions (and credential names, never values).
    let audit = s.audit_records();
    assert!(
        audit
            .iter()
            .any(|r| r.host == "denied.example.com" && r.verdict == "denied" && r.status == 403),
        "audit: denied host: {audit:?}"
    );
    for ip in ["1.1.1.1", "10.0.2.2", "169.254.169.254"] {
        assert!(
            audit
                .iter()
                .any(|r| r.host == ip && r.method == "TCP" && r.verdict == "denied"),
            "audit: direct connect to {ip} refused by the broker: {audit:?}"
        );
    }
    assert!(
        audit.iter().any(|r| r.host == "other.example.com"
            && r.path == "/v1/wrong-host"
            && r.verdict == "blocked"
            && r.credentials == [CREDENTIAL]),
        "audit: blocked placeholder: {audit:?}"
    );
    assert!(
        audit.iter().any(|r| r.path == "/v1/echo-auth"
            && r.verdict == "forwarded"
            && r.credentials == [CREDENTIAL]),
        "audit: substituted request: {audit:?}"
    );
    // The upstream echoes the real value it received; the guest sees only the placeholder.
    let req = s
        .upstream
        .wait_for_path("/v1/echo-auth", Duration::from_secs(5))
        .await?;
    assert_eq!(req.header("authorization"), Some(bearer(&s).as_str()));
    assert!(
        has(
            "echo|",
            &format!("x-echo-authorization: Bearer {PLACEHOLDER}")
        ),
        "echoed real value is scrubbed back to the placeholder"
    );
    assert_no_leak(&s);
    s.passed();
    env.completed();
    Ok(())
}

#[tokio::test]
async fn transparent_capture_node_env_i_dns_raw_tcp_and_refusals() -> anyhow::Result<()> {
    let Some(env) = vm_test("transparent_capture_node_env_i_dns_raw_tcp_and_refusals").await else {
        return Ok(());
    };
    let spec = ScenarioSpec {
        name: "transparent".into(),
        initrd: InitrdSpec::new().file(guest_file("transparent.sh"), "/sluice/workload.sh", 0o755),
        cmdline: "sluice.mode=exec sluice.exec=/run/sluice/workload.sh".into(),
        debian_root: true,
        broker: true,
        memory_mib: 768,
    };
    let mut s = Scenario::boot(&env.platform, &env.artifacts, spec).await?;
    s.vm.wait_for_console("workload: done", DEBIAN_RUN).await?;
    let exit = s.wait_exit(DEBIAN_RUN).await?;
    assert_eq!(exit.agent_status, Some(0));
    let console = s.console();
    let lines: Vec<&str> = console.lines().collect();
    let line = |prefix: &str| -> String {
        lines
            .iter()
            .find(|l| l.contains(&format!("workload: {prefix}")))
            .map(|l| l.to_string())
            .unwrap_or_else(|| panic!("no `{prefix}` line on the console"))
    };
    assert_no_nic(&lines);
    assert!(line("resolv=").contains("nameserver 127.0.0.1"));
    // DNS: allowed names get a synthetic address, denied ones NXDOMAIN (getent exit 2).
    let api = line("getent-api=");
    assert!(
        api.contains("getent-api=0 198.18.") || api.contains("getent-api=0 fd53:1ce0::"),
        "a synthetic address (IPv4 or IPv6): {api}"
    );
    let denied = line("getent-denied=");
    assert!(denied.trim_end().ends_with("getent-denied=2"), "{denied}");
    // Clients with no proxy or CA variables at all, certificate verification on.
    for (prefix, want) in [
        ("envi-curl=", "envi-curl=0 out=upstream-ok /v1/envi-curl"),
        (
            "envi-urllib ",
            "envi-urllib status=200 out=upstream-ok /v1/envi-urllib",
        ),
        (
            "node-https ",
            "node-https status=200 out=upstream-ok /v1/node-https",
        ),
        (
            "node-fetch ",
            "node-fetch status=200 out=upstream-ok /v1/node-fetch",
        ),
    ] {
        let l = line(prefix);
        assert!(l.contains(want), "{l}");
    }
    for path in [
        "/v1/envi-curl",
        "/v1/envi-urllib",
        "/v1/node-https",
        "/v1/node-fetch",
    ] {
        let req = s
            .upstream
            .wait_for_path(path, Duration::from_secs(5))
            .await?;
        assert_eq!(
            req.header("authorization"),
            Some(bearer(&s).as_str()),
            "{path}: the upstream must receive the real value"
        );
        assert_eq!(req.sni.as_deref(), Some("api.example.com"), "{path}");
    }
    // Raw TCP both ways; refused destinations close at once (no hang, nothing received).
    assert!(
        line("raw=").contains("raw=b'ping-raw\\n'"),
        "{}",
        line("raw=")
    );
    for name in ["denied-port ", "metadata ", "v6-literal "] {
        let l = line(name);
        assert!(l.contains("closed=b''"), "{l}");
        let secs: f64 = l
            .rsplit("after=")
            .next()
            .and_then(|t| t.trim_end().trim_end_matches('s').parse().ok())
            .unwrap_or(f64::MAX);
        assert!(
            secs < 25.0,
            "refusal must not wait for the client's timeout: {l}"
        );
    }
    assert!(line("udp=").contains("udp=no-reply"), "{}", line("udp="));
    // DNS to an address not in resolv.conf is answered by the agent, from that address.
    let ok = line("udp-dns api.example.com ");
    assert!(ok.contains("rcode=0 answers=1 from=192.0.2.53"), "{ok}");
    let nx = line("udp-dns denied.example.com ");
    assert!(nx.contains("rcode=3 answers=0 from=192.0.2.53"), "{nx}");
    // Every decision is in the broker's audit trail.
    let audit = s.audit_records();
    let has = |host: &str, method: &str, verdict: &str| {
        audit
            .iter()
            .any(|r| r.host == host && r.method == method && r.verdict == verdict)
    };
    assert!(has("api.example.com", "DNS", "resolved"), "{audit:?}");
    assert!(has("denied.example.com", "DNS", "denied"), "{audit:?}");
    assert!(has("api.example.com", "TCP", "intercepted"), "{audit:?}");
    assert!(
        has("api.example.com", "TCP", "denied"),
        "port 5433: {audit:?}"
    );
    assert!(has("169.254.169.254", "TCP", "denied"), "{audit:?}");
    assert!(has("2001:db8::1", "TCP", "denied"), "{audit:?}");
    assert!(has("db.example.com", "TCP", "relayed"), "{audit:?}");
    assert!(
        audit.iter().all(|r| !r.host.contains("203.0.113.7")),
        "UDP never reaches the broker: {audit:?}"
    );
    assert_no_leak(&s);
    s.passed();
    env.completed();
    Ok(())
}

#[tokio::test]
async fn broker_missing_agent_reports_and_powers_off_69() -> anyhow::Result<()> {
    let Some(env) = vm_test("broker_missing_agent_reports_and_powers_off_69").await else {
        return Ok(());
    };
    let spec = ScenarioSpec {
        name: "no-broker".into(),
        initrd: InitrdSpec::new().file(&env.artifacts.probe, "/sluice/sluice-probe", 0o755),
        cmdline:
            "sluice.mode=exec sluice.timeout=5 -- /sluice/sluice-probe https://api.example.com/"
                .into(),
        debian_root: false,
        broker: false,
        memory_mib: 512,
    };
    let mut s = Scenario::boot(&env.platform, &env.artifacts, spec).await?;
    let exit = s.wait_exit(INITRD_BOOT).await?;
    assert_eq!(exit.agent_status, Some(69), "EX_UNAVAILABLE");
    let console = s.console().to_ascii_lowercase();
    assert!(
        console.lines().any(|l| l.contains("sluice-agent:")
            && l.contains("broker")
            && !l.contains("powering off")),
        "the agent says the broker is missing"
    );
    assert!(
        !console.contains("probe: "),
        "the workload must not run without a broker"
    );
    s.passed();
    env.completed();
    Ok(())
}
