//! Tests of parsing, validation and egress decisions.

use std::net::SocketAddr;

use super::*;

fn json(s: &str) -> Policy {
    Policy::from_json_str(s).unwrap_or_else(|e| panic!("{e}"))
}

fn json_err(s: &str) -> String {
    Policy::from_json_str(s).unwrap_err().to_string()
}

fn sa(s: &str) -> SocketAddr {
    s.parse().unwrap()
}

const DESIGN_EXAMPLE: &str = r#"{
  "egress": {
    "default": "deny",
    "allow": [ {"hosts": ["api.openai.com", "*.anthropic.com"], "ports": [443]},
               {"cidrs": ["10.20.0.0/16"], "ports": [5432]} ],
    "deny":  [ {"hosts": ["*.internal.example.com"]} ],
    "private_networks": "deny"
  },
  "credentials": {
    "OPENAI_API_KEY": {
      "source": {"env": "OPENAI_API_KEY"},
      "hosts": ["api.openai.com"],
      "placeholder": "mock-OPENAI_API_KEY",
      "in": ["headers"],
      "inject": [{"header": "Authorization", "format": "Bearer ${value}"}],
      "on_violation": "block"
    }
  },
  "env": {"LOG_LEVEL": "debug"}
}"#;

#[test]
fn design_example_parses_and_defaults_apply() {
    let p = json(DESIGN_EXAMPLE);
    assert_eq!(p.egress.allow.len(), 2);
    assert_eq!(p.intercept, InterceptMode::Always);
    let empty = json("{}");
    assert_eq!(empty.egress.default, DefaultAction::Deny);
    assert_eq!(empty.egress.private_networks, PrivateNetworks::Deny);
    let c = json(r#"{"credentials": {"K": {"source": {"env": "K"}, "hosts": ["*"]}}}"#);
    let k = &c.credentials["K"];
    assert_eq!(k.placeholder_for("K"), "mock-K");
    assert_eq!(k.locations, vec![Location::Headers]);
    assert_eq!(k.on_violation, OnViolation::Block);
}

#[test]
fn toml_parses_same_shape() {
    let p = Policy::from_toml_str(
        r#"
        [egress]
        default = "deny"
        [[egress.allow]]
        hosts = ["api.openai.com"]
        ports = [443]
        [credentials.OPENAI_API_KEY]
        source = { env = "OPENAI_API_KEY" }
        hosts = ["api.openai.com"]
        inject = [{ header = "Authorization", format = "Bearer ${value}" }]
        [resolve]
        "api.openai.com" = "127.0.0.1:8443"
        "#,
    )
    .unwrap();
    assert!(p.check_name("api.openai.com", 443).is_ok());
    assert_eq!(
        p.resolve_override("api.openai.com"),
        Some(sa("127.0.0.1:8443"))
    );
}

#[test]
fn errors_name_the_field_path() {
    let e =
        json_err(r#"{"egress": {"allow": [{"hosts": ["a.com"]}, {"cidrs": ["10.0.0.0/33"]}]}}"#);
    assert!(
        e.starts_with(r#"egress.allow[1].cidrs[0]: invalid CIDR "10.0.0.0/33""#),
        "{e}"
    );
    let e = json_err(r#"{"credentials": {"X": {"source": {"env": "X"}}}}"#);
    assert_eq!(
        e,
        r#"credentials.X.hosts: required (write "*" to mean every host)"#
    );
    let e = json_err(r#"{"egress": {"allow": [{"hostz": ["a.com"]}]}}"#);
    assert!(
        e.starts_with("egress.allow[0]") && e.contains("hostz"),
        "{e}"
    );
    let e = json_err(r#"{"egress": {"deny": [{"hosts": ["a.*.com"]}]}}"#);
    assert!(
        e.starts_with("egress.deny[0].hosts[0]: invalid host pattern"),
        "{e}"
    );
    let e = json_err(r#"{"egress": {"default": "maybe"}}"#);
    assert!(e.starts_with("egress.default: unknown variant"), "{e}");
    let toml_e = Policy::from_toml_str("[egress]\nallow = [{ cidrs = [\"300.0.0.0/8\"] }]\n")
        .unwrap_err()
        .to_string();
    assert!(toml_e.starts_with("egress.allow[0].cidrs[0]"), "{toml_e}");
    assert!(toml_e.contains(r#"invalid CIDR "300.0.0.0/8""#), "{toml_e}");
}

#[test]
fn credential_validation() {
    let cases = [
        (
            r#"{"A": {"source": {"env": "A"}, "hosts": ["*"], "placeholder": "same-ph"},
                "B": {"source": {"env": "B"}, "hosts": ["*"], "placeholder": "same-ph"}}"#,
            "credentials.B.placeholder: \"same-ph\" is also the placeholder of credentials.A",
        ),
        (
            r#"{"A": {"source": {"env": "A"}, "hosts": ["*"], "placeholder": ""}}"#,
            "credentials.A.placeholder: must not be empty",
        ),
        (
            r#"{"A": {"source": {"env": "A"}, "hosts": ["*"],
                "inject": [{"header": "Bad Header", "format": "${value}"}]}}"#,
            "credentials.A.inject[0].header: \"Bad Header\" is not a valid HTTP header name",
        ),
        (
            r#"{"A": {"source": {"env": "A"}, "hosts": ["*"],
                "inject": [{"header": "Authorization", "format": "Bearer"}]}}"#,
            "credentials.A.inject[0].format: must contain ${value}",
        ),
        (
            r#"{"A": {"source": {"env": "A"}, "hosts": ["a.test", "10.0.0.1"]}}"#,
            "credentials.A.hosts[1]: IP literal 10.0.0.1 can never receive a credential",
        ),
        (
            r#"{"A": {"source": {"env": "A"}, "hosts": []}}"#,
            "credentials.A.hosts: empty list",
        ),
        (
            r#"{"A-B": {"source": {"env": "A"}, "hosts": ["*"]}}"#,
            "credentials.A-B: credential names must be valid environment variable names",
        ),
        (
            r#"{"A": {"source": {"value": ""}, "hosts": ["*"]}}"#,
            "credentials.A.source.value: empty value",
        ),
        (
            r#"{"A": {"source": {"env": "A"}, "hosts": ["*"], "in": []}}"#,
            "credentials.A.in: empty list",
        ),
        (
            r#"{"A": {"source": {"env": "A"}, "hosts": ["*"],
                "inject": [{"header": "Host", "format": "${value}"}]}}"#,
            "credentials.A.inject[0].header: \"Host\" may not be injected",
        ),
    ];
    for (creds, want) in cases {
        let e = json_err(&format!(r#"{{"credentials": {creds}}}"#));
        assert!(e.starts_with(want), "got {e:?}, want prefix {want:?}");
    }
    // Default placeholders collide with an explicit one.
    let e = json_err(
        r#"{"credentials": {"A": {"source": {"env": "A"}, "hosts": ["*"]},
            "B": {"source": {"env": "B"}, "hosts": ["*"], "placeholder": "mock-A"}}}"#,
    );
    assert!(e.starts_with("credentials.B.placeholder"), "{e}");
    let e = json_err(
        r#"{"credentials": {"A": {"source": {"env": "A"}, "hosts": ["*"]}}, "env": {"A": "x"}}"#,
    );
    assert!(e.starts_with("env.A: conflicts with credentials.A"), "{e}");
}

#[test]
fn inline_value_never_in_errors_or_debug() {
    let canary = "canary-c4a7e1f0";
    let p = json(&format!(
        r#"{{"credentials": {{"A": {{"source": {{"value": "{canary}"}}, "hosts": ["*"]}}}}}}"#
    ));
    assert!(!format!("{p:?}").contains(canary));
    assert!(!format!("{p:#?}").contains(canary));
    assert!(!summarize(&p).contains(canary));
    let e = json_err(&format!(
        r#"{{"credentials": {{"A": {{"source": {{"value": "{canary}"}}}}}}}}"#
    ));
    assert!(!e.contains(canary), "{e}");
    let e = json_err(&format!(
        r#"{{"credentials": {{"A": {{"source": {{"value": "{canary}"}}, "hosts": ["*"], "extra": 1}}}}}}"#
    ));
    assert!(!e.contains(canary), "{e}");
}

#[test]
fn name_rules_allow_deny_default() {
    let p = json(DESIGN_EXAMPLE);
    assert!(p.check_name("api.openai.com", 443).is_ok());
    assert!(p.check_name("API.OpenAI.com.", 443).is_ok());
    assert!(p.check_name("api.openai.com", 80).is_err());
    assert!(p.check_name("x.anthropic.com", 443).is_ok());
    assert!(p.check_name("anthropic.com", 443).is_err());
    assert!(p.check_name("evil-anthropic.com", 443).is_err());
    assert!(p.check_name("anthropic.com.evil.net", 443).is_err());
    let d = p.check_name("example.org", 443).unwrap_err();
    assert_eq!(
        d.reason,
        "example.org:443 is not allowed by egress.allow (default deny)"
    );
    // CIDR-only rule on 5432 defers to the address check.
    assert!(p.check_name("db.corp", 5432).is_ok());
    assert!(p.check_addr("db.corp", sa("10.20.1.5:5432")).is_ok());
    assert!(p.check_addr("db.corp", sa("10.21.1.5:5432")).is_err());
    assert!(p.check_addr("db.corp", sa("10.20.1.5:5433")).is_err());
    assert!(p.check_name("bad..name", 443).is_err());
}

#[test]
fn dns_names_only_through_host_rules() {
    let p = json(DESIGN_EXAMPLE);
    assert!(p.check_dns_name("api.openai.com").is_ok());
    assert!(
        p.check_dns_name("API.openai.com.").is_ok(),
        "case and trailing dot"
    );
    assert!(p.check_dns_name("x.anthropic.com").is_ok());
    // A CIDR rule would let check_name defer to the resolved address; DNS must not, or
    // any name could be sent to a real resolver.
    let e = p.check_dns_name("exfil-data.attacker.example").unwrap_err();
    assert!(e.reason.contains("not resolved"), "{}", e.reason);
    let e = p.check_dns_name("db.internal.example.com").unwrap_err();
    assert!(e.reason.contains("egress.deny[0]"), "{}", e.reason);
    assert!(
        p.check_dns_name("10.20.0.1").is_err(),
        "addresses are not names"
    );
    assert!(p.check_dns_name("bad name!").is_err());
    let open = json(
        r#"{"egress": {"default": "allow", "deny": [{"hosts": ["*.evil.example"], "ports": [443]}]}}"#,
    );
    assert!(open.check_dns_name("anything.example").is_ok());
    // A deny limited to some ports still lets the name resolve (other ports may be allowed).
    assert!(open.check_dns_name("a.evil.example").is_ok());
}

#[test]
fn deny_wins_over_allow() {
    let p = json(
        r#"{"egress": {"default": "allow",
            "allow": [{"hosts": ["*.example.com"]}, {"cidrs": ["10.0.0.0/8"]}],
            "deny": [{"hosts": ["secret.example.com"]}, {"cidrs": ["10.9.0.0/16"]}]}}"#,
    );
    let d = p.check_name("secret.example.com", 443).unwrap_err();
    assert_eq!(
        d.reason,
        "secret.example.com:443 is denied by egress.deny[0]"
    );
    assert!(p.check_name("api.example.com", 443).is_ok());
    assert!(p.check_addr("x", sa("10.1.0.1:443")).is_ok());
    let d = p.check_addr("x", sa("10.9.0.1:443")).unwrap_err();
    assert!(d.reason.contains("egress.deny[1]"), "{d}");
}

