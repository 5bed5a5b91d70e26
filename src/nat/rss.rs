//! Software Toeplitz hash, the function NICs use for receive-side scaling (RSS).
//!
//! Port allocation uses it to predict which receive queue (and so which worker) a NIC
//! will deliver a flow to, for example to pick NAT source ports whose return traffic
//! hashes back to the worker that owns the mapping.

use std::fmt;
use std::net::Ipv4Addr;

/// The Microsoft RSS verification key; also the default key of many NIC drivers.
pub const DEFAULT_KEY: [u8; 40] = [
    0x6d, 0x5a, 0x56, 0xda, 0x25, 0x5b, 0x0e, 0xc2, 0x41, 0x67, 0x25, 0x3d, 0x43, 0xa3, 0x8f, 0xb0,
    0xd0, 0xca, 0x2b, 0xcb, 0xae, 0x7b, 0x30, 0xb4, 0x77, 0xcb, 0x2d, 0xa3, 0x80, 0x30, 0xf2, 0x0c,
    0x6a, 0x42, 0xb7, 0x3b, 0xbe, 0xac, 0x01, 0xfa,
];

/// Shortest key [`Rss::new`] accepts: an IPv4 4-tuple (12 bytes) needs 12 + 4 key bytes.
pub const MIN_KEY_LEN: usize = 16;
/// Longest key [`Rss::new`] accepts; real NICs use 40 or 52 bytes.
pub const MAX_KEY_LEN: usize = 256;

/// The 32 key bits starting at bit `bit`, with key bits past the end read as zero.
fn key_window(key: &[u8], bit: usize) -> u32 {
    let byte = bit / 8;
    let shift = bit % 8;
    let mut wide = 0u64;
    for i in 0..5 {
        wide = (wide << 8) | u64::from(key.get(byte + i).copied().unwrap_or(0));
    }
    // `wide` holds 40 bits; drop the `shift` leading bits and keep the next 32.
    ((wide >> (8 - shift)) & 0xffff_ffff) as u32
}

/// Toeplitz hash of `input` under `key`, bit by bit as the RSS specification defines it.
///
/// Key bits beyond the end of `key` count as zero, so a short key never panics; it just
/// hashes long inputs poorly. Use [`Rss::hash`] on hot paths: it is table driven.
pub fn toeplitz_hash(key: &[u8], input: &[u8]) -> u32 {
    let mut hash = 0u32;
    let mut window = key_window(key, 0);
    for (i, &byte) in input.iter().enumerate() {
        let next = key.get(i + 4).copied().unwrap_or(0);
        for bit in 0..8 {
            if byte & (0x80 >> bit) != 0 {
                hash ^= window;
            }
            window = (window << 1) | u32::from((next >> (7 - bit)) & 1);
        }
    }
    hash
}

/// The RSS hash input for IPv4: source address, destination address, then source and
/// destination port, all in network byte order.
///
/// Returns the buffer and how many of its bytes to hash: 12 when both ports are given
/// (TCP/UDP 4-tuple hashing), 8 otherwise (address-only hashing, as NICs do for ICMP and
/// fragments).
pub fn ipv4_input(
    src: Ipv4Addr,
    dst: Ipv4Addr,
    sport: Option<u16>,
    dport: Option<u16>,
) -> ([u8; 12], usize) {
    let mut buf = [0u8; 12];
    buf[0..4].copy_from_slice(&src.octets());
    buf[4..8].copy_from_slice(&dst.octets());
    match (sport, dport) {
        (Some(s), Some(d)) => {
            buf[8..10].copy_from_slice(&s.to_be_bytes());
            buf[10..12].copy_from_slice(&d.to_be_bytes());
            (buf, 12)
        }
        _ => (buf, 8),
    }
}

/// Why an [`Rss`] could not be built.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RssError {
    /// The key is shorter than [`MIN_KEY_LEN`] or longer than [`MAX_KEY_LEN`].
    KeyLength(usize),
    /// The indirection table is empty.
    EmptyIndirection,
}

