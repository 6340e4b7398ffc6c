//! Synthetic ("fake-IP") addresses for names the broker allowed.
//!
//! The agent's DNS answers an allowed name with an address from a range nothing real uses
//! (198.18.0.0/15, RFC 2544 benchmarking; the IPv6 twin under fd53:1ce0::/64). A later TCP
//! connection to that address is captured and sent to the broker *with the name*, so the
//! broker applies its name rules, resolves and dials itself, and checks the SNI against the
//! name exactly as for `CONNECT`. Slots are reused oldest-first once the range is full.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The IPv4 range; its first usable address is the capture interface's own.
pub const V4_BASE: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 0);
pub const V4_PREFIX: u8 = 15;
/// The IPv6 range (ULA).
pub const V6_BASE: Ipv6Addr = Ipv6Addr::new(0xfd53, 0x1ce0, 0, 0, 0, 0, 0, 0);
pub const V6_PREFIX: u8 = 64;
/// Slot 0 is the network, slot 1 the interface address; names start at slot 2.
const FIRST_SLOT: u32 = 2;
/// Slots in the IPv4 range (the last address, broadcast, is left out).
const V4_SLOTS: u32 = 1 << (32 - V4_PREFIX);

/// The capture interface's own addresses.
pub fn interface_v4() -> Ipv4Addr {
    Ipv4Addr::from(u32::from(V4_BASE) + 1)
}
pub fn interface_v6() -> Ipv6Addr {
    Ipv6Addr::from(u128::from(V6_BASE) + 1)
}

/// Name <-> slot table; the same slot number gives the IPv4 and the IPv6 address.
#[derive(Debug)]
pub struct FakeIpPool {
    by_name: HashMap<String, u32>,
    by_slot: HashMap<u32, String>,
    order: VecDeque<u32>,
    next: u32,
    capacity: u32,
}

impl Default for FakeIpPool {
    fn default() -> Self {
        FakeIpPool::with_capacity(V4_SLOTS - FIRST_SLOT - 1)
    }
}

impl FakeIpPool {
    /// A pool handing out at most `capacity` slots before reusing the oldest.
    pub fn with_capacity(capacity: u32) -> FakeIpPool {
        FakeIpPool {
            by_name: HashMap::new(),
            by_slot: HashMap::new(),
            order: VecDeque::new(),
            next: FIRST_SLOT,
            capacity: capacity.clamp(1, V4_SLOTS - FIRST_SLOT - 1),
        }
    }

    /// The slot for `name`, allocating (or recycling the oldest) when it has none.
    fn slot(&mut self, name: &str) -> u32 {
        if let Some(&slot) = self.by_name.get(name) {
            return slot;
        }
        let slot = if (self.order.len() as u32) < self.capacity {
            let s = self.next;
            self.next += 1;
            s
        } else {
            let s = self.order.pop_front().expect("a full pool has slots");
            if let Some(old) = self.by_slot.remove(&s) {
                self.by_name.remove(&old);
            }
            s
        };
        self.order.push_back(slot);
        self.by_name.insert(name.to_owned(), slot);
        self.by_slot.insert(slot, name.to_owned());
        slot
    }

    /// The IPv4 address standing for `name`.
    pub fn v4_for(&mut self, name: &str) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(V4_BASE) + self.slot(name))
    }

    /// The IPv6 address standing for `name`.
    pub fn v6_for(&mut self, name: &str) -> Ipv6Addr {
        Ipv6Addr::from(u128::from(V6_BASE) + u128::from(self.slot(name)))
    }

    /// The name behind a synthetic address; `None` for real addresses and recycled slots.
    pub fn name_of(&self, addr: IpAddr) -> Option<&str> {
        let slot = slot_of(addr)?;
        self.by_slot.get(&slot).map(String::as_str)
    }
}

/// Whether `addr` lies in one of the synthetic ranges.
pub fn is_synthetic(addr: IpAddr) -> bool {
    slot_of(addr).is_some() || in_range(addr)
}

fn in_range(addr: IpAddr) -> bool {
    match addr {
        IpAddr::V4(a) => u32::from(a) >> (32 - V4_PREFIX) == u32::from(V4_BASE) >> (32 - V4_PREFIX),
        IpAddr::V6(a) => {
            u128::from(a) >> (128 - V6_PREFIX) == u128::from(V6_BASE) >> (128 - V6_PREFIX)
        }
    }
}

fn slot_of(addr: IpAddr) -> Option<u32> {
    if !in_range(addr) {
        return None;
    }
    let offset = match addr {
        IpAddr::V4(a) => u128::from(u32::from(a) - u32::from(V4_BASE)),
        IpAddr::V6(a) => u128::from(a) - u128::from(V6_BASE),
    };
    u32::try_from(offset).ok().filter(|s| *s >= FIRST_SLOT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_keeps_its_address_in_both_families() {
        let mut p = FakeIpPool::default();
        let a = p.v4_for("api.example.com");
        assert_eq!(a, Ipv4Addr::new(198, 18, 0, 2));
        assert_eq!(p.v4_for("api.example.com"), a);
        let v6 = p.v6_for("api.example.com");
        assert_eq!(v6, "fd53:1ce0::2".parse::<Ipv6Addr>().unwrap());
        assert_eq!(p.name_of(a.into()), Some("api.example.com"));
        assert_eq!(p.name_of(v6.into()), Some("api.example.com"));
        assert_eq!(p.v4_for("other.example.com"), Ipv4Addr::new(198, 18, 0, 3));
    }

    #[test]
    fn real_and_interface_addresses_map_to_no_name() {
        let p = FakeIpPool::default();
        assert_eq!(p.name_of("1.1.1.1".parse().unwrap()), None);
        assert_eq!(p.name_of(interface_v4().into()), None);
        assert_eq!(
            p.name_of("198.19.255.1".parse().unwrap()),
            None,
            "unallocated"
        );
        assert!(is_synthetic("198.19.255.1".parse().unwrap()));
        assert!(!is_synthetic("198.20.0.1".parse().unwrap()));
    }

    #[test]
    fn a_full_pool_recycles_the_oldest_slot() {
        let mut p = FakeIpPool::with_capacity(2);
        let a = p.v4_for("a");
        let _b = p.v4_for("b");
        let c = p.v4_for("c");
        assert_eq!(c, a, "c takes a's slot");
        assert_eq!(p.name_of(a.into()), Some("c"));
        assert_ne!(p.v4_for("a"), c, "a gets a new slot");
    }
}
