//! The established-flow fast path: the first pass over a batch (`classify`), and the header
//! rewrite of a plain established packet (`rewrite`).
//!
//! A plain packet is untagged or 802.1Q-tagged IPv4 without options, not a fragment, with a
//! right header checksum and TTL > 1, carrying UDP, TCP without SYN/FIN/RST, or an ICMP echo.
//! Everything else, and everything the fast path is unsure of, goes to `Engine::parse` and
//! the full in2out/out2in paths, which handle every case; this module only has to be right
//! when it says "fast".
//!
//! Both functions work on fixed-size views of the header bytes (one bounds check per frame,
//! not one per field) and the rewrite sums checksum words in native byte order, which the
//! one's-complement sum allows (RFC 1071 section 2(B)), so it swaps no bytes.

use super::engine::Pkt;
use super::rules::{PROTO_ICMP, PROTO_TCP, PROTO_UDP, Rules};
use super::session::{InKey, OutKey};
use super::table::Key;
use super::types::Ingress;
use crate::packet::{ethernet, icmp, tcp};

/// The session lookup a frame will make, computed ahead so its table slot can be prefetched.
#[derive(Clone, Copy)]
pub(super) enum Lane {
    /// Not a session packet the fast path knows: the full path parses it.
    Slow,
    In(InKey),
    Out(OutKey),
}

/// What the pipeline's first two passes learned about a frame.
#[derive(Clone, Copy)]
pub(super) struct Prep {
    pub lane: Lane,
    pub hash: u64,
    /// Slot position of the session in `in_tab` / `out_tab`, valid while that table's
    /// epoch is still `epoch` (else re-checked before use).
    pub pos: u32,
    pub epoch: u32,
    /// Offset of the IPv4 header: 14, or 18 behind an 802.1Q tag.
    pub l3: u8,
    /// Plain enough for the fast path (see the module comment); pass two also requires a
    /// live session whose slot says its direction is fast.
    pub fast: bool,
}

impl Prep {
    pub const SLOW: Prep = Prep {
        lane: Lane::Slow,
        hash: 0,
        pos: 0,
        epoch: 0,
        l3: 0,
        fast: false,
    };
}

/// Bytes of the IPv4 header and the first 8 bytes of its payload: all a UDP or ICMP echo
/// rewrite touches. TCP needs 20 bytes of payload (flags at 13, checksum at 16).
const IP_UDP: usize = 28;
const IP_TCP: usize = 40;

#[inline(always)]
fn be16(b: &[u8], o: usize) -> u16 {
    u16::from_be_bytes([b[o], b[o + 1]])
}

