//! ICMP: error translation in both directions (RFC 5508 section 4), echo replies for natgw's
//! own addresses, and the Time Exceeded natgw sends as a router (so traceroute works).
//!
//! Errors never create, refresh or delete a session.

use super::ctx::Ctx;
use super::parse::{Frag, Meta, Quote};
use super::rewrite::{self, Rewrite, Side};
use super::rules::{RealmRules, Rules};
use super::session::*;
use super::types::*;
use crate::packet::ipv4::Ipv4Repr;
use crate::packet::ipv4::Protocol;
use crate::packet::{IcmpPacket, Ipv4Packet, icmp};
use std::net::Ipv4Addr;

/// An error from inside about a flow that came in from outside: the quoted packet went
/// remote -> inside host; restore the external address/port in it and translate the outer
/// source. Ok: translated, with `src` the external address; where it goes (out, or back in
/// as a hairpin) is the caller's to decide.
pub(super) fn error_in2out(
    cx: &mut Ctx,
    realm: &RealmRules,
    f: &mut Frame<'_>,
    mut m: Meta,
) -> Result<Meta, Verdict> {
    let e = Quote::checked(f.data(), &m).map_err(|x| cx.discard(x))?;
    // The error answers a packet that came from the remote: it must go back to it
    // (nf_conntrack_inet_error), or it would reach a host the flow never talked to.
    if m.dst != e.src {
        return Err(cx.discard(DropReason::IcmpAddressMismatch));
    }
    let key = InKey {
        realm: realm.id,
        proto: e.proto,
        in_port: e.dport,
        rem_port: if e.proto == Protocol::ICMP {
            0
        } else {
            e.sport
        },
        in_addr: e.dst,
        rem_addr: e.src,
    };
    let Some(si) = cx.store.live(cx.store.session_in(&key)) else {
        return Err(cx.discard(DropReason::IcmpNoSession));
    };
    let s = *cx.store.session(si);
    let d = f.data_mut();
    let quote = Rewrite {
        side: Side::Dst,
        addr: s.ext_addr,
        port: s.ext_port,
        dec_ttl: false,
    };
    quote.apply_quote(d, &m, &e);
    Rewrite {
        side: Side::Src,
        addr: s.ext_addr,
        port: s.ext_port,
        dec_ttl: true,
    }
    .apply_ip(d, &m);
    cx.counters.icmp_errors_translated.inc();
    cx.counters.in2out.inc();
    m.src = s.ext_addr;
    Ok(m)
}

/// An error from outside about a flow natgw translated outwards: the quoted packet went
/// external address -> remote; restore the inside address/port and the outer destination.
pub(super) fn error_out2in(
    cx: &mut Ctx,
    r: &Rules,
    f: &mut Frame<'_>,
    m: Meta,
    hairpin: bool,
) -> Verdict {
    let e = match Quote::checked(f.data(), &m) {
        Ok(e) => e,
        Err(x) => return cx.discard(x),
    };
    // The quoted packet left from the external address the error is sent to; an error to
    // another address about it is forged (nf_conntrack_inet_error).
    if m.dst != e.src {
        return cx.discard(DropReason::IcmpAddressMismatch);
    }
    let key = OutKey {
        proto: e.proto,
        ext_port: e.sport,
        rem_port: if e.proto == Protocol::ICMP {
            0
        } else {
            e.dport
        },
        ext_addr: e.src,
        rem_addr: e.dst,
    };
    let Some(si) = cx.store.live(cx.store.session_out(&key)) else {
        return cx.discard(DropReason::IcmpNoSession);
    };
    let s = *cx.store.session(si);
    let realm = &r.realms[s.realm as usize];
    let d = f.data_mut();
    Rewrite {
        side: Side::Src,
        addr: s.in_addr,
        port: s.in_port,
        dec_ttl: false,
    }
    .apply_quote(d, &m, &e);
    Rewrite {
        side: Side::Dst,
        addr: s.in_addr,
        port: s.in_port,
        dec_ttl: !hairpin,
    }
    .apply_ip(d, &m);
    cx.counters.icmp_errors_translated.inc();
    if hairpin {
        cx.counters.hairpinned.inc();
    } else {
        cx.counters.out2in.inc();
    }
    if !f.set_vlan(realm.vlan) {
        return cx.discard(DropReason::NoHeadroom);
    }
    Verdict::Forward {
        egress: Egress::Inside(realm.iface),
        next_hop: Ipv4Addr::from(realm.next_hop(s.in_addr)),
    }
}

/// Turns an echo request for natgw into its reply, in place.
pub(super) fn echo_reply(
    cx: &mut Ctx,
    f: &mut Frame<'_>,
    m: &Meta,
    egress: Egress,
    nh: u32,
) -> Verdict {
    rewrite::echo_reply(f.data_mut(), m);
    cx.counters.replies.inc();
    Verdict::Reply {
        egress,
        next_hop: Ipv4Addr::from(nh),
    }
}

