//! IPv4 headers (RFC 791), options included.

use std::net::Ipv4Addr;

use super::checksum;
use super::{Error, Result, read_u16, read_u32, write_u16, write_u32};

pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
}

pub const MIN_HEADER_LEN: usize = 20;

mod field {
    pub const VER_IHL: usize = 0;
    pub const TOS: usize = 1;
    pub const LENGTH: usize = 2;
    pub const IDENT: usize = 4;
    pub const FLG_OFF: usize = 6;
    pub const TTL: usize = 8;
    pub const PROTOCOL: usize = 9;
    pub const CHECKSUM: usize = 10;
    pub const SRC: usize = 12;
    pub const DST: usize = 16;
}

const FLAG_DF: u16 = 0x4000;
const FLAG_MF: u16 = 0x2000;
const OFFSET_MASK: u16 = 0x1FFF;

/// A view of an IPv4 packet.
#[derive(Debug, Clone)]
pub struct Ipv4Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Ipv4Packet<T> {
    /// Wraps `buffer` without validation; accessors may panic if it is short.
    pub fn new_unchecked(buffer: T) -> Self {
        Ipv4Packet { buffer }
    }

    /// Checks the header and that the buffer holds `total_len` bytes. Bytes
    /// past `total_len` (Ethernet minimum-frame padding) are ignored.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_header()?;
        if usize::from(p.total_len()) > p.buffer.as_ref().len() {
            return Err(Error::Truncated);
        }
        Ok(p)
    }

    /// For the header quoted in an ICMP error: the original datagram was cut
    /// off, so `total_len` may exceed the buffer, but the full header and the
    /// 8 bytes of transport header (RFC 792) that NAT needs must be present.
    pub fn new_embedded(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        p.check_header()?;
        if p.buffer.as_ref().len() < p.header_len() + 8 {
            return Err(Error::Truncated);
        }
        Ok(p)
    }

    fn check_header(&self) -> Result<()> {
        if self.buffer.as_ref().len() < MIN_HEADER_LEN {
            return Err(Error::Truncated);
        }
        if self.version() != 4 || self.header_len() < MIN_HEADER_LEN {
            return Err(Error::Malformed);
        }
        if self.header_len() > usize::from(self.total_len()) {
            return Err(Error::Malformed);
        }
        Ok(())
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn version(&self) -> u8 {
        self.buffer.as_ref()[field::VER_IHL] >> 4
    }

    /// Header length in bytes (IHL * 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.buffer.as_ref()[field::VER_IHL] & 0x0F) * 4
    }

    pub fn tos(&self) -> u8 {
        self.buffer.as_ref()[field::TOS]
    }

    pub fn total_len(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::LENGTH)
    }

    pub fn ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::IDENT)
    }

    fn flags_offset(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::FLG_OFF)
    }

    pub fn dont_frag(&self) -> bool {
        self.flags_offset() & FLAG_DF != 0
    }

    pub fn more_frags(&self) -> bool {
        self.flags_offset() & FLAG_MF != 0
    }

    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (self.flags_offset() & OFFSET_MASK) * 8
    }

    pub fn is_fragment(&self) -> bool {
        self.flags_offset() & (FLAG_MF | OFFSET_MASK) != 0
    }

    pub fn ttl(&self) -> u8 {
        self.buffer.as_ref()[field::TTL]
    }

    pub fn protocol(&self) -> u8 {
        self.buffer.as_ref()[field::PROTOCOL]
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    pub fn src_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.src_u32())
    }

    pub fn dst_addr(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.dst_u32())
    }

    pub fn src_u32(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::SRC)
    }

    pub fn dst_u32(&self) -> u32 {
        read_u32(self.buffer.as_ref(), field::DST)
    }

    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(self.header()) == 0
    }

    pub fn header(&self) -> &[u8] {
        &self.buffer.as_ref()[..self.header_len()]
    }

    /// Options bytes (empty when IHL is 5).
    pub fn options(&self) -> &[u8] {
        &self.buffer.as_ref()[MIN_HEADER_LEN..self.header_len()]
    }

    /// The payload up to `total_len`, or to the end of the buffer if that
    /// comes first (only possible for an embedded header).
    pub fn payload(&self) -> &[u8] {
        let r = self.payload_range();
        &self.buffer.as_ref()[r]
    }

    fn payload_range(&self) -> core::ops::Range<usize> {
        let len = self.buffer.as_ref().len();
        let end = usize::from(self.total_len()).min(len);
        // min() keeps the range well-formed for unchecked views whose IHL
        // points past total_len.
        self.header_len().min(end)..end
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Ipv4Packet<T> {
    pub fn set_version_and_header_len(&mut self, version: u8, header_len: usize) {
        self.buffer.as_mut()[field::VER_IHL] = (version << 4) | ((header_len / 4) as u8 & 0x0F);
    }

    pub fn set_tos(&mut self, v: u8) {
        self.buffer.as_mut()[field::TOS] = v;
    }

    pub fn set_ttl(&mut self, v: u8) {
        self.buffer.as_mut()[field::TTL] = v;
    }

    pub fn set_checksum(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, v);
    }

    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        write_u32(self.buffer.as_mut(), field::SRC, u32::from(a));
    }

    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        write_u32(self.buffer.as_mut(), field::DST, u32::from(a));
    }

    pub fn set_total_len(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::LENGTH, v);
    }

    pub fn set_ident(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::IDENT, v);
    }

    pub fn set_protocol(&mut self, v: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = v;
    }

    /// Sets DF, MF and the fragment offset (given in bytes, truncated to a
    /// multiple of 8).
    pub fn set_frag_fields(&mut self, dont_frag: bool, more_frags: bool, offset_bytes: u16) {
        let mut v = (offset_bytes / 8) & OFFSET_MASK;
        if dont_frag {
            v |= FLAG_DF;
        }
        if more_frags {
            v |= FLAG_MF;
        }
        write_u16(self.buffer.as_mut(), field::FLG_OFF, v);
    }

    /// Recomputes the header checksum from scratch.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::checksum(self.header());
        self.set_checksum(c);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let r = self.payload_range();
        &mut self.buffer.as_mut()[r]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for Ipv4Packet<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

