//! The NAT engine: per-core session tables and the in2out / out2in translation paths.
//!
//! Layers, each importing only those below it (no cycles):
//! - `engine`: the pipeline and the public API;
//! - `fast`, `in2out` -> `out2in` -> `icmp`: the translation paths, functions over `ctx`;
//! - `mtu`: the egress MTU (fragmentation needed, fragmentation) and MSS clamping, after
//!   the full path's translation (`-> icmp`);
//! - `ctx`: what the paths work on: `store` (sessions, mappings, ports), `frag`, counters;
//! - `parse` (frames -> `Meta`, through packet/'s views), `rewrite` (every header patch);
//! - `rules` (the configuration compiled), `ports`, `rss`, `table`, `session`, `mem`, `types`.

pub mod counters;
mod ctx;
mod engine;
pub mod eventlog;
mod fast;
mod frag;
mod icmp;
mod in2out;
pub mod listing;
mod mem;
pub mod memory;
mod mtu;
mod out2in;
mod parse;
pub mod ports;
mod rewrite;
pub mod rng;
pub mod rss;
pub mod rules;
pub mod session;
mod store;
pub mod table;
pub mod types;

pub use counters::Counters;
pub use engine::{Engine, PORT_HOLD_SECS};
pub use rules::Rules;
pub use types::*;

#[cfg(test)]
mod tests;
