//! Typed protocol errors.

/// Everything that can go wrong reading or writing the Sluice wire protocol.
#[derive(Debug, thiserror::Error)]
pub enum ProtoError {
    /// The stream did not start with the Sluice magic bytes.
    #[error("bad preface magic: not a Sluice stream")]
    BadMagic,
    /// The peer speaks a protocol version this build does not.
    #[error("unsupported protocol version {0} (this build speaks {supported})", supported = crate::PROTOCOL_VERSION)]
    UnsupportedVersion(u8),
    /// A frame length above [`crate::MAX_FRAME_LEN`].
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    Oversize { len: usize, max: usize },
    /// A frame held more bytes than its message used.
    #[error("frame has {0} trailing bytes after the message")]
    TrailingBytes(usize),
    /// The input ended inside a preface, length prefix or frame.
    #[error("truncated input: {0}")]
    Truncated(&'static str),
    /// The frame's bytes are not a valid message (e.g. an unknown stream kind).
    #[error("malformed frame: {0}")]
    Malformed(String),
    /// The underlying transport failed.
    #[error("i/o error: {0}")]
    Io(#[from] std::io::Error),
}

impl ProtoError {
    /// Maps an I/O error from a read that expected more bytes.
    pub(crate) fn from_read(err: std::io::Error, what: &'static str) -> Self {
        if err.kind() == std::io::ErrorKind::UnexpectedEof {
            ProtoError::Truncated(what)
        } else {
            ProtoError::Io(err)
        }
    }
}
