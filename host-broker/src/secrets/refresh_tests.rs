//! Refreshing sources with a real rotating file and a real command, the grace after a
//! failed refresh, and retired values in the scrubber.

use std::time::{Duration, Instant};

use http::{HeaderMap, HeaderValue};

use super::*;
use crate::policy::Policy;

const OLD: &str = "sk-rotating-OLD-4b1d9e";
const NEW: &str = "sk-rotating-NEW-8c2a7f";

fn ctx(host: &str) -> GateContext<'_> {
    GateContext {
        target_host: host,
        tls_verified: true,
        authority_matches: true,
        dialed_by_name: true,
        request: None,
    }
}

fn set_for(source_json: &str, extra: &str) -> CredentialSet {
    let p = Policy::from_json_str(&format!(
        r#"{{"credentials": {{"K": {{"source": {source_json}, "hosts": ["api.test"] {extra}}}}}}}"#
    ))
    .unwrap();
    p.validate().unwrap();
    CredentialSet::load(&p, &MapEnv::default()).unwrap()
}

/// What the upstream receives for `Authorization: Bearer mock-K` (or the block gate).
fn sent(s: &CredentialSet) -> Result<String, String> {
    let mut h = HeaderMap::new();
    h.insert("authorization", HeaderValue::from_static("Bearer mock-K"));
    match s.apply_request_headers(&mut h, &ctx("api.test")) {
        Verdict::Forward { .. } => Ok(h["authorization"].to_str().unwrap().to_owned()),
        Verdict::Block { violations, reason } => {
            assert!(!reason.contains(OLD) && !reason.contains(NEW));
            Err(format!("{}: {reason}", violations[0].gate))
        }
    }
}

fn scrubbed(s: &CredentialSet, text: &str) -> String {
    String::from_utf8(s.scrub_bytes(text.as_bytes()).0).unwrap()
}

/// Kubernetes-style rotation: `token -> ..data/token`, `..data -> ..v1`; a new version is a
/// new directory and an atomic rename of the `..data` symlink.
fn k8s_rotate(dir: &std::path::Path, version: &str, value: &str) {
    let v = dir.join(version);
    std::fs::create_dir(&v).unwrap();
    std::fs::write(v.join("token"), format!("{value}\n")).unwrap();
    let tmp = dir.join("..data_tmp");
    std::os::unix::fs::symlink(version, &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("..data")).unwrap();
}

