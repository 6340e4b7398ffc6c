//! The broker's kernel AF_VSOCK transport (`VmTransport::Cid`, the one a QEMU `vhost-vsock`
//! or Firecracker-less KVM host uses) in a real Linux vsock stack. The CI machines' own kernel
//! has no vsock loopback, so `host-broker/tests/vsock.rs` is `#[ignore]`d there; this test
//! runs that same test binary inside a guest whose Debian kernel loads `vsock_loopback`, where
//! a stream to CID 1 comes back to a listener in the same kernel with peer CID 1.
//!
//! Same harness as vm.rs (one VM at a time; `CI=true` turns skips into failures).

use std::time::Duration;

use sluice_e2e::artifacts::{guest_file, vsock_test_binary};
use sluice_e2e::gate::vm_test;
use sluice_e2e::image::InitrdSpec;
use sluice_e2e::scenario::{Scenario, ScenarioSpec};

#[tokio::test]
async fn af_vsock_transport_in_a_guest_kernel_with_vsock_loopback() -> anyhow::Result<()> {
    let Some(env) = vm_test("af_vsock_transport_in_a_guest_kernel_with_vsock_loopback").await
    else {
        return Ok(());
    };
    let test_binary = vsock_test_binary()?;
    let spec = ScenarioSpec {
        name: "vsock-loopback".into(),
        initrd: InitrdSpec::new()
            .modules(&["vsock_loopback"])
            .file(
                guest_file("vsock-loopback.sh"),
                "/sluice/workload.sh",
                0o755,
            )
            .file(&test_binary, "/sluice/vsock-test", 0o755),
        cmdline: "sluice.mode=exec sluice.exec=/run/sluice/workload.sh".into(),
        debian_root: true,
        broker: true,
        memory_mib: 1024,
    };
    let mut s = Scenario::boot(&env.platform, &env.artifacts, spec).await?;
    s.vm.wait_for_console("workload: done", Duration::from_secs(600))
        .await?;
    s.wait_exit(Duration::from_secs(120)).await?;
    let console = s.console();
    for l in console.lines().filter(|l| l.contains("workload: ")) {
        eprintln!("{l}");
    }
    assert!(
        console.contains("vsock_loopback"),
        "the guest kernel loaded vsock_loopback"
    );
    assert!(
        console.contains("test control_stream_over_af_vsock_loopback ... ok"),
        "the AF_VSOCK test ran and passed in the guest"
    );
    assert!(
        console.contains("1 passed; 0 failed"),
        "exactly the one test ran"
    );
    assert!(
        console.contains("workload: vsock-test rc=0"),
        "the test binary exited 0"
    );
    s.passed();
    env.completed();
    Ok(())
}
