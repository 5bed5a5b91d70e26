//! The AF_XDP dataplane: XDP program, sockets and rings, kernel neighbour/link state, RSS.

pub mod bpf;
pub mod ethtool;
pub mod netlink;
pub mod run;
pub mod sys;
pub mod toeplitz;
pub mod worker;
pub mod xsk;
