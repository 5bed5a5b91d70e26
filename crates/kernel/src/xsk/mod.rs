//! AF_XDP sockets: the UMEM frame area and the four single-producer/single-consumer rings
//! shared with the kernel (fill, rx, tx, completion).
//!
//! Frame ownership moves with ring entries: a frame address pushed to the fill ring or a
//! descriptor pushed to the tx ring belongs to the kernel until it comes back through the
//! rx or completion ring. Userspace may touch a frame's bytes only while it owns it.
//!
//! `umem.rs` holds the frame area, `ring.rs` the rings (the per-batch produce/consume),
//! `socket.rs` the socket on top of both.

mod ring;
mod socket;
mod umem;

pub use ring::Desc;
pub use socket::{XdpStatistics, XskConfig, XskSocket, XskStatsReader, wait_rx_any};
pub use umem::{BadDesc, Umem};

use std::io;

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}
