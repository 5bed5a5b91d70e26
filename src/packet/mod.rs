//! Typed zero-copy views over packet bytes.
//!
//! Each view wraps a buffer `T: AsRef<[u8]>` and reads fields straight out of
//! it in network byte order. `new_checked` validates the lengths every
//! accessor relies on, so a view built that way never panics; `new_unchecked`
//! skips validation and its accessors may panic on a short buffer.

pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod tcp;
pub mod udp;

pub use ethernet::EthernetFrame;
pub use icmp::IcmpPacket;
pub use ipv4::{Ipv4Packet, Ipv4Repr};
pub use tcp::TcpPacket;
pub use udp::UdpPacket;

use core::fmt;

/// Why a buffer could not be viewed as a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The buffer is shorter than the headers or lengths require.
    Truncated,
    /// A field holds a value the format does not allow.
    Malformed,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => f.write_str("truncated packet"),
            Error::Malformed => f.write_str("malformed packet"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = core::result::Result<T, Error>;

/// Big-endian field access at an offset the caller has bounds-checked (a view's checked
/// constructor or the engine's parse): the one copy in the crate. The views use them, and so
/// do the engine's rewrites, which patch fields at offsets `nat::parse` validated.
#[inline(always)]
pub fn read_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline(always)]
pub fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline(always)]
pub fn write_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline(always)]
pub fn write_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

#[cfg(test)]
mod tests;