/// The fields of an option-less IPv4 header, for building packets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ipv4Repr {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub protocol: u8,
    pub payload_len: u16,
    pub ttl: u8,
    pub ident: u16,
    pub dont_frag: bool,
    pub tos: u8,
}

impl Ipv4Repr {
    /// Reads the header fields. Re-validates the structure (the view may have
    /// been built unchecked) but not the checksum, which the caller checks
    /// with [`Ipv4Packet::verify_checksum`] if it wants to. Options are
    /// dropped; `payload_len` is `total_len - header_len`.
    pub fn parse<T: AsRef<[u8]>>(p: &Ipv4Packet<T>) -> Result<Self> {
        p.check_header()?;
        Ok(Ipv4Repr {
            src: p.src_addr(),
            dst: p.dst_addr(),
            protocol: p.protocol(),
            payload_len: p.total_len() - p.header_len() as u16,
            ttl: p.ttl(),
            ident: p.ident(),
            dont_frag: p.dont_frag(),
            tos: p.tos(),
        })
    }

    /// Writes a 20-byte header, checksum included. `total_len` saturates at
    /// 65535 if `payload_len` is too large.
    ///
    /// # Panics
    /// If the buffer is shorter than [`MIN_HEADER_LEN`].
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, p: &mut Ipv4Packet<T>) {
        p.set_version_and_header_len(4, MIN_HEADER_LEN);
        p.set_tos(self.tos);
        p.set_total_len(self.payload_len.saturating_add(MIN_HEADER_LEN as u16));
        p.set_ident(self.ident);
        p.set_frag_fields(self.dont_frag, false, 0);
        p.set_ttl(self.ttl);
        p.set_protocol(self.protocol);
        p.set_src_addr(self.src);
        p.set_dst_addr(self.dst);
        p.fill_checksum();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 20-byte header + 4 bytes option (NOP x3 + EOL) + 8 bytes payload.
    fn sample() -> Vec<u8> {
        let mut b = vec![
            0x46, 0xB8, 0x00, 32, 0x12, 0x34, 0x40, 0x00, 64, 17, 0, 0, 10, 0, 0, 1, 192, 168, 1,
            2, 1, 1, 1, 0,
        ];
        b.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
        p.fill_checksum();
        b
    }

    #[test]
    fn fields() {
        let b = sample();
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 24);
        assert_eq!(p.tos(), 0xB8);
        assert_eq!(p.total_len(), 32);
        assert_eq!(p.ident(), 0x1234);
        assert!(p.dont_frag());
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert!(!p.is_fragment());
        assert_eq!(p.ttl(), 64);
        assert_eq!(p.protocol(), proto::UDP);
        assert_eq!(p.src_addr(), Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(p.dst_addr(), Ipv4Addr::new(192, 168, 1, 2));
        assert_eq!(p.src_u32(), 0x0A00_0001);
        assert_eq!(p.dst_u32(), 0xC0A8_0102);
        assert_eq!(p.options(), &[1, 1, 1, 0]);
        assert_eq!(p.header().len(), 24);
        assert_eq!(p.payload(), &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(p.verify_checksum());
    }

    #[test]
    fn setters_round_trip() {
        let mut b = sample();
        let mut p = Ipv4Packet::new_checked(&mut b[..]).unwrap();
        p.set_ttl(1);
        p.set_src_addr(Ipv4Addr::new(255, 255, 255, 255));
        p.set_dst_addr(Ipv4Addr::new(0, 0, 0, 0));
        p.set_ident(0xFFFF);
        p.set_protocol(proto::TCP);
        p.set_tos(3);
        p.set_frag_fields(false, true, 1480);
        assert!(!p.verify_checksum());
        p.fill_checksum();
        assert!(p.verify_checksum());
        p.set_total_len(30);
        p.payload_mut()[0] = 0xEE;
        assert_eq!(p.ttl(), 1);
        assert_eq!(p.src_u32(), 0xFFFF_FFFF);
        assert_eq!(p.dst_u32(), 0);
        assert_eq!(p.ident(), 0xFFFF);
        assert_eq!(p.protocol(), proto::TCP);
        assert_eq!(p.tos(), 3);
        assert!(!p.dont_frag());
        assert!(p.more_frags());
        assert_eq!(p.frag_offset(), 1480);
        assert!(p.is_fragment());
        assert_eq!(p.payload(), &[0xEE, 2, 3, 4, 5, 6]);
        p.set_checksum(0xABCD);
        assert_eq!(p.checksum(), 0xABCD);
        assert_eq!(&b[4..12], &[0xFF, 0xFF, 0x20, 0xB9, 1, 6, 0xAB, 0xCD]);
    }

    #[test]
    fn offset_only_is_fragment() {
        let mut b = sample();
        let mut p = Ipv4Packet::new_checked(&mut b[..]).unwrap();
        p.set_frag_fields(false, false, 8);
        assert!(p.is_fragment());
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 8);
        p.set_frag_fields(false, false, 0xFFFF);
        assert_eq!(p.frag_offset(), 0x1FFF * 8);
    }

    #[test]
    fn padding_is_ignored() {
        let mut b = sample();
        b.extend_from_slice(&[0xCC; 14]);
        let p = Ipv4Packet::new_checked(&b[..]).unwrap();
        assert_eq!(p.payload(), &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn truncation() {
        let b = sample();
        for n in 0..=b.len() {
            let r = Ipv4Packet::new_checked(&b[..n]);
            if n < b.len() {
                assert_eq!(r.err(), Some(Error::Truncated), "len {n}");
            } else {
                assert!(r.is_ok());
            }
            let e = Ipv4Packet::new_embedded(&b[..n]);
            if n < 24 + 8 {
                assert_eq!(e.err(), Some(Error::Truncated), "embedded len {n}");
            } else {
                assert_eq!(e.unwrap().payload().len(), n - 24);
            }
        }
    }

    #[test]
    fn embedded_allows_short_total_len() {
        let mut b = sample();
        Ipv4Packet::new_unchecked(&mut b[..]).set_total_len(1500);
        assert_eq!(
            Ipv4Packet::new_checked(&b[..]).err(),
            Some(Error::Truncated)
        );
        let p = Ipv4Packet::new_embedded(&b[..]).unwrap();
        assert_eq!(p.payload(), &[1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[test]
    fn malformed() {
        let mut b = sample();
        for v in [0u8, 5, 6, 15] {
            b[0] = (v << 4) | 6;
            assert_eq!(
                Ipv4Packet::new_checked(&b[..]).err(),
                Some(Error::Malformed)
            );
            assert_eq!(
                Ipv4Packet::new_embedded(&b[..]).err(),
                Some(Error::Malformed)
            );
        }
        for ihl in 0..5u8 {
            b[0] = 0x40 | ihl;
            assert_eq!(
                Ipv4Packet::new_checked(&b[..]).err(),
                Some(Error::Malformed)
            );
            assert_eq!(
                Ipv4Packet::new_embedded(&b[..]).err(),
                Some(Error::Malformed)
            );
        }
        // header_len (24) > total_len (23)
        let mut b = sample();
        b[3] = 23;
        assert_eq!(
            Ipv4Packet::new_checked(&b[..]).err(),
            Some(Error::Malformed)
        );
        assert_eq!(
            Ipv4Packet::new_embedded(&b[..]).err(),
            Some(Error::Malformed)
        );
        // IHL 15 (60 bytes) larger than both total_len and buffer
        let mut b = sample();
        b[0] = 0x4F;
        assert_eq!(
            Ipv4Packet::new_checked(&b[..]).err(),
            Some(Error::Malformed)
        );
        let p = Ipv4Packet::new_unchecked(&b[..]);
        assert_eq!(Ipv4Repr::parse(&p).err(), Some(Error::Malformed));
    }

    #[test]
    fn repr_round_trip() {
        let repr = Ipv4Repr {
            src: Ipv4Addr::new(100, 64, 0, 1),
            dst: Ipv4Addr::new(8, 8, 8, 8),
            protocol: proto::ICMP,
            payload_len: 36,
            ttl: 63,
            ident: 0xBEEF,
            dont_frag: true,
            tos: 0x10,
        };
        let mut b = [0xFFu8; 20];
        let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
        repr.emit(&mut p);
        assert!(p.verify_checksum());
        assert_eq!(p.version(), 4);
        assert_eq!(p.header_len(), 20);
        assert_eq!(p.total_len(), 56);
        assert!(!p.more_frags());
        assert_eq!(p.frag_offset(), 0);
        assert_eq!(Ipv4Repr::parse(&p).unwrap(), repr);

        let b = sample();
        let r = Ipv4Repr::parse(&Ipv4Packet::new_checked(&b[..]).unwrap()).unwrap();
        assert_eq!(r.payload_len, 8);
        assert_eq!(r.ident, 0x1234);
        assert!(r.dont_frag);
        assert_eq!(r.tos, 0xB8);
    }
}
