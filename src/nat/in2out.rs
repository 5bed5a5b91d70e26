//! Inside to outside: source translation, session creation, hairpinning.

use super::ctx::{Ctx, send_outside};
use super::frag::{FragAction, FragKey};
use super::icmp;
use super::out2in;
use super::parse::{self, Frag, Meta};
use super::rewrite::{Rewrite, Side};
use super::rules::{ExtAddr, RealmRules, Rules, martian_destination};
use super::session::*;
use super::store::{Seen, Store};
use super::types::*;
use crate::packet::icmp::{ECHO_REPLY, ECHO_REQUEST};
use crate::packet::ipv4::Protocol;
use std::net::Ipv4Addr;

/// The full inside-to-outside path: every check, then the session (found or created).
/// Established packets of plain flows rarely get here: `fast::in2out` takes them.
pub(super) fn in2out(
    cx: &mut Ctx,
    r: &Rules,
    realm: &RealmRules,
    f: &mut Frame<'_>,
    mut m: Meta,
    ingress: Ingress,
) -> Verdict {
    let key = InKey {
        realm: realm.id,
        proto: m.proto,
        in_port: m.sport,
        rem_port: m.rem_port_in(),
        in_addr: m.src,
        rem_addr: m.dst,
    };
    let ext = match screen(cx, r, realm, f, &m, ingress) {
        Ok(ext) => ext,
        Err(v) => return v,
    };
    let hairpin = ext.is_some();
    if hairpin && !realm.hairpinning {
        return cx.discard(DropReason::HairpinDisabled);
    }
    let si = match cx.store.find_in(&key) {
        Some(i) => i,
        None => match new_session(&mut cx.store, r, realm, &m) {
            Ok(i) => i,
            Err(e) => return cx.discard(e),
        },
    };
    // Also set if an earlier packet of this session found its destination external.
    let hairpin = cx.store.mark_hairpin(si, hairpin);
    if hairpin && !realm.hairpinning {
        // Hairpinning was switched off by a reload after the session was created.
        return cx.discard(DropReason::HairpinDisabled);
    }
    let seen = Seen {
        outbound: true,
        tcp: (m.proto == Protocol::TCP).then(|| m.tcp_seg()),
        refresh: true,
    };
    let s = cx.store.track(si, realm, seen);
    let rw = Rewrite {
        side: Side::Src,
        addr: s.ext_addr,
        port: s.ext_port,
        dec_ttl: true,
    };
    rw.apply(f.data_mut(), &m);
    cx.counters.in2out.inc();
    let fkey = FragKey::inside(realm.id, &m);
    m.src = s.ext_addr;
    m.sport = s.ext_port;
    if hairpin {
        return self::hairpin(cx, r, f, m, fkey);
    }
    let nh = r.outside_next_hop(m.dst);
    if m.frag == Frag::First {
        cx.record_frag(
            fkey,
            FragAction::Translate {
                src: Some(s.ext_addr),
                dst: None,
                dec_ttl: true,
                vlan: None,
                next: Verdict::Forward {
                    egress: Egress::Outside,
                    next_hop: Ipv4Addr::from(nh),
                },
            },
        );
    }
    send_outside(f, nh)
}

/// Everything before the session: frames for natgw itself, sources outside the realm,
/// flows another core owns, TTL expiry, later fragments, ICMP errors, and protocols natgw
/// does not translate. `Err`: the frame's verdict; `Ok`: on to its session, with what its
/// destination is if it is one of natgw's external addresses (a hairpin).
fn screen(
    cx: &mut Ctx,
    r: &Rules,
    realm: &RealmRules,
    f: &mut Frame<'_>,
    m: &Meta,
    ingress: Ingress,
) -> Result<Option<ExtAddr>, Verdict> {
    if realm.gateway == Some(m.dst) {
        return Err(for_own_inside(cx, realm, f, m));
    }
    if m.dst == u32::MAX || realm.martian_sources.contains(&m.dst) {
        // A broadcast (limited, or a realm prefix's): the kernel's (DHCP ...), never NAT
        // traffic. The XDP program passes them; one that reaches a worker is counted.
        cx.counters.to_kernel.inc();
        return Err(Verdict::ToKernel);
    }
    if realm.martian_source(m.src) {
        return Err(cx.discard(DropReason::MartianSource));
    }
    if !realm.contains(m.src) {
        return Err(cx.discard(DropReason::SourceNotInside));
    }
    if martian_destination(m.dst) {
        return Err(cx.discard(DropReason::MartianDestination));
    }
    if r.cores > 1 {
        let Some(inside) = parse::inside_addr_of(f.data(), m) else {
            return Err(cx.discard(DropReason::BadL4Header));
        };
        let owner = r.inside_owner(realm.id, inside);
        if owner != cx.core {
            return Err(cx.handoff(owner, ingress, m, FragKey::inside(realm.id, m)));
        }
    }
    if m.ttl <= 1 {
        let src = realm.gateway.unwrap_or(r.outside_addr);
        let nh = realm.next_hop(m.src);
        return Err(icmp::time_exceeded(
            cx,
            f,
            m,
            src,
            Egress::Inside(realm.iface),
            nh,
        ));
    }
    if m.frag == Frag::Later {
        let now = cx.now();
        let k = FragKey::inside(realm.id, m);
        return Err(cx.frags.later(f, m, k, now, &cx.counters));
    }
    match m.proto {
        Protocol::TCP | Protocol::UDP => {}
        Protocol::ICMP if m.is_icmp_error() => return Err(icmp_error(cx, r, realm, f, *m)),
        Protocol::ICMP if m.icmp_type == ECHO_REQUEST || m.icmp_type == ECHO_REPLY => {}
        Protocol::ICMP => return Err(cx.discard(DropReason::IcmpUnsupported)),
        _ => return Err(cx.discard(DropReason::UnsupportedProtocol)),
    }
    let ext = r.ext_addr(m.dst);
    if let Some(e) = ext
        && e != ExtAddr::Own
        && !matches!(e, ExtAddr::OneToOne { .. })
        && m.proto == Protocol::ICMP
        && m.icmp_type == ECHO_REQUEST
    {
        // Pings from inside to natgw's pool addresses are answered directly.
        return Err(for_own_inside(cx, realm, f, m));
    }
    if ext == Some(ExtAddr::Own) {
        return Err(for_own_inside(cx, realm, f, m));
    }
    Ok(ext)
}

