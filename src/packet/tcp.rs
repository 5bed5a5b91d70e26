//! TCP segments (RFC 9293). Options are carried; only the window scale option is interpreted
//! ([`TcpPacket::window_scale`]).

use std::net::Ipv4Addr;

use super::checksum;
use super::ipv4::Protocol;
use super::{Error, Result, read_u16, read_u32, write_u16, write_u32};

pub const MIN_HEADER_LEN: usize = 20;

/// Option kinds (RFC 9293 section 3.2, RFC 7323).
pub mod option {
    pub const END: u8 = 0;
    pub const NOP: u8 = 1;
    pub const WINDOW_SCALE: u8 = 3;
}

/// RFC 7323 section 2.3: a shift count above 14 is used as 14.
pub const MAX_WINDOW_SCALE: u8 = 14;

pub mod flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
    pub const URG: u8 = 0x20;
    pub const ECE: u8 = 0x40;
    pub const CWR: u8 = 0x80;
}

mod field {
    pub const SRC_PORT: usize = 0;
    pub const DST_PORT: usize = 2;
    pub const SEQ: usize = 4;
    pub const ACK: usize = 8;
    pub const DATA_OFF: usize = 12;
    pub const FLAGS: usize = 13;
    pub const WINDOW: usize = 14;
    pub const CHECKSUM: usize = 16;
    pub const URGENT: usize = 18;
}

/// A view of a TCP segment; the whole buffer is the segment.
#[derive(Debug, Clone)]
pub struct TcpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> TcpPacket<T> {
    /// Wraps `buffer` without validation; accessors may panic if it is short.
    pub fn new_unchecked(buffer: T) -> Self {
        TcpPacket { buffer }
    }

