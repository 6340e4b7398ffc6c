//! systemd mode: prepare the real root so systemd brings up the proxy and the workload units
//! with the Sluice environment, then hand over.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::env;
use crate::rootfs;

/// Name of the proxy unit.
pub const PROXY_UNIT: &str = "sluice-proxy.service";
/// Where the agent binary is copied (inside /run, which moves into the root).
pub const AGENT_IN_RUN: &str = "sluice/bin/guest-agent";

/// Preparing the root failed.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {source}")]
pub struct SystemdError {
    pub path: PathBuf,
    #[source]
    pub source: std::io::Error,
}

fn err(path: &Path) -> impl FnOnce(std::io::Error) -> SystemdError + '_ {
    move |source| SystemdError {
        path: path.to_path_buf(),
        source,
    }
}

/// The runtime unit running the agent's local proxy.
pub fn proxy_unit(broker_port: u32, proxy_port: u16, capture: bool, log: tracing::Level) -> String {
    format!(
        "# Written by the Sluice guest agent at boot.\n\
         [Unit]\n\
         Description=Sluice egress proxy (guest agent)\n\
         DefaultDependencies=no\n\
         Before=network-online.target multi-user.target shutdown.target\n\
         Conflicts=shutdown.target\n\
         \n\
         [Service]\n\
         ExecStart=/run/{AGENT_IN_RUN} proxy --listen 127.0.0.1:{proxy_port} \
         --listen [::1]:{proxy_port} --connect vsock:{cid}:{broker_port}{capture} --log {log}\n\
         Restart=always\n\
         RestartSec=1\n",
        cid = shared_proto::HOST_CID,
        capture = if capture { " --capture" } else { "" },
        log = log.as_str().to_ascii_lowercase(),
    )
}

/// Drop-in ordering an operator unit after the proxy.
pub fn unit_dropin() -> String {
    format!(
        "# Written by the Sluice guest agent at boot.\n\
         [Unit]\n\
         Wants={PROXY_UNIT}\n\
         After={PROXY_UNIT}\n"
    )
}

/// Keeps the lines of an existing `/etc/environment` that do not set one of our keys.
fn merge_etc_environment(existing: &str, vars: &BTreeMap<String, String>) -> String {
    let mut out: String = existing
        .lines()
        .filter(|l| {
            let key = l.trim_start().split('=').next().unwrap_or("").trim();
            !vars.contains_key(key) && !l.starts_with("# Written by the Sluice")
        })
        .map(|l| format!("{l}\n"))
        .collect();
    out.push_str(&env::render_etc_environment(vars));
    out
}

/// Writes the environment into the root (`sysroot`, a host path).
pub fn install_env(sysroot: &Path, vars: &BTreeMap<String, String>) -> Result<(), SystemdError> {
    let etc_env = Path::new("/etc/environment");
    let host = rootfs::resolve(sysroot, etc_env).map_err(err(etc_env))?;
    let existing = std::fs::read_to_string(&host).unwrap_or_default();
    let files = [
        ("/etc/environment", merge_etc_environment(&existing, vars)),
        (
            "/etc/systemd/system.conf.d/sluice.conf",
            env::render_systemd_dropin(vars),
        ),
        ("/etc/profile.d/sluice.sh", env::render_profile(vars)),
    ];
    for (path, text) in files {
        let p = Path::new(path);
        rootfs::write(sysroot, p, text.as_bytes(), 0o644).map_err(err(p))?;
    }
    Ok(())
}

