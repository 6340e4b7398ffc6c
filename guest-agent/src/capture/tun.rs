//! The capture device: a TUN interface holding the synthetic ranges and the default routes.

use std::net::IpAddr;

use super::fake_ip;
use crate::net;

/// Name of the capture interface.
pub const DEVICE_NAME: &str = "sluice0";

/// Setting up capture failed. The agent reports it and the boot stops: a guest that was
/// meant to be captured must not run half-configured.
#[derive(Debug, thiserror::Error)]
pub enum CaptureError {
    #[error(
        "creating TUN device {DEVICE_NAME}: {0} (is the `tun` module in the initrd? \
         sluice.capture=off disables transparent capture)"
    )]
    Device(std::io::Error),
    #[error("{what} on {DEVICE_NAME}: {errno}")]
    Netlink { what: String, errno: nix::Error },
    #[error("starting the capture stack: {0}")]
    Stack(std::io::Error),
    #[error("starting the DNS resolver on 127.0.0.1:53: {0}")]
    Dns(std::io::Error),
}

fn netlink(what: impl Into<String>) -> impl FnOnce(nix::Error) -> CaptureError {
    move |errno| CaptureError::Netlink {
        what: what.into(),
        errno,
    }
}

/// Creates `sluice0`, gives it the first address of each synthetic range, brings it up and
/// routes every non-local destination through it.
pub fn create(mtu: u16) -> Result<tun_rs::AsyncDevice, CaptureError> {
    let device = tun_rs::DeviceBuilder::new()
        .name(DEVICE_NAME)
        .mtu(mtu)
        .packet_information(false)
        .build_async()
        .map_err(CaptureError::Device)?;
    let ifindex = device.if_index().map_err(CaptureError::Device)?;
    let v4 = IpAddr::V4(fake_ip::interface_v4());
    net::add_address(ifindex, v4, fake_ip::V4_PREFIX)
        .map_err(netlink(format!("adding {v4}/{}", fake_ip::V4_PREFIX)))?;
    net::link_up(ifindex).map_err(netlink("setting the link up"))?;
    net::add_default_route(ifindex, false).map_err(netlink("adding the IPv4 default route"))?;
    // IPv6 is optional: a kernel booted with ipv6.disable=1 still gets IPv4 capture.
    let v6 = IpAddr::V6(fake_ip::interface_v6());
    match net::add_address(ifindex, v6, fake_ip::V6_PREFIX) {
        Ok(()) => net::add_default_route(ifindex, true)
            .map_err(netlink("adding the IPv6 default route"))?,
        Err(e) => tracing::warn!("no IPv6 capture ({v6}/{}: {e})", fake_ip::V6_PREFIX),
    }
    Ok(device)
}
