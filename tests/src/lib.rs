//! Sluice end-to-end harness: boots real microVMs (QEMU + vhost-device-vsock, or Cloud
//! Hypervisor) with the Sluice initrd, runs the real host broker in-process, and a loopback
//! HTTPS upstream that records what actually left the host.
//!
//! Modules, one job each:
//! - [`platform`]: which VMM/accelerator (detected, env-overridable);
//! - [`artifacts`]: cached kernel/rootfs and the musl guest binaries;
//! - [`image`]: a test's initrd;
//! - [`vm`] and [`console`]: launching a VM, waiting on its console and exit;
//! - [`upstream`]: the recording HTTPS upstream;
//! - [`broker`]: the in-process broker with a test policy and a per-test canary secret;
//! - [`gate`]: skip-or-fail and one-VM-at-a-time.
#![forbid(unsafe_code)]

pub mod artifacts;
pub mod broker;
pub mod console;
pub mod error;
pub mod gate;
pub mod image;
pub mod platform;
pub mod scenario;
pub mod upstream;
pub mod vm;

pub use error::HarnessError;
