//! Leaf certificates per intercepted host, minted on demand and cached.
//!
//! Choices (documented in host-broker/README.md):
//! * validity: `not_before = now - 1 h` (guest clock skew), `not_after = now + 24 h`;
//! * refresh point: 12 h before `not_after`: a cached leaf older than that is re-minted on the
//!   next lookup, so a served leaf always has at least 12 h left;
//! * the cache holds at most `capacity` hosts; inserting past that evicts the oldest-inserted
//!   host (FIFO: cheap, and a re-mint costs ~1 ms);
//! * minting is single-flight per host: concurrent lookups of one host wait on that host's
//!   async mutex, so a burst of N connections mints once.
//!
//! The clock is injectable ([`Clock`]) so the refresh test moves time instead of sleeping.

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, KeyPair,
    KeyUsagePurpose, SanType, PKCS_ECDSA_P256_SHA256,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::ServerConfig;
use time::{Duration, OffsetDateTime};

use super::ca::VmCa;

/// How long a minted leaf is valid after it is minted.
pub const LEAF_VALIDITY: Duration = Duration::hours(24);
/// A cached leaf is re-minted once it has less than this left.
pub const LEAF_REFRESH_BEFORE_EXPIRY: Duration = Duration::hours(12);
/// Default number of hosts kept per VM.
pub const DEFAULT_LEAF_CACHE_CAPACITY: usize = 1024;

/// Source of "now" for certificate validity.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now(&self) -> OffsetDateTime;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> OffsetDateTime {
        OffsetDateTime::now_utc()
    }
}

