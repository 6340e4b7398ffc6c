//! Classification of special-purpose / private IP addresses.

use std::net::IpAddr;

/// Why an address counts as private.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivateClass {
    Loopback,
}

/// Returns the private class of `ip`, if any.
pub fn classify_private(ip: IpAddr) -> Option<PrivateClass> {
    let _ = ip;
    todo!()
}

/// Maps v4-mapped IPv6 (`::ffff:a.b.c.d`) to IPv4 so rules written for IPv4 apply.
pub(crate) fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => ip,
        },
        v4 => v4,
    }
}
