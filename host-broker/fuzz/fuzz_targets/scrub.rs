//! Response scrubbing: one credential whose real value is inserted, in one of the forms the
//! broker scrubs (raw, base64 with and without padding, URL-safe base64, percent-encoded),
//! at a fuzzer-chosen offset into arbitrary bytes. After scrubbing, no form of the real value
//! may survive:
//!
//! * in a body fed to `Scrubber::push` in fuzzer-chosen chunks (plus `finish`), and the
//!   chunked output must equal a one-shot scrub of the same bytes (chunk boundaries change
//!   nothing), with never more than `window()` bytes held back;
//! * in a response header value or name (`CredentialSet::scrub_response_headers`), also
//!   inside a `Basic` payload.
//!
//! The value is chosen so that no form of it overlaps any placeholder form (checked at
//! start-up), so a surviving form can only be a scrubbing miss, not an artefact of the
//! replacement text. Input layout: `[form, offset (u16 BE), n_cuts, cut deltas (u16 BE) x
//! n_cuts, body...]`.
#![no_main]

use std::sync::OnceLock;

use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE_NO_PAD};
use base64::Engine;
use host_broker::policy::Policy;
use host_broker::secrets::{CredentialSet, MapEnv};
use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;

const VALUE: &str = "sk/hlkUvNGBeu3YV4IedU7O";
const PLACEHOLDER: &str = "mock-FUZZ_KEY";

fn percent_encode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    for &b in s {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

/// The forms of `s` the broker scrubs (secrets/set.rs `forms`).
fn forms(s: &[u8]) -> Vec<Vec<u8>> {
    vec![
        s.to_vec(),
        STANDARD.encode(s).into_bytes(),
        STANDARD_NO_PAD.encode(s).into_bytes(),
        URL_SAFE_NO_PAD.encode(s).into_bytes(),
        percent_encode(s),
    ]
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// No form of the value overlaps (prefix/suffix or substring) any form of the placeholder.
fn overlap_free(values: &[Vec<u8>], placeholders: &[Vec<u8>]) -> bool {
    values.iter().all(|p| {
        placeholders.iter().all(|r| {
            !contains(p, r)
                && !contains(r, p)
                && (1..=p.len().min(r.len()))
                    .all(|k| p[p.len() - k..] != r[..k] && r[r.len() - k..] != p[..k])
        })
    })
}

struct Setup {
    set: CredentialSet,
    forms: Vec<Vec<u8>>,
}

fn setup() -> &'static Setup {
    static SETUP: OnceLock<Setup> = OnceLock::new();
    SETUP.get_or_init(|| {
        let forms = forms(VALUE.as_bytes());
        let ph = self::forms(PLACEHOLDER.as_bytes());
        let lower =
            |v: &[Vec<u8>]| -> Vec<Vec<u8>> { v.iter().map(|f| f.to_ascii_lowercase()).collect() };
        assert!(
            overlap_free(&forms, &ph),
            "harness: VALUE overlaps the placeholder"
        );
        assert!(
            overlap_free(&lower(&forms), &lower(&ph)),
            "harness: overlap (any case)"
        );
        let policy = Policy::from_json_str(&format!(
            r#"{{"credentials": {{"FUZZ_KEY": {{"source": {{"env": "FUZZ_KEY"}},
                "hosts": ["api.example.com"], "placeholder": "{PLACEHOLDER}"}}}}}}"#
        ))
        .expect("harness policy");
        let set = CredentialSet::load(&policy, &MapEnv::from_pairs([("FUZZ_KEY", VALUE)]))
            .expect("harness credential set");
        Setup { set, forms }
    })
}

fn assert_scrubbed(what: &str, out: &[u8], forms: &[Vec<u8>]) {
    for f in forms {
        assert!(
            !contains(out, f),
            "{what}: a form of the real value survived scrubbing: {:?}",
            String::from_utf8_lossy(out)
        );
    }
}

fuzz_target!(|data: &[u8]| {
    let s = setup();
    let [form, o1, o2, n_cuts, rest @ ..] = data else {
        return;
    };
    let n_cuts = (*n_cuts as usize % 64).min(rest.len() / 2);
    let (cut_bytes, body) = rest.split_at(n_cuts * 2);
    let form = &s.forms[*form as usize % s.forms.len()];
    let at = u16::from_be_bytes([*o1, *o2]) as usize % (body.len() + 1);
    let mut input = body[..at].to_vec();
    input.extend_from_slice(form);
    input.extend_from_slice(&body[at..]);

    // Body, in chunks.
    let mut sc = s.set.scrubber();
    let mut chunked = Vec::new();
    let mut last = 0;
    for c in cut_bytes.chunks_exact(2) {
        let end = (last + u16::from_be_bytes([c[0], c[1]]) as usize).min(input.len());
        chunked.extend(sc.push(&input[last..end]));
        assert!(
            sc.pending_len() <= sc.window(),
            "held back more than the window"
        );
        last = end;
    }
    chunked.extend(sc.push(&input[last..]));
    assert!(
        sc.pending_len() <= sc.window(),
        "held back more than the window"
    );
    chunked.extend(sc.finish());
    assert_eq!(sc.pending_len(), 0);
    assert!(sc.replaced() > 0, "the inserted value was not replaced");
    assert_scrubbed("body", &chunked, &s.forms);

    let mut one = s.set.scrubber();
    let mut whole = one.push(&input);
    whole.extend(one.finish());
    assert!(
        chunked == whole,
        "chunk boundaries changed the scrubbed body"
    );

    // Response headers: the bytes as a value, inside a Basic payload, and as a name.
    let mut h = HeaderMap::new();
    if let Ok(v) = HeaderValue::from_bytes(&input) {
        h.append("x-echo", v);
    }
    let basic = format!("Basic {}", STANDARD.encode(&input));
    h.append(
        "authorization",
        HeaderValue::from_str(&basic).expect("base64 is a valid value"),
    );
    if let Ok(n) = HeaderName::from_bytes(&input) {
        h.append(n, HeaderValue::from_static("x"));
    }
    s.set.scrub_response_headers(&mut h);
    let lower_forms: Vec<Vec<u8>> = s.forms.iter().map(|f| f.to_ascii_lowercase()).collect();
    for (name, value) in &h {
        assert_scrubbed("header name", name.as_str().as_bytes(), &lower_forms);
        assert_scrubbed("header value", value.as_bytes(), &s.forms[..1]);
        if let Some(b64) = value.as_bytes().strip_prefix(b"Basic ") {
            if let Ok(inner) = STANDARD.decode(b64) {
                assert_scrubbed("Basic payload", &inner, &s.forms);
            }
        }
    }
});
