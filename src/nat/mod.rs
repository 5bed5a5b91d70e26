//! The NAT engine: per-core session tables and the in2out / out2in translation paths.

pub mod counters;
mod engine;
mod fast;
mod frag;
mod icmp;
mod in2out;
mod mem;
mod out2in;
pub mod ports;
pub mod rng;
pub mod rss;
pub mod rules;
pub mod session;
pub mod table;
pub mod types;
mod wire;

pub use counters::Counters;
pub use engine::{Engine, PORT_HOLD_SECS, Pkt};
pub use rules::Rules;
pub use types::*;

#[cfg(test)]
mod tests;
