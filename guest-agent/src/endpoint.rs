//! Where the broker is: kernel AF_VSOCK (inside a VM) or a Unix socket (on a host, for tests
//! and benchmarks that drive the real agent without a VM).

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use tokio::io::{AsyncRead, AsyncWrite};

/// A connected byte stream to the broker, whatever the transport.
pub trait BrokerIo: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> BrokerIo for T {}

/// A boxed [`BrokerIo`].
pub type BoxedIo = Box<dyn BrokerIo>;

/// The broker's address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// `vsock:CID:PORT`
    Vsock { cid: u32, port: u32 },
    /// `unix:PATH`
    Unix(PathBuf),
}

/// A malformed `--connect` value.
#[derive(Debug, thiserror::Error)]
#[error("bad broker endpoint `{0}`: expected unix:PATH or vsock:CID:PORT")]
pub struct EndpointError(String);

impl FromStr for Endpoint {
    type Err = EndpointError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || EndpointError(s.to_string());
        if let Some(path) = s.strip_prefix("unix:") {
            if path.is_empty() {
                return Err(err());
            }
            return Ok(Endpoint::Unix(PathBuf::from(path)));
        }
        if let Some(rest) = s.strip_prefix("vsock:") {
            let (cid, port) = rest.split_once(':').ok_or_else(err)?;
            return Ok(Endpoint::Vsock {
                cid: cid.parse().map_err(|_| err())?,
                port: port.parse().map_err(|_| err())?,
            });
        }
        Err(err())
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Vsock { cid, port } => write!(f, "vsock:{cid}:{port}"),
            Endpoint::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

impl Endpoint {
    /// Opens a new stream to the broker.
    pub async fn connect(&self) -> std::io::Result<BoxedIo> {
        match self {
            Endpoint::Vsock { cid, port } => {
                let s = tokio_vsock::VsockStream::connect(tokio_vsock::VsockAddr::new(*cid, *port))
                    .await?;
                Ok(Box::new(s))
            }
            Endpoint::Unix(path) => Ok(Box::new(tokio::net::UnixStream::connect(path).await?)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints() {
        for s in ["vsock:2:7070", "unix:/run/x.sock"] {
            assert_eq!(s.parse::<Endpoint>().unwrap().to_string(), s);
        }
        for bad in ["vsock:2", "vsock:x:1", "unix:", "tcp:1.2.3.4:5", ""] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad}");
        }
    }
}
