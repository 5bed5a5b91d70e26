//! The egress link's MTU (RFC 1812 5.2.6-5.2.7, RFC 1191, RFC 791) and TCP MSS clamping,
//! applied to every frame the full path forwards, after its translation.
//!
//! A datagram that does not fit the link it leaves by is, with DF set, replaced by an ICMP
//! "fragmentation needed" carrying that link's MTU, back to its sender and quoting the
//! datagram as the sender sent it (saved before translation: an inside sender hears from its
//! realm's gateway about its own addresses, an outside sender from natgw's outside address
//! about the external address it talked to); without DF it is fragmented: the first fragment
//! stays in the frame, the others wait in the fragment table's bounded egress pool for
//! `Engine::drain_ready`. Nothing is allocated.
//!
//! The fast path never sees such a datagram: it compares each frame with its egress link's
//! MTU and leaves larger ones to the full path (`fast.rs`). SYNs never take the fast path.

use super::ctx::Ctx;
use super::icmp::{self, TooBig};
use super::parse::{Frag, Meta};
use super::rewrite;
use super::rules::Rules;
use super::types::*;
use crate::packet::ethernet::ETHERTYPE_VLAN;
use crate::packet::ipv4::Protocol;
use crate::packet::read_u16;
use crate::packet::tcp::flags as tf;

/// The IPv4 header (at most 60 bytes) and 8 bytes of payload: what an ICMP error quotes.
const QUOTE_MAX: usize = 68;

/// A datagram as it arrived, kept only when it might not fit a link (it is larger than the
/// smallest egress MTU) and may not be fragmented: the quote of an ICMP error about it.
pub(super) struct Arrived {
    quote: [u8; QUOTE_MAX],
    len: usize,
    src: u32,
    vlan: Option<u16>,
    no_error: bool,
}

impl Arrived {
    /// Saves what a "fragmentation needed" about the frame `m` describes would need, if it
    /// can come to that.
    #[inline]
    pub fn save(r: &Rules, d: &[u8], m: &Meta) -> Option<Arrived> {
        if m.tot <= r.min_mtu || d.get(m.l3 + 6)? & 0x40 == 0 {
            return None;
        }
        let len = (m.ihl + 8).min(m.tot).min(QUOTE_MAX);
        let mut quote = [0u8; QUOTE_MAX];
        quote[..len].copy_from_slice(d.get(m.l3..m.l3 + len)?);
        Some(Arrived {
            quote,
            len,
            src: m.src,
            vlan: m.vlan,
            no_error: m.is_icmp_error() || m.frag == Frag::Later,
        })
    }
}

/// Offset of the IPv4 header of a frame the engine made (untagged or 802.1Q-tagged).
#[inline]
fn l3_of(d: &[u8]) -> usize {
    if d.len() >= 18 && read_u16(d, 12) == ETHERTYPE_VLAN {
        18
    } else {
        14
    }
}

/// The last step of the full path for a frame it forwards: MSS clamping of a SYN, then the
/// egress MTU. `m` is the frame as it arrived, `arrived` what [`Arrived::save`] kept of it.
pub(super) fn egress(
    cx: &mut Ctx,
    r: &Rules,
    f: &mut Frame<'_>,
    m: &Meta,
    ingress: Ingress,
    v: Verdict,
    arrived: Option<&Arrived>,
) -> Verdict {
    let Verdict::Forward { egress, .. } = v else {
        return v;
    };
    if m.proto == Protocol::TCP && m.tcp_flags & tf::SYN != 0 && m.frag != Frag::Later {
        clamp_mss(cx, r, f, m, ingress, egress);
    }
    let d = f.data();
    let l3 = l3_of(d);
    let mtu = r.egress_mtu(egress, (l3 == 18).then(|| read_u16(d, 14) & 0x0fff));
    if d.len().saturating_sub(l3) <= mtu {
        return v;
    }
    let Some(h) = d.get(l3..l3 + 20) else {
        return v;
    };
    let tot = usize::from(read_u16(h, 2));
    let ihl = usize::from(h[0] & 0xf) * 4;
    if tot <= mtu {
        // Bytes past the datagram (which the kernel would not send either).
        f.len = l3 + tot;
        return v;
    }
    if ihl < 20 || tot < ihl || l3 + tot > d.len() {
        return cx.discard(DropReason::BadIpHeader);
    }
    if h[6] & 0x40 != 0 {
        return too_big(cx, r, f, ingress, mtu, arrived);
    }
    fragment(cx, f, l3, ihl, tot, mtu, v)
}

