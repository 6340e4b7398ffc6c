//! The agent's bounded cache of broker DNS decisions.
//!
//! A guest asking for ever more distinct names must not grow the agent without bound, nor
//! wipe every cached decision at once (which sent every name in use back to the broker in
//! one burst). When full, expired entries go first; if that frees nothing, the tenth of
//! the entries closest to expiry goes (amortised: one O(n) pass per `capacity / 10`
//! inserts).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::time::Instant;

/// Names (or any key) to a value valid until an instant.
#[derive(Debug)]
pub struct ExpiringCache<K, V> {
    entries: HashMap<K, (V, Instant)>,
    capacity: usize,
}

impl<K: Eq + Hash + Clone, V: Copy> ExpiringCache<K, V> {
    pub fn new(capacity: usize) -> Self {
        ExpiringCache {
            entries: HashMap::new(),
            capacity: capacity.max(1),
        }
    }

    /// The value for `key` if it has not expired at `now`.
    pub fn get<Q>(&self, key: &Q, now: Instant) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        match self.entries.get(key) {
            Some((v, until)) if now < *until => Some(*v),
            _ => None,
        }
    }

    /// Stores `value` for `key` until `until`, evicting first when the cache is full.
    pub fn insert(&mut self, key: K, value: V, until: Instant, now: Instant) {
        if self.entries.len() >= self.capacity && !self.entries.contains_key(&key) {
            self.evict(now);
        }
        self.entries.insert(key, (value, until));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn evict(&mut self, now: Instant) {
        self.entries.retain(|_, (_, until)| now < *until);
        if self.entries.len() < self.capacity {
            return;
        }
        let drop_n = (self.capacity / 10).max(1);
        let mut by_expiry: Vec<(Instant, K)> = self
            .entries
            .iter()
            .map(|(k, (_, until))| (*until, k.clone()))
            .collect();
        by_expiry.select_nth_unstable_by_key(drop_n - 1, |(until, _)| *until);
        for (_, k) in by_expiry.into_iter().take(drop_n) {
            self.entries.remove(&k);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn expired_entries_are_not_returned() {
        let t0 = Instant::now();
        let mut c = ExpiringCache::new(4);
        c.insert("a", 1, t0 + Duration::from_secs(5), t0);
        assert_eq!(c.get(&"a", t0), Some(1));
        assert_eq!(c.get(&"a", t0 + Duration::from_secs(5)), None);
    }

    #[test]
    fn a_full_cache_drops_expired_entries_first_and_keeps_live_ones() {
        let t0 = Instant::now();
        let mut c = ExpiringCache::new(100);
        // 50 entries about to expire, 50 that stay valid.
        for i in 0..50 {
            c.insert(format!("old{i}"), i, t0 + Duration::from_secs(1), t0);
        }
        for i in 0..50 {
            c.insert(format!("live{i}"), i, t0 + Duration::from_secs(60), t0);
        }
        let later = t0 + Duration::from_secs(2);
        c.insert("new".to_owned(), 7, later + Duration::from_secs(30), later);
        assert_eq!(c.len(), 51, "the 50 expired ones went, nothing live");
        for i in 0..50 {
            assert_eq!(c.get(&format!("live{i}"), later), Some(i));
        }
        assert_eq!(c.get(&"new".to_owned(), later), Some(7));
    }

    #[test]
    fn a_cache_full_of_live_entries_sheds_the_soonest_to_expire_tenth_not_everything() {
        let t0 = Instant::now();
        let mut c = ExpiringCache::new(100);
        for i in 0..100u64 {
            c.insert(i, i, t0 + Duration::from_secs(10 + i), t0);
        }
        c.insert(1000, 0, t0 + Duration::from_secs(500), t0);
        assert_eq!(c.len(), 91);
        for i in 0..10 {
            assert_eq!(c.get(&i, t0), None, "entry {i} expired soonest");
        }
        for i in 10..100 {
            assert_eq!(c.get(&i, t0), Some(i));
        }
        // Bounded whatever the guest asks.
        for i in 2000..12_000u64 {
            c.insert(i, i, t0 + Duration::from_secs(i), t0);
            assert!(c.len() <= 100);
        }
    }
}
