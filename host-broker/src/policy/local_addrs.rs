//! The host's own interface addresses, read once.