#[test]
fn rotated_file_is_picked_up_and_the_previous_value_stays_scrubbed_for_its_grace() {
    let dir = tempfile::tempdir().unwrap();
    k8s_rotate(dir.path(), "..v1", OLD);
    std::os::unix::fs::symlink("..data/token", dir.path().join("token")).unwrap();
    let path = dir.path().join("token");
    let s = set_for(
        &format!(r#"{{"file": {:?}}}"#, path.to_str().unwrap()),
        r#", "scrub_retired_secs": 60"#,
    );
    assert_eq!(sent(&s).unwrap(), format!("Bearer {OLD}"));
    let t0 = Instant::now();
    assert!(s.refresh(t0).set.is_none(), "nothing changed: no new set");

    k8s_rotate(dir.path(), "..v2", NEW);
    let out = s.refresh(t0 + Duration::from_secs(1));
    assert!(out.failed.is_empty());
    let s2 = out.set.expect("a rotated file gives a new set");
    assert_eq!(sent(&s2).unwrap(), format!("Bearer {NEW}"));
    // The upstream echoing the previous value (issue 11): still scrubbed.
    assert_eq!(
        scrubbed(&s2, &format!("old {OLD} new {NEW}")),
        "old mock-K new mock-K"
    );
    assert_eq!(s2.retired_count(), 1);
    assert!(s2.refresh(t0 + Duration::from_secs(2)).set.is_none());
    // After scrub_retired_secs the retired value is dropped.
    let s3 = s2
        .refresh(t0 + Duration::from_secs(62))
        .set
        .expect("expiry rebuilds the set");
    assert_eq!(s3.retired_count(), 0);
    assert_eq!(scrubbed(&s3, OLD), OLD);

    // In-place rewrite (same inode) and plain atomic rename are both seen.
    let plain = dir.path().join("plain");
    std::fs::write(&plain, OLD).unwrap();
    let p = set_for(&format!(r#"{{"file": {:?}}}"#, plain.to_str().unwrap()), "");
    std::fs::write(dir.path().join("plain.new"), NEW).unwrap();
    std::fs::rename(dir.path().join("plain.new"), &plain).unwrap();
    let p = p.refresh(t0).set.unwrap();
    assert_eq!(sent(&p).unwrap(), format!("Bearer {NEW}"));
    std::fs::write(&plain, format!("{OLD}-v3")).unwrap();
    let p = p.refresh(t0).set.unwrap();
    assert_eq!(sent(&p).unwrap(), format!("Bearer {OLD}-v3"));
}

#[test]
fn failed_refresh_keeps_the_last_good_value_for_the_grace_then_refuses() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("token");
    std::fs::write(&path, OLD).unwrap();
    let s = set_for(
        &format!(r#"{{"file": {:?}}}"#, path.to_str().unwrap()),
        r#", "refresh_grace_secs": 30"#,
    );
    let t0 = Instant::now();
    std::fs::remove_file(&path).unwrap();
    let out = s.refresh(t0);
    assert_eq!(out.failed, vec!["K".to_owned()]);
    let s = out.set.unwrap();
    assert_eq!(
        sent(&s).unwrap(),
        format!("Bearer {OLD}"),
        "last good value"
    );
    assert!(s.health()[0].stale && !s.health()[0].unavailable);
    // Still failing, within the grace.
    let s = s.refresh(t0 + Duration::from_secs(29)).set.unwrap();
    assert!(sent(&s).is_ok());
    // Beyond it: unavailable, refused with a reason; nothing injected either.
    let s = s.refresh(t0 + Duration::from_secs(31)).set.unwrap();
    assert!(s.health()[0].unavailable && !s.health()[0].stale);
    let e = sent(&s).unwrap_err();
    assert!(
        e.starts_with(
            "unavailable: credential K may not be sent to api.test (its source failed to refresh"
        ),
        "{e}"
    );
    // An empty file is a failed refresh too (never an empty value).
    std::fs::write(&path, "").unwrap();
    let s = s.refresh(t0 + Duration::from_secs(32)).set.unwrap();
    assert!(sent(&s).is_err());
    // The source works again: back in use.
    std::fs::write(&path, NEW).unwrap();
    let s = s.refresh(t0 + Duration::from_secs(33)).set.unwrap();
    assert_eq!(sent(&s).unwrap(), format!("Bearer {NEW}"));
    assert!(!s.health()[0].stale && !s.health()[0].unavailable);
}

#[test]
fn command_source_runs_again_after_its_ttl_and_failures_keep_the_last_value() {
    let dir = tempfile::tempdir().unwrap();
    // The script prints the content of `current`, or fails when it is missing.
    let script = dir.path().join("fetch-secret.sh");
    let current = dir.path().join("current");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nset -e\ncat {:?}\necho 'noise on stderr' >&2\n",
            current.to_str().unwrap()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o700)).unwrap();
    std::fs::write(&current, format!("{OLD}\n")).unwrap();
    let s = set_for(
        &format!(
            r#"{{"command": {{"argv": [{:?}], "ttl_secs": 60, "timeout_secs": 5}}}}"#,
            script.to_str().unwrap()
        ),
        r#", "refresh_grace_secs": 100"#,
    );
    assert_eq!(sent(&s).unwrap(), format!("Bearer {OLD}"));
    let t0 = Instant::now();
    std::fs::write(&current, NEW).unwrap();
    assert!(
        s.refresh(t0 + Duration::from_secs(10)).set.is_none(),
        "not before the TTL"
    );
    let s = s.refresh(t0 + Duration::from_secs(61)).set.unwrap();
    assert_eq!(sent(&s).unwrap(), format!("Bearer {NEW}"));
    assert_eq!(
        scrubbed(&s, OLD),
        "mock-K",
        "the previous output stays scrubbed"
    );
    // The command starts failing: the last value stays, the failure is reported.
    std::fs::remove_file(&current).unwrap();
    let out = s.refresh(t0 + Duration::from_secs(200));
    assert_eq!(out.failed, vec!["K".to_owned()]);
    let s = out.set.unwrap();
    assert_eq!(sent(&s).unwrap(), format!("Bearer {NEW}"));
    assert!(s.health()[0].stale);
    // Retried after a few seconds, not at every tick.
    assert!(s.refresh(t0 + Duration::from_secs(201)).failed.is_empty());
    assert_eq!(s.refresh(t0 + Duration::from_secs(206)).failed.len(), 1);
}

#[test]
fn command_load_errors_name_the_program_never_the_output() {
    let p = Policy::from_json_str(
        r#"{"credentials": {"K": {"source": {"command": {"shell": "echo canary-cmd-out-31; exit 4"}},
            "hosts": ["api.test"]}}}"#,
    )
    .unwrap();
    let e = CredentialSet::load(&p, &MapEnv::default())
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "credential K: source.command: /bin/sh exited with status 4"
    );
    assert!(!format!("{p:?}").contains("canary-cmd-out-31"));
}

