//! Policy parsing and validation on arbitrary UTF-8: `Policy::from_json_str` and
//! `Policy::from_toml_str` must return a typed error instead of panicking, and a policy that
//! validates must be usable: the name/address/DNS checks, the summary, and loading its inline
//! credentials into a `CredentialSet` (automata, scrubber) must not panic either.
#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use host_broker::policy::{summarize, Policy, SecretSource};
use host_broker::secrets::{CredentialSet, MapEnv};
use libfuzzer_sys::fuzz_target;

const HOSTS: &[&str] = &[
    "api.openai.com",
    "API.OpenAI.com.",
    "x.internal.example.com",
    "localhost",
    "10.20.1.2",
    "[::1]",
    "169.254.169.254",
    "",
    ".",
    "*.github.com",
];

fn exercise(p: &Policy) {
    let _ = summarize(p);
    let _ = (p.body_budget(), p.connection_limit(), p.body_limit());
    let addrs = [
        IpAddr::V4(Ipv4Addr::new(10, 20, 1, 2)),
        IpAddr::V4(Ipv4Addr::new(93, 184, 216, 34)),
        IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(Ipv6Addr::LOCALHOST),
        IpAddr::V6("fd00::1".parse().unwrap()),
    ];
    for host in HOSTS {
        for port in [443, 5432, 0] {
            let _ = p.check_name(host, port);
        }
        let _ = p.check_dns_name(host);
        for ip in addrs {
            let _ = p.check_addr(host, SocketAddr::new(ip, 443));
        }
    }
    // Never touch the file system from a fuzzer (a `file` source could name /dev/zero).
    if p.credentials
        .values()
        .any(|c| matches!(c.source, SecretSource::File(_)))
    {
        return;
    }
    let env = MapEnv::from_pairs([("OPENAI_API_KEY", "sk-fuzz-0123456789")]);
    if let Ok(set) = CredentialSet::load(p, &env) {
        let _ = set.guest_env();
        for host in HOSTS {
            let _ = set.applies_to_host(host);
        }
        let mut sc = set.scrubber();
        let mut out = sc.push(b"sk-fuzz-0123456789 and mock-OPENAI_API_KEY");
        out.extend(sc.finish());
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    for parsed in [Policy::from_json_str(s), Policy::from_toml_str(s)] {
        match parsed {
            Ok(p) => exercise(&p),
            Err(e) => drop(e.to_string()),
        }
    }
});
