//! ICMPv4 messages (RFC 792): echo, and errors quoting an IPv4 header.

use super::checksum::{self, Delta};
use super::ipv4::Ipv4Packet;
use super::{Error, Result, read_u16, write_u16};

pub const ECHO_REPLY: u8 = 0;
pub const DEST_UNREACHABLE: u8 = 3;
pub const ECHO_REQUEST: u8 = 8;
pub const TIME_EXCEEDED: u8 = 11;
pub const PARAMETER_PROBLEM: u8 = 12;

pub const HEADER_LEN: usize = 8;

mod field {
    pub const TYPE: usize = 0;
    pub const CODE: usize = 1;
    pub const CHECKSUM: usize = 2;
    pub const ECHO_IDENT: usize = 4;
    pub const ECHO_SEQ: usize = 6;
}

/// A view of an ICMP message; the whole buffer is the message.
#[derive(Debug, Clone)]
pub struct IcmpPacket<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> IcmpPacket<T> {
    /// Wraps `buffer` without validation; accessors may panic if it is short.
    pub fn new_unchecked(buffer: T) -> Self {
        IcmpPacket { buffer }
    }

    pub fn new_checked(buffer: T) -> Result<Self> {
        let p = Self::new_unchecked(buffer);
        if p.buffer.as_ref().len() < HEADER_LEN {
            return Err(Error::Truncated);
        }
        Ok(p)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn msg_type(&self) -> u8 {
        self.buffer.as_ref()[field::TYPE]
    }

    pub fn code(&self) -> u8 {
        self.buffer.as_ref()[field::CODE]
    }

    pub fn checksum(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::CHECKSUM)
    }

