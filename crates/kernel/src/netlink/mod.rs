//! rtnetlink (NETLINK_ROUTE) over raw `libc` sockets: link and address queries, link change
//! notifications, the IPv4 neighbour (ARP) table, its change notifications and neighbour
//! resolution.
//!
//! Every call opens its socket in the calling thread's network namespace, so a thread
//! that did `setns` sees that namespace's links and neighbours.
//!
//! `message.rs` reads and builds netlink messages, `socket.rs` talks to the kernel,
//! `link.rs` holds the link and address queries and `neigh.rs` the neighbour table.

#[cfg(test)]
mod fixtures;
mod link;
mod message;
mod neigh;
mod socket;

pub use link::{LinkEvent, LinkInfo, LinkSocket, addresses, link_by_name};
pub use neigh::{
    NUD_DELAY, NUD_FAILED, NUD_INCOMPLETE, NUD_NOARP, NUD_NONE, NUD_PERMANENT, NUD_PROBE,
    NUD_REACHABLE, NUD_STALE, NeighEvent, NeighSocket, Neighbour, neighbour, resolve,
};
