//! Composes the workload environment and renders it for the places systemd-era tools read.
//!
//! The map is applied per child with `Command::env` (never `set_var`: the agent runs a
//! multi-threaded runtime, and PID 1's own environment should stay what the kernel gave).

use std::collections::BTreeMap;

use shared_proto::GuestConfig;

use crate::trust::TrustPaths;

/// A GuestConfig variable that cannot be written safely.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EnvError {
    #[error("environment variable name `{0}` is not [A-Za-z_][A-Za-z0-9_]*")]
    BadName(String),
    /// The value is not shown: it may be a placeholder an operator treats as sensitive.
    #[error("environment variable `{0}` has a value with a newline or NUL byte")]
    BadValue(String),
}

/// Base variables for a clean workload environment.
const BASE: &[(&str, &str)] = &[
    (
        "PATH",
        "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    ),
    ("HOME", "/root"),
    ("TERM", "linux"),
    ("LANG", "C.UTF-8"),
];

fn valid_name(name: &str) -> bool {
    let mut chars = name.chars();
    matches!(chars.next(), Some(c) if c == '_' || c.is_ascii_alphabetic())
        && chars.all(|c| c == '_' || c.is_ascii_alphanumeric())
}

/// Proxy and CA variables plus the broker's extra env (which wins on conflict: the broker
/// is the trusted side).
pub fn compose(
    config: &GuestConfig,
    trust: &TrustPaths,
    proxy_port: u16,
) -> Result<BTreeMap<String, String>, EnvError> {
    let mut env = BTreeMap::new();
    let mut set = |k: &str, v: String| {
        env.insert(k.to_string(), v);
    };
    let proxy = format!("http://127.0.0.1:{proxy_port}");
    for k in ["HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY"] {
        set(k, proxy.clone());
        set(&k.to_ascii_lowercase(), proxy.clone());
    }
    let mut no_proxy = vec!["localhost".to_string(), "127.0.0.1".into(), "::1".into()];
    no_proxy.extend(config.no_proxy.iter().cloned());
    let no_proxy = no_proxy.join(",");
    set("NO_PROXY", no_proxy.clone());
    set("no_proxy", no_proxy);

    let bundle = trust.bundle.to_string_lossy().into_owned();
    for k in [
        "SSL_CERT_FILE",
        "REQUESTS_CA_BUNDLE",
        "CURL_CA_BUNDLE",
        "GIT_SSL_CAINFO",
        "PIP_CERT",
        "AWS_CA_BUNDLE",
        "CARGO_HTTP_CAINFO",
        "DENO_CERT",
    ] {
        set(k, bundle.clone());
    }
    // Node adds these to its built-in roots; the CA alone is enough.
    set(
        "NODE_EXTRA_CA_CERTS",
        trust.ca_file.to_string_lossy().into_owned(),
    );
    set(
        "SSL_CERT_DIR",
        trust.cert_dir.to_string_lossy().into_owned(),
    );
    // The JVM ignores *_PROXY and PEM bundles; it needs system properties and a JKS store
    // (the default stores hold the CA too, for JVMs started without this variable).
    set(
        "JAVA_TOOL_OPTIONS",
        format!(
            "-Dhttp.proxyHost=127.0.0.1 -Dhttp.proxyPort={proxy_port} \
             -Dhttps.proxyHost=127.0.0.1 -Dhttps.proxyPort={proxy_port} \
             -Dhttp.nonProxyHosts=localhost|127.0.0.1|[::1] \
             -Djavax.net.ssl.trustStore={} -Djavax.net.ssl.trustStorePassword={}",
            trust.java_store.display(),
            crate::trust::JAVA_STORE_PASSWORD,
        ),
    );

    for (k, v) in &config.env {
        if !valid_name(k) {
            return Err(EnvError::BadName(k.clone()));
        }
        if v.contains(['\n', '\r', '\0']) {
            return Err(EnvError::BadValue(k.clone()));
        }
        env.insert(k.clone(), v.clone());
    }
    Ok(env)
}

/// The full environment for an exec-mode child: base variables, then `vars`.
pub fn with_base(vars: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    let mut env: BTreeMap<String, String> = BASE
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.extend(vars.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// First line of every rendered file.
const HEADER: &str = "# Written by the Sluice guest agent at boot.\n";

/// The header, `preamble`, then one `line(key, value)` per variable.
fn render(
    preamble: &str,
    vars: &BTreeMap<String, String>,
    line: impl Fn(&str, &str) -> String,
) -> String {
    let mut out = format!("{HEADER}{preamble}");
    for (k, v) in vars {
        out.push_str(&line(k, v));
        out.push('\n');
    }
    out
}

/// Double-quoted with `\` and `"` backslash-escaped (pam_env and systemd read it alike).
fn double_quoted(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

/// `/etc/environment` (pam_env): `KEY="value"` lines.
pub fn render_etc_environment(vars: &BTreeMap<String, String>) -> String {
    render("", vars, |k, v| format!("{k}={}", double_quoted(v)))
}

/// `/etc/systemd/system.conf.d/sluice.conf`: `DefaultEnvironment=` with systemd quoting.
pub fn render_systemd_dropin(vars: &BTreeMap<String, String>) -> String {
    render("[Manager]\n", vars, |k, v| {
        format!("DefaultEnvironment={}", double_quoted(&format!("{k}={v}")))
    })
}

/// `/etc/profile.d/sluice.sh`: `export KEY='value'` with POSIX shell quoting.
pub fn render_profile(vars: &BTreeMap<String, String>) -> String {
    render("", vars, |k, v| {
        format!("export {k}='{}'", v.replace('\'', "'\\''"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn trust() -> TrustPaths {
        TrustPaths {
            bundle: "/etc/sluice/ca-bundle.pem".into(),
            cert_dir: "/etc/ssl/certs".into(),
            ca_file: "/etc/sluice/sluice-ca.pem".into(),
            java_store: "/etc/sluice/java-cacerts.jks".into(),
            distro_bundles: vec![],
            java_stores: vec![],
            certifi_bundles: vec![],
            hash_links: vec![],
            overlaid: vec![],
        }
    }

    fn config() -> GuestConfig {
        GuestConfig {
            vm_id: "vm1".into(),
            ca_certs_pem: vec![],
            env: [
                (
                    "OPENAI_API_KEY".to_string(),
                    "mock-OPENAI_API_KEY".to_string(),
                ),
                ("LOG_LEVEL".into(), "debug".into()),
            ]
            .into(),
            proxy_port: 3128,
            no_proxy: vec!["metadata.local".into()],
        }
    }

    #[test]
    fn composes_proxy_ca_and_broker_vars() {
        let env = compose(&config(), &trust(), 3129).unwrap();
        for k in [
            "HTTP_PROXY",
            "https_proxy",
            "ALL_PROXY",
            "all_proxy",
            "http_proxy",
        ] {
            assert_eq!(env[k], "http://127.0.0.1:3129", "{k}");
        }
        assert_eq!(env["NO_PROXY"], "localhost,127.0.0.1,::1,metadata.local");
        assert_eq!(env["no_proxy"], env["NO_PROXY"]);
        for k in [
            "SSL_CERT_FILE",
            "REQUESTS_CA_BUNDLE",
            "CURL_CA_BUNDLE",
            "GIT_SSL_CAINFO",
            "PIP_CERT",
            "AWS_CA_BUNDLE",
            "CARGO_HTTP_CAINFO",
            "DENO_CERT",
        ] {
            assert_eq!(env[k], "/etc/sluice/ca-bundle.pem", "{k}");
        }
        assert_eq!(env["SSL_CERT_DIR"], "/etc/ssl/certs");
        assert_eq!(env["NODE_EXTRA_CA_CERTS"], "/etc/sluice/sluice-ca.pem");
        let java = &env["JAVA_TOOL_OPTIONS"];
        assert!(java.contains("-Dhttps.proxyPort=3129"), "{java}");
        assert!(
            java.contains(
                "-Djavax.net.ssl.trustStore=/etc/sluice/java-cacerts.jks \
                 -Djavax.net.ssl.trustStorePassword=changeit"
            ),
            "{java}"
        );
        assert_eq!(env["OPENAI_API_KEY"], "mock-OPENAI_API_KEY");
        assert_eq!(env["LOG_LEVEL"], "debug");
    }

    #[test]
    fn broker_env_wins_and_is_validated() {
        let mut c = config();
        c.env
            .insert("HTTPS_PROXY".into(), "http://127.0.0.1:9".into());
        assert_eq!(
            compose(&c, &trust(), 3128).unwrap()["HTTPS_PROXY"],
            "http://127.0.0.1:9"
        );
        let mut c = config();
        c.env.insert("BAD NAME".into(), "x".into());
        assert_eq!(
            compose(&c, &trust(), 3128).unwrap_err(),
            EnvError::BadName("BAD NAME".into())
        );
        let mut c = config();
        c.env.insert("TOKEN".into(), "secret\nX=1".into());
        let err = compose(&c, &trust(), 3128).unwrap_err();
        assert!(!err.to_string().contains("secret"), "{err}");
    }

    #[test]
    fn base_env_is_overridden_by_vars() {
        let vars: BTreeMap<_, _> = [("HOME".to_string(), "/work".to_string())].into();
        let env = with_base(&vars);
        assert_eq!(env["HOME"], "/work");
        assert!(env["PATH"].contains("/usr/bin"));
    }

    #[test]
    fn renderers_quote_values() {
        let vars: BTreeMap<_, _> = [
            ("A".to_string(), "it's \"q\" \\ x".to_string()),
            ("J".to_string(), "-Dx=1 -Dy=2".to_string()),
        ]
        .into();
        assert_eq!(
            render_etc_environment(&vars)
                .lines()
                .skip(1)
                .collect::<Vec<_>>(),
            [r#"A="it's \"q\" \\ x""#, r#"J="-Dx=1 -Dy=2""#]
        );
        assert_eq!(
            render_systemd_dropin(&vars)
                .lines()
                .skip(1)
                .collect::<Vec<_>>(),
            [
                "[Manager]",
                r#"DefaultEnvironment="A=it's \"q\" \\ x""#,
                r#"DefaultEnvironment="J=-Dx=1 -Dy=2""#
            ]
        );
        let profile = render_profile(&vars);
        assert!(
            profile.contains(r#"export A='it'\''s "q" \ x'"#),
            "{profile}"
        );
    }
}
