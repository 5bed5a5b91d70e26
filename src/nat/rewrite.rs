//! Every header patch natgw makes, in one place: addresses, ports and ICMP query ids, the
//! TTL, and the IPv4, TCP/UDP, ICMP and quoted-packet checksums that cover them, all updated
//! incrementally (RFC 1624). A [`Rewrite`] describes one side of a translation (VPP's
//! NAT44-ED rewrite record); the same value is applied to the packet, to the quote of an ICMP
//! error about it ([`Rewrite::apply_quote`]) and to later fragments.
//!
//! The fast path keeps one specialised copy, [`plain`]: fixed-size views, checksum words
//! summed in native byte order (RFC 1071 section 2(B)) so no bytes are swapped. It is worth
//! it (bench/README.md: cached in2out 29 -> 27 ns) and a property test below proves it
//! byte-identical to [`Rewrite::apply`].

use super::parse::{Frag, Meta, Quote};
use crate::packet::checksum::{self, Delta};
use crate::packet::icmp;
use crate::packet::ipv4::Protocol;
use crate::packet::{read_u16, read_u32, write_u16, write_u32};

/// Which endpoint of a packet a rewrite replaces.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Side {
    Src,
    Dst,
}

impl Side {
    /// Offset of the address in the IPv4 header.
    #[inline(always)]
    fn addr_at(self) -> usize {
        match self {
            Side::Src => 12,
            Side::Dst => 16,
        }
    }
    /// Offset of the port in the TCP/UDP header.
    #[inline(always)]
    fn port_at(self) -> usize {
        match self {
            Side::Src => 0,
            Side::Dst => 2,
        }
    }
}

/// One side of a translation: the new address and port (ICMP query id) of `side`, and
/// whether the packet is routed (TTL decremented) on the way.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Rewrite {
    pub side: Side,
    pub addr: u32,
    pub port: u16,
    pub dec_ttl: bool,
}

impl Rewrite {
    /// Rewrites the packet `m` describes: the address and the TTL with the IPv4 checksum,
    /// and unless it is a later fragment (no transport header), the port or query id with
    /// the transport checksum.
    #[inline(always)]
    pub fn apply(&self, d: &mut [u8], m: &Meta) {
        let old_addr = self.apply_ip(d, m);
        if m.frag == Frag::Later {
            return;
        }
        match m.proto {
            Protocol::TCP | Protocol::UDP => {
                let po = m.l4 + self.side.port_at();
                let old_port = read_u16(d, po);
                write_u16(d, po, self.port);
                let mut l4 = Delta::new();
                l4.add32(old_addr, self.addr);
                l4.add16(old_port, self.port);
                if m.proto == Protocol::TCP {
                    let c = m.l4 + 16;
                    write_u16(d, c, l4.apply(read_u16(d, c)));
                } else {
                    let c = m.l4 + 6;
                    write_u16(d, c, l4.apply_udp(read_u16(d, c)));
                }
            }
            Protocol::ICMP => {
                // Query identifier; the ICMP checksum has no pseudo-header.
                let io = m.l4 + 4;
                let old_id = read_u16(d, io);
                write_u16(d, io, self.port);
                let c = m.l4 + 2;
                let mut sum = checksum::update16(read_u16(d, c), old_id, self.port);
                if sum == 0 && m.frag == Frag::None {
                    // Only an all-zero message sums to -0 incrementally; its checksum is 0xFFFF.
                    write_u16(d, c, 0);
                    sum = checksum::checksum(&d[m.l4..m.l3 + m.tot]);
                }
                write_u16(d, c, sum);
            }
            _ => {}
        }
    }

    /// The IPv4 header part of [`apply`](Self::apply): the address and the TTL. This is all
    /// of the outer rewrite of an ICMP error, whose checksum the quote's rewrite fixes.
    /// Returns the old address.
    #[inline(always)]
    pub fn apply_ip(&self, d: &mut [u8], m: &Meta) -> u32 {
        let ao = m.l3 + self.side.addr_at();
        let old_addr = read_u32(d, ao);
        let mut ipd = Delta::new();
        ipd.add32(old_addr, self.addr);
        write_u32(d, ao, self.addr);
        if self.dec_ttl {
            let t = m.l3 + 8;
            let old = read_u16(d, t);
            let new = old.wrapping_sub(0x0100);
            write_u16(d, t, new);
            ipd.add16(old, new);
        }
        let c = m.l3 + 10;
        write_u16(d, c, ipd.apply(read_u16(d, c)));
        old_addr
    }

