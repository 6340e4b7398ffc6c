//! Property tests: every message survives encode/decode, and arbitrary bytes never panic.

use proptest::prelude::*;
use shared_proto::*;

fn boot_mode() -> impl Strategy<Value = BootMode> {
    prop_oneof![
        Just(BootMode::Exec),
        Just(BootMode::Systemd),
        Just(BootMode::ProxyOnly)
    ]
}

fn agent_message() -> impl Strategy<Value = AgentMessage> {
    prop_oneof![
        (any::<u8>(), ".{0,40}", boot_mode()).prop_map(|(v, s, m)| AgentMessage::Hello(
            AgentHello {
                protocol_version: v,
                agent_version: s,
                boot_mode: m
            }
        )),
        (any::<Option<i32>>(), any::<Option<i32>>())
            .prop_map(|(code, signal)| AgentMessage::WorkloadExited(WorkloadExit { code, signal })),
        ".{0,80}".prop_map(|reason| AgentMessage::Failed { reason }),
    ]
}

fn guest_config() -> impl Strategy<Value = GuestConfig> {
    (
        ".{0,20}",
        prop::collection::vec(".{0,200}", 0..3),
        prop::collection::btree_map("[A-Z_]{1,12}", ".{0,30}", 0..6),
        any::<u16>(),
        prop::collection::vec("[a-z.]{1,20}", 0..3),
    )
        .prop_map(
            |(vm_id, ca_certs_pem, env, proxy_port, no_proxy)| GuestConfig {
                vm_id,
                ca_certs_pem,
                env,
                proxy_port,
                no_proxy,
            },
        )
}

proptest! {
    #[test]
    fn agent_messages_round_trip(msg in agent_message()) {
        let frame = encode_frame(&msg).unwrap();
        prop_assert_eq!(decode_frame::<AgentMessage>(&frame).unwrap(), msg);
    }

    #[test]
    fn broker_messages_round_trip(cfg in guest_config(), reason in ".{0,50}") {
        let negotiated = BrokerMessage::Negotiated(NegotiatedConfig { protocol_version: 2, config_json: reason.clone() });
        for msg in [BrokerMessage::Config(cfg.clone()), BrokerMessage::Refused { reason: reason.clone() }, BrokerMessage::Ack, negotiated] {
            let frame = encode_frame(&msg).unwrap();
            prop_assert_eq!(decode_frame::<BrokerMessage>(&frame).unwrap(), msg);
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = decode_frame::<AgentMessage>(&bytes);
        let _ = decode_frame::<BrokerMessage>(&bytes);
        let _ = decode_frame::<StreamHeader>(&bytes);
    }

    #[test]
    fn tunnel_carries_any_bytes(data in prop::collection::vec(any::<u8>(), 0..300_000)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let got = rt.block_on(async {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            let (a, b) = tokio::io::duplex(4096);
            let sent = data.clone();
            let w = tokio::spawn(async move {
                let mut a = TunnelStream::new(a);
                a.write_all(&sent).await.unwrap();
                a.shutdown().await.unwrap();
                a
            });
            let mut b = TunnelStream::new(b);
            let mut got = Vec::new();
            b.read_to_end(&mut got).await.unwrap();
            drop(w.await.unwrap());
            got
        });
        prop_assert_eq!(got, data);
    }
}
