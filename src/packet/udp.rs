//! UDP datagrams (RFC 768).

use std::net::Ipv4Addr;

use super::checksum;
use super::ipv4::Protocol;
use super::{Error, Result, read_u16, write_u16};

pub const HEADER_LEN: usize = 8;

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const LENGTH: usize = 4;
    pub const CHECKSUM: usize = 6;
}

/// A view of a UDP datagram.
#[derive(Debug, Clone)]
pub struct UdpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> UdpPacket<T> {
    /// Wraps `buffer` without validation; accessors may panic if it is short.
    pub fn new_unchecked(buffer: T) -> Self {
        UdpPacket { buffer }
    }

    /// Checks that the header fits and the length field is sane. A length
    /// beyond the buffer is accepted: the first fragment of a fragmented
    /// datagram, or the 8 bytes quoted in an ICMP error, look like that.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        if p.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if usize::from(p.len()) < HEADER_LEN {
            return Err(Error::Malformed);
        }
        Ok(p)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn src_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::SRC_PORT)
    }

    pub fn dst_port(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::DST_PORT)
    }

    /// The length field (header + payload).
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Bytes `0..min(len, buffer len)`: the part of the datagram that is here.
    fn datagram_end(&self) -> usize {
        usize::from(self.len()).min(self.buffer.as_ref().len())
    }

    pub fn payload(&self) -> &[u8] {
        let end = self.datagram_end();
        &self.buffer.as_ref()[HEADER_LEN.min(end)..end]
    }

    /// Sum over pseudo-header and the datagram bytes present. Meaningless
    /// for a fragment, whose remaining bytes are elsewhere.
    fn full_sum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u32 {
        let data = &self.buffer.as_ref()[..self.datagram_end()];
        checksum::pseudo_header_sum(src, dst, Protocol::UDP, self.len()) + checksum::sum(data)
    }

    /// True if the checksum is correct or absent (zero).
    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        self.checksum() == 0 || checksum::fold(self.full_sum(src, dst)) == 0xFFFF
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> UdpPacket<T> {
    pub fn set_src_port(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT, v);
    }

    pub fn set_dst_port(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT, v);
    }

    pub fn set_len(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, v);
    }

    pub fn set_checksum(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, v);
    }

    /// Computes the checksum over `len` bytes; a computed zero is sent as
    /// `0xFFFF` because zero means "no checksum".
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let c = match !checksum::fold(self.full_sum(src, dst)) {
            0 => 0xFFFF,
            c => c,
        };
        self.set_checksum(c);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let end = self.datagram_end();
        &mut self.buffer.as_mut()[HEADER_LEN.min(end)..end]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for UdpPacket<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(192, 0, 2, 1);
    const DST: Ipv4Addr = Ipv4Addr::new(198, 51, 100, 7);

    fn sample() -> Vec<u8> {
        let mut b = vec![
            0x30, 0x39, 0x00, 0x35, 0x00, 13, 0, 0, b'h', b'e', b'l', b'l', b'o',
        ];
        UdpPacket::new_unchecked(&mut b[..]).fill_checksum(SRC, DST);
        b
    }

    #[test]
    fn fields_and_setters() {
        let mut b = sample();
        let mut p = UdpPacket::new_checked(&mut b[..]).unwrap();
        assert_eq!(p.src_port(), 12345);
        assert_eq!(p.dst_port(), 53);
        assert_eq!(p.len(), 13);
        assert_eq!(p.payload(), b"hello");
        assert_ne!(p.checksum(), 0);
        assert!(p.verify_checksum(SRC, DST));
        assert!(!p.verify_checksum(SRC, Ipv4Addr::new(198, 51, 100, 8)));
        p.set_src_port(0xFFFF);
        p.set_dst_port(0);
        assert!(!p.verify_checksum(SRC, DST));
        p.payload_mut()[0] = b'j';
        p.set_len(10);
        assert_eq!(p.payload(), b"je");
        p.set_checksum(0);
        assert!(p.verify_checksum(SRC, DST));
        assert_eq!(&b[..8], &[0xFF, 0xFF, 0, 0, 0, 10, 0, 0]);
    }

    #[test]
    fn computed_zero_is_sent_as_ffff() {
        // Pick a payload word that makes the one's complement sum 0xFFFF.
        let mut b = vec![0x12, 0x34, 0x56, 0x78, 0x00, 10, 0, 0, 0, 0];
        let rest = checksum::fold(
            checksum::pseudo_header_sum(SRC, DST, Protocol::UDP, 10) + checksum::sum(&b),
        );
        let w = 0xFFFF - rest; // rest + w == 0xFFFF without carry
        b[8..10].copy_from_slice(&w.to_be_bytes());
        let mut p = UdpPacket::new_checked(&mut b[..]).unwrap();
        p.fill_checksum(SRC, DST);
        assert_eq!(p.checksum(), 0xFFFF);
        assert!(p.verify_checksum(SRC, DST));
    }

    #[test]
    fn long_length_is_accepted() {
        let mut b = sample();
        b[4..6].copy_from_slice(&1000u16.to_be_bytes());
        let p = UdpPacket::new_checked(&b[..]).unwrap();
        assert_eq!(p.len(), 1000);
        assert_eq!(p.payload(), b"hello");
    }

    #[test]
    fn truncation_and_malformed() {
        let b = sample();
        for n in 0..=b.len() {
            let r = UdpPacket::new_checked(&b[..n]);
            if n < HEADER_LEN {
                assert_eq!(r.err(), Some(Error::Truncated), "len {n}");
            } else {
                assert_eq!(r.unwrap().payload().len(), n - HEADER_LEN);
            }
        }
        let mut b = sample();
        for l in 0..8u16 {
            b[4..6].copy_from_slice(&l.to_be_bytes());
            assert_eq!(UdpPacket::new_checked(&b[..]).err(), Some(Error::Malformed));
        }
    }
}
