//! Java KeyStore (JKS) files: read, add trusted-certificate entries, write back.
//!
//! Format (`sun.security.provider.JavaKeyStore`): magic `FEEDFEED`, version (1 or 2), entry
//! count, entries, then a SHA-1 integrity digest over the UTF-16BE password, the bytes of
//! `"Mighty Aphrodite"` and everything before the digest. An entry is a tag (1 private key,
//! 2 trusted certificate), an alias (Java modified UTF-8, u16 length), a timestamp (ms, u64),
//! then for a key the protected key bytes and its chain, for a trusted certificate one
//! certificate; version 2 prefixes each certificate with its type (`"X.509"`). Entries we do
//! not add are kept byte for byte.

use sha1::{Digest, Sha1};

/// The magic at the start of a JKS file.
pub const MAGIC: [u8; 4] = [0xfe, 0xed, 0xfe, 0xed];
/// The password Debian, Fedora and the JDKs use for `cacerts`.
pub const DEFAULT_PASSWORD: &str = "changeit";
const WHITENER: &[u8] = b"Mighty Aphrodite";
const TAG_KEY: u32 = 1;
const TAG_CERT: u32 = 2;
/// Refuse absurd counts before allocating anything (real stores hold a few hundred).
const MAX_ENTRIES: u32 = 100_000;

/// Why a store could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JksError {
    #[error("not a JKS store (no FEEDFEED magic)")]
    NotJks,
    #[error("unsupported JKS version {0}")]
    Version(u32),
    #[error("truncated at byte {0}")]
    Truncated(usize),
    #[error("entry #{0} has unsupported tag {1}")]
    Tag(u32, u32),
    #[error("{0} entries is more than a trust store holds")]
    TooMany(u32),
    #[error("integrity digest does not match the store password")]
    Digest,
    #[error("trailing bytes after the digest")]
    Trailing,
}

/// One entry, kept as its exact bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    alias: Vec<u8>,
    raw: Vec<u8>,
    /// DER of a trusted-certificate entry.
    cert: Option<Vec<u8>>,
}

/// A parsed store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keystore {
    version: u32,
    entries: Vec<Entry>,
}

/// Is `data` a JKS store (by magic)?
pub fn is_jks(data: &[u8]) -> bool {
    data.starts_with(&MAGIC)
}

/// Does `data` look like a PKCS#12 store (a DER SEQUENCE)?
pub fn is_pkcs12(data: &[u8]) -> bool {
    data.first() == Some(&0x30)
}

struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], JksError> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|&e| e <= self.data.len())
            .ok_or(JksError::Truncated(self.pos))?;
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u16(&mut self) -> Result<u16, JksError> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, JksError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn utf(&mut self) -> Result<&'a [u8], JksError> {
        let n = self.u16()? as usize;
        self.take(n)
    }
    fn bytes32(&mut self) -> Result<&'a [u8], JksError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
}

fn digest(password: &str, body: &[u8]) -> [u8; 20] {
    let mut h = Sha1::new();
    for unit in password.encode_utf16() {
        h.update(unit.to_be_bytes());
    }
    h.update(WHITENER);
    h.update(body);
    h.finalize().into()
}

impl Keystore {
    /// An empty version-2 store.
    pub fn new() -> Self {
        Keystore {
            version: 2,
            entries: Vec::new(),
        }
    }