/// An ICMP error from inside: translated, then sent out, or back in when it is about a
/// hairpinned flow (its destination is one of natgw's external addresses).
fn icmp_error(cx: &mut Ctx, r: &Rules, realm: &RealmRules, f: &mut Frame<'_>, m: Meta) -> Verdict {
    let m = match icmp::error_in2out(cx, realm, f, m) {
        Ok(m) => m,
        Err(v) => return v,
    };
    if r.ext_addr(m.dst).is_some_and(|x| x != ExtAddr::Own) {
        if !realm.hairpinning {
            return cx.discard(DropReason::HairpinDisabled);
        }
        let fkey = FragKey::inside(realm.id, &m);
        return hairpin(cx, r, f, m, fkey);
    }
    send_outside(f, r.outside_next_hop(m.dst))
}

/// The second half of a hairpin: the frame, now carrying the sender's external address,
/// is translated inwards as if it had arrived from outside (RFC 4787 REQ-9a), on the core
/// that owns the destination mapping.
fn hairpin(cx: &mut Ctx, r: &Rules, f: &mut Frame<'_>, m: Meta, fkey: FragKey) -> Verdict {
    let owner =
        parse::outside_endpoint(f.data(), &m).and_then(|(p, a, port)| r.outside_owner(p, a, port));
    if let Some(o) = owner
        && o != cx.core
    {
        cx.counters.handoffs.inc();
        let v = Verdict::Handoff {
            core: o as u16,
            ingress: Ingress::Hairpin,
        };
        if m.frag == Frag::First {
            let src = Some(m.src);
            cx.record_frag(
                fkey,
                FragAction::Translate {
                    src,
                    dst: None,
                    dec_ttl: true,
                    vlan: m.vlan,
                    next: v,
                },
            );
        }
        return v;
    }
    let v = out2in::out2in(cx, r, f, m, true);
    if m.frag == Frag::First
        && let Verdict::Forward { .. } = v
        && let Ok(after) = parse::parse(f.data())
    {
        // Later fragments get both halves at once.
        cx.record_frag(
            fkey,
            FragAction::Translate {
                src: Some(m.src),
                dst: Some(after.dst),
                dec_ttl: true,
                vlan: after.vlan,
                next: v,
            },
        );
    }
    v
}

/// A session for an outbound frame with none: a static mapping's or 1:1 address's, or one
/// on the endpoint's dynamic mapping (found or created).
fn new_session(
    store: &mut Store,
    r: &Rules,
    realm: &RealmRules,
    m: &Meta,
) -> Result<u32, DropReason> {
    if m.proto == Protocol::ICMP && m.icmp_type != ECHO_REQUEST {
        // An echo reply from inside answers an inbound request: it needs its session.
        return Err(DropReason::Unsolicited);
    }
    if store.host_full(realm, m.src) {
        return Err(DropReason::PerHostSessions);
    }
    store.make_session_room(false);
    let (ext_addr, ext_port, map) =
        if let Some(st) = r.static_by_in(realm.id, m.proto, m.src, m.sport) {
            (st.ext_addr, st.ext_port, NONE)
        } else if let Some(o) = r.one_to_one_by_in(realm.id, m.src) {
            (o.ext_addr, m.sport, NONE)
        } else {
            let rem_port = m.rem_port_in();
            let mk = Store::map_key(realm, m.proto, m.src, m.sport, m.dst, rem_port);
            let mi = store.mapping_for(r, realm, mk, (m.dst, rem_port))?;
            let mp = store.mapping(mi);
            (mp.ext_addr, mp.ext_port, mi)
        };
    let s = Session {
        in_addr: m.src,
        ext_addr,
        rem_addr: m.dst,
        in_port: m.sport,
        ext_port,
        rem_port: m.rem_port_in(),
        realm: realm.id,
        proto: m.proto,
        map,
        ..Session::default()
    };
    store.create_or_unwind(realm, s)
}

/// Answers pings to natgw's inside address; anything else for it belongs to the kernel.
fn for_own_inside(cx: &mut Ctx, realm: &RealmRules, f: &mut Frame<'_>, m: &Meta) -> Verdict {
    if m.proto == Protocol::ICMP && m.icmp_type == ECHO_REQUEST && m.frag == Frag::None {
        let nh = realm.next_hop(m.src);
        return icmp::echo_reply(cx, f, m, Egress::Inside(realm.iface), nh);
    }
    cx.counters.to_kernel.inc();
    Verdict::ToKernel
}
