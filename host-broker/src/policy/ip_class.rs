//! Classification of private and special-purpose IP addresses.
//!
//! With `private_networks: "deny"` every class below is refused unless an allow rule lists a
//! CIDR (or IP literal) containing the address. IPv6 forms that embed an IPv4 address
//! (v4-mapped `::ffff:a.b.c.d`, v4-compatible `::a.b.c.d`, NAT64 `64:ff9b::/96`, SIIT
//! `::ffff:0:0/96`, 6to4 `2002::/16`) are judged by the embedded IPv4 address, so
//! `::ffff:127.0.0.1` is loopback; a public embedded address still counts as reserved.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::local_addrs;

/// Why an address counts as private.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrivateClass {
    /// 127.0.0.0/8, ::1.
    Loopback,
    /// 10/8, 172.16/12, 192.168/16.
    Rfc1918,
    /// 169.254.169.254 (cloud instance metadata).
    Metadata,
    /// 169.254.0.0/16, fe80::/10.
    LinkLocal,
    /// 100.64.0.0/10.
    Cgnat,
    /// fc00::/7.
    UniqueLocal,
    /// 0.0.0.0, ::, and 0.0.0.0/8 ("this network").
    Unspecified,
    /// 224.0.0.0/4, ff00::/8.
    Multicast,
    /// 255.255.255.255.
    Broadcast,
    /// 240.0.0.0/4 (reserved), 192.0.0.0/24 (IETF protocol assignments), 198.18.0.0/15
    /// (benchmarking).
    Reserved,
    /// An address of one of the broker host's own interfaces.
    HostOwn,
}

impl PrivateClass {
    /// Short human description used in denial reasons.
    pub fn describe(self) -> &'static str {
        match self {
            PrivateClass::Loopback => "loopback",
            PrivateClass::Rfc1918 => "private network, RFC 1918",
            PrivateClass::Metadata => "link-local, cloud metadata endpoint",
            PrivateClass::LinkLocal => "link-local",
            PrivateClass::Cgnat => "carrier-grade NAT, RFC 6598",
            PrivateClass::UniqueLocal => "unique local IPv6, RFC 4193",
            PrivateClass::Unspecified => "unspecified / this network",
            PrivateClass::Multicast => "multicast",
            PrivateClass::Broadcast => "broadcast",
            PrivateClass::Reserved => "reserved / special-purpose",
            PrivateClass::HostOwn => "an address of the broker host itself",
        }
    }
}

impl fmt::Display for PrivateClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.describe())
    }
}

/// Returns the private class of `ip`, if any, including the host's own addresses.
pub fn classify_private(ip: IpAddr) -> Option<PrivateClass> {
    classify_with(ip, local_addrs::host_addresses())
}

/// Like [`classify_private`] with an explicit list of host addresses (tests).
pub(crate) fn classify_with(ip: IpAddr, own: &[IpAddr]) -> Option<PrivateClass> {
    let ip = canonical(ip);
    let class = match ip {
        IpAddr::V4(v4) => classify_v4(v4),
        IpAddr::V6(v6) => classify_v6(v6),
    };
    class.or_else(|| {
        own.iter()
            .any(|o| canonical(*o) == ip)
            .then_some(PrivateClass::HostOwn)
    })
}

fn classify_v4(ip: Ipv4Addr) -> Option<PrivateClass> {
    let o = ip.octets();
    Some(if ip.is_loopback() {
        PrivateClass::Loopback
    } else if ip.is_private() {
        PrivateClass::Rfc1918
    } else if o == [169, 254, 169, 254] {
        PrivateClass::Metadata
    } else if ip.is_link_local() {
        PrivateClass::LinkLocal
    } else if o[0] == 100 && (o[1] & 0xc0) == 64 {
        PrivateClass::Cgnat
    } else if o[0] == 0 {
        PrivateClass::Unspecified
    } else if ip.is_broadcast() {
        PrivateClass::Broadcast
    } else if ip.is_multicast() {
        PrivateClass::Multicast
    } else if o[0] >= 240
        || (o[0] == 192 && o[1] == 0 && o[2] == 0)
        || (o[0] == 198 && (o[1] & 0xfe) == 18)
    {
        PrivateClass::Reserved
    } else {
        return None;
    })
}