impl fmt::Display for RssError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RssError::KeyLength(n) => write!(
                f,
                "RSS key of {n} bytes, expected {MIN_KEY_LEN}..={MAX_KEY_LEN}"
            ),
            RssError::EmptyIndirection => f.write_str("empty RSS indirection table"),
        }
    }
}

impl std::error::Error for RssError {}

/// A NIC's RSS configuration: key plus indirection table, with per-byte lookup tables so
/// that hashing a 12-byte IPv4 input is 12 table loads instead of 96 bit steps.
#[derive(Clone)]
pub struct Rss {
    key: Vec<u8>,
    indirection: Vec<u32>,
    /// `table[i][b]`: the hash contribution of byte value `b` at input offset `i`.
    table: Vec<[u32; 256]>,
}

impl fmt::Debug for Rss {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rss")
            .field("key", &self.key)
            .field("indirection", &self.indirection)
            .finish_non_exhaustive()
    }
}

impl Rss {
    /// Builds the lookup tables for `key`; `indirection` maps hash values to queues.
    pub fn new(key: &[u8], indirection: Vec<u32>) -> Result<Self, RssError> {
        if !(MIN_KEY_LEN..=MAX_KEY_LEN).contains(&key.len()) {
            return Err(RssError::KeyLength(key.len()));
        }
        if indirection.is_empty() {
            return Err(RssError::EmptyIndirection);
        }
        // Beyond offset key.len() every key window is zero, so those rows would be all
        // zeros; `hash` treats missing rows as zero contributions instead.
        let mut table = vec![[0u32; 256]; key.len()];
        for (i, row) in table.iter_mut().enumerate() {
            let windows: [u32; 8] = std::array::from_fn(|b| key_window(key, i * 8 + b));
            for v in 1..256usize {
                // Bit `low` (counted from the LSB) is input bit `7 - low` of the byte.
                let low = v.trailing_zeros() as usize;
                row[v] = row[v & (v - 1)] ^ windows[7 - low];
            }
        }
        Ok(Self {
            key: key.to_vec(),
            indirection,
            table,
        })
    }

    /// The Toeplitz hash of `input`; equal to [`toeplitz_hash`] with this key.
    #[inline]
    pub fn hash(&self, input: &[u8]) -> u32 {
        input
            .iter()
            .zip(&self.table)
            .fold(0, |h, (&b, row)| h ^ row[usize::from(b)])
    }

    /// The queue a NIC with this configuration delivers a packet with `hash` to.
    #[inline]
    pub fn queue(&self, hash: u32) -> u32 {
        // `new` guarantees a non-empty table, so the modulus is never zero.
        let len = self.indirection.len();
        self.indirection
            .get(hash as usize % len)
            .copied()
            .unwrap_or(0)
    }

    /// The queue for an IPv4 flow; ports are `None` for protocols the NIC hashes by
    /// address only.
    #[inline]
    pub fn ipv4_queue(
        &self,
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: Option<u16>,
        dport: Option<u16>,
    ) -> u32 {
        let (buf, len) = ipv4_input(src, dst, sport, dport);
        self.queue(self.hash(&buf[..len]))
    }

    pub fn key(&self) -> &[u8] {
        &self.key
    }