    /// Rewrites the same side of the packet quoted in an ICMP error, keeping its IP checksum
    /// and (where quoted) transport checksum right, and patches the error's own ICMP checksum,
    /// which covers all of it. The TTL of a quote is never touched.
    pub fn apply_quote(&self, d: &mut [u8], m: &Meta, e: &Quote) {
        let (addr, port) = (self.addr, self.port);
        let mut icmpd = Delta::new();
        let ao = e.ip + self.side.addr_at();
        let old_addr = read_u32(d, ao);
        write_u32(d, ao, addr);
        icmpd.add32(old_addr, addr);
        let c = e.ip + 10;
        let old_c = read_u16(d, c);
        let new_c = checksum::update32(old_c, old_addr, addr);
        write_u16(d, c, new_c);
        icmpd.add16(old_c, new_c);
        match e.proto {
            Protocol::TCP | Protocol::UDP => {
                let po = e.l4 + self.side.port_at();
                let old_port = read_u16(d, po);
                write_u16(d, po, port);
                icmpd.add16(old_port, port);
                let mut l4 = Delta::new();
                l4.add32(old_addr, addr);
                l4.add16(old_port, port);
                let co = e.l4 + if e.proto == Protocol::UDP { 6 } else { 16 };
                if co + 2 <= e.end {
                    let old = read_u16(d, co);
                    let new = if e.proto == Protocol::UDP {
                        l4.apply_udp(old)
                    } else {
                        l4.apply(old)
                    };
                    write_u16(d, co, new);
                    icmpd.add16(old, new);
                }
            }
            _ => {
                let io = e.l4 + 4;
                let old_id = read_u16(d, io);
                write_u16(d, io, port);
                icmpd.add16(old_id, port);
                let co = e.l4 + 2;
                let old = read_u16(d, co);
                let new = checksum::update16(old, old_id, port);
                write_u16(d, co, new);
                icmpd.add16(old, new);
            }
        }
        let c = m.l4 + 2;
        write_u16(d, c, icmpd.apply(read_u16(d, c)));
    }
}

/// TTL - 1 with the IPv4 checksum patched (RFC 1624).
#[inline(always)]
pub(crate) fn dec_ttl(d: &mut [u8], m: &Meta) {
    let o = m.l3 + 8;
    let old = read_u16(d, o);
    let new = old - 0x0100;
    write_u16(d, o, new);
    let c = read_u16(d, m.l3 + 10);
    write_u16(d, m.l3 + 10, checksum::update16(c, old, new));
}

/// Turns an echo request into its reply in place: addresses swapped (which leaves the header
/// sum unchanged), a fresh TTL of 64, type Echo Reply.
pub(crate) fn echo_reply(d: &mut [u8], m: &Meta) {
    write_u32(d, m.l3 + 12, m.dst);
    write_u32(d, m.l3 + 16, m.src);
    let t = m.l3 + 8;
    let old = read_u16(d, t);
    let new = (64u16 << 8) | (old & 0xff);
    write_u16(d, t, new);
    let c = m.l3 + 10;
    write_u16(d, c, checksum::update16(read_u16(d, c), old, new));
    let old = read_u16(d, m.l4);
    let new = (icmp::ECHO_REPLY as u16) << 8 | (old & 0xff);
    write_u16(d, m.l4, new);
    let c = m.l4 + 2;
    write_u16(d, c, checksum::update16(read_u16(d, c), old, new));
}