    /// Echo identifier (bytes 4..6); meaningful only for echo messages.
    pub fn echo_ident(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_IDENT)
    }

    /// Echo sequence number (bytes 6..8); meaningful only for echo messages.
    pub fn echo_seq(&self) -> u16 {
        read_u16(self.buffer.as_ref(), field::ECHO_SEQ)
    }

    /// Destination unreachable, time exceeded or parameter problem: the
    /// error types that quote the offending datagram.
    pub fn is_error(&self) -> bool {
        matches!(
            self.msg_type(),
            DEST_UNREACHABLE | TIME_EXCEEDED | PARAMETER_PROBLEM
        )
    }

    pub fn is_echo(&self) -> bool {
        matches!(self.msg_type(), ECHO_REPLY | ECHO_REQUEST)
    }

    /// Everything after the 8-byte header: echo data, or for errors the
    /// quoted IPv4 header and at least 8 bytes of its payload.
    pub fn data(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        &b[HEADER_LEN.min(b.len())..]
    }

    /// The quoted datagram of an error message, validated with
    /// [`Ipv4Packet::new_embedded`]. Does not check [`is_error`](Self::is_error).
    pub fn embedded(&self) -> Result<Ipv4Packet<&[u8]>> {
        Ipv4Packet::new_embedded(self.data())
    }

    pub fn verify_checksum(&self) -> bool {
        checksum::checksum(self.buffer.as_ref()) == 0
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> IcmpPacket<T> {
    pub fn set_msg_type(&mut self, v: u8) {
        self.buffer.as_mut()[field::TYPE] = v;
    }

    pub fn set_code(&mut self, v: u8) {
        self.buffer.as_mut()[field::CODE] = v;
    }

    pub fn set_checksum(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::CHECKSUM, v);
    }

    pub fn set_echo_ident(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::ECHO_IDENT, v);
    }

    pub fn set_echo_seq(&mut self, v: u16) {
        write_u16(self.buffer.as_mut(), field::ECHO_SEQ, v);
    }

    pub fn data_mut(&mut self) -> &mut [u8] {
        let b = self.buffer.as_mut();
        let start = HEADER_LEN.min(b.len());
        &mut b[start..]
    }

    /// Mutable form of [`embedded`](IcmpPacket::embedded).
    pub fn embedded_mut(&mut self) -> Result<Ipv4Packet<&mut [u8]>> {
        Ipv4Packet::new_embedded(self.data_mut())
    }

    /// Recomputes the checksum over the whole buffer.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let c = checksum::checksum(self.buffer.as_ref());
        self.set_checksum(c);
    }

    /// Applies `delta` to the checksum after the message has been rewritten.
    ///
    /// Unlike TCP/UDP/IPv4, an ICMP message can be all zeros (an echo reply
    /// with id 0, seq 0 and zero data), whose only correct checksum is
    /// `0xFFFF`, while [`Delta::apply`] yields `0x0000` there (see the
    /// [`checksum`] module). The rare `0x0000` result is
    /// therefore double-checked against the data, which keeps the result
    /// identical to [`fill_checksum`](Self::fill_checksum).
    pub fn update_checksum(&mut self, delta: Delta) {
        let c = delta.apply(self.checksum());
        self.set_checksum(c);
        if c == 0 && self.buffer.as_ref().iter().all(|&b| b == 0) {
            self.set_checksum(0xFFFF);
        }
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for IcmpPacket<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::ipv4::Protocol;

    fn echo() -> Vec<u8> {
        let mut b = vec![
            ECHO_REQUEST,
            0,
            0,
            0,
            0x12,
            0x34,
            0x00,
            0x07,
            b'p',
            b'i',
            b'n',
            b'g',
        ];
        IcmpPacket::new_unchecked(&mut b[..]).fill_checksum();
        b
    }

    /// Port unreachable quoting a UDP datagram (20-byte IP header + 8 bytes).
    fn error() -> Vec<u8> {
        let mut b = vec![DEST_UNREACHABLE, 3, 0, 0, 0, 0, 0, 0];
        b.extend_from_slice(&[
            0x45, 0, 0, 100, 0, 1, 0, 0, 64, 17, 0, 0, 10, 0, 0, 5, 8, 8, 4, 4, // IP
            0x9C, 0x40, 0x00, 0x35, 0x00, 80, 0xAB, 0xCD, // UDP
        ]);
        IcmpPacket::new_unchecked(&mut b[..]).fill_checksum();
        b
    }

    #[test]
    fn echo_fields_and_setters() {
        let mut b = echo();
        let mut p = IcmpPacket::new_checked(&mut b[..]).unwrap();
        assert_eq!(p.msg_type(), ECHO_REQUEST);
        assert_eq!(p.code(), 0);
        assert_eq!(p.echo_ident(), 0x1234);
        assert_eq!(p.echo_seq(), 7);
        assert!(p.is_echo() && !p.is_error());
        assert_eq!(p.data(), b"ping");
        assert!(p.verify_checksum());
        p.set_msg_type(ECHO_REPLY);
        p.set_code(1);
        p.set_echo_ident(0xFFFF);
        p.set_echo_seq(0);
        p.data_mut()[0] = b'P';
        assert!(!p.verify_checksum());
        p.fill_checksum();
        assert!(p.verify_checksum());
        assert_eq!(p.msg_type(), ECHO_REPLY);
        assert_eq!(p.code(), 1);
        assert_eq!(p.echo_ident(), 0xFFFF);
        assert_eq!(p.echo_seq(), 0);
        assert!(p.is_echo());
        p.set_checksum(0xBEEF);
        assert_eq!(p.checksum(), 0xBEEF);
        assert_eq!(&b[..9], &[0, 1, 0xBE, 0xEF, 0xFF, 0xFF, 0, 0, b'P']);
    }

    #[test]
    fn error_embedded() {
        let mut b = error();
        let p = IcmpPacket::new_checked(&b[..]).unwrap();
        assert!(p.is_error() && !p.is_echo());
        assert!(p.verify_checksum());
        let ip = p.embedded().unwrap();
        assert_eq!(ip.protocol(), Protocol::UDP);
        assert_eq!(ip.total_len(), 100);
        assert_eq!(
            ip.payload(),
            &[0x9C, 0x40, 0x00, 0x35, 0x00, 80, 0xAB, 0xCD]
        );
        let mut p = IcmpPacket::new_checked(&mut b[..]).unwrap();
        p.embedded_mut()
            .unwrap()
            .set_src_addr([192, 168, 0, 1].into());
        assert_eq!(&b[20..24], &[192, 168, 0, 1]);
        for t in [TIME_EXCEEDED, PARAMETER_PROBLEM] {
            b[0] = t;
            assert!(IcmpPacket::new_checked(&b[..]).unwrap().is_error());
        }
        for t in [1u8, 5, 13, 255] {
            b[0] = t;
            let p = IcmpPacket::new_checked(&b[..]).unwrap();
            assert!(!p.is_error() && !p.is_echo());
        }
    }

    #[test]
    fn truncation() {
        let b = error();
        for n in 0..=b.len() {
            let r = IcmpPacket::new_checked(&b[..n]);
            if n < HEADER_LEN {
                assert_eq!(r.err(), Some(Error::Truncated), "len {n}");
            } else {
                let p = r.unwrap();
                assert_eq!(p.data().len(), n - 8);
                // The quote needs its 20-byte header plus 8 bytes.
                assert_eq!(p.embedded().is_ok(), n >= 36, "len {n}");
            }
        }
    }

    #[test]
    fn all_zero_echo_reply_update() {
        // Echo reply, id 5, seq 0, no data; rewrite id to 0 -> all zeros.
        let mut b = [ECHO_REPLY, 0, 0, 0, 0, 5, 0, 0];
        let mut p = IcmpPacket::new_checked(&mut b[..]).unwrap();
        p.fill_checksum();
        let mut d = Delta::new();
        d.add16(5, 0);
        // Plain Delta::apply gives the -0 pattern here ...
        assert_eq!(d.apply(p.checksum()), 0x0000);
        p.set_echo_ident(0);
        p.update_checksum(d);
        // ... update_checksum matches a full recomputation.
        assert_eq!(p.checksum(), 0xFFFF);
        assert!(p.verify_checksum());
    }
}
