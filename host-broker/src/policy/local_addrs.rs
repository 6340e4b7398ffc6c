//! The broker host's own interface addresses, read once from procfs.
//!
//! A VM must not reach services bound on the host's public addresses any more than on its
//! loopback, so these count as private. IPv4 comes from `/proc/net/fib_trie` (entries marked
//! `/32 host LOCAL`), IPv6 from `/proc/net/if_inet6`. Read once per process: addresses added
//! later are not seen (documented in docs/policy.md).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::OnceLock;

static HOST_ADDRS: OnceLock<Vec<IpAddr>> = OnceLock::new();

/// The host's own addresses (empty if procfs is unavailable).
pub(crate) fn host_addresses() -> &'static [IpAddr] {
    HOST_ADDRS.get_or_init(|| {
        let mut v = Vec::new();
        if let Ok(s) = std::fs::read_to_string("/proc/net/fib_trie") {
            v.extend(parse_fib_trie(&s));
        }
        if let Ok(s) = std::fs::read_to_string("/proc/net/if_inet6") {
            v.extend(parse_if_inet6(&s));
        }
        v.sort();
        v.dedup();
        tracing::debug!(count = v.len(), "read host interface addresses");
        v
    })
}

fn parse_fib_trie(s: &str) -> Vec<IpAddr> {
    let mut out = Vec::new();
    let mut last: Option<Ipv4Addr> = None;
    for line in s.lines() {
        let t = line.trim_start();
        if let Some(rest) = t.strip_prefix("|-- ") {
            last = rest.trim().parse().ok();
        } else if t.starts_with("/32 host LOCAL") {
            if let Some(ip) = last {
                out.push(IpAddr::V4(ip));
            }
        }
    }
    out
}

fn parse_if_inet6(s: &str) -> Vec<IpAddr> {
    s.lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|h| h.len() == 32)
        .filter_map(|h| u128::from_str_radix(h, 16).ok())
        .map(|n| IpAddr::V6(Ipv6Addr::from(n)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_fib_trie() {
        let s =
            "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 0.0.0.0\n        /0 universe UNICAST\n     \
                 +-- 10.0.2.0/24 2 0 2\n        |-- 10.0.2.0\n           /24 link UNICAST\n        \
                 |-- 10.0.2.15\n           /32 host LOCAL\n";
        assert_eq!(
            parse_fib_trie(s),
            vec!["10.0.2.15".parse::<IpAddr>().unwrap()]
        );
    }

    #[test]
    fn parses_if_inet6() {
        let s = "00000000000000000000000000000001 01 80 10 80       lo\n\
                 fe800000000000000000000000000001 02 40 20 80     eth0\n";
        assert_eq!(
            parse_if_inet6(s),
            vec![
                "::1".parse::<IpAddr>().unwrap(),
                "fe80::1".parse::<IpAddr>().unwrap()
            ]
        );
    }

    #[test]
    fn reads_this_host() {
        // Every Linux host with procfs has loopback in fib_trie.
        if std::path::Path::new("/proc/net/fib_trie").exists() {
            assert!(host_addresses().contains(&"127.0.0.1".parse().unwrap()));
        }
    }
}