/// Replaces a frame whose TTL ran out with an ICMP Time Exceeded from `src` back to its
/// sender (RFC 792 / RFC 1812 4.3.2): never about an ICMP error or a non-first fragment,
/// and rate limited.
pub(super) fn time_exceeded(
    cx: &mut Ctx,
    f: &mut Frame<'_>,
    m: &Meta,
    src: u32,
    egress: Egress,
    nh: u32,
) -> Verdict {
    if m.is_icmp_error() || m.frag == Frag::Later || !cx.icmp_token() {
        return cx.discard(DropReason::TtlExceeded);
    }
    let quote = (m.ihl + 8).min(m.tot);
    let mut q = [0u8; 68];
    q[..quote].copy_from_slice(&f.data()[m.l3..m.l3 + quote]);
    let e = Error {
        msg_type: icmp::TIME_EXCEEDED,
        code: 0,
        rest: 0,
        src,
        dst: m.src,
    };
    if !e.emit(cx, f, m.l3, &q[..quote]) {
        return cx.discard(DropReason::NoHeadroom);
    }
    cx.counters.dropped(DropReason::TtlExceeded);
    cx.counters.replies.inc();
    Verdict::Reply {
        egress,
        next_hop: Ipv4Addr::from(nh),
    }
}

/// ICMP Destination Unreachable, code 4 (fragmentation needed and DF set).
const FRAG_NEEDED: u8 = 4;

/// What a datagram too large for its egress link with DF set was, as it arrived.
pub(super) struct TooBig<'a> {
    /// Its IPv4 header and the first 8 bytes of its payload, before translation.
    pub quote: &'a [u8],
    /// Its sender.
    pub src: u32,
    /// An ICMP error or a non-first fragment: no error is sent about it.
    pub no_error: bool,
}

/// Replaces a datagram that does not fit its egress link and may not be fragmented with an
/// ICMP "fragmentation needed" from `src` back to its sender, carrying the link's MTU
/// (RFC 1191 section 4, RFC 1812 5.2.7.1), quoting the datagram as the sender sent it, on
/// `vlan` (the sender's link). Rate limited like every error natgw originates.
#[allow(clippy::too_many_arguments)]
pub(super) fn frag_needed(
    cx: &mut Ctx,
    f: &mut Frame<'_>,
    dgram: &TooBig<'_>,
    mtu: usize,
    src: u32,
    vlan: Option<u16>,
    egress: Egress,
    nh: u32,
) -> Verdict {
    if dgram.no_error || !cx.icmp_token() {
        return cx.discard(DropReason::FragNeeded);
    }
    if !f.set_vlan(vlan) {
        return cx.discard(DropReason::NoHeadroom);
    }
    let l3 = if vlan.is_some() { 18 } else { 14 };
    let e = Error {
        msg_type: icmp::DEST_UNREACHABLE,
        code: FRAG_NEEDED,
        // The next-hop MTU in the low 16 bits of the unused word.
        rest: mtu.min(u16::MAX as usize) as u32,
        src,
        dst: dgram.src,
    };
    if !e.emit(cx, f, l3, dgram.quote) {
        return cx.discard(DropReason::NoHeadroom);
    }
    cx.counters.dropped(DropReason::FragNeeded);
    cx.counters.replies.inc();
    Verdict::Reply {
        egress,
        next_hop: Ipv4Addr::from(nh),
    }
}

/// An ICMP error natgw originates.
struct Error {
    msg_type: u8,
    code: u8,
    /// The header's second word (unused, or the next-hop MTU).
    rest: u32,
    src: u32,
    dst: u32,
}

impl Error {
    /// Replaces the frame's IPv4 packet at `l3` with this error quoting `quote`. False,
    /// changing nothing: the buffer has no room for it.
    fn emit(&self, cx: &mut Ctx, f: &mut Frame<'_>, l3: usize, quote: &[u8]) -> bool {
        let new_len = l3 + 28 + quote.len();
        if f.off + new_len > f.buf.len() || f.len < l3 {
            return false;
        }
        f.len = new_len;
        let ident = cx.next_ident();
        let d = &mut f.data_mut()[l3..];
        let (ip, msg) = d.split_at_mut(20);
        let header = Ipv4Repr {
            src: Ipv4Addr::from(self.src),
            dst: Ipv4Addr::from(self.dst),
            protocol: Protocol::ICMP,
            payload_len: (8 + quote.len()) as u16,
            ttl: 64,
            ident,
            dont_frag: false,
            // Internetwork control, as routers send their ICMP errors.
            tos: 0xc0,
        };
        header.emit(&mut Ipv4Packet::new_unchecked(ip));
        let mut e = IcmpPacket::new_unchecked(&mut msg[..8 + quote.len()]);
        e.set_msg_type(self.msg_type);
        e.set_code(self.code);
        // The second word of the header, then the quote (RFC 792).
        e.set_echo_ident((self.rest >> 16) as u16);
        e.set_echo_seq(self.rest as u16);
        e.data_mut().copy_from_slice(quote);
        e.fill_checksum();
        true
    }
}
