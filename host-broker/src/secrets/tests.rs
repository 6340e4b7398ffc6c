//! Tests of loading, gated substitution, violations and scrubbing.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use http::{HeaderMap, HeaderValue};
use proptest::prelude::*;

use super::*;
use crate::policy::Policy;

const CANARY: &str = "sk-canary-9d2f7b1e4a";
const OTHER: &str = "ghp-canary-0c8e6a2d5b";

fn policy(extra: &str) -> Policy {
    Policy::from_json_str(&format!(
        r#"{{"credentials": {{
            "OPENAI_API_KEY": {{"source": {{"env": "OPENAI_API_KEY"}},
                                "hosts": ["api.openai.com"] {extra}}},
            "GH_TOKEN": {{"source": {{"env": "GH"}}, "hosts": ["*.github.com"],
                          "on_violation": "log"}}
        }}}}"#
    ))
    .unwrap()
}

fn env() -> MapEnv {
    MapEnv::from_pairs([("OPENAI_API_KEY", CANARY), ("GH", OTHER)])
}

fn set(extra: &str) -> CredentialSet {
    CredentialSet::load(&policy(extra), &env()).unwrap()
}

fn ok_ctx(host: &str) -> GateContext<'_> {
    GateContext {
        target_host: host,
        tls_verified: true,
        authority_matches: true,
        dialed_by_name: true,
        request: None,
    }
}

