//! The operator CLI: the daemon (`serve`) and client commands for its control socket.

pub mod client;
pub mod commands;
pub mod secrets;
pub mod serve;

/// An error and its causes on one line, `a: b: c`, skipping a cause whose text the message
/// so far already carries (the library errors include their source in their own message, so
/// `{:#}` would print every I/O error twice).
pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if out.is_empty() {
            out = text;
        } else if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("reading x.toml: {source}")]
    struct Read {
        source: std::io::Error,
    }

    #[test]
    fn a_cause_already_in_the_message_is_printed_once() {
        let io = std::io::Error::new(std::io::ErrorKind::NotFound, "no such file");
        let e = anyhow::Error::new(Read { source: io }).context("loading the config");
        assert_eq!(
            error_chain(&e),
            "loading the config: reading x.toml: no such file"
        );
        assert_eq!(format!("{e:#}").matches("no such file").count(), 2);
    }
}
