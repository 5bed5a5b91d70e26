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
    let new_len = m.l3 + 28 + quote;
    if f.off + new_len > f.buf.len() {
        return cx.discard(DropReason::NoHeadroom);
    }
    f.len = new_len;
    let ident = cx.next_ident();
    let d = &mut f.data_mut()[m.l3..];
    let (ip, msg) = d.split_at_mut(20);
    let header = Ipv4Repr {
        src: Ipv4Addr::from(src),
        dst: Ipv4Addr::from(m.src),
        protocol: Protocol::ICMP,
        payload_len: (8 + quote) as u16,
        ttl: 64,
        ident,
        dont_frag: false,
        // Internetwork control, as routers send their ICMP errors.
        tos: 0xc0,
    };
    header.emit(&mut Ipv4Packet::new_unchecked(ip));
    let mut e = IcmpPacket::new_unchecked(&mut msg[..8 + quote]);
    e.set_msg_type(icmp::TIME_EXCEEDED);
    e.set_code(0);
    // The four unused bytes of the header, then the quote (RFC 792).
    e.set_echo_ident(0);
    e.set_echo_seq(0);
    e.data_mut().copy_from_slice(&q[..quote]);
    e.fill_checksum();
    cx.counters.dropped(DropReason::TtlExceeded);
    cx.counters.replies.inc();
    Verdict::Reply {
        egress,
        next_hop: Ipv4Addr::from(nh),
    }
}
