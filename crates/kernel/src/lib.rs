//! natgw's kernel interfaces, in pure Rust over `libc` (no clang, libbpf or libxdp):
//!
//! - [`caps`]: capabilities of a thread, and locking memory;
//! - [`bpf`]: eBPF instructions and an assembler, the bpf(2) wrapper, maps, program loading
//!   and links (XDP, tcx);
//! - [`xsk`]: AF_XDP UMEM, rings and sockets;
//! - [`xdp`]: a minimal program steering every IPv4 frame to AF_XDP sockets (bench tools);
//! - [`netlink`]: rtnetlink links, addresses and the IPv4 neighbour table;
//! - [`ethtool`]: RSS, channel and offload settings (raw results);
//! - [`signal`]: SIGTERM/SIGINT as a shutdown request;
//! - [`sys`]: errno-carrying errors and small syscall helpers;
//! - [`wake`]: an eventfd and poll(2) over several descriptors, to sleep until woken.
//!
//! Every call works in the calling thread's network namespace.

pub mod bpf;
pub mod caps;
pub mod ethtool;
pub mod netlink;
pub mod sched;
pub mod signal;
pub mod sys;
pub mod wake;
pub mod xdp;
pub mod xsk;
