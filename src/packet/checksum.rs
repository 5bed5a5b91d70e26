//! Internet checksum (RFC 1071) and incremental update (RFC 1624).
//!
//! # The +0 / -0 question
//!
//! In one's complement arithmetic `0x0000` (+0) and `0xFFFF` (-0) are the same
//! number, but the checksum field must hold one particular bit pattern. A full
//! computation, `!fold(sum(data))`, only yields a fold of +0 when every word of
//! `data` is zero; any other input folds to something in `1..=0xFFFF`, because
//! end-around-carry addition of non-zero words never produces +0.
//!
//! [`Delta::apply`] uses RFC 1624 equation 3, `HC' = ~(~HC + ~m + m')`, and
//! keeps every intermediate value in the same "never +0 unless everything was
//! zero" form, so it reproduces the full computation bit for bit whenever the
//! starting checksum was correct *and* the rewritten data is not entirely zero.
//! The all-zero case cannot be decided from the checksum and the changed words
//! alone (the rest of the data may be zeros or words that cancel out), so the
//! caller must handle it where it can occur. For IPv4 headers (version nibble)
//! and TCP/UDP (protocol in the pseudo-header) it cannot; for ICMP it can, and
//! [`crate::packet::IcmpPacket::update_checksum`] handles it.

use super::ipv4::Protocol;
use std::net::Ipv4Addr;

/// One's complement sum of `data` as big-endian 16-bit words, a trailing odd
/// byte padded with zero.
///
/// The result is at most `0xFFFF` and is zero only if every byte is zero, so
/// several results may be added in a `u32` and then passed to [`fold`]. Sums of
/// separate slices only combine correctly when all but the last have even
/// length.
pub fn sum(data: &[u8]) -> u32 {
    // 32-bit words into a 64-bit accumulator: cannot overflow for any slice
    // that fits in memory, and 2^16 == 1 (mod 0xFFFF) so the folded value is
    // the same as summing 16-bit words.
    let mut acc: u64 = 0;
    let mut words = data.chunks_exact(4);
    for w in &mut words {
        acc += u64::from(u32::from_be_bytes([w[0], w[1], w[2], w[3]]));
    }
    let rest = words.remainder();
    let mut tail = [0u8; 4];
    tail[..rest.len()].copy_from_slice(rest);
    acc += u64::from(u32::from_be_bytes(tail));
    while acc > 0xFFFF {
        acc = (acc & 0xFFFF) + (acc >> 16);
    }
    acc as u32
}

/// Folds a 32-bit accumulator to 16 bits with end-around carry. Not complemented.
/// Two rounds always suffice for 32 bits (the first leaves at most 0x1FFFE), and a round on a
/// value that already fits changes nothing, so this equals folding until it fits.
#[inline(always)]
pub fn fold(sum: u32) -> u16 {
    let s = (sum & 0xFFFF) + (sum >> 16);
    let s = (s & 0xFFFF) + (s >> 16);
    s as u16
}

/// The Internet checksum of `data`.
pub fn checksum(data: &[u8]) -> u16 {
    !fold(sum(data))
}

/// Is a 20-byte IPv4 header's checksum right? Summed as five native-order 32-bit words
/// (the one's-complement sum allows any word size and byte order, RFC 1071 2(B)), a fraction
/// of the generic 16-bit loop: the fast path checks every frame with it.
#[inline(always)]
pub fn ipv4_header_ok(h: &[u8; 20]) -> bool {
    let mut s: u64 = 0;
    for w in h.chunks_exact(4) {
        s += u32::from_ne_bytes([w[0], w[1], w[2], w[3]]) as u64;
    }
    // s < 5 * 2^32: one end-around carry brings it to 32 bits, one add with carry to 16.
    let (s, c) = (s as u32).overflowing_add((s >> 32) as u32);
    let s = s + c as u32;
    let (lo, c) = (s as u16).overflowing_add((s >> 16) as u16);
    lo + c as u16 == 0xffff
}

