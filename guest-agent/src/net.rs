//! Interface, address and route setup over rtnetlink (exec mode has no systemd or `ip`).
//!
//! The requests are a few dozen bytes each (nlmsghdr + one fixed struct + attributes), built
//! by hand: that needs no ioctl (which would need unsafe code) and no netlink crate for the
//! four messages the agent sends.

use std::net::IpAddr;

use nix::sys::socket::{
    bind, recv, send, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
    SockType,
};

const RTM_NEWLINK: u16 = 16;
const RTM_NEWADDR: u16 = 20;
const RTM_NEWROUTE: u16 = 24;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFF_UP: u32 = 1;
const LOOPBACK_IFINDEX: u32 = 1;
const AF_INET: u8 = 2;
const AF_INET6: u8 = 10;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
/// No duplicate address detection: the address is usable at once (no "tentative" phase).
const IFA_F_NODAD: u32 = 0x02;
const RTA_OIF: u16 = 4;
const RT_TABLE_MAIN: u8 = 254;
const RTPROT_BOOT: u8 = 3;
const RT_SCOPE_UNIVERSE: u8 = 0;
const RTN_UNICAST: u8 = 1;

/// One rtnetlink request under construction: header, fixed part, then attributes.
struct Request(Vec<u8>);

impl Request {
    fn new(kind: u16, flags: u16, fixed: &[u8]) -> Request {
        let mut m = Vec::with_capacity(64);
        m.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, set in `finish`
        m.extend_from_slice(&kind.to_ne_bytes());
        m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK | flags).to_ne_bytes());
        m.extend_from_slice(&1u32.to_ne_bytes()); // seq
        m.extend_from_slice(&0u32.to_ne_bytes()); // pid
        m.extend_from_slice(fixed);
        Request(m)
    }

    fn attr(mut self, kind: u16, payload: &[u8]) -> Request {
        let len = 4 + payload.len();
        self.0.extend_from_slice(&(len as u16).to_ne_bytes());
        self.0.extend_from_slice(&kind.to_ne_bytes());
        self.0.extend_from_slice(payload);
        while !self.0.len().is_multiple_of(4) {
            self.0.push(0);
        }
        self
    }

    fn finish(mut self) -> Vec<u8> {
        let len = self.0.len() as u32;
        self.0[..4].copy_from_slice(&len.to_ne_bytes());
        self.0
    }
}

/// The RTM_NEWLINK request setting IFF_UP: nlmsghdr + ifinfomsg (16 bytes), native endian.
fn link_up_request(ifindex: u32) -> Vec<u8> {
    let mut ifinfo = Vec::with_capacity(16);
    ifinfo.push(0); // ifi_family AF_UNSPEC
    ifinfo.push(0); // pad
    ifinfo.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
    ifinfo.extend_from_slice(&(ifindex as i32).to_ne_bytes());
    ifinfo.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_flags
    ifinfo.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_change
    Request::new(RTM_NEWLINK, 0, &ifinfo).finish()
}

fn family_and_octets(addr: IpAddr) -> (u8, Vec<u8>) {
    match addr {
        IpAddr::V4(a) => (AF_INET, a.octets().to_vec()),
        IpAddr::V6(a) => (AF_INET6, a.octets().to_vec()),
    }
}

/// RTM_NEWADDR for `addr/prefix` on `ifindex`, without duplicate address detection.
fn add_address_request(ifindex: u32, addr: IpAddr, prefix: u8) -> Vec<u8> {
    let (family, octets) = family_and_octets(addr);
    let mut ifaddr = vec![family, prefix, IFA_F_NODAD as u8, RT_SCOPE_UNIVERSE];
    ifaddr.extend_from_slice(&ifindex.to_ne_bytes());
    Request::new(RTM_NEWADDR, NLM_F_CREATE | NLM_F_EXCL, &ifaddr)
        .attr(IFA_LOCAL, &octets)
        .attr(IFA_ADDRESS, &octets)
        .attr(IFA_FLAGS, &IFA_F_NODAD.to_ne_bytes())
        .finish()
}

