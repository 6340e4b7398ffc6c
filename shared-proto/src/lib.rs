//! Wire protocol between the Sluice guest agent and the host broker.
//!
//! Every guest->host vsock stream starts with a fixed [`PREFACE`] (magic + version), then one
//! length-prefixed header frame ([`StreamHeader`]) naming the stream's kind. What follows
//! depends on the kind:
//!
//! * [`StreamKind::Control`]: length-prefixed message frames ([`AgentMessage`] from the guest,
//!   [`BrokerMessage`] from the host), read and written with [`read_message`] /
//!   [`write_message`].
//! * [`StreamKind::Proxy`]: a byte tunnel carried in [`tunnel`] chunks. The chunking exists
//!   because some hybrid-vsock backends (vhost-device-vsock) do not propagate a half-close:
//!   end-of-stream is signalled in-band in both directions instead.
//! * [`StreamKind::Tcp`]: a guest connection the agent captured transparently, with its
//!   original destination; one [`TcpReply`] frame from the broker, then tunnel chunks.
//! * [`StreamKind::Dns`]: one name the guest looked up; one [`DnsReply`] frame back.
//!
//! The control conversation is versioned separately from the framing: see [`negotiate`].
//!
//! The encoding (bincode today) is private to this crate: callers only see typed messages and
//! typed [`ProtoError`]s, so it can change without touching the agent or broker.
#![forbid(unsafe_code)]

mod codec;
mod error;
mod messages;
pub mod negotiate;
pub mod relay;
pub mod tunnel;

pub use codec::{
    decode_frame, encode_frame, read_message, read_preface, read_stream_header, write_message,
    write_stream_header, MAX_FRAME_LEN, PREFACE,
};
pub use error::ProtoError;
pub use messages::*;
pub use tunnel::TunnelStream;

/// Framing version carried in the preface (and the v1 control protocol). The framing is
/// frozen; the control conversation negotiates up to [`negotiate::MAX_PROTOCOL_VERSION`].
pub const PROTOCOL_VERSION: u8 = 1;

/// Magic bytes that open every stream.
pub const MAGIC: [u8; 6] = *b"SLUICE";

/// Well-known vsock port the broker listens on (hybrid vsock: `<socket>_7070`).
pub const DEFAULT_VSOCK_PORT: u32 = 7070;

/// The host's vsock CID as seen from a guest.
pub const HOST_CID: u32 = 2;
