//! TLS interception: the per-VM CA ([`ca`]), the per-host leaf cache ([`leaf`]) and the
//! ClientHello peek used for pass-through ([`client_hello`]).

pub mod ca;
pub mod client_hello;
pub mod leaf;

pub use ca::{CaCopy, CaError, VmCa};
pub use leaf::{Clock, LeafCache, LeafError, SystemClock};