/// Sum of the IPv4 pseudo-header used by TCP and UDP.
pub fn pseudo_header_sum(src: Ipv4Addr, dst: Ipv4Addr, proto: Protocol, l4_len: u16) -> u32 {
    let s = u32::from(src);
    let d = u32::from(dst);
    (s >> 16) + (s & 0xFFFF) + (d >> 16) + (d & 0xFFFF) + u32::from(proto.0) + u32::from(l4_len)
}

/// Accumulated difference between old and new 16-bit words of a checksummed
/// region, to be applied to its checksum with RFC 1624 equation 3.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Delta(u32);

impl Delta {
    pub fn new() -> Self {
        Delta(0)
    }

    /// Records that a 16-bit word changed from `old` to `new`.
    #[inline(always)]
    pub fn add16(&mut self, old: u16, new: u16) {
        // An unchanged word would add 0xFFFF (-0), which turns an all-zero
        // result into -0; skipping it keeps a no-op rewrite exactly a no-op.
        if old != new {
            // Folded once, in `apply`: the sum is the same modulo 0xFFFF and is zero only if
            // every term is, so the result is identical. A term is at most 0x1FFFE, so the
            // accumulator cannot overflow for any realistic number of rewritten words.
            self.0 = self.0.wrapping_add(u32::from(!old) + u32::from(new));
        }
    }

    /// Records that an aligned 32-bit field (an address) changed.
    #[inline(always)]
    pub fn add32(&mut self, old: u32, new: u32) {
        self.add16((old >> 16) as u16, (new >> 16) as u16);
        self.add16(old as u16, new as u16);
    }

    /// True if no word changed.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// `HC' = ~(~HC + sum of terms)`.
    #[inline(always)]
    pub fn apply(self, cksum: u16) -> u16 {
        !fold(u32::from(!cksum) + self.0)
    }

    /// Like [`apply`](Self::apply) for a UDP checksum: zero means "no
    /// checksum" and stays zero, and a computed zero is transmitted as
    /// `0xFFFF` (RFC 768).
    #[inline]
    pub fn apply_udp(self, cksum: u16) -> u16 {
        if cksum == 0 {
            return 0;
        }
        match self.apply(cksum) {
            0 => 0xFFFF,
            c => c,
        }
    }
}

/// Updates `cksum` for one 16-bit word changing from `old` to `new`.
#[inline]
pub fn update16(cksum: u16, old: u16, new: u16) -> u16 {
    let mut d = Delta::new();
    d.add16(old, new);
    d.apply(cksum)
}

