//! Ethernet II frames with an optional single 802.1Q tag.

use super::{Error, Result, read_u16, write_u16};

pub const ETHERTYPE_IPV4: u16 = 0x0800;
pub const ETHERTYPE_ARP: u16 = 0x0806;
pub const ETHERTYPE_VLAN: u16 = 0x8100;
pub const ETHERTYPE_IPV6: u16 = 0x86DD;

pub const HEADER_LEN: usize = 14;
pub const VLAN_TAG_LEN: usize = 4;

mod field {
    pub const DST: core::ops::Range<usize> = 0..6;
    pub const SRC: core::ops::Range<usize> = 6..12;
    pub const OUTER_TYPE: usize = 12;
    pub const TCI: usize = 14;
    pub const INNER_TYPE: usize = 16;
}

/// A view of an Ethernet II frame. Only one 802.1Q tag is understood; a
/// stacked tag (QinQ) shows up as `ethertype() == ETHERTYPE_VLAN`.
#[derive(Debug, Clone)]
pub struct EthernetFrame<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> EthernetFrame<T> {
    /// Wraps `buffer` without validation; accessors may panic if it is short.
    pub fn new_unchecked(buffer: T) -> Self {
        EthernetFrame { buffer }
    }

    /// Wraps `buffer` after checking that the (possibly tagged) header fits.
    pub fn new_checked(buffer: T) -> Result<Self> {
        let frame = Self::new_unchecked(buffer);
        let len = frame.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(Error::Truncated);
        }
        if len < frame.header_len() {
            return Err(Error::Truncated);
        }
        Ok(frame)
    }

    pub fn into_inner(self) -> T {
        self.buffer
    }

    pub fn dst_addr(&self) -> [u8; 6] {
        let mut a = [0u8; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::DST]);
        a
    }

    pub fn src_addr(&self) -> [u8; 6] {
        let mut a = [0u8; 6];
        a.copy_from_slice(&self.buffer.as_ref()[field::SRC]);
        a
    }

    #[inline]
    fn is_tagged(&self) -> bool {
        read_u16(self.buffer.as_ref(), field::OUTER_TYPE) == ETHERTYPE_VLAN
    }

    /// The 12-bit VLAN ID if the frame carries an 802.1Q tag.
    pub fn vlan_id(&self) -> Option<u16> {
        if self.is_tagged() {
            Some(read_u16(self.buffer.as_ref(), field::TCI) & 0x0FFF)
        } else {
            None
        }
    }

    /// The EtherType of the payload, looking past the tag if there is one.
    pub fn ethertype(&self) -> u16 {
        if self.is_tagged() {
            read_u16(self.buffer.as_ref(), field::INNER_TYPE)
        } else {
            read_u16(self.buffer.as_ref(), field::OUTER_TYPE)
        }
    }

    pub fn header_len(&self) -> usize {
        if self.is_tagged() {
            HEADER_LEN + VLAN_TAG_LEN
        } else {
            HEADER_LEN
        }
    }

    pub fn payload(&self) -> &[u8] {
        &self.buffer.as_ref()[self.header_len()..]
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> EthernetFrame<T> {
    pub fn set_dst_addr(&mut self, a: [u8; 6]) {
        self.buffer.as_mut()[field::DST].copy_from_slice(&a);
    }

    pub fn set_src_addr(&mut self, a: [u8; 6]) {
        self.buffer.as_mut()[field::SRC].copy_from_slice(&a);
    }

    /// Sets the VLAN ID, keeping the PCP and DEI bits. Does nothing on an
    /// untagged frame: inserting a tag would need a bigger buffer.
    pub fn set_vlan_id(&mut self, vid: u16) {
        if self.is_tagged() {
            let buf = self.buffer.as_mut();
            let tci = (read_u16(buf, field::TCI) & 0xF000) | (vid & 0x0FFF);
            write_u16(buf, field::TCI, tci);
        }
    }

    /// Sets the payload EtherType (the inner one on a tagged frame).
    pub fn set_ethertype(&mut self, t: u16) {
        let at = if self.is_tagged() {
            field::INNER_TYPE
        } else {
            field::OUTER_TYPE
        };
        write_u16(self.buffer.as_mut(), at, t);
    }

    pub fn payload_mut(&mut self) -> &mut [u8] {
        let h = self.header_len();
        &mut self.buffer.as_mut()[h..]
    }
}

impl<T: AsRef<[u8]>> AsRef<[u8]> for EthernetFrame<T> {
    fn as_ref(&self) -> &[u8] {
        self.buffer.as_ref()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn untagged() -> Vec<u8> {
        let mut f = vec![
            0x02, 0x00, 0x00, 0x00, 0x00, 0x01, // dst
            0x02, 0x00, 0x00, 0x00, 0x00, 0x02, // src
            0x08, 0x00, // IPv4
        ];
        f.extend_from_slice(&[0xAA; 10]);
        f
    }

    fn tagged() -> Vec<u8> {
        let mut f = vec![
            0x02, 0x00, 0x00, 0x00, 0x00, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x02, 0x81, 0x00,
            0xB1, 0x23, // PCP 5, DEI 1, VID 0x123
            0x08, 0x06, // ARP
        ];
        f.extend_from_slice(&[0xBB; 6]);
        f
    }

    #[test]
    fn untagged_fields() {
        let f = EthernetFrame::new_checked(untagged()).unwrap();
        assert_eq!(f.dst_addr(), [2, 0, 0, 0, 0, 1]);
        assert_eq!(f.src_addr(), [2, 0, 0, 0, 0, 2]);
        assert_eq!(f.vlan_id(), None);
        assert_eq!(f.ethertype(), ETHERTYPE_IPV4);
        assert_eq!(f.header_len(), 14);
        assert_eq!(f.payload(), &[0xAA; 10]);
    }

    #[test]
    fn tagged_fields() {
        let f = EthernetFrame::new_checked(tagged()).unwrap();
        assert_eq!(f.vlan_id(), Some(0x123));
        assert_eq!(f.ethertype(), ETHERTYPE_ARP);
        assert_eq!(f.header_len(), 18);
        assert_eq!(f.payload(), &[0xBB; 6]);
    }

    #[test]
    fn setters_round_trip() {
        let mut f = EthernetFrame::new_checked(tagged()).unwrap();
        f.set_dst_addr([1, 2, 3, 4, 5, 6]);
        f.set_src_addr([7, 8, 9, 10, 11, 12]);
        f.set_vlan_id(0xFFFF); // excess bits must not leak into PCP/DEI
        f.set_ethertype(ETHERTYPE_IPV6);
        f.payload_mut()[0] = 0x11;
        assert_eq!(f.dst_addr(), [1, 2, 3, 4, 5, 6]);
        assert_eq!(f.src_addr(), [7, 8, 9, 10, 11, 12]);
        assert_eq!(f.vlan_id(), Some(0xFFF));
        assert_eq!(f.ethertype(), ETHERTYPE_IPV6);
        let b = f.into_inner();
        assert_eq!(&b[12..18], &[0x81, 0x00, 0xBF, 0xFF, 0x86, 0xDD]);
        assert_eq!(b[18], 0x11);

        let mut f = EthernetFrame::new_checked(untagged()).unwrap();
        f.set_vlan_id(7); // no tag: no-op
        f.set_ethertype(ETHERTYPE_ARP);
        assert_eq!(f.vlan_id(), None);
        assert_eq!(f.ethertype(), ETHERTYPE_ARP);
        assert_eq!(&f.into_inner()[12..16], &[0x08, 0x06, 0xAA, 0xAA]);
    }

    #[test]
    fn truncation() {
        let u = untagged();
        for n in 0..=u.len() {
            let r = EthernetFrame::new_checked(&u[..n]);
            if n < 14 {
                assert_eq!(r.err(), Some(Error::Truncated), "len {n}");
            } else {
                assert_eq!(r.unwrap().payload().len(), n - 14);
            }
        }
        let t = tagged();
        for n in 0..=t.len() {
            let r = EthernetFrame::new_checked(&t[..n]);
            if n < 18 {
                assert_eq!(r.err(), Some(Error::Truncated), "len {n}");
            } else {
                let f = r.unwrap();
                assert_eq!(f.payload().len(), n - 18);
                assert_eq!(f.vlan_id(), Some(0x123));
            }
        }
    }
}