/// RTM_NEWROUTE for the default route of `family` through `ifindex` (main table).
fn default_route_request(ifindex: u32, v6: bool) -> Vec<u8> {
    let family = if v6 { AF_INET6 } else { AF_INET };
    let mut rtmsg = vec![
        family,
        0, // dst_len: default route
        0, // src_len
        0, // tos
        RT_TABLE_MAIN,
        RTPROT_BOOT,
        RT_SCOPE_UNIVERSE,
        RTN_UNICAST,
    ];
    rtmsg.extend_from_slice(&0u32.to_ne_bytes()); // rtm_flags
    Request::new(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, &rtmsg)
        .attr(RTA_OIF, &ifindex.to_ne_bytes())
        .finish()
}

/// Sends one request and waits for the kernel's ack. EEXIST counts as success: the agent
/// may be restarted (systemd's `Restart=`) on a link that kept its settings.
fn transact(request: &[u8]) -> Result<(), nix::Error> {
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    bind(fd.as_raw_fd(), &NetlinkAddr::new(0, 0))?;
    send(fd.as_raw_fd(), request, MsgFlags::empty())?;
    let mut buf = [0u8; 512];
    let n = recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty())?;
    // NLMSG_ERROR (2) with error 0 is the ack; a negative errno is a failure.
    if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == 2 {
        let err = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        match nix::Error::from_raw(-err) {
            _ if err == 0 => {}
            nix::Error::EEXIST => {}
            e => return Err(e),
        }
    }
    Ok(())
}

/// Sets `lo` up and waits for the kernel's ack.
pub fn loopback_up() -> Result<(), nix::Error> {
    link_up(LOOPBACK_IFINDEX)
}

/// Sets interface `ifindex` up.
pub fn link_up(ifindex: u32) -> Result<(), nix::Error> {
    transact(&link_up_request(ifindex))
}

/// Adds `addr/prefix` to interface `ifindex`, usable at once (no DAD).
pub fn add_address(ifindex: u32, addr: IpAddr, prefix: u8) -> Result<(), nix::Error> {
    transact(&add_address_request(ifindex, addr, prefix))
}

/// Routes every IPv4 (or IPv6) destination without a more specific route through `ifindex`.
pub fn add_default_route(ifindex: u32, v6: bool) -> Result<(), nix::Error> {
    transact(&default_route_request(ifindex, v6))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len_of(m: &[u8]) -> usize {
        u32::from_ne_bytes(m[..4].try_into().unwrap()) as usize
    }

    #[test]
    fn link_request_is_32_bytes_with_its_length_first() {
        let r = link_up_request(1);
        assert_eq!(r.len(), 32);
        assert_eq!(len_of(&r), 32);
    }

    #[test]
    fn address_request_carries_both_address_attributes() {
        let r = add_address_request(7, "198.18.0.1".parse().unwrap(), 15);
        // 16 header + 8 ifaddrmsg + 2 x (4 + 4) addresses + (4 + 4) flags.
        assert_eq!(r.len(), 16 + 8 + 8 + 8 + 8);
        assert_eq!(len_of(&r), r.len());
        assert_eq!(&r[16..18], &[AF_INET, 15]);
        assert_eq!(u32::from_ne_bytes(r[20..24].try_into().unwrap()), 7);
        let v6 = add_address_request(7, "fd53:1ce0::1".parse().unwrap(), 64);
        assert_eq!(v6.len(), 16 + 8 + 20 + 20 + 8);
        assert_eq!(v6[16], AF_INET6);
    }

    #[test]
    fn default_route_names_the_interface() {
        let r = default_route_request(9, true);
        assert_eq!(r.len(), 16 + 12 + 8);
        assert_eq!(r[16], AF_INET6);
        assert_eq!(r[17], 0, "dst_len 0 is the default route");
        assert_eq!(u32::from_ne_bytes(r[32..36].try_into().unwrap()), 9);
    }
}
