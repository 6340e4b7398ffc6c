//! Drives the real `host-broker serve` process over its real control socket.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncBufReadExt, BufReader};

pub const BIN: &str = env!("CARGO_BIN_EXE_host-broker");
pub const WAIT: std::time::Duration = std::time::Duration::from_secs(20);

/// A running daemon; its stderr is collected (to check that no secret is ever logged).
pub struct Daemon {
    pub child: tokio::process::Child,
    pub socket: PathBuf,
    pub log: Arc<Mutex<String>>,
}

/// Writes `<dir>/broker.toml` (`state_dir = "state"`, `control_socket = "ctl.sock"`, plus
/// `extra` lines) and starts `host-broker serve`, waiting for "host-broker serving".
pub async fn start_daemon(dir: &Path, extra: &str) -> Daemon {
    start_daemon_env(dir, extra, &[]).await
}

/// Like [`start_daemon`] with extra environment variables for the daemon.
pub async fn start_daemon_env(dir: &Path, extra: &str, env: &[(&str, &str)]) -> Daemon {
    let cfg = dir.join("broker.toml");
    if !cfg.exists() {
        std::fs::write(
            &cfg,
            format!("state_dir = \"state\"\ncontrol_socket = \"ctl.sock\"\n{extra}"),
        )
        .unwrap();
    }
    let mut child = tokio::process::Command::new(BIN)
        .args(["--log", "info", "serve", "--config"])
        .arg(&cfg)
        .envs(env.iter().copied())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let log: Arc<Mutex<String>> = Arc::default();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let log2 = log.clone();
    tokio::time::timeout(WAIT, async {
        while let Some(l) = lines.next_line().await.unwrap() {
            log2.lock().unwrap().push_str(&l);
            log2.lock().unwrap().push('\n');
            if l.contains("host-broker serving") {
                return;
            }
        }
        panic!("broker exited before serving:\n{}", log2.lock().unwrap());
    })
    .await
    .unwrap();
    let log3 = log.clone();
    tokio::spawn(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            log3.lock().unwrap().push_str(&l);
            log3.lock().unwrap().push('\n');
        }
    });
    Daemon {
        child,
        socket: dir.join("ctl.sock"),
        log,
    }
}

impl Daemon {
    pub async fn api(&self, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
        api(&self.socket, method, path, body).await
    }

    /// The API call's JSON reply (panics on a non-JSON body).
    pub async fn api_json(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let (s, b) = self.api(method, path, body).await;
        let v = serde_json::from_str(&b).unwrap_or_else(|e| panic!("{method} {path}: {e}: {b}"));
        (s, v)
    }

    /// SIGKILL (a crash: no cleanup) and wait.
    pub async fn kill(mut self) {
        self.child.start_kill().unwrap();
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap()
            .unwrap();
    }

    /// SIGTERM and wait for a clean exit.
    pub async fn stop(mut self) {
        let pid = self.child.id().unwrap().to_string();
        assert!(std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success());
        let st = tokio::time::timeout(WAIT, self.child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(st.success(), "{st}");
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }
}

/// One HTTP/1.1 request over the control socket: (status, body).
pub async fn api(socket: &Path, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let s = tokio::net::UnixStream::connect(socket).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    let req = http::Request::builder()
        .method(method)
        .uri(path)
        .header("host", "localhost")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
        .unwrap();
    let resp = tokio::time::timeout(WAIT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let b = resp.into_body().collect().await.unwrap().to_bytes();
    (status, String::from_utf8_lossy(&b).into_owned())
}

/// Runs the CLI against `socket`: (success, stdout, stderr).
pub async fn cli(socket: &Path, args: &[&str], env: &[(&str, &str)]) -> (bool, String, String) {
    let out = tokio::time::timeout(
        WAIT,
        tokio::process::Command::new(BIN)
            .arg("--socket")
            .arg(socket)
            .args(args)
            .envs(env.iter().copied())
            .output(),
    )
    .await
    .unwrap()
    .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Parses a Prometheus/OpenMetrics text exposition into `series -> value`
/// (`name{labels}` exactly as printed).
pub fn parse_metrics(text: &str) -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    for line in text.lines() {
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad line {line:?}"));
        let v: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        out.insert(series.to_owned(), v);
    }
    assert!(
        text.trim_end().ends_with("# EOF"),
        "OpenMetrics ends with # EOF"
    );
    out
}
