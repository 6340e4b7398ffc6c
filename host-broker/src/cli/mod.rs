//! The operator CLI: the daemon (`serve`) and client commands for its control socket.

pub mod client;
pub mod commands;
pub mod secrets;
pub mod serve;