/// Updates `cksum` for one aligned 32-bit field changing from `old` to `new`.
#[inline]
pub fn update32(cksum: u16, old: u32, new: u32) -> u16 {
    let mut d = Delta::new();
    d.add32(old, new);
    d.apply(cksum)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::tests::word16;
    use proptest::prelude::*;

    /// Reference: RFC 1071 word-by-word sum, no tricks.
    fn naive_sum(data: &[u8]) -> u32 {
        let mut acc: u32 = 0;
        for pair in data.chunks(2) {
            let hi = u32::from(pair[0]) << 8;
            let lo = pair.get(1).map_or(0, |&b| u32::from(b));
            acc += hi | lo;
            acc = (acc & 0xFFFF) + (acc >> 16);
        }
        acc
    }

    #[test]
    fn rfc1071_example() {
        // RFC 1071 section 3 worked example: sum is 0xDDF2.
        let data = [0x00, 0x01, 0xF2, 0x03, 0xF4, 0xF5, 0xF6, 0xF7];
        assert_eq!(fold(sum(&data)), 0xDDF2);
        assert_eq!(checksum(&data), !0xDDF2);
    }

    #[test]
    fn known_ipv4_header() {
        // A commonly cited example header; checksum field is 0xB861.
        let mut h = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0x00, 0x00, 0xC0, 0xA8,
            0x00, 0x01, 0xC0, 0xA8, 0x00, 0xC7,
        ];
        assert_eq!(checksum(&h), 0xB861);
        h[10] = 0xB8;
        h[11] = 0x61;
        assert_eq!(checksum(&h), 0);
    }

    #[test]
    fn odd_length_and_zero() {
        assert_eq!(sum(&[]), 0);
        assert_eq!(sum(&[0, 0, 0]), 0);
        assert_eq!(sum(&[0xAB]), 0xAB00);
        assert_eq!(sum(&[1, 2, 3]), 0x0102 + 0x0300);
        assert_eq!(checksum(&[]), 0xFFFF);
        // -0 words sum to -0, never to +0.
        assert_eq!(sum(&[0xFF, 0xFF, 0xFF, 0xFF]), 0xFFFF);
        assert_eq!(sum(&[0x00, 0x01, 0xFF, 0xFE]), 0xFFFF);
    }

    #[test]
    fn fold_carries() {
        assert_eq!(fold(0), 0);
        assert_eq!(fold(0xFFFF), 0xFFFF);
        assert_eq!(fold(0x1_0000), 1);
        assert_eq!(fold(0x1_FFFE), 0xFFFF);
        assert_eq!(fold(0xFFFF_FFFF), 0xFFFF);
    }

    #[test]
    fn pseudo_header() {
        let s = pseudo_header_sum(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::new(192, 168, 1, 2),
            Protocol::UDP,
            0x1234,
        );
        assert_eq!(s, 0x0A00 + 0x0001 + 0xC0A8 + 0x0102 + 17 + 0x1234);
    }

    #[test]
    fn delta_unchanged_is_identity() {
        let mut d = Delta::new();
        d.add16(0x1234, 0x1234);
        d.add32(0xDEAD_BEEF, 0xDEAD_BEEF);
        assert!(d.is_empty());
        for c in [0u16, 1, 0x7FFF, 0xFFFE, 0xFFFF] {
            assert_eq!(d.apply(c), c);
        }
    }

    #[test]
    fn udp_zero_rules() {
        let mut d = Delta::new();
        d.add16(1, 2);
        assert_eq!(d.apply_udp(0), 0);
        // ~(~HC + ~1 + 2) == 0 when ~HC == 0xFFFE, i.e. HC == 1.
        assert_eq!(d.apply(1), 0);
        assert_eq!(d.apply_udp(1), 0xFFFF);
    }

    proptest! {
        #[test]
        fn sum_matches_naive(data in proptest::collection::vec(any::<u8>(), 0..200)) {
            prop_assert_eq!(sum(&data), naive_sum(&data));
        }

        #[test]
        fn sum_concatenates(a in proptest::collection::vec(any::<u8>(), 0..64),
                            b in proptest::collection::vec(any::<u8>(), 0..64)) {
            let mut a = a;
            if a.len() % 2 == 1 { a.push(0x5A); }
            let mut ab = a.clone();
            ab.extend_from_slice(&b);
            prop_assert_eq!(fold(sum(&a) + sum(&b)), fold(sum(&ab)));
        }

        /// Replace one word of random data; incremental equals full unless the
        /// new data is all zero (the documented, undecidable case).
        #[test]
        fn update16_matches_full(mut words in proptest::collection::vec(word16(), 1..16),
                                 idx in any::<prop::sample::Index>(),
                                 new in word16()) {
            let to_bytes = |w: &[u16]| w.iter().flat_map(|x| x.to_be_bytes()).collect::<Vec<u8>>();
            let i = idx.index(words.len());
            let before = checksum(&to_bytes(&words));
            let old = words[i];
            words[i] = new;
            let full = checksum(&to_bytes(&words));
            let inc = update16(before, old, new);
            if words.iter().all(|&w| w == 0) && old != new {
                prop_assert_eq!(full, 0xFFFF);
                prop_assert_eq!(inc, 0x0000);
            } else {
                prop_assert_eq!(inc, full);
            }
        }
    }

    proptest! {
        #[test]
        fn ipv4_header_ok_matches_reference(mut h in proptest::array::uniform20(any::<u8>()), fix in any::<bool>()) {
            if fix {
                h[10] = 0;
                h[11] = 0;
                let c = checksum(&h);
                h[10..12].copy_from_slice(&c.to_be_bytes());
            }
            prop_assert_eq!(ipv4_header_ok(&h), checksum(&h) == 0);
        }
    }
}
