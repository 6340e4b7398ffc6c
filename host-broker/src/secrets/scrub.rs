//! Streaming replacement of real values by placeholders across chunk boundaries.

/// Replaces real values in a byte stream; keeps at most (longest value - 1) bytes pending.
#[derive(Debug)]
pub struct Scrubber {}
