//! The guest's serial console, captured to a file and kept in memory so tests can wait on it.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWriteExt, BufReader};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::error::HarnessError;

#[derive(Debug, Default)]
struct Lines {
    lines: Vec<String>,
    closed: bool,
}

/// A console being captured. Cloning shares the same capture.
#[derive(Debug, Clone)]
pub struct Console {
    inner: Arc<Mutex<Lines>>,
    changed: watch::Receiver<u64>,
    path: PathBuf,
}

impl Console {
    /// Starts copying `reader` (the VMM's stdout) line by line into `path` and memory.
    /// `echo` also prints each line to stderr (visible with `--nocapture`).
    pub fn capture<R>(reader: R, path: &Path, echo: bool) -> Result<Console, HarnessError>
    where
        R: AsyncRead + Unpin + Send + 'static,
    {
        let file = std::fs::File::create(path).map_err(|e| HarnessError::file(path, e))?;
        let inner = Arc::new(Mutex::new(Lines::default()));
        let (tx, rx) = watch::channel(0u64);
        let shared = inner.clone();
        tokio::spawn(async move {
            let mut file = tokio::fs::File::from_std(file);
            let mut reader = BufReader::new(reader);
            let mut buf = Vec::new();
            let mut n = 0u64;
            loop {
                buf.clear();
                match reader.read_until(b'\n', &mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let _ = file.write_all(&buf).await;
                let line = String::from_utf8_lossy(&buf)
                    .trim_end_matches(['\n', '\r'])
                    .to_string();
                if echo {
                    eprintln!("console| {line}");
                }
                lock(&shared).lines.push(line);
                n += 1;
                let _ = tx.send(n);
            }
            let _ = file.flush().await;
            lock(&shared).closed = true;
            let _ = tx.send(u64::MAX);
        });
        Ok(Console {
            inner,
            changed: rx,
            path: path.to_path_buf(),
        })
    }

    /// Where the console log is written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Everything captured so far.
    pub fn text(&self) -> String {
        let l = lock(&self.inner);
        let mut s = l.lines.join("\n");
        s.push('\n');
        s
    }

    /// The first line containing `needle`, if any yet.
    pub fn find(&self, needle: &str) -> Option<String> {
        lock(&self.inner)
            .lines
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
    }

    /// Waits until a line contains `needle`; fails when the console closes or on timeout.
    pub async fn wait_for(&self, needle: &str, timeout: Duration) -> Result<String, HarnessError> {
        let deadline = Instant::now() + timeout;
        let mut rx = self.changed.clone();
        loop {
            if let Some(line) = self.find(needle) {
                return Ok(line);
            }
            if lock(&self.inner).closed {
                return Err(HarnessError::Exited(format!(
                    "console closed (VM exited) before a line containing {needle:?}"
                )));
            }
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => {
                    // Capture task ended; loop once more to re-check and report closed.
                    lock(&self.inner).closed = true;
                }
                Err(_) => {
                    return Err(HarnessError::Timeout {
                        what: format!("console line containing {needle:?}"),
                        timeout,
                    })
                }
            }
        }
    }

    /// Waits until the console has been closed (the VMM exited and its output is drained).
    pub async fn wait_closed(&self, timeout: Duration) -> Result<(), HarnessError> {
        let deadline = Instant::now() + timeout;
        let mut rx = self.changed.clone();
        while !lock(&self.inner).closed {
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) => return Ok(()),
                Err(_) => {
                    return Err(HarnessError::Timeout {
                        what: "console to close".into(),
                        timeout,
                    })
                }
            }
        }
        Ok(())
    }
}

fn lock(m: &Mutex<Lines>) -> std::sync::MutexGuard<'_, Lines> {
    // A panic while holding the lock cannot leave `Lines` inconsistent: keep going.
    m.lock().unwrap_or_else(|e| e.into_inner())
}
