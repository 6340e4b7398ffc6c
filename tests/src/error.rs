//! Harness errors: each names the file, process or wait that failed.

use std::path::PathBuf;
use std::time::Duration;

/// Everything the harness can fail with.
#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    /// A prerequisite (binary, kernel, rootfs, KVM) is missing: the VM cannot be booted.
    #[error("cannot boot a VM here: {0}")]
    Unavailable(String),
    /// A file the harness needs is missing or unreadable.
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A helper process could not be started.
    #[error("starting {what}: {source}")]
    Spawn {
        what: String,
        source: std::io::Error,
    },
    /// A build step (cargo, initrd builder) failed.
    #[error("build failed: {0}")]
    Build(String),
    /// A bounded wait ran out.
    #[error("timed out after {timeout:?} waiting for {what}")]
    Timeout { what: String, timeout: Duration },
    /// The VM (or its vsock backend) exited before the awaited event.
    #[error("{0}")]
    Exited(String),
    /// TLS or certificate setup for the test upstream failed.
    #[error("upstream setup: {0}")]
    Upstream(String),
}

impl HarnessError {
    pub(crate) fn file(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        HarnessError::File {
            path: path.into(),
            source,
        }
    }
}