    /// Checks that the fixed header and the options fit.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        if p.buffer.as_ref().len() < MIN_HEADER_LEN {
            return Err(Error::Truncated);
        }
        if p.header_len() < MIN_HEADER_LEN {
            return Err(Error::Malformed);
        }
        if p.header_len() > p.buffer.as_ref().len() {
            return Err(Error::Truncated);
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

    pub fn seq_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SEQ)
    }

    pub fn ack_number(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::ACK)
    }

    /// Header length in bytes (data offset * 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::DATA_OFF] >> 4) * 4
    }

    /// The eight flag bits CWR..FIN (NS, in the data-offset byte, is left out).
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref()[field::FLAGS]
    }

    pub fn fin(&self) -> bool {
        self.flags() & flags::FIN != 0
    }

    pub fn syn(&self) -> bool {
        self.flags() & flags::SYN != 0
    }

    pub fn rst(&self) -> bool {
        self.flags() & flags::RST != 0
    }

    pub fn psh(&self) -> bool {
        self.flags() & flags::PSH != 0
    }

    pub fn ack(&self) -> bool {
        self.flags() & flags::ACK != 0
    }

    pub fn window(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::WINDOW)
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    pub fn urgent_pointer(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::URGENT)
    }

    pub fn options(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let end = self.header_len().min(b.len());
        &b[MIN_HEADER_LEN.min(end)..end]
    }

    /// The window scale option's shift count (clamped to [`MAX_WINDOW_SCALE`]), if the
    /// options carry one. Walks the options with a bounds check per step: a malformed list
    /// (a length byte below 2 or past the end) ends the walk with what was found so far,
    /// never a panic.
    pub fn window_scale(&self) -> Option<u8> {
        let mut o = self.options();
        while let [kind, rest @ ..] = o {
            match *kind {
                option::END => return None,
                option::NOP => o = rest,
                k => {
                    let len = usize::from(*rest.first()?);
                    if len < 2 || len > o.len() {
                        return None;
                    }
                    if k == option::WINDOW_SCALE && len == 3 {
                        return Some(o[2].min(MAX_WINDOW_SCALE));
                    }
                    o = &o[len..];
                }
            }
        }
        None
    }

    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[self.header_len().min(b.len())..]
    }

    fn full_sum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> u32 {
        let b = self.buffer.as_ref();
        // A segment cannot exceed 65535 bytes inside IPv4; truncating the
        // length of an oversized buffer just yields a wrong checksum.
        checksum::pseudo_header_sum(src, dst, Protocol::TCP, b.len() as u16) + checksum::sum(b)
    }

    pub fn verify_checksum(&self, src: Ipv4Addr, dst: Ipv4Addr) -> bool {
        checksum::fold(self.full_sum(src, dst)) == 0xFFFF
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> TcpPacket<T> {
    pub fn set_src_port(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::SRC_PORT, v);
    }

    pub fn set_dst_port(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::DST_PORT, v);
    }

    pub fn set_seq_number(&mut self, v: u32) {
        write_u32(self.buffer.as_mut(), field::SEQ, v);
    }

    pub fn set_ack_number(&mut self, v: u32) {
        write_u32(self.buffer.as_mut(), field::ACK, v);
    }

    /// Sets the data offset; keeps the low nibble (reserved bits and NS).
    pub fn set_header_len(&mut self, len: usize) {
        let b = self.buffer.as_mut();
        b[field::DATA_OFF] = (((len / 4) as u8) << 4) | (b[field::DATA_OFF] & 0x0F);
    }

    pub fn set_flags(&mut self, v: u8) {
        self.buffer.as_mut()[field::FLAGS] = v;
    }

    pub fn set_window(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::WINDOW, v);
    }

    pub fn set_checksum(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, v);
    }

    pub fn set_urgent_pointer(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::URGENT, v);
    }

    /// Computes the checksum with the whole buffer as the segment.
    pub fn fill_checksum(&mut self, src: Ipv4Addr, dst: Ipv4Addr) {
        self.set_checksum(0);
        let c = !checksum::fold(self.full_sum(src, dst));
        self.set_checksum(c);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let h = self.header_len();
        let b = self.buffer.as_mut();
        let start = h.min(b.len());
        &mut b[start..]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for TcpPacket<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SRC: Ipv4Addr = Ipv4Addr::new(10, 1, 2, 3);
    const DST: Ipv4Addr = Ipv4Addr::new(172, 16, 0, 9);

    /// 24-byte header (MSS option) + 3 bytes of data.
    fn sample() -> Vec<u8> {
        let mut b = vec![
            0xC0, 0x00, 0x01, 0xBB, // ports 49152 -> 443
            0x01, 0x02, 0x03, 0x04, // seq
            0xA0, 0xB0, 0xC0, 0xD0, // ack
            0x60, 0x12, // data offset 6, SYN|ACK
            0xFA, 0xF0, // window
            0, 0, // checksum
            0, 0, // urgent
            2, 4, 0x05, 0xB4, // MSS 1460
            b'a', b'b', b'c',
        ];
        TcpPacket::new_unchecked(&mut b[..]).fill_checksum(SRC, DST);
        b
    }

    #[test]
    fn fields() {
        let b = sample();
        let p = TcpPacket::new_checked(&b[..]).unwrap();
        assert_eq!(p.src_port(), 49152);
        assert_eq!(p.dst_port(), 443);
        assert_eq!(p.seq_number(), 0x0102_0304);
        assert_eq!(p.ack_number(), 0xA0B0_C0D0);
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.flags(), flags::SYN | flags::ACK);
        assert!(p.syn() && p.ack());
        assert!(!p.fin() && !p.rst() && !p.psh());
        assert_eq!(p.window(), 0xFAF0);
        assert_eq!(p.urgent_pointer(), 0);
        assert_eq!(p.options(), &[2, 4, 0x05, 0xB4]);
        assert_eq!(p.payload(), b"abc");
        assert!(p.verify_checksum(SRC, DST));
        // Swapping addresses would not change the sum; change one instead.
        assert!(!p.verify_checksum(SRC, Ipv4Addr::new(172, 16, 0, 10)));
    }

    #[test]
    fn setters_round_trip() {
        let mut b = sample();
        let mut p = TcpPacket::new_checked(&mut b[..]).unwrap();
        p.set_src_port(1);
        p.set_dst_port(0xFFFF);
        p.set_seq_number(0xFFFF_FFFF);
        p.set_ack_number(7);
        p.set_flags(flags::FIN | flags::RST | flags::PSH);
        p.set_window(0);
        p.set_urgent_pointer(9);
        p.set_header_len(20);
        assert!(!p.verify_checksum(SRC, DST));
        p.fill_checksum(SRC, DST);
        assert!(p.verify_checksum(SRC, DST));
        p.payload_mut()[0] = 0xEE;
        assert_eq!(p.src_port(), 1);
        assert_eq!(p.dst_port(), 0xFFFF);
        assert_eq!(p.seq_number(), 0xFFFF_FFFF);
        assert_eq!(p.ack_number(), 7);
        assert!(p.fin() && p.rst() && p.psh() && !p.syn() && !p.ack());
        assert_eq!(p.window(), 0);
        assert_eq!(p.urgent_pointer(), 9);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.payload().len(), 7);
        p.set_checksum(0x1234);
        assert_eq!(p.checksum(), 0x1234);
        assert_eq!(b[12], 0x50);
        assert_eq!(b[20], 0xEE);
    }

    fn with_options(opts: &[u8]) -> Vec<u8> {
        let mut b = sample()[..20].to_vec();
        b.extend_from_slice(opts);
        b[12] = (((20 + opts.len()) / 4) << 4) as u8;
        b
    }

    #[test]
    fn window_scale_option() {
        // A SYN as Linux sends it: MSS, SACK permitted, timestamps, NOP, window scale 7.
        let linux = [
            2, 4, 0x05, 0xb4, 4, 2, 8, 10, 0, 0, 0, 1, 0, 0, 0, 0, 1, 3, 3, 7,
        ];
        let b = with_options(&linux);
        assert_eq!(
            TcpPacket::new_checked(&b[..]).unwrap().window_scale(),
            Some(7)
        );
        for (opts, want) in [
            (&[1, 1, 3, 3, 14, 0, 0, 0][..], Some(14)),
            (&[3, 3, 15, 0], Some(MAX_WINDOW_SCALE)),
            (&[3, 3, 255, 0], Some(MAX_WINDOW_SCALE)),
            (&[2, 4, 0x05, 0xb4], None),
            (&[0, 3, 3, 7], None),             // after END-of-list
            (&[2, 0, 3, 3, 7, 0, 0, 0], None), // length 0: malformed, stop
            (&[2, 9, 3, 3], None),             // length past the options
            (&[3, 4, 7, 0], None),             // window scale of the wrong length
            (&[1, 1, 1, 3], None),             // kind without its length byte
        ] {
            let b = with_options(opts);
            let p = TcpPacket::new_checked(&b[..]).unwrap();
            assert_eq!(p.window_scale(), want, "{opts:?}");
        }
        // A header whose options run past the buffer: the walk sees what is there.
        let mut b = with_options(&[1, 3, 3, 9]);
        b[12] = 0xf0;
        assert_eq!(TcpPacket::new_unchecked(&b[..]).window_scale(), Some(9));
        b.truncate(22);
        assert_eq!(TcpPacket::new_unchecked(&b[..]).window_scale(), None);
    }

    #[test]
    fn truncation_and_malformed() {
        let b = sample();
        for n in 0..=b.len() {
            let r = TcpPacket::new_checked(&b[..n]);
            if n < 24 {
                assert_eq!(r.err(), Some(Error::Truncated), "len {n}");
            } else {
                assert_eq!(r.unwrap().payload().len(), n - 24);
            }
        }
        let mut b = sample();
        for off in 0..5u8 {
            b[12] = off << 4;
            assert_eq!(TcpPacket::new_checked(&b[..]).err(), Some(Error::Malformed));
        }
        b[12] = 0xF0; // 60 bytes > 27
        assert_eq!(TcpPacket::new_checked(&b[..]).err(), Some(Error::Truncated));
    }
}
