//! Evaluation of egress rules on names and on dialed addresses.

use std::net::SocketAddr;

use super::error::Denial;
use super::model::Policy;

impl Policy {
    /// Host rules before any DNS: deny rules, allow rules by host pattern/port, default.
    pub fn check_name(&self, host: &str, port: u16) -> Result<(), Denial> {
        let _ = (host, port);
        todo!()
    }

    /// Rules on the IP actually dialed: CIDR rules and private_networks.
    pub fn check_addr(&self, host: &str, addr: SocketAddr) -> Result<(), Denial> {
        let _ = (host, addr);
        todo!()
    }
}
