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
use crate::packet::ipv4::Protocol;
use crate::packet::{checksum, icmp, write_u16, write_u32};
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
    let d = f.data_mut();
    let ip = m.l3;
    d[ip] = 0x45;
    d[ip + 1] = 0xc0;
    write_u16(d, ip + 2, (28 + quote) as u16);
    write_u16(d, ip + 4, ident);
    write_u16(d, ip + 6, 0);
    d[ip + 8] = 64;
    d[ip + 9] = Protocol::ICMP.0;
    write_u16(d, ip + 10, 0);
    write_u32(d, ip + 12, src);
    write_u32(d, ip + 16, m.src);
    let c = checksum::checksum(&d[ip..ip + 20]);
    write_u16(d, ip + 10, c);
    let ic = ip + 20;
    d[ic] = icmp::TIME_EXCEEDED;
    d[ic + 1] = 0;
    write_u16(d, ic + 2, 0);
    write_u32(d, ic + 4, 0);
    d[ic + 8..ic + 8 + quote].copy_from_slice(&q[..quote]);
    let c = checksum::checksum(&d[ic..ic + 8 + quote]);
    write_u16(d, ic + 2, c);
    cx.counters.dropped(DropReason::TtlExceeded);
    cx.counters.replies.inc();
    Verdict::Reply {
        egress,
        next_hop: Ipv4Addr::from(nh),
    }
}