#[test]
fn private_networks_denied_unless_explicit() {
    let p = json(r#"{"egress": {"default": "allow"}}"#);
    for ip in [
        "127.0.0.1",
        "10.0.0.5",
        "172.16.3.4",
        "192.168.0.1",
        "169.254.169.254",
        "100.64.1.1",
        "0.0.0.0",
        "[::1]",
        "[::ffff:127.0.0.1]",
        "[fe80::1]",
        "[fd00::1]",
        "[64:ff9b::a00:1]",
    ] {
        assert!(p.check_name(ip, 443).is_err(), "{ip} must be refused");
        let addr: SocketAddr = format!("{ip}:443").parse().unwrap();
        assert!(p.check_addr("api.example.com", addr).is_err(), "{ip}");
    }
    let d = p
        .check_addr("api.example.com", sa("10.0.0.5:443"))
        .unwrap_err();
    assert!(
        d.reason.starts_with(
            "api.example.com resolves to 10.0.0.5 (private network, RFC 1918); \
             denied by egress.private_networks"
        ),
        "{d}"
    );
    assert!(p
        .check_addr("api.example.com", sa("93.184.216.34:443"))
        .is_ok());

    // Explicit CIDR allow opens exactly that range; hosts rules do not.
    let p = json(
        r#"{"egress": {"allow": [{"hosts": ["*"]}, {"cidrs": ["127.0.0.1/32"], "ports": [8443]}]}}"#,
    );
    assert!(p.check_addr("up.test", sa("127.0.0.1:8443")).is_ok());
    assert!(p.check_addr("up.test", sa("127.0.0.2:8443")).is_err());
    assert!(p.check_addr("up.test", sa("127.0.0.1:8444")).is_err());
    assert!(p
        .check_addr("up.test", sa("[::ffff:127.0.0.1]:8443"))
        .is_ok());
    assert!(p.check_addr("up.test", sa("10.0.0.1:8443")).is_err());

    let p = json(r#"{"egress": {"default": "allow", "private_networks": "allow"}}"#);
    assert!(p.check_addr("x", sa("10.0.0.5:443")).is_ok());
}

#[tokio::test]
async fn resolve_target_uses_override_and_checks_it() {
    let p = json(
        r#"{"egress": {"allow": [{"hosts": ["api.test"], "ports": [443]}]},
            "resolve": {"api.test": "127.0.0.1:8443"}}"#,
    );
    let d = resolve_target(&p, "api.test", 443).await.unwrap_err();
    assert!(d.reason.contains("loopback"), "{d}");
    let p = json(
        r#"{"egress": {"allow": [{"hosts": ["api.test"], "ports": [443]},
                                  {"cidrs": ["127.0.0.1/32"], "ports": [443]}]},
            "resolve": {"API.test.": "127.0.0.1:8443"}}"#,
    );
    assert_eq!(
        resolve_target(&p, "api.test", 443).await.unwrap(),
        sa("127.0.0.1:8443")
    );
    // Ports match the port the guest requested (443), not the override's port (8443).
    assert!(resolve_target(&p, "api.test", 80).await.is_err());
    assert!(resolve_target(&p, "other.test", 443).await.is_err());
}

