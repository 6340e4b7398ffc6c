//! Preface and length-prefixed frames.
//!
//! A frame is a big-endian `u32` length followed by that many bytes of encoded message. The
//! encoding is bincode with fixed-width integers; it never leaves this module.

use bincode::Options;
use serde::{de::DeserializeOwned, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::{ProtoError, StreamHeader, MAGIC, PROTOCOL_VERSION};

/// Hard upper bound on one frame's payload (1 MiB: a GuestConfig with CA PEMs fits easily).
pub const MAX_FRAME_LEN: usize = 1 << 20;

/// The bytes every stream starts with: magic, then the protocol version.
pub const PREFACE: [u8; 7] = {
    let mut p = [0u8; 7];
    let mut i = 0;
    while i < MAGIC.len() {
        p[i] = MAGIC[i];
        i += 1;
    }
    p[6] = PROTOCOL_VERSION;
    p
};

fn options() -> impl Options {
    bincode::DefaultOptions::new()
        .with_fixint_encoding()
        .with_big_endian()
        .with_limit(MAX_FRAME_LEN as u64)
}

/// Encodes `msg` as one frame (length prefix included).
pub fn encode_frame<T: Serialize>(msg: &T) -> Result<Vec<u8>, ProtoError> {
    let body = options()
        .serialize(msg)
        .map_err(|e| ProtoError::Malformed(e.to_string()))?;
    if body.len() > MAX_FRAME_LEN {
        return Err(ProtoError::Oversize {
            len: body.len(),
            max: MAX_FRAME_LEN,
        });
    }
    let mut out = Vec::with_capacity(4 + body.len());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    Ok(out)
}

/// Decodes exactly one frame from `buf`, which must hold nothing else.
pub fn decode_frame<T: DeserializeOwned>(buf: &[u8]) -> Result<T, ProtoError> {
    let Some(prefix) = buf.get(..4) else {
        return Err(ProtoError::Truncated("frame length prefix"));
    };
    let len = u32::from_be_bytes(prefix.try_into().expect("4 bytes")) as usize;
    if len > MAX_FRAME_LEN {
        return Err(ProtoError::Oversize {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    let rest = &buf[4..];
    if rest.len() < len {
        return Err(ProtoError::Truncated("frame body"));
    }
    if rest.len() > len {
        return Err(ProtoError::TrailingBytes(rest.len() - len));
    }
    decode_body(rest)
}

fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ProtoError> {
    let mut rest = body;
    let msg = options()
        .allow_trailing_bytes()
        .deserialize_from(&mut rest)
        .map_err(|e| match *e {
            bincode::ErrorKind::Io(ref io) if io.kind() == std::io::ErrorKind::UnexpectedEof => {
                ProtoError::Malformed("message ends before the frame does".into())
            }
            other => ProtoError::Malformed(other.to_string()),
        })?;
    if !rest.is_empty() {
        return Err(ProtoError::TrailingBytes(rest.len()));
    }
    Ok(msg)
}

/// Writes one message frame and flushes.
pub async fn write_message<W, T>(w: &mut W, msg: &T) -> Result<(), ProtoError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    let frame = encode_frame(msg)?;
    w.write_all(&frame).await?;
    w.flush().await?;
    Ok(())
}

/// Reads one message frame, refusing oversize lengths before allocating.
pub async fn read_message<R, T>(r: &mut R) -> Result<T, ProtoError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut prefix = [0u8; 4];
    r.read_exact(&mut prefix)
        .await
        .map_err(|e| ProtoError::from_read(e, "frame length prefix"))?;
    let len = u32::from_be_bytes(prefix) as usize;
    if len > MAX_FRAME_LEN {
        return Err(ProtoError::Oversize {
            len,
            max: MAX_FRAME_LEN,
        });
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body)
        .await
        .map_err(|e| ProtoError::from_read(e, "frame body"))?;
    decode_body(&body)
}

/// Reads and checks the stream preface.
pub async fn read_preface<R: AsyncRead + Unpin>(r: &mut R) -> Result<(), ProtoError> {
    let mut got = [0u8; PREFACE.len()];
    r.read_exact(&mut got)
        .await
        .map_err(|e| ProtoError::from_read(e, "preface"))?;
    if got[..MAGIC.len()] != MAGIC {
        return Err(ProtoError::BadMagic);
    }
    let version = got[MAGIC.len()];
    if version != PROTOCOL_VERSION {
        return Err(ProtoError::UnsupportedVersion(version));
    }
    Ok(())
}

/// Reads the preface and the stream header: the start of every guest->host stream.
pub async fn read_stream_header<R: AsyncRead + Unpin>(
    r: &mut R,
) -> Result<StreamHeader, ProtoError> {
    read_preface(r).await?;
    read_message(r).await
}

/// Writes the preface and the stream header in one write.
pub async fn write_stream_header<W: AsyncWrite + Unpin>(
    w: &mut W,
    header: &StreamHeader,
) -> Result<(), ProtoError> {
    let mut buf = PREFACE.to_vec();
    buf.extend_from_slice(&encode_frame(header)?);
    w.write_all(&buf).await?;
    w.flush().await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::*;

    fn hello() -> AgentMessage {
        AgentMessage::Hello(AgentHello {
            protocol_version: PROTOCOL_VERSION,
            agent_version: "0.1.0".into(),
            boot_mode: BootMode::Exec,
        })
    }

    #[test]
    fn frame_round_trips() {
        let frame = encode_frame(&hello()).unwrap();
        let back: AgentMessage = decode_frame(&frame).unwrap();
        assert_eq!(back, hello());
    }

    #[test]
    fn trailing_bytes_after_frame_rejected() {
        let mut frame = encode_frame(&hello()).unwrap();
        frame.push(0);
        assert!(matches!(
            decode_frame::<AgentMessage>(&frame),
            Err(ProtoError::TrailingBytes(1))
        ));
    }

    #[test]
    fn trailing_bytes_inside_frame_rejected() {
        let header = StreamHeader {
            kind: StreamKind::Proxy,
        };
        let mut frame = encode_frame(&header).unwrap();
        frame.extend_from_slice(&[0, 0]);
        let len = (frame.len() - 4) as u32;
        frame[..4].copy_from_slice(&len.to_be_bytes());
        assert!(matches!(
            decode_frame::<StreamHeader>(&frame),
            Err(ProtoError::TrailingBytes(_))
        ));
    }

    #[test]
    fn oversize_length_rejected_before_allocation() {
        let mut frame = ((MAX_FRAME_LEN + 1) as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&[0; 8]);
        assert!(matches!(
            decode_frame::<AgentMessage>(&frame),
            Err(ProtoError::Oversize { .. })
        ));
    }

    #[test]
    fn truncated_frames_rejected() {
        let frame = encode_frame(&hello()).unwrap();
        assert!(matches!(
            decode_frame::<AgentMessage>(&frame[..2]),
            Err(ProtoError::Truncated(_))
        ));
        assert!(matches!(
            decode_frame::<AgentMessage>(&frame[..frame.len() - 1]),
            Err(ProtoError::Truncated(_))
        ));
    }

    #[test]
    fn unknown_stream_kind_is_malformed() {
        // Variant index 200 does not exist.
        let mut frame = 4u32.to_be_bytes().to_vec();
        frame.extend_from_slice(&200u32.to_be_bytes());
        assert!(matches!(
            decode_frame::<StreamHeader>(&frame),
            Err(ProtoError::Malformed(_))
        ));
    }

    #[tokio::test]
    async fn preface_checks_magic_and_version() {
        let mut bad = &b"HTTP/1.1 ..."[..];
        assert!(matches!(
            read_preface(&mut bad).await,
            Err(ProtoError::BadMagic)
        ));
        let mut p = PREFACE;
        p[6] = 9;
        assert!(matches!(
            read_preface(&mut &p[..]).await,
            Err(ProtoError::UnsupportedVersion(9))
        ));
        assert!(matches!(
            read_preface(&mut &PREFACE[..3]).await,
            Err(ProtoError::Truncated(_))
        ));
    }

    #[tokio::test]
    async fn stream_header_round_trips_over_io() {
        let (mut a, mut b) = tokio::io::duplex(64);
        let header = StreamHeader {
            kind: StreamKind::Control,
        };
        write_stream_header(&mut a, &header).await.unwrap();
        assert_eq!(read_stream_header(&mut b).await.unwrap(), header);
    }

    #[test]
    fn v1_stream_headers_keep_their_bytes() {
        // Agents already deployed send exactly these; appending kinds must not change them.
        let control = encode_frame(&StreamHeader {
            kind: StreamKind::Control,
        })
        .unwrap();
        assert_eq!(control, [0, 0, 0, 4, 0, 0, 0, 0]);
        let proxy = encode_frame(&StreamHeader {
            kind: StreamKind::Proxy,
        })
        .unwrap();
        assert_eq!(proxy, [0, 0, 0, 4, 0, 0, 0, 1]);
    }

    #[test]
    fn capture_kinds_round_trip() {
        use crate::{DnsQuestion, DnsRecordType, DnsReply, TcpReply, TcpTarget};
        for kind in [
            StreamKind::Tcp(TcpTarget {
                host: "api.example.com".into(),
                port: 443,
            }),
            StreamKind::Dns(DnsQuestion {
                name: "api.example.com".into(),
                record_type: DnsRecordType::Other(15),
            }),
        ] {
            let h = StreamHeader { kind };
            assert_eq!(
                decode_frame::<StreamHeader>(&encode_frame(&h).unwrap()).unwrap(),
                h
            );
        }
        let r = TcpReply::Refused {
            reason: "no".into(),
        };
        assert_eq!(
            decode_frame::<TcpReply>(&encode_frame(&r).unwrap()).unwrap(),
            r
        );
        let d = DnsReply::Allowed { ttl_secs: 5 };
        assert_eq!(
            decode_frame::<DnsReply>(&encode_frame(&d).unwrap()).unwrap(),
            d
        );
    }

    #[tokio::test]
    async fn read_message_refuses_oversize_length() {
        let mut data = &u32::MAX.to_be_bytes()[..];
        assert!(matches!(
            read_message::<_, AgentMessage>(&mut data).await,
            Err(ProtoError::Oversize { .. })
        ));
    }
}