    pub fn indirection(&self) -> &[u32] {
        &self.indirection
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// (dst, dport, src, sport, ipv4-only hash, with-ports hash).
    type Vector = ([u8; 4], u16, [u8; 4], u16, u32, u32);

    /// Microsoft "Verifying the RSS Hash Calculation", IPv4 rows.
    const VECTORS: [Vector; 5] = [
        (
            [161, 142, 100, 80],
            1766,
            [66, 9, 149, 187],
            2794,
            0x323e8fc2,
            0x51ccc178,
        ),
        (
            [65, 69, 140, 83],
            4739,
            [199, 92, 111, 2],
            14230,
            0xd718262a,
            0xc626b0ea,
        ),
        (
            [12, 22, 207, 184],
            38024,
            [24, 19, 198, 95],
            12898,
            0xd2d0a5de,
            0x5c2b394a,
        ),
        (
            [209, 142, 163, 6],
            2217,
            [38, 27, 205, 30],
            48228,
            0x82989176,
            0xafc7327f,
        ),
        (
            [202, 188, 127, 2],
            1303,
            [153, 39, 163, 191],
            44251,
            0x5d1809c5,
            0x10e828a2,
        ),
    ];

    #[test]
    fn microsoft_vectors_bitwise() {
        for (dst, dport, src, sport, h_ip, h_tcp) in VECTORS {
            let (buf, n) = ipv4_input(src.into(), dst.into(), None, None);
            assert_eq!(n, 8);
            assert_eq!(toeplitz_hash(&DEFAULT_KEY, &buf[..n]), h_ip, "{dst:?}");
            let (buf, n) = ipv4_input(src.into(), dst.into(), Some(sport), Some(dport));
            assert_eq!(n, 12);
            assert_eq!(toeplitz_hash(&DEFAULT_KEY, &buf[..n]), h_tcp, "{dst:?}");
        }
    }

    #[test]
    fn microsoft_vectors_table() {
        let rss = Rss::new(&DEFAULT_KEY, (0..128).collect()).unwrap();
        for (dst, dport, src, sport, h_ip, h_tcp) in VECTORS {
            let (buf, n) = ipv4_input(src.into(), dst.into(), None, None);
            assert_eq!(rss.hash(&buf[..n]), h_ip);
            let (buf, n) = ipv4_input(src.into(), dst.into(), Some(sport), Some(dport));
            assert_eq!(rss.hash(&buf[..n]), h_tcp);
            assert_eq!(
                rss.ipv4_queue(src.into(), dst.into(), Some(sport), Some(dport)),
                h_tcp % 128
            );
        }
    }

    #[test]
    fn one_port_means_address_only() {
        let a = Ipv4Addr::new(10, 0, 0, 1);
        let b = Ipv4Addr::new(10, 0, 0, 2);
        assert_eq!(ipv4_input(a, b, Some(1), None).1, 8);
        assert_eq!(ipv4_input(a, b, None, Some(1)).1, 8);
    }

    #[test]
    fn queue_uses_indirection() {
        let rss = Rss::new(&DEFAULT_KEY, vec![7, 3, 5]).unwrap();
        assert_eq!(rss.queue(0), 7);
        assert_eq!(rss.queue(1), 3);
        assert_eq!(rss.queue(5), 5);
        assert_eq!(rss.queue(u32::MAX), [7, 3, 5][(u32::MAX % 3) as usize]);
    }

    #[test]
    fn rejects_bad_config() {
        assert_eq!(
            Rss::new(&DEFAULT_KEY[..8], vec![0]).unwrap_err(),
            RssError::KeyLength(8)
        );
        assert_eq!(
            Rss::new(&DEFAULT_KEY, vec![]).unwrap_err(),
            RssError::EmptyIndirection
        );
    }

    #[test]
    fn short_key_does_not_panic() {
        assert_eq!(toeplitz_hash(&[], &[0xff; 40]), 0);
        // Only the first key byte is set: input bit 0 picks window 0xff000000.
        assert_eq!(toeplitz_hash(&[0xff], &[0x80]), 0xff00_0000);
    }

    proptest! {
        #[test]
        fn table_matches_bitwise(
            key in proptest::collection::vec(any::<u8>(), MIN_KEY_LEN..64),
            input in proptest::collection::vec(any::<u8>(), 0..80),
        ) {
            let rss = Rss::new(&key, vec![0]).unwrap();
            prop_assert_eq!(rss.hash(&input), toeplitz_hash(&key, &input));
        }
    }
}
