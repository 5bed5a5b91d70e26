//! natgw's test bench, outside the product: network-namespace topologies built with the
//! `ip` command ([`Topology`]), the namespace helpers the integration tests share
//! ([`netns`]), sockets to drive and observe traffic ([`sockets`]), and `natgw lab`
//! ([`lab`]), which runs the natgw binary on a topology, and [`process`], natgw as a process
//! in a topology for tests that need nothing more, and [`listing`], a streaming reader of
//! natgw's `GET /sessions`.
//!
//! It reaches the kernel through `natgw_kernel` and knows natgw only as a binary and a
//! configuration format.

pub mod lab;
pub mod listing;
pub mod netns;
pub mod process;
pub mod sockets;
mod topology;

pub use netns::{run_in_netns, try_run_in_netns};
pub use sockets::{RawIcmp, ipv4_payload};
pub use topology::*;
