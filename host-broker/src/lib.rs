//! Sluice host broker.
pub mod policy;
pub mod secrets;
