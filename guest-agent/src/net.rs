//! Brings the loopback interface up (exec mode has no systemd or `ip` to do it).
//!
//! One RTM_NEWLINK netlink request setting IFF_UP on ifindex 1, built by hand: it is a
//! 32-byte message and needs no ioctl (which would need unsafe code).

use nix::sys::socket::{
    bind, recv, send, socket, AddressFamily, MsgFlags, NetlinkAddr, SockFlag, SockProtocol,
    SockType,
};

const RTM_NEWLINK: u16 = 16;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const IFF_UP: u32 = 1;
const LOOPBACK_IFINDEX: i32 = 1;

/// The RTM_NEWLINK request: nlmsghdr (16 bytes) + ifinfomsg (16 bytes), native endian.
fn request() -> Vec<u8> {
    let mut m = Vec::with_capacity(32);
    m.extend_from_slice(&32u32.to_ne_bytes()); // nlmsg_len
    m.extend_from_slice(&RTM_NEWLINK.to_ne_bytes());
    m.extend_from_slice(&(NLM_F_REQUEST | NLM_F_ACK).to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid
    m.push(0); // ifi_family AF_UNSPEC
    m.push(0); // pad
    m.extend_from_slice(&0u16.to_ne_bytes()); // ifi_type
    m.extend_from_slice(&LOOPBACK_IFINDEX.to_ne_bytes());
    m.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_flags
    m.extend_from_slice(&IFF_UP.to_ne_bytes()); // ifi_change
    m
}

/// Sets `lo` up and waits for the kernel's ack.
pub fn loopback_up() -> Result<(), nix::Error> {
    let fd = socket(
        AddressFamily::Netlink,
        SockType::Raw,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkRoute,
    )?;
    bind(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &NetlinkAddr::new(0, 0),
    )?;
    send(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &request(),
        MsgFlags::empty(),
    )?;
    let mut buf = [0u8; 256];
    let n = recv(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        &mut buf,
        MsgFlags::empty(),
    )?;
    // NLMSG_ERROR (2) with error 0 is the ack; a negative errno is a failure.
    if n >= 20 && u16::from_ne_bytes([buf[4], buf[5]]) == 2 {
        let err = i32::from_ne_bytes([buf[16], buf[17], buf[18], buf[19]]);
        if err != 0 {
            return Err(nix::Error::from_raw(-err));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn request_is_32_bytes_with_its_length_first() {
        let r = super::request();
        assert_eq!(r.len(), 32);
        assert_eq!(u32::from_ne_bytes(r[..4].try_into().unwrap()), 32);
    }
}
