//! Reading a TLS ClientHello without terminating TLS: the SNI decides whether a CONNECT may
//! be passed through (`intercept: auto`), and the bytes read are replayed to the upstream.

use tokio::io::{AsyncRead, AsyncReadExt};

/// Largest ClientHello record we accept (TLS caps a record at 16 KiB + header).
const MAX_RECORD: usize = 5 + 16384 + 2048;

/// What the first bytes of a CONNECT tunnel turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Peeked {
    /// A TLS ClientHello; `sni` is the server name it asks for, if any.
    Tls { sni: Option<String> },
    /// Something else (or a malformed hello).
    NotTls,
}

/// Reads the first TLS record from `io`. Returns what it is and every byte read (to replay).
pub async fn read_client_hello<R: AsyncRead + Unpin>(
    io: &mut R,
) -> std::io::Result<(Peeked, Vec<u8>)> {
    let mut buf = vec![0u8; 5];
    io.read_exact(&mut buf[..1]).await?;
    if buf[0] != 0x16 {
        buf.truncate(1);
        return Ok((Peeked::NotTls, buf));
    }
    io.read_exact(&mut buf[1..5]).await?;
    let len = u16::from_be_bytes([buf[3], buf[4]]) as usize;
    if 5 + len > MAX_RECORD {
        return Ok((Peeked::NotTls, buf));
    }
    buf.resize(5 + len, 0);
    io.read_exact(&mut buf[5..]).await?;
    let peeked = match parse_sni(&buf[5..]) {
        Some(sni) => Peeked::Tls { sni },
        None => Peeked::NotTls,
    };
    Ok((peeked, buf))
}

/// A byte cursor that fails (None) instead of panicking on short input.
struct Cur<'a>(&'a [u8]);

impl<'a> Cur<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<usize> {
        self.take(1).map(|b| b[0] as usize)
    }
    fn u16(&mut self) -> Option<usize> {
        self.take(2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]) as usize)
    }
}

/// Parses a handshake message holding a ClientHello. `Some(None)`: a hello without SNI;
/// `None`: not a (complete) ClientHello.
pub fn parse_sni(msg: &[u8]) -> Option<Option<String>> {
    let mut c = Cur(msg);
    if c.u8()? != 1 {
        return None; // not client_hello
    }
    let len = c.take(3)?;
    let len = (len[0] as usize) << 16 | (len[1] as usize) << 8 | len[2] as usize;
    let mut c = Cur(c.take(len)?);
    c.take(2 + 32)?; // legacy_version, random
    let n = c.u8()?;
    c.take(n)?; // session id
    let n = c.u16()?;
    c.take(n)?; // cipher suites
    let n = c.u8()?;
    c.take(n)?; // compression methods
    if c.0.is_empty() {
        return Some(None);
    }
    let n = c.u16()?;
    let mut ext = Cur(c.take(n)?);
    while !ext.0.is_empty() {
        let ty = ext.u16()?;
        let n = ext.u16()?;
        let body = ext.take(n)?;
        if ty != 0 {
            continue;
        }
        let mut list = Cur(body);
        let n = list.u16()?;
        let mut list = Cur(list.take(n)?);
        while !list.0.is_empty() {
            let kind = list.u8()?;
            let n = list.u16()?;
            let name = list.take(n)?;
            if kind == 0 {
                let name = std::str::from_utf8(name).ok()?;
                return Some(Some(name.trim_end_matches('.').to_ascii_lowercase()));
            }
        }
        return Some(None);
    }
    Some(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A real ClientHello from rustls, captured through a duplex pipe.
    async fn hello_for(name: &str) -> Vec<u8> {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(std::iter::empty());
        let cfg = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
        let (a, mut b) = tokio::io::duplex(65536);
        let name = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let conn = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg));
        tokio::spawn(async move {
            let _ = conn.connect(name, a).await;
        });
        let (p, bytes) = read_client_hello(&mut b).await.unwrap();
        assert!(matches!(p, Peeked::Tls { .. }));
        bytes
    }

    #[tokio::test]
    async fn sni_of_a_real_hello() {
        let bytes = hello_for("API.Example.com").await;
        assert_eq!(
            parse_sni(&bytes[5..]),
            Some(Some("api.example.com".to_owned()))
        );
        let bytes = hello_for("10.0.0.1").await;
        assert_eq!(parse_sni(&bytes[5..]), Some(None));
    }

    #[tokio::test]
    async fn not_tls_and_truncated() {
        let mut r: &[u8] = b"SSH-2.0-OpenSSH\r\n";
        let (p, b) = read_client_hello(&mut r).await.unwrap();
        assert_eq!(p, Peeked::NotTls);
        assert_eq!(b, b"S");
        assert_eq!(parse_sni(&[1, 0, 0, 50, 3, 3]), None);
        assert_eq!(parse_sni(&[]), None);
    }
}