/// Errors minting a leaf.
#[derive(Debug, thiserror::Error)]
pub enum LeafError {
    #[error("host {host:?} cannot be put in a certificate: {source}")]
    BadHost {
        host: String,
        #[source]
        source: rcgen::Error,
    },
    #[error("leaf signing failed: {0}")]
    Sign(#[from] rcgen::Error),
    #[error("rustls rejected the minted leaf: {0}")]
    Rustls(#[from] rustls::Error),
}

#[derive(Debug)]
struct Leaf {
    config: Arc<ServerConfig>,
    refresh_at: OffsetDateTime,
}

type Slot = Arc<tokio::sync::Mutex<Option<Leaf>>>;

#[derive(Debug, Default)]
struct Slots {
    map: HashMap<String, Slot>,
    order: VecDeque<String>,
}

/// Bounded per-VM cache of `Arc<ServerConfig>` keyed by host.
#[derive(Debug)]
pub struct LeafCache {
    ca: Arc<VmCa>,
    clock: Arc<dyn Clock>,
    capacity: usize,
    slots: Mutex<Slots>,
    minted: AtomicU64,
}

impl LeafCache {
    pub fn new(ca: Arc<VmCa>, clock: Arc<dyn Clock>, capacity: usize) -> LeafCache {
        LeafCache {
            ca,
            clock,
            capacity: capacity.max(1),
            slots: Mutex::new(Slots::default()),
            minted: AtomicU64::new(0),
        }
    }

    /// How many leaves this cache has minted (for tests and metrics).
    pub fn minted(&self) -> u64 {
        self.minted.load(Ordering::Relaxed)
    }

    /// Number of hosts currently cached.
    pub fn len(&self) -> usize {
        self.lock_slots().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock_slots(&self) -> std::sync::MutexGuard<'_, Slots> {
        // A panic while holding this lock cannot leave the map inconsistent: recover.
        self.slots.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn slot(&self, host: &str) -> Slot {
        let mut slots = self.lock_slots();
        if let Some(s) = slots.map.get(host) {
            return s.clone();
        }
        while slots.map.len() >= self.capacity {
            match slots.order.pop_front() {
                Some(old) => {
                    slots.map.remove(&old);
                }
                None => break,
            }
        }
        let s: Slot = Arc::default();
        slots.map.insert(host.to_owned(), s.clone());
        slots.order.push_back(host.to_owned());
        s
    }

    /// The server config for `host` (lowercase, no port), minting it if absent or stale.
    pub async fn get(&self, host: &str) -> Result<Arc<ServerConfig>, LeafError> {
        let slot = self.slot(host);
        let mut guard = slot.lock().await;
        let now = self.clock.now();
        if let Some(leaf) = guard.as_ref() {
            if now < leaf.refresh_at {
                return Ok(leaf.config.clone());
            }
        }
        let leaf = self.mint(host, now)?;
        let config = leaf.config.clone();
        *guard = Some(leaf);
        Ok(config)
    }

    fn mint(&self, host: &str, now: OffsetDateTime) -> Result<Leaf, LeafError> {
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(LeafError::Sign)?;
        let san = match host.parse::<IpAddr>() {
            Ok(ip) => SanType::IpAddress(ip),
            Err(_) => SanType::DnsName(host.try_into().map_err(|source| LeafError::BadHost {
                host: host.to_owned(),
                source,
            })?),
        };
        params.subject_alt_names = vec![san];
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, host);
        params.distinguished_name = dn;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.use_authority_key_identifier_extension = true;
        params.not_before = now - Duration::hours(1);
        let not_after = now + LEAF_VALIDITY;
        params.not_after = not_after;
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let cert = params.signed_by(&key, &self.ca.cert, &self.ca.key)?;
        let chain = vec![
            cert.der().clone(),
            CertificateDer::from(self.ca.cert.der().to_vec()),
        ];
        let key_der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        let mut config =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()?
                .with_no_client_auth()
                .with_single_cert(chain, key_der)?;
        // Offer all; the guest's choice only decides the framing of its side (`http/1.0`:
        // curl --http1.0 offers only that, and HTTP/1.1's server speaks 1.0 too).
        config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec(), b"http/1.0".to_vec()];
        self.minted.fetch_add(1, Ordering::Relaxed);
        Ok(Leaf {
            config: Arc::new(config),
            refresh_at: not_after - LEAF_REFRESH_BEFORE_EXPIRY,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A clock tests can move.
    #[derive(Debug)]
    struct TestClock(Mutex<OffsetDateTime>);
    impl Clock for TestClock {
        fn now(&self) -> OffsetDateTime {
            *self.0.lock().unwrap()
        }
    }

    fn cache(capacity: usize) -> (tempfile::TempDir, Arc<TestClock>, LeafCache) {
        let dir = tempfile::tempdir().unwrap();
        let ca = Arc::new(VmCa::load_or_create(dir.path(), "t").unwrap());
        let clock = Arc::new(TestClock(Mutex::new(OffsetDateTime::now_utc())));
        let c = LeafCache::new(ca, clock.clone(), capacity);
        (dir, clock, c)
    }

    #[tokio::test]
    async fn cached_until_refresh_point_then_reminted() {
        let (_d, clock, c) = cache(8);
        let a = c.get("api.example.com").await.unwrap();
        let b = c.get("api.example.com").await.unwrap();
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(c.minted(), 1);
        *clock.0.lock().unwrap() += Duration::hours(11);
        assert!(Arc::ptr_eq(&a, &c.get("api.example.com").await.unwrap()));
        *clock.0.lock().unwrap() += Duration::hours(2); // 13 h: past the refresh point
        let fresh = c.get("api.example.com").await.unwrap();
        assert!(!Arc::ptr_eq(&a, &fresh));
        assert_eq!(c.minted(), 2);
    }

    #[tokio::test]
    async fn concurrent_lookups_mint_once() {
        let (_d, _clock, c) = cache(8);
        let c = Arc::new(c);
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let c = c.clone();
            tasks.push(tokio::spawn(async move {
                c.get("burst.example").await.unwrap()
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(c.minted(), 1);
    }

    #[tokio::test]
    async fn bounded() {
        let (_d, _clock, c) = cache(2);
        for h in ["a.example", "b.example", "c.example"] {
            c.get(h).await.unwrap();
        }
        assert_eq!(c.len(), 2);
    }
}
