//! The guest's DNS, decided by the broker.
//!
//! Every question the guest asks (over the loopback resolver in /etc/resolv.conf, or to any
//! server address through the capture interface) is sent to the broker as its own
//! `Dns` stream. A name the VM's policy can reach is answered with a synthetic address (see
//! [`crate::capture::fake_ip`]) so the following TCP connection reaches the broker with the
//! name; any other name gets NXDOMAIN. No question ever goes to a real resolver from here:
//! the broker alone resolves, and only names its policy allows.

use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shared_proto::{DnsQuestion, DnsRecordType, DnsReply, StreamHeader, StreamKind};
use simple_dns::rdata::{RData, A, AAAA};
use simple_dns::{Name, Packet, PacketFlag, ResourceRecord, CLASS, OPCODE, QTYPE, RCODE, TYPE};
use tracing::{debug, warn};

use crate::capture::fake_ip::FakeIpPool;
use crate::dns_cache::ExpiringCache;
use crate::endpoint::Endpoint;

/// How long the agent reuses a broker decision for a name (the broker may shorten it).
const MAX_CACHE: Duration = Duration::from_secs(30);
/// TTL of the synthetic answers handed to guest resolvers.
const ANSWER_TTL: u32 = 60;
/// Names whose decision the agent keeps at most (see [`ExpiringCache`] for eviction).
const CACHE_CAPACITY: usize = 10_000;
/// Upper bound on one broker round trip for a question.
const BROKER_TIMEOUT: Duration = Duration::from_secs(10);

/// The broker's verdict on a name, as the agent caches it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Decision {
    Allowed,
    Denied,
}

/// Answers DNS messages and owns the name <-> synthetic address table.
#[derive(Debug)]
pub struct Resolver {
    broker: Arc<Endpoint>,
    pool: Mutex<FakeIpPool>,
    cache: Mutex<ExpiringCache<String, Decision>>,
}

impl Resolver {
    pub fn new(broker: Arc<Endpoint>) -> Resolver {
        Resolver {
            broker,
            pool: Mutex::new(FakeIpPool::default()),
            cache: Mutex::new(ExpiringCache::new(CACHE_CAPACITY)),
        }
    }

    /// The name a synthetic address stands for (`None` for real addresses).
    pub fn name_of(&self, addr: IpAddr) -> Option<String> {
        self.pool.lock().ok()?.name_of(addr).map(str::to_owned)
    }

    /// Answers one DNS message; `None` when it is not a parsable query (dropped, like a
    /// server would).
    pub async fn answer(&self, query: &[u8]) -> Option<Vec<u8>> {
        let packet = Packet::parse(query).ok()?;
        if packet.has_flags(PacketFlag::RESPONSE) {
            return None;
        }
        let mut reply = Packet::new_reply(packet.id());
        reply.set_flags(PacketFlag::RECURSION_AVAILABLE);
        if packet.has_flags(PacketFlag::RECURSION_DESIRED) {
            reply.set_flags(PacketFlag::RECURSION_DESIRED);
        }
        let question = match (packet.opcode(), packet.questions.as_slice()) {
            (OPCODE::StandardQuery, [q]) => q.clone(),
            (OPCODE::StandardQuery, _) => return rcode_only(reply, RCODE::FormatError),
            _ => return rcode_only(reply, RCODE::NotImplemented),
        };
        reply.questions.push(question.clone());
        let name = question
            .qname
            .to_string()
            .trim_end_matches('.')
            .to_ascii_lowercase();
        let record_type = match question.qtype {
            QTYPE::TYPE(TYPE::A) => DnsRecordType::A,
            QTYPE::TYPE(TYPE::AAAA) => DnsRecordType::Aaaa,
            other => DnsRecordType::Other(u16::from(other)),
        };
        if name.is_empty() {
            return rcode_only(reply, RCODE::Refused);
        }
        let decision = match self.decide(&name, record_type).await {
            Some(d) => d,
            None => return rcode_only(reply, RCODE::ServerFailure),
        };
        if decision == Decision::Denied {
            *reply.rcode_mut() = RCODE::NameError;
            return reply.build_bytes_vec().ok();
        }
        let rdata = {
            let mut pool = self.pool.lock().ok()?;
            match record_type {
                DnsRecordType::A => Some(RData::A(A {
                    address: u32::from(pool.v4_for(&name)),
                })),
                DnsRecordType::Aaaa => Some(RData::AAAA(AAAA {
                    address: u128::from(pool.v6_for(&name)),
                })),
                DnsRecordType::Other(_) => None,
            }
        };
        if let Some(rdata) = rdata {
            let owner = Name::new_unchecked(&name);
            reply
                .answers
                .push(ResourceRecord::new(owner, CLASS::IN, ANSWER_TTL, rdata));
        }
        reply.build_bytes_vec().ok()
    }

