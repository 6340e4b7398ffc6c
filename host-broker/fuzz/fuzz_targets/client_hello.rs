//! The ClientHello peek on arbitrary bytes (read through a tokio current-thread runtime, once
//! from a slice and once one byte per read): `read_client_hello` must not panic, must return
//! exactly the bytes it consumed (they are replayed to the upstream on pass-through), must
//! give the same answer however the bytes arrive, and when rustls itself accepts the hello
//! with a server name, the SNI the broker decides on must be that name.
#![no_main]

use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};

use host_broker::tls::client_hello::{parse_sni, read_client_hello, Peeked};
use libfuzzer_sys::fuzz_target;
use tokio::io::{AsyncRead, ReadBuf};

fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("runtime")
    })
}

/// Hands out one byte per read.
struct Trickle<'a>(&'a [u8]);

impl AsyncRead for Trickle<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some((&b, rest)) = self.0.split_first() {
            if buf.remaining() > 0 {
                buf.put_slice(&[b]);
                self.0 = rest;
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// What rustls's own server-side parser makes of the first record(s): the SNI, if it
/// accepts the ClientHello.
fn rustls_sni(data: &[u8]) -> Option<Option<String>> {
    let mut acc = rustls::server::Acceptor::default();
    let mut rd = data;
    while !rd.is_empty() {
        match acc.read_tls(&mut rd) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    match acc.accept() {
        Ok(Some(accepted)) => Some(accepted.client_hello().server_name().map(str::to_owned)),
        _ => None,
    }
}

fuzz_target!(|data: &[u8]| {
    let mut slice = data;
    let got = rt().block_on(read_client_hello(&mut slice));
    let mut trickle = Trickle(data);
    let got2 = rt().block_on(read_client_hello(&mut trickle));
    match (&got, &got2) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "result depends on how the bytes arrive"),
        (Err(a), Err(b)) => assert_eq!(a.kind(), b.kind()),
        _ => panic!("result depends on how the bytes arrive: {got:?} vs {got2:?}"),
    }
    match got {
        Ok((peeked, bytes)) => {
            assert!(
                data.starts_with(&bytes),
                "returned bytes are not the input's prefix"
            );
            assert_eq!(
                slice.len(),
                data.len() - bytes.len(),
                "bytes consumed but not returned for replay"
            );
            assert_eq!(trickle.0.len(), slice.len());
            if let Peeked::Tls { sni } = &peeked {
                assert_eq!(parse_sni(&bytes[5..]).as_ref(), Some(sni));
                if let Some(Some(name)) = rustls_sni(&bytes) {
                    let want = name.trim_end_matches('.').to_ascii_lowercase();
                    assert_eq!(
                        sni.as_deref(),
                        Some(want.as_str()),
                        "broker and rustls see different server names"
                    );
                }
            }
        }
        Err(e) => assert_eq!(e.kind(), io::ErrorKind::UnexpectedEof, "{e}"),
    }
    let _ = parse_sni(data);
});