/// DF set: "fragmentation needed" back to the sender, through the link it came from.
fn too_big(
    cx: &mut Ctx,
    r: &Rules,
    f: &mut Frame<'_>,
    ingress: Ingress,
    mtu: usize,
    arrived: Option<&Arrived>,
) -> Verdict {
    let Some(a) = arrived else {
        return cx.discard(DropReason::FragNeeded);
    };
    let dgram = TooBig {
        quote: &a.quote[..a.len],
        src: a.src,
        no_error: a.no_error,
    };
    match ingress {
        Ingress::Inside(i) => {
            let Some(realm) = r.realm_for(i, a.vlan) else {
                return cx.discard(DropReason::FragNeeded);
            };
            let src = realm.gateway.unwrap_or(r.outside_addr);
            let (egress, nh) = (Egress::Inside(realm.iface), realm.next_hop(a.src));
            icmp::frag_needed(cx, f, &dgram, mtu, src, realm.vlan, egress, nh)
        }
        Ingress::Outside => {
            let nh = r.outside_next_hop(a.src);
            let src = r.outside_addr;
            icmp::frag_needed(cx, f, &dgram, mtu, src, None, Egress::Outside, nh)
        }
        // The second half of a hairpin: its sender's datagram was translated on another
        // core, which no longer has it to quote.
        Ingress::Hairpin => cx.discard(DropReason::FragNeeded),
    }
}

/// DF clear: RFC 791 fragmentation of the (translated) datagram at `l3` into pieces that
/// fit `mtu`, the first in place. All fragments or none: the datagram is dropped when the
/// egress pool cannot take the rest.
fn fragment(
    cx: &mut Ctx,
    f: &mut Frame<'_>,
    l3: usize,
    ihl: usize,
    tot: usize,
    mtu: usize,
    v: Verdict,
) -> Verdict {
    let d = f.data();
    let mut later = [0u8; 60];
    let ihl2 = rewrite::later_fragment_header(&d[l3..l3 + ihl], &mut later);
    let frag = read_u16(d, l3 + 6);
    let (offset, more) = (usize::from(frag & 0x1fff) * 8, frag & 0x2000 != 0);
    // DF is clear; the reserved bit goes on as it came.
    let flags = frag & 0x8000;
    // Payload bytes per fragment, multiples of 8 (the later ones no larger than a slot).
    let first = mtu.saturating_sub(ihl) & !7;
    let rest = mtu.min(super::frag::HOLD_SLOT - l3).saturating_sub(ihl2) & !7;
    let payload = tot - ihl;
    if first == 0 || rest == 0 {
        return cx.discard(DropReason::FragmentOutFull);
    }
    let n = (payload - first).div_ceil(rest);
    if n > cx.frags.out_room() {
        return cx.discard(DropReason::FragmentOutFull);
    }
    let mut at = first;
    while at < payload {
        let len = rest.min(payload - at);
        let last = at + len == payload;
        let word = flags | ((offset + at) / 8) as u16 | if last && !more { 0 } else { 0x2000 };
        let mut h = later;
        rewrite::set_fragment(&mut h, 0, (ihl2 + len) as u16, word);
        let body = &d[l3 + ihl + at..l3 + ihl + at + len];
        let queued = cx.frags.push_out(&[&d[..l3], &h[..ihl2], body], v);
        debug_assert!(queued, "room was checked");
        at += len;
    }
    let word = flags | (offset / 8) as u16 | 0x2000;
    rewrite::set_fragment(f.data_mut(), l3, (ihl + first) as u16, word);
    f.len = l3 + ihl + first;
    cx.counters.fragmented.inc();
    cx.counters.fragments_made.add(n as u64 + 1);
    v
}

/// Lowers the MSS of a SYN or SYN-ACK to the smallest limit of the realms it passes through
/// (the one it came from, the one it goes to).
fn clamp_mss(
    cx: &mut Ctx,
    r: &Rules,
    f: &mut Frame<'_>,
    m: &Meta,
    ingress: Ingress,
    egress: Egress,
) {
    let d = f.data();
    let l3 = l3_of(d);
    if d.len() < l3 + 20 {
        return;
    }
    let vlan_now = (l3 == 18).then(|| read_u16(d, 14) & 0x0fff);
    let from = match ingress {
        Ingress::Inside(i) => r.realm_for(i, m.vlan),
        _ => None,
    };
    let to = match egress {
        Egress::Inside(i) => r.realm_for(i, vlan_now),
        Egress::Outside => None,
    };
    let limit = [from, to]
        .into_iter()
        .flatten()
        .filter_map(|realm| realm.mss_limit(r.outside_mtu))
        .min();
    let Some(mss) = limit else { return };
    let l4 = l3 + usize::from(d[l3] & 0xf) * 4;
    let end = l3 + usize::from(read_u16(d, l3 + 2));
    if rewrite::clamp_mss(f.data_mut(), l4, end, mss).is_some() {
        cx.counters.mss_clamped.inc();
    }
}