    /// The cached decision for `name`, or the broker's; `None` when the broker cannot be
    /// asked (the guest gets SERVFAIL and may retry).
    async fn decide(&self, name: &str, record_type: DnsRecordType) -> Option<Decision> {
        if let Some(d) = self.cache.lock().ok()?.get(name, Instant::now()) {
            return Some(d);
        }
        let question = DnsQuestion {
            name: name.to_owned(),
            record_type,
        };
        let reply = match tokio::time::timeout(BROKER_TIMEOUT, ask(&self.broker, question)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => {
                warn!("DNS {name}: asking the broker: {e}");
                return None;
            }
            Err(_) => {
                warn!("DNS {name}: the broker did not answer in time");
                return None;
            }
        };
        let (decision, ttl) = match reply {
            DnsReply::Allowed { ttl_secs } => (Decision::Allowed, ttl_secs),
            DnsReply::Denied { reason } => {
                debug!("DNS {name}: NXDOMAIN: {reason}");
                (Decision::Denied, MAX_CACHE.as_secs() as u32)
            }
        };
        let keep = Duration::from_secs(u64::from(ttl)).min(MAX_CACHE);
        if let Ok(mut cache) = self.cache.lock() {
            let now = Instant::now();
            cache.insert(name.to_owned(), decision, now + keep, now);
        }
        Some(decision)
    }
}

fn rcode_only(mut reply: Packet<'_>, rcode: RCODE) -> Option<Vec<u8>> {
    *reply.rcode_mut() = rcode;
    reply.build_bytes_vec().ok()
}

/// One `Dns` stream: header with the question, one reply frame back.
async fn ask(
    broker: &Endpoint,
    question: DnsQuestion,
) -> Result<DnsReply, shared_proto::ProtoError> {
    let mut stream = broker.connect().await?;
    let header = StreamHeader {
        kind: StreamKind::Dns(question),
    };
    shared_proto::write_stream_header(&mut stream, &header).await?;
    shared_proto::read_message(&mut stream).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn query(name: &str, qtype: TYPE) -> Vec<u8> {
        let mut q = Packet::new_query(0x1234);
        q.set_flags(PacketFlag::RECURSION_DESIRED);
        q.questions.push(simple_dns::Question::new(
            Name::new_unchecked(name),
            QTYPE::TYPE(qtype),
            simple_dns::QCLASS::CLASS(CLASS::IN),
            false,
        ));
        q.build_bytes_vec().unwrap()
    }

    fn resolver_with(decisions: &[(&str, Decision)]) -> Resolver {
        // An endpoint nobody listens on: any uncached question would be a SERVFAIL.
        let r = Resolver::new(Arc::new(Endpoint::Unix("/nonexistent/broker.sock".into())));
        let until = Instant::now() + Duration::from_secs(60);
        for (n, d) in decisions {
            r.cache
                .lock()
                .unwrap()
                .insert((*n).to_owned(), *d, until, Instant::now());
        }
        r
    }

    #[tokio::test]
    async fn allowed_names_get_synthetic_addresses_denied_ones_nxdomain() {
        let r = resolver_with(&[
            ("api.example.com", Decision::Allowed),
            ("denied.example.com", Decision::Denied),
        ]);
        let a = r.answer(&query("API.example.com", TYPE::A)).await.unwrap();
        let a = Packet::parse(&a).unwrap();
        assert_eq!(a.id(), 0x1234);
        assert_eq!(a.rcode(), RCODE::NoError);
        let RData::A(A { address }) = a.answers[0].rdata else {
            panic!("{a:?}")
        };
        let ip = IpAddr::from(std::net::Ipv4Addr::from(address));
        assert_eq!(r.name_of(ip).as_deref(), Some("api.example.com"));

        let aaaa = r
            .answer(&query("api.example.com", TYPE::AAAA))
            .await
            .unwrap();
        let aaaa = Packet::parse(&aaaa).unwrap();
        assert!(matches!(aaaa.answers[0].rdata, RData::AAAA(_)));

        let nx = r
            .answer(&query("denied.example.com", TYPE::A))
            .await
            .unwrap();
        let nx = Packet::parse(&nx).unwrap();
        assert_eq!(nx.rcode(), RCODE::NameError);
        assert!(nx.answers.is_empty());

        let mx = r.answer(&query("api.example.com", TYPE::MX)).await.unwrap();
        let mx = Packet::parse(&mx).unwrap();
        assert_eq!(mx.rcode(), RCODE::NoError);
        assert!(mx.answers.is_empty(), "no data for other types");
    }

    #[tokio::test]
    async fn unreachable_broker_is_servfail_and_garbage_is_dropped() {
        let r = resolver_with(&[]);
        let fail = r.answer(&query("x.example.com", TYPE::A)).await.unwrap();
        assert_eq!(Packet::parse(&fail).unwrap().rcode(), RCODE::ServerFailure);
        assert!(r.answer(b"\x00\x01garbage").await.is_none());
    }
}
