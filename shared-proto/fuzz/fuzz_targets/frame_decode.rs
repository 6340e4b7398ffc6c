//! Frame decoding on arbitrary bytes: `decode_frame` for every message type must return a
//! typed error instead of panicking, and whatever decodes must round-trip (decode -> encode
//! -> decode gives the same value; for types without maps the re-encoding is byte-identical,
//! i.e. the encoding is canonical). The async `read_message` / `read_stream_header` paths
//! must agree with `decode_frame` on the same bytes.
#![no_main]

use std::fmt::Debug;
use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use serde::{de::DeserializeOwned, Serialize};
use shared_proto::{
    decode_frame, encode_frame, read_message, read_stream_header, AgentMessage, BrokerMessage,
    DnsReply, StreamHeader, TcpReply, PREFACE,
};

/// Polls a future that never waits (its reader is an in-memory slice) to completion.
fn run<F: Future>(f: F) -> F::Output {
    let mut f = pin!(f);
    let mut cx = Context::from_waker(Waker::noop());
    for _ in 0..1_000 {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
    }
    panic!("reading from an in-memory slice did not complete");
}

fn check<T>(data: &[u8], canonical: bool)
where
    T: Serialize + DeserializeOwned + PartialEq + Debug,
{
    let decoded = decode_frame::<T>(data);
    // The async reader takes one frame off the front and leaves the rest: when the whole
    // input is one valid frame, it must decode the same value.
    let mut rest = data;
    let read = run(read_message::<_, T>(&mut rest));
    if let Ok(v) = &decoded {
        match &read {
            Ok(r) => assert_eq!(r, v, "read_message disagrees with decode_frame"),
            Err(e) => panic!("decode_frame accepted what read_message refused: {e}"),
        }
        assert!(rest.is_empty());
        let enc = encode_frame(v).expect("a decoded message must encode");
        let back: T = decode_frame(&enc).expect("an encoded message must decode");
        assert_eq!(&back, v, "round trip changed the value");
        if canonical {
            assert_eq!(enc, data, "re-encoding differs from the accepted bytes");
        }
    } else if let Ok(r) = read {
        // read_message may accept a prefix when more bytes follow the frame; never more.
        let consumed = data.len() - rest.len();
        assert!(
            consumed < data.len(),
            "read_message accepted exactly the bytes decode_frame refused: {r:?}"
        );
        let again: T = decode_frame(&data[..consumed]).expect("the frame read_message took");
        assert_eq!(again, r);
    }
}

fuzz_target!(|data: &[u8]| {
    check::<StreamHeader>(data, true);
    check::<AgentMessage>(data, true);
    // GuestConfig holds a BTreeMap: duplicate or unsorted keys decode but re-encode
    // differently, so only the value has to round-trip.
    check::<BrokerMessage>(data, false);
    check::<TcpReply>(data, true);
    check::<DnsReply>(data, true);

    // The start of every guest->host stream: preface + header frame.
    let mut with_preface = PREFACE.to_vec();
    with_preface.extend_from_slice(data);
    let mut rest = &with_preface[..];
    if let Ok(h) = run(read_stream_header(&mut rest)) {
        let consumed = with_preface.len() - rest.len();
        let again: StreamHeader = decode_frame(&with_preface[PREFACE.len()..consumed])
            .expect("the header frame read_stream_header took");
        assert_eq!(again, h);
    }
});