    /// Parses `data` and checks its digest with `password`.
    pub fn parse(data: &[u8], password: &str) -> Result<Self, JksError> {
        if !is_jks(data) {
            return Err(JksError::NotJks);
        }
        if data.len() < 12 + 20 {
            return Err(JksError::Truncated(data.len()));
        }
        let mut r = Reader { data, pos: 4 };
        let version = r.u32()?;
        if version != 1 && version != 2 {
            return Err(JksError::Version(version));
        }
        let count = r.u32()?;
        if count > MAX_ENTRIES {
            return Err(JksError::TooMany(count));
        }
        let mut entries = Vec::new();
        for i in 0..count {
            let start = r.pos;
            let tag = r.u32()?;
            let alias = r.utf()?.to_vec();
            r.take(8)?; // timestamp
            let mut cert = None;
            match tag {
                TAG_KEY => {
                    r.bytes32()?;
                    let chain = r.u32()?;
                    if chain > MAX_ENTRIES {
                        return Err(JksError::TooMany(chain));
                    }
                    for _ in 0..chain {
                        if version == 2 {
                            r.utf()?;
                        }
                        r.bytes32()?;
                    }
                }
                TAG_CERT => {
                    if version == 2 {
                        r.utf()?;
                    }
                    cert = Some(r.bytes32()?.to_vec());
                }
                other => return Err(JksError::Tag(i, other)),
            }
            entries.push(Entry {
                alias,
                raw: data[start..r.pos].to_vec(),
                cert,
            });
        }
        let body_end = r.pos;
        let stored = r.take(20)?;
        if r.pos != data.len() {
            return Err(JksError::Trailing);
        }
        if digest(password, &data[..body_end]) != stored {
            return Err(JksError::Digest);
        }
        Ok(Keystore { version, entries })
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the store has no entries.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Aliases, as stored (lossy UTF-8).
    pub fn aliases(&self) -> Vec<String> {
        self.entries
            .iter()
            .map(|e| String::from_utf8_lossy(&e.alias).into_owned())
            .collect()
    }

    /// DER of every trusted-certificate entry.
    pub fn trusted_certs(&self) -> impl Iterator<Item = &[u8]> {
        self.entries.iter().filter_map(|e| e.cert.as_deref())
    }

    /// The trusted certificate stored under `alias`.
    pub fn cert(&self, alias: &str) -> Option<&[u8]> {
        self.entries
            .iter()
            .find(|e| e.alias == alias.as_bytes())
            .and_then(|e| e.cert.as_deref())
    }

    /// Removes every entry whose alias is `alias` (JKS aliases are case-insensitive and
    /// stored lower-cased).
    pub fn remove(&mut self, alias: &str) {
        let alias = alias.to_ascii_lowercase();
        self.entries.retain(|e| e.alias != alias.as_bytes());
    }

    /// Removes every entry whose alias satisfies `f`.
    pub fn remove_where(&mut self, f: impl Fn(&str) -> bool) {
        self.entries
            .retain(|e| !f(&String::from_utf8_lossy(&e.alias)));
    }

    /// Adds (or replaces) a trusted-certificate entry. `alias` must be ASCII (ours are).
    pub fn set_trusted(&mut self, alias: &str, der: &[u8], timestamp_ms: u64) {
        let alias = alias.to_ascii_lowercase();
        self.remove(&alias);
        let mut raw = Vec::with_capacity(der.len() + alias.len() + 32);
        raw.extend_from_slice(&TAG_CERT.to_be_bytes());
        raw.extend_from_slice(&(alias.len() as u16).to_be_bytes());
        raw.extend_from_slice(alias.as_bytes());
        raw.extend_from_slice(&timestamp_ms.to_be_bytes());
        if self.version == 2 {
            raw.extend_from_slice(&5u16.to_be_bytes());
            raw.extend_from_slice(b"X.509");
        }
        raw.extend_from_slice(&(der.len() as u32).to_be_bytes());
        raw.extend_from_slice(der);
        self.entries.push(Entry {
            alias: alias.into_bytes(),
            raw,
            cert: Some(der.to_vec()),
        });
    }

    /// The store's bytes, digest computed with `password`.
    pub fn to_bytes(&self, password: &str) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.version.to_be_bytes());
        out.extend_from_slice(&(self.entries.len() as u32).to_be_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.raw);
        }
        let d = digest(password, &out);
        out.extend_from_slice(&d);
        out
    }
}

impl Default for Keystore {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_digest() {
        let mut ks = Keystore::new();
        ks.set_trusted("A", b"\x30\x03\x02\x01\x01", 1);
        ks.set_trusted("b", b"\x30\x00", 2);
        let bytes = ks.to_bytes(DEFAULT_PASSWORD);
        let back = Keystore::parse(&bytes, DEFAULT_PASSWORD).unwrap();
        assert_eq!(back, ks);
        assert_eq!(back.aliases(), ["a", "b"]);
        assert_eq!(back.cert("a"), Some(&b"\x30\x03\x02\x01\x01"[..]));
        assert_eq!(
            Keystore::parse(&bytes, "other"),
            Err(JksError::Digest),
            "wrong password"
        );
        // Replacing keeps one entry per alias.
        let mut again = back.clone();
        again.set_trusted("a", b"\x30\x00", 3);
        assert_eq!(again.len(), 2);
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        let good = Keystore::new().to_bytes(DEFAULT_PASSWORD);
        assert_eq!(Keystore::parse(b"", "x"), Err(JksError::NotJks));
        for n in 0..good.len() {
            assert!(
                Keystore::parse(&good[..n], DEFAULT_PASSWORD).is_err(),
                "{n}"
            );
        }
        let mut huge = good.clone();
        huge[8..12].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(Keystore::parse(&huge, DEFAULT_PASSWORD).is_err());
        let mut trailing = good.clone();
        trailing.push(0);
        assert_eq!(
            Keystore::parse(&trailing, DEFAULT_PASSWORD),
            Err(JksError::Trailing)
        );
        // An entry whose length runs past the end.
        let mut ks = Keystore::new();
        ks.set_trusted("x", b"\x30\x00", 0);
        let mut bytes = ks.to_bytes(DEFAULT_PASSWORD);
        let len_at = bytes.len() - 20 - 2 - 4;
        bytes[len_at..len_at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert!(matches!(
            Keystore::parse(&bytes, DEFAULT_PASSWORD),
            Err(JksError::Truncated(_))
        ));
    }
}