/// Installs the runtime units under `run` (the /run that moves into the root): the proxy
/// unit, the agent binary it runs, and every `units_dir/*.service`, each wanted by
/// multi-user.target and ordered after the proxy. Returns the installed unit names.
pub fn install_units(
    run: &Path,
    agent_binary: &Path,
    units_dir: &Path,
    broker_port: u32,
    proxy_port: u16,
    capture: bool,
    log: tracing::Level,
) -> Result<Vec<String>, SystemdError> {
    use std::os::unix::fs::PermissionsExt;
    let agent_dest = run.join(AGENT_IN_RUN);
    if let Some(parent) = agent_dest.parent() {
        std::fs::create_dir_all(parent).map_err(err(parent))?;
    }
    std::fs::copy(agent_binary, &agent_dest).map_err(err(&agent_dest))?;
    std::fs::set_permissions(&agent_dest, std::fs::Permissions::from_mode(0o755))
        .map_err(err(&agent_dest))?;

    let units = run.join("systemd/system");
    let wants = units.join("multi-user.target.wants");
    std::fs::create_dir_all(&wants).map_err(err(&wants))?;
    let write = |path: PathBuf, text: &str| -> Result<(), SystemdError> {
        std::fs::write(&path, text).map_err(err(&path))
    };
    let want = |name: &str| -> Result<(), SystemdError> {
        let link = wants.join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(format!("../{name}"), &link).map_err(err(&link))
    };
    write(
        units.join(PROXY_UNIT),
        &proxy_unit(broker_port, proxy_port, capture, log),
    )?;
    want(PROXY_UNIT)?;
    let mut names = vec![PROXY_UNIT.to_string()];

    let mut extra: Vec<PathBuf> = match std::fs::read_dir(units_dir) {
        Ok(rd) => rd
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "service"))
            .collect(),
        Err(_) => Vec::new(),
    };
    extra.sort();
    for src in extra {
        let Some(name) = src.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        let dest = units.join(&name);
        std::fs::copy(&src, &dest).map_err(err(&dest))?;
        let dropin_dir = units.join(format!("{name}.d"));
        std::fs::create_dir_all(&dropin_dir).map_err(err(&dropin_dir))?;
        write(dropin_dir.join("10-sluice.conf"), &unit_dropin())?;
        want(&name)?;
        names.push(name);
    }
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proxy_unit_runs_the_copied_agent() {
        let u = proxy_unit(7070, 3128, true, tracing::Level::DEBUG);
        assert!(u.contains(
            "ExecStart=/run/sluice/bin/guest-agent proxy --listen 127.0.0.1:3128 \
             --listen [::1]:3128 --connect vsock:2:7070 --capture --log debug\n"
        ));
        assert!(u.contains("Before=network-online.target"));
        assert!(u.contains("DefaultDependencies=no"));
    }

    #[test]
    fn installs_env_files_and_units() {
        let tmp = tempfile::tempdir().unwrap();
        let sysroot = tmp.path().join("sysroot");
        let run = tmp.path().join("run");
        std::fs::create_dir_all(sysroot.join("etc")).unwrap();
        std::fs::write(
            sysroot.join("etc/environment"),
            "EDITOR=vi\nHTTPS_PROXY=http://old:1\n",
        )
        .unwrap();
        let vars: BTreeMap<String, String> = [
            (
                "HTTPS_PROXY".to_string(),
                "http://127.0.0.1:3128".to_string(),
            ),
            ("JAVA_TOOL_OPTIONS".into(), "-Da=1 -Db=2".into()),
        ]
        .into();
        install_env(&sysroot, &vars).unwrap();
        // Twice: idempotent.
        install_env(&sysroot, &vars).unwrap();
        let etc_env = std::fs::read_to_string(sysroot.join("etc/environment")).unwrap();
        assert_eq!(
            etc_env,
            "EDITOR=vi\n# Written by the Sluice guest agent at boot.\n\
             HTTPS_PROXY=\"http://127.0.0.1:3128\"\nJAVA_TOOL_OPTIONS=\"-Da=1 -Db=2\"\n"
        );
        let dropin =
            std::fs::read_to_string(sysroot.join("etc/systemd/system.conf.d/sluice.conf")).unwrap();
        assert!(dropin.contains("[Manager]\n"));
        assert!(dropin.contains("DefaultEnvironment=\"JAVA_TOOL_OPTIONS=-Da=1 -Db=2\"\n"));
        let profile = std::fs::read_to_string(sysroot.join("etc/profile.d/sluice.sh")).unwrap();
        // The profile script really exports the values when sourced by a shell.
        let out = std::process::Command::new("/bin/sh")
            .arg("-c")
            .arg(format!(
                "{profile}\nprintf '%s|%s' \"$HTTPS_PROXY\" \"$JAVA_TOOL_OPTIONS\""
            ))
            .env_clear()
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8(out.stdout).unwrap(),
            "http://127.0.0.1:3128|-Da=1 -Db=2"
        );

        let units_src = tmp.path().join("units");
        std::fs::create_dir_all(&units_src).unwrap();
        std::fs::write(
            units_src.join("work.service"),
            "[Service]\nExecStart=/bin/true\n",
        )
        .unwrap();
        std::fs::write(units_src.join("notes.txt"), "ignored").unwrap();
        let agent = tmp.path().join("agent");
        std::fs::write(&agent, b"\x7fELF").unwrap();
        let names = install_units(
            &run,
            &agent,
            &units_src,
            7070,
            3128,
            false,
            tracing::Level::INFO,
        )
        .unwrap();
        assert_eq!(names, ["sluice-proxy.service", "work.service"]);
        let sys = run.join("systemd/system");
        assert_eq!(
            std::fs::read_link(sys.join("multi-user.target.wants/work.service")).unwrap(),
            Path::new("../work.service")
        );
        assert_eq!(
            std::fs::read_link(sys.join("multi-user.target.wants/sluice-proxy.service")).unwrap(),
            Path::new("../sluice-proxy.service")
        );
        assert_eq!(
            std::fs::read_to_string(sys.join("work.service.d/10-sluice.conf")).unwrap(),
            unit_dropin()
        );
        assert!(unit_dropin().contains("After=sluice-proxy.service"));
        assert!(!sys.join("notes.txt").exists());
        assert_eq!(std::fs::read(run.join(AGENT_IN_RUN)).unwrap(), b"\x7fELF");
    }
}