/// Lowers the MSS option of the TCP segment at `l4` (ending at `end`) to `mss` if it is
/// larger, patching the TCP checksum (RFC 1624). Options are walked within the header the
/// data offset gives and within `end`; a malformed option list stops the walk and changes
/// nothing after it. Returns the old MSS when it was lowered.
pub(crate) fn clamp_mss(d: &mut [u8], l4: usize, end: usize, mss: u16) -> Option<u16> {
    let end = end.min(d.len());
    if l4 + 20 > end {
        return None;
    }
    let hend = (l4 + usize::from(d[l4 + 12] >> 4) * 4).min(end);
    let mut o = l4 + 20;
    while o < hend {
        match d[o] {
            0 => return None,
            1 => o += 1,
            kind => {
                let len = usize::from(*d.get(o + 1)?);
                if len < 2 || o + len > hend {
                    return None;
                }
                if kind == 2 && len == 4 {
                    let old = read_u16(d, o + 2);
                    if old <= mss {
                        return None;
                    }
                    // The checksum sums 16-bit words from the header's start: an option at an
                    // odd offset straddles two of them.
                    let w = l4 + ((o + 2 - l4) & !1);
                    let words = if (o + 2 - l4).is_multiple_of(2) { 1 } else { 2 };
                    if w + 2 * words > end {
                        return None;
                    }
                    let before = [read_u16(d, w), read_u16(d, w + 2 * (words - 1))];
                    write_u16(d, o + 2, mss);
                    let mut c = Delta::new();
                    c.add16(before[0], read_u16(d, w));
                    if words == 2 {
                        c.add16(before[1], read_u16(d, w + 2));
                    }
                    write_u16(d, l4 + 16, c.apply(read_u16(d, l4 + 16)));
                    return Some(old);
                }
                o += len;
            }
        }
    }
    None
}

/// Sets the total length and the flags/fragment offset word of the IPv4 header at `l3`
/// (a fragment natgw cuts: RFC 791), patching the header checksum.
pub(crate) fn set_fragment(d: &mut [u8], l3: usize, tot: u16, frag: u16) {
    let mut ipd = Delta::new();
    ipd.add16(read_u16(d, l3 + 2), tot);
    ipd.add16(read_u16(d, l3 + 6), frag);
    write_u16(d, l3 + 2, tot);
    write_u16(d, l3 + 6, frag);
    write_u16(d, l3 + 10, ipd.apply(read_u16(d, l3 + 10)));
}

/// The header of a later fragment of the datagram whose header is `h` (20 to 60 bytes):
/// the fixed part and only the options whose copied flag is set (RFC 791 section 3.1),
/// padded with End of Option List to a multiple of 4, checksum filled in. Returns its length;
/// total length and fragment word are the caller's (`set_fragment`).
pub(crate) fn later_fragment_header(h: &[u8], out: &mut [u8; 60]) -> usize {
    out[..20].copy_from_slice(&h[..20]);
    let mut n = 20;
    let mut o = 20;
    while o < h.len() {
        let kind = h[o];
        let len = match kind {
            0 => break,
            1 => 1,
            _ => match h.get(o + 1) {
                Some(&l) if l >= 2 && o + usize::from(l) <= h.len() => usize::from(l),
                _ => break,
            },
        };
        if kind & 0x80 != 0 {
            out[n..n + len].copy_from_slice(&h[o..o + len]);
            n += len;
        }
        o += len;
    }
    while n % 4 != 0 {
        out[n] = 0;
        n += 1;
    }
    out[0] = 0x40 | (n / 4) as u8;
    write_u16(out, 10, 0);
    let c = checksum::checksum(&out[..n]);
    write_u16(out, 10, c);
    n
}

/// Bytes of the IPv4 header and the first 8 bytes of its payload: all a UDP or ICMP echo
/// rewrite touches. TCP needs 20 bytes of payload (flags at 13, checksum at 16).
pub(super) const IP_UDP: usize = 28;
pub(super) const IP_TCP: usize = 40;

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

