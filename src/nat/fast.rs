//! The established-flow fast path: the first pass over a batch (`classify`), and the
//! translation of a plain established packet from its index slot alone (`in2out`,
//! `out2in`, with `rewrite::plain`).
//!
//! A plain packet is untagged or 802.1Q-tagged IPv4 without options, not a fragment, with a
//! right header checksum and TTL > 1, carrying UDP, TCP without SYN/FIN/RST, or an ICMP echo.
//! Everything else, and everything the fast path is unsure of, goes to `parse::parse` and
//! the full in2out/out2in paths, which handle every case; this module only has to be right
//! when it says "fast".
//!
//! Classification reads raw offsets of fixed-size views of the header bytes instead of
//! packet/'s typed views on purpose: it runs on every frame of every batch and needs one bounds
//! check per frame, not one per field and view; it only has to recognise the plain case, and
//! anything it is unsure of is parsed properly by the full path. The rewrite it hands over to
//! sums checksum words in native byte order (RFC 1071 section 2(B)), so it swaps no bytes.

use super::ctx::Ctx;
use super::rewrite::{self, IP_TCP, IP_UDP};
use super::rules::Rules;
use super::session::{InKey, OutKey, slot};
use super::table::Key;
use super::types::{DropReason, Egress, Frame, Ingress, Pkt, Verdict};
use crate::packet::ipv4::Protocol;
use crate::packet::{checksum, ethernet, icmp, read_u16, read_u32, tcp};
use std::net::Ipv4Addr;

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
    let (l3, vlan) = match read_u16(d, 12) {
        ethernet::ETHERTYPE_IPV4 => (14, None),
        ethernet::ETHERTYPE_VLAN if read_u16(d, 16) == ethernet::ETHERTYPE_IPV4 => {
            (18, Some(read_u16(d, 14) & 0x0fff))
        }
        _ => return Prep::SLOW,
    };
    let ip = &d[l3..];
    let Some(h) = ip.first_chunk::<IP_UDP>() else {
        return Prep::SLOW;
    };
    let tot = read_u16(h, 2) as usize;
    let hdr = h.first_chunk::<20>().expect("28 > 20");
    // Version 4 without options, not a fragment, whole, header checksum right.
    if h[0] != 0x45
        || read_u16(h, 6) & 0x3fff != 0
        || tot < IP_UDP
        || tot > ip.len()
        || !checksum::ipv4_header_ok(hdr)
    {
        return Prep::SLOW;
    }
    let (proto, ttl) = (Protocol(h[9]), h[8]);
    let outbound = matches!(p.ingress, Ingress::Inside(_));
    // (source port, destination port, whether the remote port is part of the key, plain)
    let (sport, dport, rem_port, plain) = match proto {
        Protocol::UDP => {
            let ok = read_u16(h, 24) >= 8;
            (read_u16(h, 20), read_u16(h, 22), ok, ok)
        }
        Protocol::TCP => {
            let Some(t) = ip[..tot].first_chunk::<IP_TCP>() else {
                return Prep::SLOW;
            };
            if t[32] >> 4 < 5 {
                return Prep::SLOW;
            }
            let plain = t[33] & (tcp::flags::SYN | tcp::flags::FIN | tcp::flags::RST) == 0;
            (read_u16(h, 20), read_u16(h, 22), true, plain)
        }
        Protocol::ICMP
            if h[20] == icmp::ECHO_REPLY || (outbound && h[20] == icmp::ECHO_REQUEST) =>
        {
            let id = read_u16(h, 24);
            (id, id, false, true)
        }
        _ => return Prep::SLOW,
    };
    let (src, dst) = (read_u32(h, 12), read_u32(h, 16));
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

/// Established outbound packet: everything it needs is in its `in_tab` slot. None if an
/// earlier frame of the batch moved or changed the slot: the full path takes over.
#[inline(always)]
pub(super) fn in2out(
    cx: &mut Ctx,
    r: &Rules,
    f: &mut Frame<'_>,
    k: &InKey,
    p: &Prep,
) -> Option<Verdict> {
    let now = cx.now();
    let realm = r.realms.get(k.realm as usize)?;
    let (v, ext_addr) = cx.store.slot_in(p.pos, p.epoch, k)?;
    if !slot::fast_live(v.sess, v.expires, now) {
        return None;
    }
    let l3 = p.l3 as usize;
    let ip = f.buf.get_mut(f.off + l3..f.off + f.len)?;
    // Larger than the outside link takes: the full path fragments it or answers.
    if ip.len() > r.outside_mtu {
        return None;
    }
    if !rewrite::plain::<true>(ip, k.proto, ext_addr, v.ext_port) {
        return None;
    }
    if k.proto == Protocol::TCP {
        // The inside host's receive point, for the check of inbound RST/FIN
        // (`tcp::inbound_acceptable`), as `Store::track_receiver` keeps it on the full path:
        // the highest ACK. `classify` saw a whole 20-byte TCP header behind an option-less
        // IP header; the ports were rewritten, the numbers are untouched.
        if let Some(t) = ip.first_chunk::<IP_TCP>()
            && t[33] & tcp::flags::ACK != 0
        {
            let ack = u32::from_be_bytes([t[28], t[29], t[30], t[31]]);
            if ack.wrapping_sub(v.ack) as i32 > 0 {
                v.ack = ack;
            }
        }
    }
    v.expires = now.saturating_add(realm.timeout(k.proto, v.sess & slot::EST != 0));
    if l3 != 14 {
        f.set_vlan(None);
    }
    Some(Verdict::Forward {
        egress: Egress::Outside,
        next_hop: Ipv4Addr::from(r.outside_next_hop(k.rem_addr)),
    })
}

/// Established inbound packet, from its `out_tab` slot alone.
#[inline(always)]
pub(super) fn out2in(
    cx: &mut Ctx,
    r: &Rules,
    f: &mut Frame<'_>,
    k: &OutKey,
    p: &Prep,
) -> Option<Verdict> {
    let now = cx.now();
    let v = cx.store.slot_out(p.pos, p.epoch, k)?;
    if !slot::fast_live(v.sess, v.expires, now) {
        return None;
    }
    let realm = r.realms.get(v.realm as usize)?;
    let ip = f.buf.get_mut(f.off + p.l3 as usize..f.off + f.len)?;
    if ip.len() > realm.mtu {
        return None;
    }
    if !rewrite::plain::<false>(ip, k.proto, v.in_addr, v.in_port) {
        return None;
    }
    // RFC 4787 REQ-6: inbound refresh is the operator's choice; TCP follows its state.
    if k.proto == Protocol::TCP || realm.inbound_refresh {
        v.expires = now.saturating_add(realm.timeout(k.proto, v.sess & slot::EST != 0));
    }
    let in_addr = v.in_addr;
    if realm.vlan.is_some() && !f.set_vlan(realm.vlan) {
        return Some(cx.discard(DropReason::NoHeadroom));
    }
    Some(Verdict::Forward {
        egress: Egress::Inside(realm.iface),
        next_hop: Ipv4Addr::from(realm.next_hop(in_addr)),
    })
}