fn classify_v6(ip: Ipv6Addr) -> Option<PrivateClass> {
    let s = ip.segments();
    if ip.is_loopback() {
        return Some(PrivateClass::Loopback);
    }
    if ip.is_unspecified() {
        return Some(PrivateClass::Unspecified);
    }
    if let Some(v4) = embedded_v4(ip) {
        // Judge by the embedded IPv4 address; a public embedded address is still refused as
        // reserved, since these forms have no business being dialed from a VM.
        return Some(classify_v4(v4).unwrap_or(PrivateClass::Reserved));
    }
    // NAT64 local-use prefix 64:ff9b:1::/48 (RFC 8215): translates to arbitrary IPv4.
    if s[0] == 0x64 && s[1] == 0xff9b && s[2] == 1 {
        return Some(PrivateClass::Reserved);
    }
    Some(if (s[0] & 0xfe00) == 0xfc00 {
        PrivateClass::UniqueLocal
    } else if (s[0] & 0xffc0) == 0xfe80 {
        PrivateClass::LinkLocal
    } else if (s[0] & 0xffc0) == 0xfec0 {
        // Deprecated site-local fec0::/10: still routed privately in places.
        PrivateClass::UniqueLocal
    } else if ip.is_multicast() {
        PrivateClass::Multicast
    } else {
        return None;
    })
}

/// IPv4 embedded in v4-compatible (`::a.b.c.d`), NAT64 (`64:ff9b::/96`), SIIT
/// (`::ffff:0:0/96`) or 6to4 (`2002::/16`) addresses.
/// (v4-mapped is handled by [`canonical`].)
fn embedded_v4(ip: Ipv6Addr) -> Option<Ipv4Addr> {
    let s = ip.segments();
    let tail = || Ipv4Addr::new((s[6] >> 8) as u8, s[6] as u8, (s[7] >> 8) as u8, s[7] as u8);
    if s[..6] == [0, 0, 0, 0, 0, 0] {
        return Some(tail());
    }
    if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
        return Some(tail());
    }
    // SIIT IPv4-translated ::ffff:0:a.b.c.d.
    if s[..6] == [0, 0, 0, 0, 0xffff, 0] {
        return Some(tail());
    }
    // 6to4 2002:AABB:CCDD::/48 carries AA.BB.CC.DD.
    if s[0] == 0x2002 {
        return Some(Ipv4Addr::new(
            (s[1] >> 8) as u8,
            s[1] as u8,
            (s[2] >> 8) as u8,
            s[2] as u8,
        ));
    }
    None
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

#[cfg(test)]
mod tests {
    use super::*;

    fn class(s: &str) -> Option<PrivateClass> {
        classify_with(s.parse().unwrap(), &["203.0.113.7".parse().unwrap()])
    }

    #[test]
    fn private_ranges() {
        use PrivateClass::*;
        let cases = [
            ("127.0.0.1", Loopback),
            ("127.255.255.254", Loopback),
            ("::1", Loopback),
            ("10.0.0.5", Rfc1918),
            ("172.16.0.1", Rfc1918),
            ("172.31.255.255", Rfc1918),
            ("192.168.1.1", Rfc1918),
            ("169.254.169.254", Metadata),
            ("169.254.1.1", LinkLocal),
            ("fe80::1", LinkLocal),
            ("100.64.0.1", Cgnat),
            ("100.127.255.255", Cgnat),
            ("fc00::1", UniqueLocal),
            ("fd12:3456::1", UniqueLocal),
            ("0.0.0.0", Unspecified),
            ("0.1.2.3", Unspecified),
            ("::", Unspecified),
            ("224.0.0.1", Multicast),
            ("ff02::1", Multicast),
            ("255.255.255.255", Broadcast),
            ("240.0.0.1", Reserved),
            ("::ffff:127.0.0.1", Loopback),
            ("::ffff:10.1.2.3", Rfc1918),
            ("::ffff:169.254.169.254", Metadata),
            ("::127.0.0.1", Loopback),
            ("64:ff9b::10.0.0.1", Rfc1918),
            ("64:ff9b::7f00:1", Loopback),
            ("::ffff:0:7f00:1", Loopback),
            ("2002:7f00:1::1", Loopback),
            ("2002:a9fe:a9fe::1", Metadata),
            ("2002:808:808::1", Reserved),
            ("64:ff9b:1::1", Reserved),
            ("203.0.113.7", HostOwn),
            ("::ffff:203.0.113.7", HostOwn),
        ];
        for (ip, want) in cases {
            assert_eq!(class(ip), Some(want), "{ip}");
        }
    }

    #[test]
    fn public_addresses_are_not_private() {
        for ip in [
            "1.1.1.1",
            "8.8.8.8",
            "172.32.0.1",
            "172.15.255.255",
            "100.128.0.1",
            "100.63.255.255",
            "169.255.0.1",
            "2606:4700::1111",
            "2001:db9::1",
        ] {
            assert_eq!(class(ip), None, "{ip}");
        }
    }

    #[test]
    fn canonical_maps_v4_mapped_only() {
        assert_eq!(
            canonical("::ffff:1.2.3.4".parse().unwrap()),
            "1.2.3.4".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            canonical("2001:db8::1".parse().unwrap()),
            "2001:db8::1".parse::<IpAddr>().unwrap()
        );
    }
}
