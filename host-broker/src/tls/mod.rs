//! TLS interception: the per-VM CA ([`ca`]) and the per-host leaf cache ([`leaf`]).

pub mod ca;
pub mod leaf;

pub use ca::{CaError, VmCa};
pub use leaf::{Clock, LeafCache, LeafError, SystemClock};
