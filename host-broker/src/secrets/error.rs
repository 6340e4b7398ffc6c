//! Errors while loading credential values. They name the credential and the source, never a
//! value.

/// A credential whose value cannot be loaded.
#[derive(Debug, thiserror::Error)]
pub enum CredentialError {
    #[error("credential {credential}: environment variable {var} is not set (source.env)")]
    MissingEnv { credential: String, var: String },
    #[error("credential {credential}: cannot read {path} (source.file): {source}")]
    File {
        credential: String,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("credential {credential}: value from {from} is not valid UTF-8")]
    NotUtf8 { credential: String, from: String },
    #[error("credential {credential}: value from {from} is empty")]
    Empty { credential: String, from: String },
    #[error(
        "credential {credential}: value from {from} contains control characters \
         (not allowed in an HTTP header)"
    )]
    ControlChars { credential: String, from: String },
    /// A `command` source failed; `reason` names the program and why, never its output.
    #[error("credential {credential}: source.command: {reason}")]
    Command { credential: String, reason: String },
    #[error("credential {credential}: {message}")]
    Invalid { credential: String, message: String },
}