#[test]
fn rotation_through_a_new_set_retires_the_previous_value() {
    let a = set_for(&format!(r#"{{"value": "{OLD}"}}"#), "");
    let b = set_for(&format!(r#"{{"value": "{NEW}"}}"#), "");
    assert_eq!(scrubbed(&b, OLD), OLD, "a fresh set knows nothing of OLD");
    let now = Instant::now();
    let b = b.retiring(&a, now);
    assert_eq!(scrubbed(&b, &format!("{OLD} {NEW}")), "mock-K mock-K");
    // Rotating back: NEW is retired, OLD is current again (not twice).
    let a2 = set_for(&format!(r#"{{"value": "{OLD}"}}"#), "").retiring(&b, now);
    assert_eq!(a2.retired_count(), 1);
    assert_eq!(scrubbed(&a2, &format!("{OLD} {NEW}")), "mock-K mock-K");
    // scrub_retired_secs = 0: nothing kept.
    let c = set_for(&format!(r#"{{"value": "{NEW}-c"}}"#), "").retiring(
        &set_for(
            &format!(r#"{{"value": "{OLD}"}}"#),
            r#", "scrub_retired_secs": 0"#,
        ),
        now,
    );
    assert_eq!(c.retired_count(), 0);
    // Bounded: at most 8 retired values per credential.
    let mut s = set_for(r#"{"value": "v-00000000"}"#, "");
    for i in 1..20 {
        s = set_for(&format!(r#"{{"value": "v-{i:08}"}}"#), "").retiring(&s, now);
    }
    assert_eq!(s.retired_count(), 8);
}

#[test]
fn random_placeholders_validate_but_are_never_loaded_as_the_word() {
    let p = Policy::from_json_str(
        r#"{"credentials": {
            "A": {"source": {"value": "value-aaaaaaaa"}, "hosts": ["a.test"], "placeholder": "random"},
            "B": {"source": {"value": "value-bbbbbbbb"}, "hosts": ["b.test"], "placeholder": "random"}
        }}"#,
    )
    .unwrap();
    p.validate()
        .expect("two random placeholders are not a duplicate");
    let e = CredentialSet::load(&p, &MapEnv::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("credential A: placeholder \"random\" is drawn per VM"),
        "{e}"
    );
}