fn hm(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn all_text(h: &HeaderMap) -> String {
    h.iter()
        .map(|(k, v)| format!("{k}: {}\n", String::from_utf8_lossy(v.as_bytes())))
        .collect()
}

#[test]
fn substitutes_at_allowed_host() {
    let s = set("");
    let mut h = hm(&[
        ("authorization", "Bearer mock-OPENAI_API_KEY"),
        ("x-other", "plain"),
    ]);
    let v = s.apply_request_headers(&mut h, &ok_ctx("api.openai.com"));
    match v {
        Verdict::Forward {
            substituted,
            logged_violations,
        } => {
            assert_eq!(substituted, vec!["OPENAI_API_KEY".to_string()]);
            assert!(logged_violations.is_empty());
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h["authorization"], format!("Bearer {CANARY}").as_str());
    assert!(h["authorization"].is_sensitive());
    assert_eq!(h["x-other"], "plain");
    assert_eq!(
        s.guest_env().get("OPENAI_API_KEY").map(String::as_str),
        Some("mock-OPENAI_API_KEY")
    );
}

#[test]
fn every_gate_failing_alone_blocks() {
    let s = set("");
    let base = ok_ctx("api.openai.com");
    let cases = [
        (
            GateContext {
                tls_verified: false,
                ..base
            },
            "tls_verified",
        ),
        (
            GateContext {
                authority_matches: false,
                ..base
            },
            "authority",
        ),
        (
            GateContext {
                target_host: "evil.example.com",
                ..base
            },
            "hosts",
        ),
        (
            GateContext {
                dialed_by_name: false,
                ..base
            },
            "dialed_by_name",
        ),
    ];
    for (ctx, gate) in cases {
        let mut h = hm(&[("authorization", "Bearer mock-OPENAI_API_KEY")]);
        let before = h.clone();
        match s.apply_request_headers(&mut h, &ctx) {
            Verdict::Block { reason, violations } => {
                assert_eq!(violations.len(), 1);
                assert_eq!(violations[0].gate, gate);
                assert_eq!(violations[0].credential, "OPENAI_API_KEY");
                assert!(reason.starts_with(&format!(
                    "credential OPENAI_API_KEY may not be sent to {}",
                    ctx.target_host
                )));
                assert!(!reason.contains(CANARY));
            }
            other => panic!("gate {gate}: {other:?}"),
        }
        assert_eq!(h, before, "a blocked request is not modified");
    }
    let mut h = hm(&[("authorization", "Bearer mock-OPENAI_API_KEY")]);
    let Verdict::Block { reason, .. } =
        s.apply_request_headers(&mut h, &ok_ctx("evil.example.com"))
    else {
        panic!()
    };
    assert_eq!(
        reason,
        "credential OPENAI_API_KEY may not be sent to evil.example.com (not in its hosts)"
    );
}

#[test]
fn log_mode_forwards_unchanged() {
    let s = set("");
    let mut h = hm(&[("x-token", "mock-GH_TOKEN")]);
    match s.apply_request_headers(&mut h, &ok_ctx("api.openai.com")) {
        Verdict::Forward {
            substituted,
            logged_violations,
        } => {
            assert!(substituted.is_empty());
            assert_eq!(
                logged_violations,
                vec![Violation {
                    credential: "GH_TOKEN".into(),
                    gate: "hosts".into()
                }]
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h["x-token"], "mock-GH_TOKEN");
    // Both present: the allowed one is substituted, the logged one stays.
    let mut h = hm(&[
        ("x-token", "mock-GH_TOKEN"),
        ("authorization", "Bearer mock-OPENAI_API_KEY"),
    ]);
    let v = s.apply_request_headers(&mut h, &ok_ctx("api.openai.com"));
    assert!(matches!(v, Verdict::Forward { ref substituted, .. } if substituted.len() == 1));
    assert_eq!(h["x-token"], "mock-GH_TOKEN");
    assert_eq!(h["authorization"], format!("Bearer {CANARY}").as_str());
}

#[test]
fn wildcard_credential_hosts() {
    let s = set("");
    for (host, ok) in [
        ("api.github.com", true),
        ("a.b.github.com", true),
        ("github.com", false),
        ("evil-github.com", false),
        ("github.com.evil.net", false),
    ] {
        let mut h = hm(&[("x-token", "mock-GH_TOKEN")]);
        let v = s.apply_request_headers(&mut h, &ok_ctx(host));
        let got = matches!(&v, Verdict::Forward { substituted, .. } if substituted.len() == 1);
        assert_eq!(got, ok, "{host}: {v:?}");
    }
}

#[test]
fn basic_auth_round_trip() {
    let s = set("");
    let enc = STANDARD.encode("user:mock-OPENAI_API_KEY");
    let mut h = hm(&[("authorization", &format!("Basic {enc}"))]);
    let v = s.apply_request_headers(&mut h, &ok_ctx("api.openai.com"));
    assert!(matches!(v, Verdict::Forward { ref substituted, .. } if substituted.len() == 1));
    let got = h["authorization"].to_str().unwrap();
    let payload = STANDARD
        .decode(got.strip_prefix("Basic ").unwrap())
        .unwrap();
    assert_eq!(payload, format!("user:{CANARY}").as_bytes());
    // Scrubbing the echo gives the placeholder back.
    let mut resp = hm(&[("x-echo-auth", got)]);
    assert_eq!(s.scrub_response_headers(&mut resp), 1);
    let back = resp["x-echo-auth"].to_str().unwrap();
    let payload = STANDARD
        .decode(back.strip_prefix("Basic ").unwrap())
        .unwrap();
    assert_eq!(payload, b"user:mock-OPENAI_API_KEY");
    // Toward a wrong host the Basic-hidden placeholder is a violation.
    let mut h = hm(&[("authorization", &format!("Basic {enc}"))]);
    assert!(matches!(
        s.apply_request_headers(&mut h, &ok_ctx("evil.example.com")),
        Verdict::Block { .. }
    ));
}

#[test]
fn encoded_placeholders_are_violations() {
    let s = set("");
    for v in [
        "mock%2DOPENAI_API_KEY",
        "%6d%6f%63%6b-OPENAI_API_KEY",
        "mock%252DOPENAI_API_KEY",
        r#"{"k":"mock\u002dOPENAI_API_KEY"}"#,
        r#"mock\u002DOPENAI\u005fAPI_KEY"#,
        &STANDARD.encode("mock-OPENAI_API_KEY"),
    ] {
        let mut h = hm(&[("x-data", v)]);
        assert!(
            matches!(
                s.apply_request_headers(&mut h, &ok_ctx("evil.example.com")),
                Verdict::Block { .. }
            ),
            "{v}"
        );
    }
}

#[test]
fn plaintext_never_substitutes() {
    let s = set("");
    let mut h = hm(&[("authorization", "Bearer mock-OPENAI_API_KEY")]);
    match s.check_plaintext_headers(&h, &ok_ctx("api.openai.com")) {
        Verdict::Block { violations, .. } => assert_eq!(violations[0].gate, "plaintext"),
        other => panic!("{other:?}"),
    }
    assert!(!all_text(&h).contains(CANARY));
    let v = s.check_plaintext_headers(&hm(&[("x", "mock-GH_TOKEN")]), &ok_ctx("api.github.com"));
    assert!(
        matches!(v, Verdict::Forward { ref logged_violations, .. } if logged_violations.len() == 1)
    );
    let v = s.check_plaintext_headers(&hm(&[("x", "nothing")]), &ok_ctx("api.github.com"));
    assert!(
        matches!(v, Verdict::Forward { ref logged_violations, ref substituted } if logged_violations.is_empty() && substituted.is_empty())
    );
    h.clear();
}

#[test]
fn inject_semantics() {
    let s = set(r#", "inject": [{"header": "Authorization", "format": "Bearer ${value}"}]"#);
    // Absent header: injected at the allowed host.
    let mut h = HeaderMap::new();
    let v = s.apply_request_headers(&mut h, &ok_ctx("api.openai.com"));
    assert!(
        matches!(v, Verdict::Forward { ref substituted, .. } if substituted == &["OPENAI_API_KEY"])
    );
    assert_eq!(h["authorization"], format!("Bearer {CANARY}").as_str());
    // Header holding the bare placeholder: replaced by the formatted value.
    let mut h = hm(&[("authorization", "mock-OPENAI_API_KEY")]);
    s.apply_request_headers(&mut h, &ok_ctx("api.openai.com"));
    assert_eq!(h["authorization"], format!("Bearer {CANARY}").as_str());
    // Guest's own unrelated value is left alone.
    let mut h = hm(&[("authorization", "Bearer guest-own")]);
    s.apply_request_headers(&mut h, &ok_ctx("api.openai.com"));
    assert_eq!(h["authorization"], "Bearer guest-own");
    // Never injected where a gate fails.
    for ctx in [
        ok_ctx("evil.example.com"),
        GateContext {
            tls_verified: false,
            ..ok_ctx("api.openai.com")
        },
        GateContext {
            dialed_by_name: false,
            ..ok_ctx("api.openai.com")
        },
    ] {
        let mut h = HeaderMap::new();
        let v = s.apply_request_headers(&mut h, &ctx);
        assert!(h.is_empty(), "{ctx:?}");
        assert!(matches!(v, Verdict::Forward { ref substituted, .. } if substituted.is_empty()));
    }
}

#[test]
fn headers_location_opt_out() {
    let s = set(r#", "in": ["body"]"#);
    let mut h = hm(&[("authorization", "Bearer mock-OPENAI_API_KEY")]);
    let v = s.apply_request_headers(&mut h, &ok_ctx("api.openai.com"));
    assert!(matches!(v, Verdict::Forward { ref substituted, .. } if substituted.is_empty()));
    assert_eq!(h["authorization"], "Bearer mock-OPENAI_API_KEY");
}

#[test]
fn scrubs_response_headers() {
    let s = set("");
    let mut h = hm(&[
        ("x-echo", &format!("key={CANARY}; other={OTHER}")),
        ("x-b64", &STANDARD.encode(CANARY)),
        ("x-clean", "nothing here"),
    ]);
    assert_eq!(s.scrub_response_headers(&mut h), 3);
    let t = all_text(&h);
    assert!(!t.contains(CANARY) && !t.contains(OTHER), "{t}");
    assert!(!t.contains(&STANDARD.encode(CANARY)));
    assert_eq!(h["x-echo"], "key=mock-OPENAI_API_KEY; other=mock-GH_TOKEN");
    assert_eq!(h["x-b64"], STANDARD.encode("mock-OPENAI_API_KEY").as_str());
    assert_eq!(h["x-clean"], "nothing here");
}

#[test]
fn load_errors_name_credential_and_source_never_value() {
    let p = policy("");
    let e = CredentialSet::load(&p, &MapEnv::from_pairs([("GH", OTHER)])).unwrap_err();
    assert_eq!(
        e.to_string(),
        "credential OPENAI_API_KEY: environment variable OPENAI_API_KEY is not set (source.env)"
    );
    let p = Policy::from_json_str(
        r#"{"credentials": {"F": {"source": {"file": "/nonexistent/sluice-f"}, "hosts": ["*"]}}}"#,
    )
    .unwrap();
    let e = CredentialSet::load(&p, &env()).unwrap_err().to_string();
    assert!(
        e.starts_with("credential F: cannot read /nonexistent/sluice-f (source.file)"),
        "{e}"
    );
    let bad = MapEnv::from_pairs([("OPENAI_API_KEY", "sk-canary\r\nX-Evil: 1"), ("GH", OTHER)]);
    let e = CredentialSet::load(&policy(""), &bad)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("control characters") && !e.contains("canary"),
        "{e}"
    );
    let empty = MapEnv::from_pairs([("OPENAI_API_KEY", ""), ("GH", OTHER)]);
    let e = CredentialSet::load(&policy(""), &empty)
        .unwrap_err()
        .to_string();
    assert!(e.contains("is empty"), "{e}");
}

#[test]
fn file_sources_trim_one_newline_and_use_credentials_directory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tok"), format!("{CANARY}\n")).unwrap();
    std::fs::write(dir.path().join("tok2"), format!("{OTHER}\r\n")).unwrap();
    std::fs::write(dir.path().join("tok3"), format!("{OTHER}\n\n")).unwrap();
    let p = Policy::from_json_str(
        r#"{"credentials": {
            "A": {"source": {"file": "tok"}, "hosts": ["a.test"]},
            "B": {"source": {"file": "tok2"}, "hosts": ["b.test"]}}}"#,
    )
    .unwrap();
    let e = MapEnv::from_pairs([("CREDENTIALS_DIRECTORY", dir.path().to_str().unwrap())]);
    let s = CredentialSet::load(&p, &e).unwrap();
    let mut h = hm(&[("x", "mock-A")]);
    s.apply_request_headers(&mut h, &ok_ctx("a.test"));
    assert_eq!(h["x"], CANARY);
    let mut h = hm(&[("x", "mock-B")]);
    s.apply_request_headers(&mut h, &ok_ctx("b.test"));
    assert_eq!(h["x"], OTHER);
    // Only one newline trimmed: the second stays, and is rejected as a control char.
    let p2 = Policy::from_json_str(
        r#"{"credentials": {"B": {"source": {"file": "tok3"}, "hosts": ["b.test"]}}}"#,
    )
    .unwrap();
    let err = CredentialSet::load(&p2, &e).unwrap_err().to_string();
    assert!(
        err.contains("control characters") && !err.contains("canary"),
        "{err}"
    );
}

#[test]
fn canary_never_in_debug_output() {
    let s = set(r#", "inject": [{"header": "Authorization", "format": "Bearer ${value}"}]"#);
    let dbg = format!("{s:?} {:?}", s.scrubber());
    assert!(!dbg.contains(CANARY) && !dbg.contains("canary"), "{dbg}");
    let mut h = hm(&[("authorization", "Bearer mock-OPENAI_API_KEY")]);
    let v = s.apply_request_headers(&mut h, &ok_ctx("api.openai.com"));
    assert!(!format!("{v:?}").contains(CANARY));
    // http marks the header sensitive, so HeaderMap's Debug redacts it too.
    assert!(!format!("{h:?}").contains(CANARY), "{h:?}");
    let mut h = hm(&[("authorization", "Bearer mock-OPENAI_API_KEY")]);
    let v = s.apply_request_headers(&mut h, &ok_ctx("evil.example.com"));
    assert!(!format!("{v:?}").contains(CANARY));
}

#[test]
fn one_automaton_for_1_or_100_credentials() {
    let make = |n: usize| {
        let creds: Vec<String> = (0..n)
            .map(|i| format!(r#""K{i}": {{"source": {{"env": "V{i}"}}, "hosts": ["h{i}.test"]}}"#))
            .collect();
        let p = Policy::from_json_str(&format!(r#"{{"credentials": {{{}}}}}"#, creds.join(",")))
            .unwrap();
        let vals: Vec<(String, String)> = (0..n)
            .map(|i| (format!("V{i}"), format!("value-{i:04}-canary")))
            .collect();
        let env = MapEnv(vals.into_iter().collect());
        CredentialSet::load(&p, &env).unwrap()
    };
    let one = make(1);
    let hundred = make(100);
    // Every placeholder form of every credential lives in the single automaton.
    assert_eq!(one.placeholder_pattern_count(), 3);
    assert_eq!(hundred.placeholder_pattern_count(), 300);
    // One pass finds the right credential among 100 (the last one, and one in the middle).
    for i in [99usize, 42] {
        let mut h = hm(&[("x", &format!("a mock-K{i} b"))]);
        let host = format!("h{i}.test");
        match hundred.apply_request_headers(&mut h, &ok_ctx(&host)) {
            Verdict::Forward { substituted, .. } => assert_eq!(substituted, vec![format!("K{i}")]),
            other => panic!("{other:?}"),
        }
        assert_eq!(h["x"], format!("a value-{i:04}-canary b").as_str());
    }
    // mock-K1 vs mock-K10..K19: leftmost-longest picks the full placeholder.
    let mut h = hm(&[("x", "mock-K10")]);
    match hundred.apply_request_headers(&mut h, &ok_ctx("h10.test")) {
        Verdict::Forward { substituted, .. } => assert_eq!(substituted, vec!["K10".to_string()]),
        other => panic!("{other:?}"),
    }
}

fn scrub_chunked(s: &CredentialSet, data: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut sc = s.scrubber();
    let mut out = Vec::new();
    let mut last = 0;
    for &c in cuts {
        let c = c.min(data.len()).max(last);
        out.extend(sc.push(&data[last..c]));
        assert!(sc.pending_len() <= sc.window());
        last = c;
    }
    out.extend(sc.push(&data[last..]));
    out.extend(sc.finish());
    out
}

/// Issue 11: a value echoed inside a JSON string with some characters escaped (`\u002d`
/// for `-`, upper-case hex, every character, `\u0059` in a base64 form) is replaced in bodies at every split point and in header values, by the
/// placeholder in the same form. Failed before the JSON view (the value went through).
#[test]
fn json_escaped_echoes_are_scrubbed_in_bodies_and_headers() {
    let s = set("");
    let every: String = CANARY
        .chars()
        .map(|c| format!("\\u{:04X}", c as u32))
        .collect();
    let echoes = [
        CANARY.replace('-', "\\u002d"),
        CANARY.replace('-', "\\u002D"),
        every,
        STANDARD
            .encode(OTHER)
            .replace('Y', "\\u0059")
            .replace('/', "\\/"),
    ];
    let data = format!(
        "{{\"a\":\"{}\",\"b\":\"{}\",\"c\":\"{}\",\"d\":\"{}\"}}",
        echoes[0], echoes[1], echoes[2], echoes[3]
    );
    let (whole, n) = s.scrub_bytes(data.as_bytes());
    let text = String::from_utf8(whole.clone()).unwrap();
    assert_eq!(n, 4, "{text}");
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    for k in ["a", "b", "c"] {
        assert_eq!(v[k], "mock-OPENAI_API_KEY", "{k}: {text}");
    }
    assert_eq!(v["d"], STANDARD.encode("mock-GH_TOKEN").as_str());
    for split in 0..data.len() {
        assert_eq!(
            scrub_chunked(&s, data.as_bytes(), &[split]),
            whole,
            "split {split}"
        );
    }
    let byte_by_byte: Vec<usize> = (0..data.len()).collect();
    assert_eq!(scrub_chunked(&s, data.as_bytes(), &byte_by_byte), whole);
    let mut h = hm(&[("x-echo", &format!("{{\"k\":\"{}\"}}", echoes[0]))]);
    assert_eq!(s.scrub_response_headers(&mut h), 1);
    assert_eq!(h["x-echo"], "{\"k\":\"mock-OPENAI_API_KEY\"}");
}

/// A percent-encoded echo with lower-case hex digits (`%2f`) is replaced like the
/// upper-case one (`%2F`). Failed before: only `percent_encode`'s upper-case form was a
/// pattern.
#[test]
fn lower_case_percent_echo_is_scrubbed() {
    let p = Policy::from_json_str(
        r#"{"credentials": {"K": {"source": {"env": "K"}, "hosts": ["a.test"]}}}"#,
    )
    .unwrap();
    let s = CredentialSet::load(&p, &MapEnv::from_pairs([("K", "real/Se+cret=0123")])).unwrap();
    let (out, n) = s.scrub_bytes(b"a=real%2fSe%2bcret%3d0123&b=real%2FSe%2Bcret%3D0123");
    assert_eq!(n, 2);
    assert_eq!(out, b"a=mock-K&b=mock-K");
}

#[test]
fn scrubber_handles_split_values() {
    let s = set("");
    let data = format!("head {CANARY} mid {OTHER} {} tail", STANDARD.encode(CANARY));
    let whole = s.scrub_bytes(data.as_bytes()).0;
    let text = String::from_utf8(whole.clone()).unwrap();
    assert!(!text.contains(CANARY) && !text.contains(OTHER), "{text}");
    for split in 0..data.len() {
        assert_eq!(
            scrub_chunked(&s, data.as_bytes(), &[split]),
            whole,
            "split at {split}"
        );
    }
    let byte_by_byte: Vec<usize> = (0..data.len()).collect();
    assert_eq!(scrub_chunked(&s, data.as_bytes(), &byte_by_byte), whole);
}

proptest! {
    #[test]
    fn scrubber_chunking_is_invisible(
        parts in proptest::collection::vec(
            prop_oneof![
                Just(CANARY.as_bytes().to_vec()),
                Just(OTHER.as_bytes().to_vec()),
                Just(CANARY.as_bytes()[..5].to_vec()),
                Just(STANDARD.encode(OTHER).into_bytes()),
                proptest::collection::vec(any::<u8>(), 0..20),
            ],
            0..12,
        ),
        cuts in proptest::collection::vec(0usize..400, 0..10),
    ) {
        let s = set("");
        let data: Vec<u8> = parts.concat();
        let mut cuts = cuts;
        cuts.sort_unstable();
        let whole = s.scrub_bytes(&data).0;
        prop_assert_eq!(scrub_chunked(&s, &data, &cuts), whole.clone());
        let w = whole.windows(CANARY.len()).any(|w| w == CANARY.as_bytes());
        prop_assert!(!w);
    }
}

#[test]
fn request_target_violations() {
    let s = set("");
    let t = b"/v1/x?key=mock%2DOPENAI_API_KEY";
    assert_eq!(s.placeholders_in(t), vec!["OPENAI_API_KEY".to_string()]);
    assert!(matches!(
        s.check_request_target(t, &ok_ctx("evil.example.com"), false),
        Verdict::Block { .. }
    ));
    assert!(matches!(
        s.check_request_target(t, &ok_ctx("api.openai.com"), true),
        Verdict::Block { .. }
    ));
    assert!(matches!(
        s.check_request_target(t, &ok_ctx("api.openai.com"), false),
        Verdict::Forward { ref substituted, ref logged_violations }
            if substituted.is_empty() && logged_violations.is_empty()
    ));
    assert!(s.placeholders_in(b"/v1/clean").is_empty());
}

#[test]
fn duplicate_header_values_are_all_handled() {
    let s = set(r#", "inject": [{"header": "Authorization", "format": "Bearer ${value}"}]"#);
    let mut h = hm(&[("x-k", "clean"), ("x-k", "mock-OPENAI_API_KEY")]);
    s.apply_request_headers(&mut h, &ok_ctx("api.openai.com"));
    let all: Vec<_> = h.get_all("x-k").iter().collect();
    assert_eq!(all, vec!["clean", CANARY]);
    // Second value hides the placeholder toward a wrong host: still blocked.
    let mut h = hm(&[("x-k", "clean"), ("x-k", "mock-OPENAI_API_KEY")]);
    assert!(matches!(
        s.apply_request_headers(&mut h, &ok_ctx("evil.example.com")),
        Verdict::Block { .. }
    ));
    // Inject with a Basic payload: substituted in place, scheme kept.
    let enc = STANDARD.encode("u:mock-OPENAI_API_KEY");
    let mut h = hm(&[("authorization", &format!("Basic {enc}"))]);
    s.apply_request_headers(&mut h, &ok_ctx("api.openai.com"));
    let v = h["authorization"].to_str().unwrap();
    assert_eq!(
        STANDARD.decode(v.strip_prefix("Basic ").unwrap()).unwrap(),
        format!("u:{CANARY}").as_bytes()
    );
}

#[test]
fn ip_literal_target_never_gets_a_credential_even_with_star_hosts() {
    let p = Policy::from_json_str(
        r#"{"credentials": {"ANY": {"source": {"env": "A"}, "hosts": ["*"]}}}"#,
    )
    .unwrap();
    let s = CredentialSet::load(&p, &MapEnv::from_pairs([("A", CANARY)])).unwrap();
    for host in ["10.0.0.1", "[::1]", "::1"] {
        // Even if the caller wrongly claims the target was dialed by name.
        let mut h = hm(&[("x", "mock-ANY")]);
        match s.apply_request_headers(&mut h, &ok_ctx(host)) {
            Verdict::Block { violations, .. } => assert_eq!(violations[0].gate, "dialed_by_name"),
            other => panic!("{host}: {other:?}"),
        }
    }
    let mut h = hm(&[("x", "mock-ANY")]);
    assert!(matches!(
        s.apply_request_headers(&mut h, &ok_ctx("any.example")),
        Verdict::Forward { .. }
    ));
    assert_eq!(h["x"], CANARY);
}

/// Prints figures; not a timed assertion. Run with
/// `cargo test -p host-broker --release --lib bench_substitution -- --ignored --nocapture`.
#[test]
#[ignore]
fn bench_substitution_1_vs_100_credentials() {
    use std::time::Instant;
    let make = |n: usize| {
        let creds: Vec<String> = (0..n)
            .map(|i| format!(r#""K{i}": {{"source": {{"env": "V{i}"}}, "hosts": ["api.test"]}}"#))
            .collect();
        let p = Policy::from_json_str(&format!(r#"{{"credentials": {{{}}}}}"#, creds.join(",")))
            .unwrap();
        let env = MapEnv(
            (0..n)
                .map(|i| (format!("V{i}"), format!("sk-live-{i:04}-abcdefghijklmnop")))
                .collect(),
        );
        CredentialSet::load(&p, &env).unwrap()
    };
    // A JSON-ish response body (what scrubbing sees in practice).
    let text: &[u8] = b"{\"id\": \"chatcmpl-8x\", \"object\": \"chat.completion\", \
                        \"content\": \"Hello there, how may I help you today?\"}\n";
    let body: Vec<u8> = (0..1 << 20).map(|i| text[i % text.len()]).collect();
    for n in [1usize, 100] {
        let s = make(n);
        let iters = 100_000;
        let t = Instant::now();
        for _ in 0..iters {
            let mut h = hm(&[
                ("authorization", "Bearer mock-K0"),
                ("user-agent", "python-requests/2.31"),
                ("accept", "application/json"),
                ("content-type", "application/json"),
            ]);
            let v = s.apply_request_headers(&mut h, &ok_ctx("api.test"));
            assert!(matches!(v, Verdict::Forward { .. }));
        }
        let per = t.elapsed().as_secs_f64() / iters as f64;
        let mut sc = s.scrubber();
        let t = Instant::now();
        let mut out = 0;
        for chunk in body.chunks(16 * 1024) {
            out += sc.push(chunk).len();
        }
        out += sc.finish().len();
        let mbps = body.len() as f64 / t.elapsed().as_secs_f64() / 1e6;
        assert_eq!(out, body.len());
        println!(
            "credentials={n:>3}: apply_request_headers {:.2} us/request (4 headers), \
             body scrub {mbps:.0} MB/s",
            per * 1e6
        );
    }
}

#[test]
fn scrubs_response_header_names_in_any_case_and_drops_what_cannot_be_renamed() {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let s = set("");
    let mut h = HeaderMap::new();
    let name = |n: &str| http::HeaderName::from_bytes(n.as_bytes()).unwrap();
    // HeaderName lowercases: the guest would get the value in lower case.
    h.append(
        name(&CANARY.to_ascii_uppercase()),
        HeaderValue::from_static("a"),
    );
    h.append(name(&format!("x-{CANARY}")), HeaderValue::from_static("b"));
    h.append(name(&format!("x-{CANARY}")), HeaderValue::from_static("c"));
    h.append(
        name(&URL_SAFE_NO_PAD.encode(OTHER)),
        HeaderValue::from_static("d"),
    );
    h.append("x-clean", HeaderValue::from_static("e"));
    assert_eq!(s.scrub_response_headers(&mut h), 3); // one per distinct name
    let names: Vec<String> = h.keys().map(|n| n.as_str().to_owned()).collect();
    for n in &names {
        assert!(!n.contains(CANARY) && !n.contains(OTHER), "{n}");
        assert!(!n.contains(&URL_SAFE_NO_PAD.encode(OTHER).to_ascii_lowercase()));
    }
    assert_eq!(h["mock-openai_api_key"], "a");
    let x: Vec<_> = h.get_all("x-mock-openai_api_key").iter().collect();
    assert_eq!(x, ["b", "c"]);
    // The base64 name's placeholder form is padded base64 (`=`): no valid name, dropped.
    assert_eq!(names.len(), 3, "{names:?}");
    assert_eq!(h["x-clean"], "e");

    // A placeholder that is no valid header name: the header goes, values included.
    let s = set(r#", "placeholder": "ph/OPENAI{key}""#);
    let mut h = HeaderMap::new();
    h.append(name(&format!("x-{CANARY}")), HeaderValue::from_static("b"));
    h.append("x-clean", HeaderValue::from_static("e"));
    assert_eq!(s.scrub_response_headers(&mut h), 1);
    assert_eq!(h.len(), 1);
    assert_eq!(h["x-clean"], "e");
}

/// A GitHub-like credential bound per host entry: GET under /repos/acme/ on 443, plus git's
/// smart-HTTP paths on another host; `on_violation` as given.
fn bound_set(on_violation: &str) -> CredentialSet {
    let p = Policy::from_json_str(&format!(
        r#"{{"credentials": {{"GH": {{"source": {{"env": "GH"}},
            "hosts": [
              {{"host": "api.github.com", "ports": [443], "methods": ["GET", "HEAD"],
                "paths": ["/repos/acme/**"]}},
              {{"host": "github.com", "paths": ["/acme/*/info/refs", "/acme/*/git-upload-pack"]}}
            ],
            "inject": [{{"header": "Authorization", "format": "token ${{value}}"}}],
            "on_violation": "{on_violation}"}}}}}}"#
    ))
    .unwrap();
    p.validate().unwrap();
    CredentialSet::load(&p, &env()).unwrap()
}

fn req_ctx<'a>(host: &'a str, port: u16, method: &'a str, path: &'a str) -> GateContext<'a> {
    GateContext {
        request: Some(crate::policy::RequestScope { port, method, path }),
        ..ok_ctx(host)
    }
}

#[test]
fn binding_admits_matching_requests_only() {
    let s = bound_set("block");
    let inside = [
        (
            "api.github.com",
            443,
            "GET",
            "/repos/acme/widgets/issues?page=2",
        ),
        ("api.github.com", 443, "HEAD", "/repos/acme/x"),
        ("github.com", 443, "GET", "/acme/widgets.git/info/refs"),
        (
            "github.com",
            8443,
            "POST",
            "/acme/widgets.git/git-upload-pack",
        ),
    ];
    for (host, port, method, path) in inside {
        let mut h = hm(&[("authorization", "token mock-GH")]);
        let v = s.apply_request_headers(&mut h, &req_ctx(host, port, method, path));
        assert!(
            matches!(&v, Verdict::Forward { substituted, .. } if substituted == &["GH"]),
            "{host}:{port} {method} {path}: {v:?}"
        );
        assert_eq!(h["authorization"], format!("token {OTHER}").as_str());
    }
    let outside = [
        ("api.github.com", 443, "DELETE", "/repos/acme/widgets"),
        ("api.github.com", 8443, "GET", "/repos/acme/widgets"),
        ("api.github.com", 443, "GET", "/repos/evil/widgets"),
        ("api.github.com", 443, "GET", "/repos/acme/../../user/keys"),
        ("api.github.com", 443, "GET", "/repos/acmeco/x"),
        (
            "github.com",
            443,
            "GET",
            "/acme/widgets.git/git-receive-pack",
        ),
    ];
    for (host, port, method, path) in outside {
        let mut h = hm(&[("authorization", "token mock-GH")]);
        let before = h.clone();
        match s.apply_request_headers(&mut h, &req_ctx(host, port, method, path)) {
            Verdict::Block { reason, violations } => {
                assert_eq!(violations[0].gate, "binding", "{reason}");
                assert!(
                    reason.contains(&format!("{method} ")) && reason.contains("bindings"),
                    "{reason}"
                );
                assert!(!reason.contains(OTHER));
                assert!(!reason.contains("page="), "never the query: {reason}");
            }
            other => panic!("{host}:{port} {method} {path}: {other:?}"),
        }
        assert_eq!(h, before, "blocked requests are untouched");
    }
    // A host no entry names is still the `hosts` gate.
    let mut h = hm(&[("authorization", "token mock-GH")]);
    match s.apply_request_headers(&mut h, &req_ctx("evil.test", 443, "GET", "/repos/acme/x")) {
        Verdict::Block { violations, .. } => assert_eq!(violations[0].gate, "hosts"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn binding_gates_inject_query_body_and_absent_request_facts() {
    let s = bound_set("block");
    // No placeholder: inject only inside the binding.
    let mut h = HeaderMap::new();
    s.apply_request_headers(
        &mut h,
        &req_ctx("api.github.com", 443, "GET", "/repos/acme/x"),
    );
    assert_eq!(h["authorization"], format!("token {OTHER}").as_str());
    let mut h = HeaderMap::new();
    let v = s.apply_request_headers(
        &mut h,
        &req_ctx("api.github.com", 443, "POST", "/repos/acme/x"),
    );
    assert!(matches!(v, Verdict::Forward { ref substituted, .. } if substituted.is_empty()));
    assert!(
        h.get("authorization").is_none(),
        "never injected outside the binding"
    );
    // Query and body are judged the same way.
    let ctx = req_ctx("api.github.com", 443, "GET", "/repos/evil/x");
    let (v, _) = s.apply_request_target("/repos/evil/x?t=mock-GH", &ctx, false);
    assert!(matches!(v, Verdict::Block { ref violations, .. } if violations[0].gate == "binding"));
    let (v, _) = s.apply_body(b"{\"t\": \"mock-GH\"}", &ctx, false);
    assert!(matches!(v, Verdict::Block { ref violations, .. } if violations[0].gate == "binding"));
    // No request facts at hand: a scoped entry never admits (fails closed).
    let mut h = hm(&[("authorization", "token mock-GH")]);
    let v = s.apply_request_headers(&mut h, &ok_ctx("api.github.com"));
    assert!(matches!(v, Verdict::Block { ref violations, .. } if violations[0].gate == "binding"));
}

#[test]
fn binding_violation_with_log_forwards_unchanged() {
    let s = bound_set("log");
    let mut h = hm(&[("authorization", "token mock-GH")]);
    match s.apply_request_headers(
        &mut h,
        &req_ctx("api.github.com", 443, "PUT", "/repos/acme/x"),
    ) {
        Verdict::Forward {
            substituted,
            logged_violations,
        } => {
            assert!(substituted.is_empty());
            assert_eq!(logged_violations[0].gate, "binding");
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(h["authorization"], "token mock-GH");
}

#[test]
fn entries_are_alternatives_for_the_same_host() {
    let p = Policy::from_json_str(
        r#"{"credentials": {"GH": {"source": {"env": "GH"}, "hosts": [
            {"host": "api.example.com", "methods": ["GET"]},
            {"host": "*.example.com", "methods": ["POST"], "paths": ["/upload"]}
        ]}}}"#,
    )
    .unwrap();
    let s = CredentialSet::load(&p, &env()).unwrap();
    for (method, path, ok) in [
        ("GET", "/anything", true),
        ("POST", "/upload", true),
        ("POST", "/other", false),
        ("PUT", "/upload", false),
    ] {
        let mut h = hm(&[("authorization", "mock-GH")]);
        let v = s.apply_request_headers(&mut h, &req_ctx("api.example.com", 443, method, path));
        assert_eq!(
            matches!(v, Verdict::Forward { .. }),
            ok,
            "{method} {path}: {v:?}"
        );
    }
}

/// Decodes every base64-alphabet run of `text` bit by bit (any trailing bits, either
/// alphabet), so a value that survives scrubbing shows up whatever its alignment.
fn lenient_base64_decode(text: &[u8]) -> Vec<u8> {
    let val = |c: u8| -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        } as u32)
    };
    let (mut out, mut acc, mut bits) = (Vec::new(), 0u32, 0u32);
    for &c in text {
        match val(c) {
            Some(v) => {
                acc = (acc << 6) | v;
                bits += 6;
                if bits >= 8 {
                    bits -= 8;
                    out.push((acc >> bits) as u8);
                    acc &= (1 << bits) - 1;
                }
            }
            None => {
                (acc, bits) = (0, 0);
                out.push(b' ');
            }
        }
    }
    out
}

/// An upstream echoing a Basic payload the broker built (`base64("user:" + value)`,
/// httpbin-style `/headers`) in a response body: the value sits at an offset inside the
/// base64 token. Failed before: only `base64(value)` at alignment 0 was a pattern, and
/// threat-model row 96 was open.
#[test]
fn base64_of_the_value_at_any_offset_is_scrubbed_from_bodies() {
    use base64::engine::general_purpose::{STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    let s = set("");
    for prefix in ["", "u", "us", "user:", "ab:", "x", "longer-user-name:"] {
        for suffix in ["", "\n", "!x"] {
            let payload = format!("{prefix}{CANARY}{suffix}");
            for (engine_name, token) in [
                ("standard", STANDARD.encode(&payload)),
                ("standard no pad", STANDARD_NO_PAD.encode(&payload)),
                ("url-safe", URL_SAFE.encode(&payload)),
                ("url-safe no pad", URL_SAFE_NO_PAD.encode(&payload)),
            ] {
                let body = format!(r#"{{"headers": {{"Authorization": "Basic {token}"}}}}"#);
                let whole = s.scrub_bytes(body.as_bytes()).0;
                let decoded = lenient_base64_decode(&whole);
                assert!(
                    !decoded
                        .windows(CANARY.len())
                        .any(|w| w == CANARY.as_bytes()),
                    "{engine_name}, prefix {prefix:?}, suffix {suffix:?}: the value survived"
                );
                let cuts: Vec<usize> = (0..body.len()).collect();
                assert_eq!(scrub_chunked(&s, body.as_bytes(), &cuts), whole);
            }
        }
    }
}
