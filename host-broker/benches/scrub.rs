//! `cargo bench -p host-broker --bench scrub`: the response scrubber alone on incompressible
//! 64 KiB chunks (the bulk-download case), with 1 and 100 credentials (cost should stay
//! flat), next to a plain copy of the same bytes.

mod support;

use std::time::Instant;

use host_broker::policy::Policy;
use host_broker::secrets::{CredentialSet, MapEnv};

const TOTAL: usize = 256 << 20;
const CHUNK: usize = 64 << 10;

fn set_with(n: usize) -> CredentialSet {
    let names: Vec<String> = (0..n).map(|i| format!("KEY_{i}")).collect();
    let creds: Vec<String> = names
        .iter()
        .map(|k| format!(r#""{k}": {{"source": {{"env": "{k}"}}, "hosts": ["api.test"]}}"#))
        .collect();
    let policy = Policy::from_json_str(&format!(
        r#"{{"egress": {{"default": "deny"}}, "credentials": {{{}}}}}"#,
        creds.join(",")
    ))
    .unwrap();
    let values: Vec<String> = (0..n)
        .map(|i| format!("sk-live-{i:04}-0123456789abcdefghij"))
        .collect();
    let env = MapEnv::from_pairs(
        names
            .iter()
            .map(String::as_str)
            .zip(values.iter().map(String::as_str)),
    );
    CredentialSet::load(&policy, &env).unwrap()
}

fn main() {
    println!("host-broker scrub bench: {}", support::machine_load());
    let block = support::random_block();
    let chunks: Vec<&[u8]> = block.chunks(CHUNK).collect();
    let start = Instant::now();
    let mut sink = 0usize;
    for i in 0..TOTAL / CHUNK {
        sink += std::hint::black_box(chunks[i % chunks.len()].to_vec()).len();
    }
    let copy = TOTAL as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64();
    println!("  {:<28} {:>10.0} MiB/s", "copy (to_vec)", copy);
    for n in [1, 100] {
        let set = set_with(n);
        let mut s = set.scrubber();
        let start = Instant::now();
        for i in 0..TOTAL / CHUNK {
            sink += s.push(chunks[i % chunks.len()]).len();
        }
        sink += s.finish().len();
        let mib = TOTAL as f64 / (1 << 20) as f64 / start.elapsed().as_secs_f64();
        println!(
            "  {:<28} {:>10.0} MiB/s",
            format!("scrub, {n} credential(s)"),
            mib
        );
    }
    assert!(sink > 0);
}
