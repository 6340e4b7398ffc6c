//! Resolve once, check every candidate, return the one address to dial.
//!
//! Returning a single checked `SocketAddr` (instead of letting the caller resolve again)
//! closes the DNS-rebinding window: the address that was checked is the address dialed.

use std::net::SocketAddr;
use std::time::Duration;

use super::error::Denial;
use super::host_pattern::{normalize_host, parse_ip_literal};
use super::model::Policy;

/// Upper bound on one DNS resolution, so a stalled resolver cannot pin a guest connection.
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(10);

/// Resolve once (override, else DNS via tokio::net::lookup_host), check every candidate
/// with the address rules (using the port the guest requested), return the ONE address the
/// caller must dial. If any candidate is refused the whole target is refused, so an answer
/// mixing public and private addresses cannot be used to reach the private one.
pub async fn resolve_target(policy: &Policy, host: &str, port: u16) -> Result<SocketAddr, Denial> {
    policy.check_name(host, port)?;
    let h = normalize_host(host);
    if let Some(addr) = policy.resolve_override(&h) {
        policy.check_target(&h, port, addr)?;
        return Ok(addr);
    }
    if let Some(ip) = parse_ip_literal(&h) {
        let addr = SocketAddr::new(ip, port);
        policy.check_target(&h, port, addr)?;
        return Ok(addr);
    }
    let lookup = tokio::net::lookup_host((h.as_str(), port));
    let candidates: Vec<SocketAddr> = tokio::time::timeout(RESOLVE_TIMEOUT, lookup)
        .await
        .map_err(|_| {
            Denial::unresolved(format!(
                "cannot resolve {h}: no answer within {}s",
                RESOLVE_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| Denial::unresolved(format!("cannot resolve {h}: {e}")))?
        .collect();
    let Some(first) = candidates.first().copied() else {
        return Err(Denial::unresolved(format!(
            "cannot resolve {h}: no addresses"
        )));
    };
    for addr in &candidates {
        policy.check_target(&h, port, *addr)?;
    }
    Ok(first)
}