/// The fast path's specialised [`Rewrite::apply`]: rewrites the source (`SRC`) or
/// destination address and port of a plain packet that `fast::classify` accepted, decrements the TTL and patches every checksum incrementally.
/// `ip` starts at the IPv4 header. Returns false, having changed nothing, for the one case
/// the incremental update cannot settle (an ICMP message whose new checksum sums to zero,
/// which only an all-zero message legitimately has): the full path recomputes it.
#[inline(always)]
pub(super) fn plain<const SRC: bool>(ip: &mut [u8], proto: Protocol, addr: u32, port: u16) -> bool {
    let ao = if SRC { 12 } else { 16 };
    // An ICMP query's identifier is its "port", in either direction.
    let po = match proto {
        Protocol::ICMP => 24,
        _ if SRC => 20,
        _ => 22,
    };
    if ip.len()
        < if proto == Protocol::TCP {
            IP_TCP
        } else {
            IP_UDP
        }
    {
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
        Protocol::UDP => 26,
        Protocol::TCP => 36,
        _ => 22,
    };
    // ICMP has no pseudo-header: only the identifier is in its checksum.
    let l4_sum = if proto == Protocol::ICMP {
        port_sum
    } else {
        addr_sum + port_sum
    };
    if proto == Protocol::ICMP && !fold32((!ne16(h, l4_at) & 0xffff) + l4_sum) == 0 {
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
        Protocol::UDP => {
            // Zero means "no checksum" and stays zero; a computed zero is sent as 0xFFFF.
            if ne16(h, 26) != 0 && patch(h, 26, l4_sum) == 0 {
                h[26..28].copy_from_slice(&[0xff, 0xff]);
            }
        }
        Protocol::TCP => {
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
    use super::*;
    use crate::packet::checksum;
    use crate::packet::icmp;
    use proptest::prelude::*;

    fn w16(b: &mut [u8], o: usize, v: u16) {
        b[o..o + 2].copy_from_slice(&v.to_be_bytes());
    }

    /// An IPv4 packet (no Ethernet header) of `proto` with all checksums right, from random
    /// field values; `udp_zero` leaves the UDP checksum 0 ("none").
    fn packet(proto: Protocol, f: &Fields) -> Vec<u8> {
        let l4 = match proto {
            Protocol::TCP => 20,
            _ => 8,
        };
        let tot = 20 + l4 + f.payload.len();
        let mut b = vec![0u8; tot];
        b[0] = 0x45;
        w16(&mut b, 2, tot as u16);
        w16(&mut b, 4, f.ident);
        b[8] = f.ttl;
        b[9] = proto.0;
        b[12..16].copy_from_slice(&f.src.to_be_bytes());
        b[16..20].copy_from_slice(&f.dst.to_be_bytes());
        let c = checksum::checksum(&b[..20]);
        w16(&mut b, 10, c);
        b[20 + l4..].copy_from_slice(&f.payload);
        match proto {
            Protocol::ICMP => {
                b[20] = icmp::ECHO_REQUEST;
                w16(&mut b, 24, f.sport);
                w16(&mut b, 26, f.seq);
                let c = checksum::checksum(&b[20..]);
                w16(&mut b, 22, c);
            }
            _ => {
                w16(&mut b, 20, f.sport);
                w16(&mut b, 22, f.dport);
                if proto == Protocol::TCP {
                    b[32] = 5 << 4;
                    b[33] = 0x10;
                    w16(&mut b, 24, f.seq);
                } else {
                    w16(&mut b, 24, (tot - 20) as u16);
                }
                let at = if proto == Protocol::TCP { 36 } else { 26 };
                if !(proto == Protocol::UDP && f.udp_zero) {
                    let pseudo = checksum::pseudo_header_sum(
                        f.src.into(),
                        f.dst.into(),
                        proto,
                        (tot - 20) as u16,
                    );
                    let mut c = !checksum::fold(pseudo + checksum::sum(&b[20..]));
                    if proto == Protocol::UDP && c == 0 {
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

    fn proto() -> impl Strategy<Value = Protocol> {
        prop_oneof![
            Just(Protocol::UDP),
            Just(Protocol::TCP),
            Just(Protocol::ICMP)
        ]
    }

    fn ok(b: &[u8], proto: Protocol) -> bool {
        if checksum::checksum(&b[..20]) != 0 {
            return false;
        }
        let (src, dst) = (read_u32(b, 12), read_u32(b, 16));
        match proto {
            Protocol::ICMP => checksum::checksum(&b[20..]) == 0,
            Protocol::UDP if read_u16(b, 26) == 0 => true,
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
                plain::<true>(&mut fast, p, a, port)
            } else {
                plain::<false>(&mut fast, p, a, port)
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
            Rewrite {
                side: if src_side { Side::Src } else { Side::Dst },
                addr: a,
                port,
                dec_ttl: true,
            }
            .apply(&mut generic, &m);
            if done {
                prop_assert_eq!(&fast, &generic);
            } else {
                // Only the ICMP corner is left to the full path, and untouched.
                prop_assert_eq!(p, Protocol::ICMP);
                prop_assert_eq!(&fast, &orig);
            }
            prop_assert!(ok(&generic, p));
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
        let mut b = packet(Protocol::ICMP, &f);
        b[20] = icmp::ECHO_REPLY;
        b[22..24].copy_from_slice(&[0xff, 0xff]);
        assert!(ok(&b, Protocol::ICMP));
        let orig = b.clone();
        assert!(!plain::<true>(&mut b, Protocol::ICMP, 0xc000_0201, 0));
        assert_eq!(b, orig);
    }
}