#[inline(always)]
fn be32(b: &[u8], o: usize) -> u32 {
    u32::from_be_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

/// Is a 20-byte IPv4 header's checksum right? Summed as five 32-bit words (the
/// one's-complement sum folds the same way), a fraction of the generic 16-bit loop.
#[inline(always)]
pub(crate) fn header_checksum_ok(h: &[u8; 20]) -> bool {
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

/// Pass one for a frame: is it plain, and which session would it belong to?
#[inline(always)]
pub(super) fn classify(r: &Rules, p: &Pkt<'_>) -> Prep {
    let f = &p.frame;
    let Some(d) = f.buf.get(f.off..f.off + f.len) else {
        return Prep::SLOW;
    };
    if d.len() < 14 + IP_UDP {
        return Prep::SLOW;
    }
    let (l3, vlan) = match be16(d, 12) {
        ethernet::ETHERTYPE_IPV4 => (14, None),
        ethernet::ETHERTYPE_VLAN if be16(d, 16) == ethernet::ETHERTYPE_IPV4 => {
            (18, Some(be16(d, 14) & 0x0fff))
        }
        _ => return Prep::SLOW,
    };
    let ip = &d[l3..];
    let Some(h) = ip.first_chunk::<IP_UDP>() else {
        return Prep::SLOW;
    };
    let tot = be16(h, 2) as usize;
    let hdr = h.first_chunk::<20>().expect("28 > 20");
    // Version 4 without options, not a fragment, whole, header checksum right.
    if h[0] != 0x45
        || be16(h, 6) & 0x3fff != 0
        || tot < IP_UDP
        || tot > ip.len()
        || !header_checksum_ok(hdr)
    {
        return Prep::SLOW;
    }
    let (proto, ttl) = (h[9], h[8]);
    let outbound = matches!(p.ingress, Ingress::Inside(_));
    // (source port, destination port, whether the remote port is part of the key, plain)
    let (sport, dport, rem_port, plain) = match proto {
        PROTO_UDP => {
            let ok = be16(h, 24) >= 8;
            (be16(h, 20), be16(h, 22), ok, ok)
        }
        PROTO_TCP => {
            let Some(t) = ip[..tot].first_chunk::<IP_TCP>() else {
                return Prep::SLOW;
            };
            if t[32] >> 4 < 5 {
                return Prep::SLOW;
            }
            let plain = t[33] & (tcp::flags::SYN | tcp::flags::FIN | tcp::flags::RST) == 0;
            (be16(h, 20), be16(h, 22), true, plain)
        }
        PROTO_ICMP if h[20] == icmp::ECHO_REPLY || (outbound && h[20] == icmp::ECHO_REQUEST) => {
            let id = be16(h, 24);
            (id, id, false, true)
        }
        _ => return Prep::SLOW,
    };
    let (src, dst) = (be32(h, 12), be32(h, 16));
    let mut prep = Prep {
        lane: Lane::Slow,
        hash: 0,
        pos: 0,
        epoch: 0,
        l3: l3 as u8,
        fast: plain && ttl > 1,
    };
    match p.ingress {
        Ingress::Inside(i) => {
            let Some(realm) = r.realm_id_for(i, vlan) else {
                return Prep::SLOW;
            };
            let k = InKey {
                realm,
                proto,
                in_port: sport,
                rem_port: if rem_port { dport } else { 0 },
                in_addr: src,
                rem_addr: dst,
            };
            prep.hash = k.hash();
            prep.lane = Lane::In(k);
        }
        Ingress::Outside => {
            let k = OutKey {
                proto,
                ext_port: dport,
                rem_port: if rem_port { sport } else { 0 },
                ext_addr: dst,
                rem_addr: src,
            };
            prep.hash = k.hash();
            prep.lane = Lane::Out(k);
            // Tagged frames from outside are rare; the full path handles them.
            prep.fast &= vlan.is_none();
        }
        Ingress::Hairpin => return Prep::SLOW,
    }
    prep
}

/// Native-order 16-bit word at `o`.
#[inline(always)]
fn ne16(b: &[u8], o: usize) -> u32 {
    u16::from_ne_bytes([b[o], b[o + 1]]) as u32
}

/// Folds a sum of fewer than 2^16 16-bit terms.
#[inline(always)]
fn fold32(s: u32) -> u16 {
    let s = (s & 0xffff) + (s >> 16);
    ((s & 0xffff) + (s >> 16)) as u16
}

/// `HC' = ~(~HC + sum)` (RFC 1624 eqn. 3) over native-order words; `sum` is a handful of
/// 16-bit terms.
#[inline(always)]
fn patch(b: &mut [u8], at: usize, sum: u32) -> u16 {
    let c = !fold32((!ne16(b, at) & 0xffff) + sum);
    b[at..at + 2].copy_from_slice(&c.to_ne_bytes());
    c
}

/// Rewrites the source (`SRC`) or destination address and port of a plain packet that
/// `classify` accepted, decrements the TTL and patches every checksum incrementally.
/// `ip` starts at the IPv4 header. Returns false, having changed nothing, for the one case
/// the incremental update cannot settle (an ICMP message whose new checksum sums to zero,
/// which only an all-zero message legitimately has): the full path recomputes it.
#[inline(always)]
pub(super) fn rewrite<const SRC: bool>(ip: &mut [u8], proto: u8, addr: u32, port: u16) -> bool {
    let ao = if SRC { 12 } else { 16 };
    // An ICMP query's identifier is its "port", in either direction.
    let po = match proto {
        PROTO_ICMP => 24,
        _ if SRC => 20,
        _ => 22,
    };
    if ip.len() < if proto == PROTO_TCP { IP_TCP } else { IP_UDP } {
        return false;
    }
    let Some(h) = ip.first_chunk_mut::<IP_UDP>() else {
        return false;
    };
    let new_a = addr.to_be_bytes();
    let new_p = port.to_be_bytes();
    // One's complement of the old words plus the new ones; an unchanged word adds -0,
    // which cannot change a checksum that is not itself -0 (a valid one never is, except
    // UDP's "computed zero", which apply_udp below maps back to 0xFFFF anyway).
    let addr_sum =
        (!ne16(h, ao) & 0xffff) + (!ne16(h, ao + 2) & 0xffff) + ne16(&new_a, 0) + ne16(&new_a, 2);
    let port_sum = (!ne16(h, po) & 0xffff) + ne16(&new_p, 0);
    let l4_at = match proto {
        PROTO_UDP => 26,
        PROTO_TCP => 36,
        _ => 22,
    };
    // ICMP has no pseudo-header: only the identifier is in its checksum.
    let l4_sum = if proto == PROTO_ICMP {
        port_sum
    } else {
        addr_sum + port_sum
    };
    if proto == PROTO_ICMP && !fold32((!ne16(h, l4_at) & 0xffff) + l4_sum) == 0 {
        return false;
    }
    // TTL: the word [ttl, protocol] loses 1 in its first byte.
    let old_t = ne16(h, 8);
    h[8] -= 1;
    let ip_sum = addr_sum + (!old_t & 0xffff) + ne16(h, 8);
    patch(h, 10, ip_sum);
    h[ao..ao + 4].copy_from_slice(&new_a);
    h[po..po + 2].copy_from_slice(&new_p);
    match proto {
        PROTO_UDP => {
            // Zero means "no checksum" and stays zero; a computed zero is sent as 0xFFFF.
            if ne16(h, 26) != 0 && patch(h, 26, l4_sum) == 0 {
                h[26..28].copy_from_slice(&[0xff, 0xff]);
            }
        }
        PROTO_TCP => {
            if let Some(t) = ip.first_chunk_mut::<IP_TCP>() {
                patch(t, l4_at, l4_sum);
            }
        }
        _ => {
            patch(h, l4_at, l4_sum);
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::super::engine::{Frag, Meta};
    use super::*;
    use crate::packet::checksum;
    use proptest::prelude::*;

    fn w16(b: &mut [u8], o: usize, v: u16) {
        b[o..o + 2].copy_from_slice(&v.to_be_bytes());
    }

    /// An IPv4 packet (no Ethernet header) of `proto` with all checksums right, from random
    /// field values; `udp_zero` leaves the UDP checksum 0 ("none").
    fn packet(proto: u8, f: &Fields) -> Vec<u8> {
        let l4 = match proto {
            PROTO_TCP => 20,
            _ => 8,
        };
        let tot = 20 + l4 + f.payload.len();
        let mut b = vec![0u8; tot];
        b[0] = 0x45;
        w16(&mut b, 2, tot as u16);
        w16(&mut b, 4, f.ident);
        b[8] = f.ttl;
        b[9] = proto;
        b[12..16].copy_from_slice(&f.src.to_be_bytes());
        b[16..20].copy_from_slice(&f.dst.to_be_bytes());
        let c = checksum::checksum(&b[..20]);
        w16(&mut b, 10, c);
        b[20 + l4..].copy_from_slice(&f.payload);
        match proto {
            PROTO_ICMP => {
                b[20] = icmp::ECHO_REQUEST;
                w16(&mut b, 24, f.sport);
                w16(&mut b, 26, f.seq);
                let c = checksum::checksum(&b[20..]);
                w16(&mut b, 22, c);
            }
            _ => {
                w16(&mut b, 20, f.sport);
                w16(&mut b, 22, f.dport);
                if proto == PROTO_TCP {
                    b[32] = 5 << 4;
                    b[33] = 0x10;
                    w16(&mut b, 24, f.seq);
                } else {
                    w16(&mut b, 24, (tot - 20) as u16);
                }
                let at = if proto == PROTO_TCP { 36 } else { 26 };
                if !(proto == PROTO_UDP && f.udp_zero) {
                    let pseudo = checksum::pseudo_header_sum(
                        f.src.into(),
                        f.dst.into(),
                        proto,
                        (tot - 20) as u16,
                    );
                    let mut c = !checksum::fold(pseudo + checksum::sum(&b[20..]));
                    if proto == PROTO_UDP && c == 0 {
                        c = 0xffff;
                    }
                    w16(&mut b, at, c);
                }
            }
        }
        b
    }

    #[derive(Debug, Clone)]
    struct Fields {
        src: u32,
        dst: u32,
        sport: u16,
        dport: u16,
        ident: u16,
        seq: u16,
        ttl: u8,
        payload: Vec<u8>,
        udp_zero: bool,
    }

    fn word() -> impl Strategy<Value = u16> {
        prop_oneof![
            Just(0u16),
            Just(0xffff),
            Just(1),
            Just(0xfffe),
            any::<u16>()
        ]
    }

    fn addr() -> impl Strategy<Value = u32> {
        prop_oneof![
            Just(0u32),
            Just(u32::MAX),
            Just(0x0000_ffff),
            Just(0xffff_0000),
            any::<u32>()
        ]
    }

    fn fields() -> impl Strategy<Value = Fields> {
        (
            (addr(), addr(), word(), word(), word(), word()),
            2u8..=255,
            prop_oneof![
                proptest::collection::vec(Just(0u8), 0..24),
                proptest::collection::vec(Just(0xffu8), 0..24),
                proptest::collection::vec(any::<u8>(), 0..24),
            ],
            any::<bool>(),
        )
            .prop_map(
                |((src, dst, sport, dport, ident, seq), ttl, payload, udp_zero)| Fields {
                    src,
                    dst,
                    sport,
                    dport,
                    ident,
                    seq,
                    ttl,
                    payload,
                    udp_zero,
                },
            )
    }

    fn proto() -> impl Strategy<Value = u8> {
        prop_oneof![Just(PROTO_UDP), Just(PROTO_TCP), Just(PROTO_ICMP)]
    }

    fn ok(b: &[u8], proto: u8) -> bool {
        if checksum::checksum(&b[..20]) != 0 {
            return false;
        }
        let (src, dst) = (be32(b, 12), be32(b, 16));
        match proto {
            PROTO_ICMP => checksum::checksum(&b[20..]) == 0,
            PROTO_UDP if be16(b, 26) == 0 => true,
            _ => {
                let pseudo = checksum::pseudo_header_sum(
                    src.into(),
                    dst.into(),
                    proto,
                    (b.len() - 20) as u16,
                );
                checksum::fold(pseudo + checksum::sum(&b[20..])) == 0xffff
            }
        }
    }

    proptest! {
        /// The fast rewrite leaves exactly the bytes the generic one does, and every checksum
        /// right, over random packets with the one's-complement edge values.
        #[test]
        fn fast_rewrite_matches_generic(
            p in proto(), f in fields(), src_side in any::<bool>(), a in addr(), port in word()
        ) {
            let orig = packet(p, &f);
            prop_assert!(ok(&orig, p));
            let (mut fast, mut generic) = (orig.clone(), orig.clone());
            let done = if src_side {
                rewrite::<true>(&mut fast, p, a, port)
            } else {
                rewrite::<false>(&mut fast, p, a, port)
            };
            let m = Meta {
                l3: 0,
                ihl: 20,
                tot: orig.len(),
                l4: 20,
                proto: p,
                frag: Frag::None,
                ..Meta::default()
            };
            super::super::in2out::rewrite(&mut generic, &m, src_side, a, port, true);
            if done {
                prop_assert_eq!(&fast, &generic);
            } else {
                // Only the ICMP corner is left to the full path, and untouched.
                prop_assert_eq!(p, PROTO_ICMP);
                prop_assert_eq!(&fast, &orig);
            }
            prop_assert!(ok(&generic, p));
        }

        #[test]
        fn fast_header_check_matches_reference(mut h in proptest::array::uniform20(any::<u8>()), fix in any::<bool>()) {
            if fix {
                h[10] = 0;
                h[11] = 0;
                let c = checksum::checksum(&h);
                h[10..12].copy_from_slice(&c.to_be_bytes());
            }
            prop_assert_eq!(header_checksum_ok(&h), checksum::checksum(&h) == 0);
        }
    }

    #[test]
    fn icmp_all_zero_message_is_left_to_the_full_path() {
        // Echo reply, id 0 -> id 0 stays all-zero: checksum must come out 0xFFFF, which
        // only a full recomputation gets right.
        let f = Fields {
            src: 0x0a00_0001,
            dst: 0x0a00_0002,
            sport: 0,
            dport: 0,
            ident: 0,
            seq: 0,
            ttl: 64,
            payload: vec![],
            udp_zero: false,
        };
        let mut b = packet(PROTO_ICMP, &f);
        b[20] = icmp::ECHO_REPLY;
        b[22..24].copy_from_slice(&[0xff, 0xff]);
        assert!(ok(&b, PROTO_ICMP));
        let orig = b.clone();
        assert!(!rewrite::<true>(&mut b, PROTO_ICMP, 0xc000_0201, 0));
        assert_eq!(b, orig);
    }
}
