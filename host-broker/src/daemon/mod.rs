//! The daemon layer (cargo feature `daemon`, on by default): what the `host-broker` binary
//! adds on top of the embeddable core -- the control API (`api`), the persistence of VMs
//! registered through it (`persist`) and the serve config file (`config`).
//!
//! Dependency direction: this layer uses the core ([`crate::Broker`], `policy`, `secrets`,
//! ...); nothing in the core uses this layer (docs/architecture.md, "Layers").

pub mod api;
pub mod config;
pub mod persist;