#[tokio::test]
async fn dns_answer_pointing_at_private_ip_is_refused() {
    // "localhost" resolves through /etc/hosts to loopback without any network access.
    let p = json(r#"{"egress": {"default": "allow"}}"#);
    let d = resolve_target(&p, "localhost", 80).await.unwrap_err();
    assert!(
        d.reason.starts_with("localhost resolves to ") && d.reason.contains("(loopback)"),
        "{d}"
    );
    let p = json(r#"{"egress": {"default": "allow", "private_networks": "allow"}}"#);
    let a = resolve_target(&p, "localhost", 80).await.unwrap();
    assert!(a.ip().is_loopback() && a.port() == 80);
}

#[tokio::test]
async fn ip_literal_targets() {
    let p = json(r#"{"egress": {"allow": [{"hosts": ["[::1]"], "ports": [8080]}]}}"#);
    assert_eq!(
        resolve_target(&p, "[::1]", 8080).await.unwrap(),
        sa("[::1]:8080")
    );
    assert!(resolve_target(&p, "::1", 8081).await.is_err());
    let p = json(r#"{"egress": {"default": "allow"}}"#);
    let d = resolve_target(&p, "169.254.169.254", 80).await.unwrap_err();
    assert!(d.reason.contains("cloud metadata"), "{d}");
}

#[test]
fn from_path_by_extension() {
    let dir = tempfile::tempdir().unwrap();
    let j = dir.path().join("p.json");
    std::fs::write(&j, DESIGN_EXAMPLE).unwrap();
    assert!(Policy::from_path(&j).is_ok());
    let t = dir.path().join("p.toml");
    std::fs::write(&t, "[egress]\ndefault = \"nope\"\n").unwrap();
    let e = Policy::from_path(&t).unwrap_err().to_string();
    assert!(e.contains("p.toml: egress.default"), "{e}");
    let y = dir.path().join("p.yaml");
    std::fs::write(&y, "").unwrap();
    assert!(matches!(
        Policy::from_path(&y),
        Err(PolicyError::UnknownFormat { .. })
    ));
}

#[test]
fn summary_lists_names_hosts_rules() {
    let s = summarize(&json(DESIGN_EXAMPLE));
    assert!(s.contains("OPENAI_API_KEY"), "{s}");
    assert!(s.contains("api.openai.com"), "{s}");
    assert!(s.contains("cidrs 10.20.0.0/16; ports 5432"), "{s}");
    assert!(
        s.contains("deny[0]: hosts *.internal.example.com; any port"),
        "{s}"
    );
}

#[test]
fn summary_notes_unreachable_credential_hosts() {
    let s = summarize(&json(
        r#"{"egress": {"allow": [{"hosts": ["a.test"]}]},
            "credentials": {"K": {"source": {"env": "K"}, "hosts": ["a.test", "b.test"]}}}"#,
    ));
    assert!(
        s.contains("note: credential host unreachable on 443: b.test:443"),
        "{s}"
    );
    assert!(!s.contains("unreachable on 443: a.test"), "{s}");
}

#[test]
fn docs_examples_parse() {
    let doc = include_str!("../../../docs/policy.md");
    let mut n = 0;
    for (lang, parse) in [
        (
            "```json\n",
            Policy::from_json_str as fn(&str) -> Result<Policy, PolicyError>,
        ),
        ("```toml\n", Policy::from_toml_str),
    ] {
        for block in doc.split(lang).skip(1) {
            let body = block.split("```").next().unwrap();
            if lang == "```json\n" && !body.starts_with('{') {
                continue; // a fragment, not a whole policy
            }
            let p = parse(body).unwrap_or_else(|e| panic!("{e}\n{body}"));
            assert!(!p.credentials.is_empty());
            n += 1;
        }
    }
    assert_eq!(n, 3);
}

#[test]
fn inline_values_not_echoed_by_parse_errors() {
    let e = json_err(r#"{"credentials": {"A": {"source": {"value": 987654321}, "hosts": ["*"]}}}"#);
    assert!(
        e.starts_with("credentials.A.source.value: expected a string"),
        "{e}"
    );
    assert!(!e.contains("987654321"), "{e}");
    // TOML errors carry a source snippet by default; ours must not (the line holds the value).
    for doc in [
        "[credentials.A]\nsource = { value = \"canary-c4a7e1f0\" }\nhosts = [\"*\"]\nbogus = 1\n",
        "[credentials.A]\nsource = { value = \"canary-c4a7e1f0\", extra = 1 }\nhosts = [\"*\"]\n",
        "[credentials.A]\nsource = { value = 31415926 }\nhosts = [\"*\"]\n",
    ] {
        let e = Policy::from_toml_str(doc).unwrap_err().to_string();
        assert!(!e.contains("canary") && !e.contains("31415926"), "{e}");
        assert!(e.contains(" at line "), "{e}");
    }
}

#[test]
fn reasons_are_valid_header_values() {
    let p = json(r#"{"egress": {"default": "allow"}}"#);
    for host in [
        "bad..name",
        "ünï.example",
        "a\r\nx-evil: 1",
        &"a".repeat(400),
    ] {
        let d = p.check_name(host, 443).unwrap_err();
        assert!(d.reason.is_ascii() && d.reason.len() < 400, "{d}");
        assert!(http::HeaderValue::from_str(&d.reason).is_ok(), "{d}");
    }
}

#[test]
fn connection_limit_and_raw_ports_validated() {
    assert!(json_err(r#"{"max_connections": 0}"#).contains("max_connections: must be at least 1"));
    assert!(json_err(r#"{"raw_tcp_ports": [5432, 0]}"#).contains("raw_tcp_ports[1]"));
    let p = json(r#"{"max_connections": 3, "raw_tcp_ports": [5432], "max_inspected_body": 10}"#);
    assert_eq!(p.connection_limit(), 3);
    assert_eq!(p.body_limit(), 10);
    assert_eq!(
        json("{}").connection_limit(),
        crate::policy::model::DEFAULT_MAX_CONNECTIONS
    );
}

#[test]
fn credential_bindings_parse_in_json_and_toml() {
    let p = json(
        r#"{"credentials": {"GH": {"source": {"env": "GH"}, "hosts": [
            "uploads.github.com",
            {"host": "api.github.com", "ports": [443], "methods": ["GET"],
             "paths": ["/repos/acme/**", "/user"]}
        ]}}}"#,
    );
    p.validate().unwrap();
    let hosts = p.credentials["GH"].hosts.as_ref().unwrap();
    assert!(!hosts[0].is_scoped());
    assert_eq!(hosts[1].methods.as_deref(), Some(&["GET".to_owned()][..]));
    assert!(summarize(&p)
        .contains("api.github.com (ports 443; methods GET; paths /repos/acme/**,/user)"));
    let t = Policy::from_toml_str(
        r#"
[credentials.GH]
source = { env = "GH" }
hosts = ["uploads.github.com", { host = "api.github.com", methods = ["GET"], paths = ["/repos/acme/*"] }]
"#,
    )
    .unwrap();
    t.validate().unwrap();
    assert_eq!(t.credentials["GH"].hosts.as_ref().unwrap().len(), 2);
}

#[test]
fn credential_binding_errors_name_the_field() {
    let cred = |entry: &str| {
        let s = format!(
            r#"{{"credentials": {{"GH": {{"source": {{"env": "GH"}}, "hosts": [{entry}]}}}}}}"#
        );
        match Policy::from_json_str(&s) {
            Ok(p) => p.validate().unwrap_err().to_string(),
            Err(e) => e.to_string(),
        }
    };
    let cases = [
        (
            r#"{"host": "a.test", "ports": []}"#,
            "credentials.GH.hosts[0].ports: empty list",
        ),
        (
            r#"{"host": "a.test", "ports": [0]}"#,
            "credentials.GH.hosts[0].ports[0]: port 0",
        ),
        (
            r#"{"host": "a.test", "methods": ["get"]}"#,
            "credentials.GH.hosts[0].methods[0]: \"get\" is not an upper-case",
        ),
        (
            r#"{"host": "a.test", "methods": []}"#,
            "credentials.GH.hosts[0].methods: empty list",
        ),
        (
            r#"{"host": "a.test", "paths": []}"#,
            "credentials.GH.hosts[0].paths: empty list",
        ),
        (
            r#"{"host": "a.test", "paths": ["v1"]}"#,
            "credentials.GH.hosts[0].paths[0]",
        ),
        (
            r#"{"host": "a.test", "paths": ["/v1?x=1"]}"#,
            "credentials.GH.hosts[0].paths[0]",
        ),
        (
            r#"{"host": "a.test", "path": ["/v1"]}"#,
            "credentials.GH.hosts[0]",
        ),
        (
            r#"{"host": "10.0.0.1"}"#,
            "credentials.GH.hosts[0]: IP literal",
        ),
        (r#"{"ports": [443]}"#, "credentials.GH.hosts[0]"),
    ];
    for (entry, want) in cases {
        let e = cred(entry);
        assert!(e.starts_with(want), "{entry}: got {e:?}, want {want:?}");
    }
}

#[test]
fn command_source_validation_names_the_field_and_summary_hides_arguments() {
    let cred = |src: &str| {
        let s = format!(
            r#"{{"credentials": {{"K": {{"source": {{"command": {src}}}, "hosts": ["a.test"]}}}}}}"#
        );
        match Policy::from_json_str(&s) {
            Ok(p) => p.validate().map(|_| p).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    };
    let cases = [
        (r#"{}"#, "credentials.K.source.command.argv: required"),
        (
            r#"{"argv": ["a"], "shell": "b"}"#,
            "credentials.K.source.command: give either",
        ),
        (
            r#"{"shell": " "}"#,
            "credentials.K.source.command.shell: empty command",
        ),
        (
            r#"{"argv": [""]}"#,
            "credentials.K.source.command.argv[0]: empty program",
        ),
        (
            r#"{"argv": ["a"], "ttl_secs": 0}"#,
            "credentials.K.source.command.ttl_secs: must be",
        ),
        (
            r#"{"argv": ["a"], "timeout_secs": 121}"#,
            "credentials.K.source.command.timeout_secs: at most 120",
        ),
        (
            r#"{"argv": ["a"], "max_output_bytes": 0}"#,
            "credentials.K.source.command.max_output_bytes",
        ),
        (
            r#"{"argv": ["a"], "env": {}}"#,
            "credentials.K.source.command",
        ),
    ];
    for (src, want) in cases {
        let e = cred(src).unwrap_err();
        assert!(e.starts_with(want), "{src}: got {e:?}, want {want:?}");
    }
    let p =
        cred(r#"{"argv": ["vault", "kv", "get", "-field=token", "secret/tok-canary"]}"#).unwrap();
    let summary = summarize(&p);
    assert!(
        summary.contains("source command vault (ttl 300 s)"),
        "{summary}"
    );
    assert!(!summary.contains("tok-canary") && !format!("{p:?}").contains("tok-canary"));
}

#[test]
fn aws_sigv4_validation_names_the_field() {
    let base = r#""source": {"env": "K"}, "hosts": ["*.amazonaws.com"],
                  "aws_sigv4": {"secret_access_key": {"env": "S"}}"#;
    let e = json_err_or_invalid(&format!(
        r#"{{"credentials": {{"A": {{{base}}}, "B": {{{base}}}}}}}"#
    ));
    assert!(
        e.starts_with("credentials.B.aws_sigv4: only one credential"),
        "{e}"
    );
    let e = json_err_or_invalid(&format!(
        r#"{{"credentials": {{"A": {{{base}}}}}, "env": {{"AWS_SESSION_TOKEN": "x"}}}}"#
    ));
    assert!(
        e.starts_with(
            "credentials.A.aws_sigv4: the guest gets its placeholder in AWS_SESSION_TOKEN"
        ),
        "{e}"
    );
    let e = json_err_or_invalid(&format!(
        r#"{{"credentials": {{"A": {{{base}, "in": ["query"]}}}}}}"#
    ));
    assert!(
        e.starts_with("credentials.A.aws_sigv4: an aws_sigv4 credential"),
        "{e}"
    );
}

fn json_err_or_invalid(s: &str) -> String {
    match Policy::from_json_str(s) {
        Ok(p) => p.validate().unwrap_err().to_string(),
        Err(e) => e.to_string(),
    }
}
