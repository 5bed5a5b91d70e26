//! The AF_XDP dataplane: natgw's XDP redirect program, the neighbour table the workers
//! read, the frames they hold for an unresolved next hop, RSS steering, the worker loop
//! and `natgw run`. The kernel interfaces (bpf(2), AF_XDP rings, rtnetlink, ethtool) are
//! the `natgw_kernel` crate; the dataplane reaches the kernel only through it.

#[cfg(debug_assertions)]
mod fault;
pub mod hold;
pub mod neigh;
pub mod rss;
pub mod run;
pub mod worker;
pub mod xdp;
