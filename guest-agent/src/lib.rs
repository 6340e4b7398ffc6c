//! Sluice guest agent: PID 1 inside the VM's initrd and the local egress proxy.
//!
//! The binary (`main.rs`) dispatches to [`init::run_pid1`] when it is PID 1 and to
//! subcommands (`proxy`) otherwise. Modules have one job each; see docs/guest-agent.md.
#![forbid(unsafe_code)]

pub mod broker;
pub mod capture;
pub mod cmdline;
pub mod console;
pub mod dns;
pub mod dns_cache;
pub mod dns_server;
pub mod egress;
pub mod endpoint;
pub mod env;
pub mod exec;
pub mod init;
pub mod modules;
pub mod mount;
pub mod net;
pub mod proxy;
pub mod root;
pub mod rootfs;
pub mod systemd;
pub mod trust;
pub mod x509name;
