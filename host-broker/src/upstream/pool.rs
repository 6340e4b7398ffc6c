//! Per-VM pool of verified upstream connections, reused across the VM's tunnels.
//!
//! Keyed by the host the certificate was verified for and the exact address the policy
//! approved (port included); the ALPN offer is the broker's one upstream config, so a key
//! never mixes protocols. The pool lives in the VM's state: two VMs never share a
//! connection. Reuse changes nothing about gating: every request on a pooled connection is
//! authority-checked, gated and substituted by its own tunnel before it is sent, exactly as
//! on a fresh one.
//!
//! HTTP/1.1 connections are checked out while a request is sent and checked back in as soon
//! as the response head arrives; one still streaming a body is simply not ready and is
//! skipped by the next checkout (a new connection is dialled instead), so no request ever
//! waits behind another one's response. HTTP/2 connections are shared by cloning.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::ClientConfig;

use super::conn::UpstreamConn;

/// Connections kept per key; more than this many concurrent requests dial extra ones that
/// close after their response.
const MAX_PER_KEY: usize = 32;

/// Idle connections older than this are dropped rather than reused: below common server
/// keep-alive timeouts, so a reused connection is rarely one the server is closing.
const MAX_IDLE: Duration = Duration::from_secs(55);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Key {
    host: String,
    addr: SocketAddr,
}

struct Entry {
    conn: UpstreamConn,
    since: Instant,
}

/// The upstream connections of one VM.
#[derive(Default)]
pub(crate) struct UpstreamPool {
    conns: Mutex<HashMap<Key, Vec<Entry>>>,
    /// Whether the sweeper task (closes connections idle past [`MAX_IDLE`] even when the VM
    /// makes no more requests) has been started.
    sweeping: std::sync::atomic::AtomicBool,
}

impl std::fmt::Debug for UpstreamPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamPool").finish_non_exhaustive()
    }
}

fn key(host: &str, addr: SocketAddr) -> Key {
    Key {
        host: host.to_owned(),
        addr,
    }
}

impl UpstreamPool {
    fn with<R>(&self, host: &str, addr: SocketAddr, f: impl FnOnce(&mut Vec<Entry>) -> R) -> R {
        let mut map = self.conns.lock().unwrap_or_else(|e| e.into_inner());
        let list = map.entry(key(host, addr)).or_default();
        list.retain(|e| !e.conn.is_closed() && e.since.elapsed() < MAX_IDLE);
        let r = f(list);
        if list.is_empty() {
            map.remove(&key(host, addr));
        }
        r
    }

    /// A connection that can take a request now: a handle to the HTTP/2 connection, or an
    /// idle HTTP/1.1 one (removed until [`Self::checkin`]).
    pub(crate) fn checkout(&self, host: &str, addr: SocketAddr) -> Option<UpstreamConn> {
        self.with(host, addr, |list| {
            if let Some(h2) = list.iter().find_map(|e| e.conn.shared()) {
                return Some(h2);
            }
            let i = list.iter().position(|e| e.conn.is_ready_now())?;
            Some(list.swap_remove(i).conn)
        })
    }

    /// Returns a connection after its request was sent (it may still be streaming the
    /// response body: then it is not ready and later checkouts pass it by).
    pub(crate) fn checkin(self: &Arc<Self>, host: &str, addr: SocketAddr, conn: UpstreamConn) {
        if conn.is_closed() {
            return;
        }
        self.start_sweeper();
        self.with(host, addr, |list| {
            let has_h2 = list.iter().any(|e| e.conn.is_h2());
            if (conn.is_h2() && has_h2) || list.len() >= MAX_PER_KEY {
                return; // a clone of the shared HTTP/2 handle, or over the bound: dropped
            }
            list.push(Entry {
                conn,
                since: Instant::now(),
            });
        })
    }

    /// Starts (once) a task that drops idle-expired and closed connections of every key;
    /// it holds the pool weakly and ends with it (VM unregistered).
    fn start_sweeper(self: &Arc<Self>) {
        use std::sync::atomic::Ordering;
        if self.sweeping.swap(true, Ordering::Relaxed) {
            return;
        }
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(MAX_IDLE / 2).await;
                let Some(pool) = weak.upgrade() else { return };
                let mut map = pool.conns.lock().unwrap_or_else(|e| e.into_inner());
                map.retain(|_, list| {
                    list.retain(|e| !e.conn.is_closed() && e.since.elapsed() < MAX_IDLE);
                    !list.is_empty()
                });
            }
        });
    }

    /// Whether a live connection for the key is pooled (ready or busy).
    pub(crate) fn has_live(&self, host: &str, addr: SocketAddr) -> bool {
        self.with(host, addr, |list| !list.is_empty())
    }
}

/// A new verified connection to `host` at `addr` (HTTP/2 or HTTP/1.1 as the upstream
/// chooses), ready for a request. Err = the reason for a 502.
pub(crate) async fn dial(
    tls: &Arc<ClientConfig>,
    host: &str,
    addr: SocketAddr,
) -> Result<UpstreamConn, String> {
    let up = super::dial_tls(tls, host, addr)
        .await
        .map_err(|e| e.to_string())?;
    let h2 = up.get_ref().1.alpn_protocol() == Some(b"h2");
    let mut conn = UpstreamConn::handshake(up, h2)
        .await
        .map_err(|e| format!("upstream {host}: {e}"))?;
    if !conn.ready().await {
        return Err(format!("upstream {host}: connection closed"));
    }
    Ok(conn)
}

/// Before a tunnel is answered: makes sure a verified upstream connection for the key
/// exists (a pooled one, or one dialled and verified now and pooled), so a certificate
/// failure is still a `502` to the `CONNECT` and never a tunnel. Err = the reason.
pub(crate) async fn ensure_verified(
    pool: &Arc<UpstreamPool>,
    tls: &Arc<ClientConfig>,
    host: &str,
    addr: SocketAddr,
) -> Result<(), String> {
    if pool.has_live(host, addr) {
        return Ok(());
    }
    let conn = dial(tls, host, addr).await?;
    pool.checkin(host, addr, conn);
    Ok(())
}
