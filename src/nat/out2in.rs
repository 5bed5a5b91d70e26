//! Outside to inside: destination translation, filtering, inbound-initiated sessions (static
//! and 1:1 mappings, endpoint-independent filtering).

use super::ctx::Ctx;
use super::frag::{FragAction, FragKey};
use super::icmp;
use super::parse::{self, Frag, Meta};
use super::rewrite::{Rewrite, Side};
use super::rules::{ExtAddr, Rules, martian};
use super::session::*;
use super::store::{Seen, Store};
use super::types::*;
use crate::packet::icmp::{ECHO_REPLY, ECHO_REQUEST};
use crate::packet::ipv4::Protocol;
use crate::packet::tcp::flags as tf;
use std::net::Ipv4Addr;

/// The full outside-to-inside path (`hairpin`: the frame is the second half of a hairpin).
/// Established packets of plain flows rarely get here: `fast::out2in` takes them.
pub(super) fn out2in(
    cx: &mut Ctx,
    r: &Rules,
    f: &mut Frame<'_>,
    m: Meta,
    hairpin: bool,
) -> Verdict {
    let fkey = FragKey::outside(hairpin, &m);
    let key = OutKey {
        proto: m.proto,
        ext_port: m.dport,
        rem_port: m.rem_port_out(),
        ext_addr: m.dst,
        rem_addr: m.src,
    };
    let ext = match screen(cx, r, f, &m, hairpin, fkey) {
        Ok(ext) => ext,
        Err(v) => return v,
    };
    let si = match cx.store.find_out(&key) {
        Some(i) => i,
        None => match new_session(&mut cx.store, r, ext, &m) {
            Ok(i) => i,
            Err(e) => return cx.discard(e),
        },
    };
    // A RST or FIN off the inside host's window (a blind reset, RFC 5961) is dropped before
    // it changes or refreshes anything. The fast path never sees one: RST and FIN segments
    // are not plain. A hairpin's second half is checked the same way: its sender is an
    // inside host whose numbers are the ones the receiver acknowledges.
    if m.proto == Protocol::TCP && !cx.store.tcp_acceptable(si, &m.tcp_seg()) {
        return cx.discard(DropReason::TcpOutOfWindow);
    }
    // A hairpin's remote is one of our external addresses: the inside end's replies must
    // hairpin too.
    cx.store.mark_hairpin(si, hairpin);
    let realm = &r.realms[cx.store.session(si).realm as usize];
    let seen = Seen {
        outbound: false,
        tcp: (m.proto == Protocol::TCP).then(|| m.tcp_seg()),
        // RFC 4787 REQ-6: inbound refresh is the operator's choice; TCP follows its state.
        refresh: m.proto == Protocol::TCP || realm.inbound_refresh,
    };
    let s = cx.store.track(si, realm, seen);
    let rw = Rewrite {
        side: Side::Dst,
        addr: s.in_addr,
        port: s.in_port,
        dec_ttl: !hairpin,
    };
    rw.apply(f.data_mut(), &m);
    if hairpin {
        cx.counters.hairpinned.inc();
    } else {
        cx.counters.out2in.inc();
    }
    let nh = realm.next_hop(s.in_addr);
    let v = Verdict::Forward {
        egress: Egress::Inside(realm.iface),
        next_hop: Ipv4Addr::from(nh),
    };
    if m.frag == Frag::First {
        let a = FragAction::Translate {
            src: None,
            dst: Some(s.in_addr),
            dec_ttl: !hairpin,
            vlan: realm.vlan,
            next: v,
        };
        cx.record_frag(fkey, a);
    }
    if !f.set_vlan(realm.vlan) {
        return cx.discard(DropReason::NoHeadroom);
    }
    v
}

/// Everything before the session: addresses that are not natgw's, pings natgw answers,
/// frames for the kernel, flows another core owns, TTL expiry, later fragments, ICMP errors,
/// protocols natgw does not translate. `Err`: the frame's verdict; `Ok`: what the destination
/// address is, on to its session.
fn screen(
    cx: &mut Ctx,
    r: &Rules,
    f: &mut Frame<'_>,
    m: &Meta,
    hairpin: bool,
    fkey: FragKey,
) -> Result<ExtAddr, Verdict> {
    let ingress = if hairpin {
        Ingress::Hairpin
    } else {
        Ingress::Outside
    };
    let Some(ext) = r.ext_addr(m.dst) else {
        return Err(cx.discard(DropReason::NotForUs));
    };
    if martian(m.src) {
        return Err(cx.discard(DropReason::MartianSource));
    }
    let echo_request =
        m.proto == Protocol::ICMP && m.icmp_type == ECHO_REQUEST && m.frag != Frag::Later;
    match ext {
        // natgw answers pings to its own and its pool addresses; 1:1 addresses belong to
        // their inside host, which answers itself.
        ExtAddr::Own | ExtAddr::Pool { .. } | ExtAddr::StaticOnly { .. } if echo_request => {
            if m.frag != Frag::None {
                return Err(cx.discard(DropReason::IcmpUnsupported));
            }
            if hairpin {
                // A hairpinned ping to a pool address: answer towards the sender's mapping.
                return Err(cx.discard(DropReason::IcmpUnsupported));
            }
            let nh = r.outside_next_hop(m.src);
            return Err(icmp::echo_reply(cx, f, m, Egress::Outside, nh));
        }
        ExtAddr::Own => {
            cx.counters.to_kernel.inc();
            return Err(Verdict::ToKernel);
        }
        _ => {}
    }
    if r.cores > 1
        && m.frag != Frag::Later
        && let Some((p, a, port)) = parse::outside_endpoint(f.data(), m)
        && let Some(o) = r.outside_owner(p, a, port)
        && o != cx.core
    {
        return Err(cx.handoff(o, ingress, m, fkey));
    }
    if !hairpin && m.ttl <= 1 {
        let nh = r.outside_next_hop(m.src);
        return Err(icmp::time_exceeded(
            cx,
            f,
            m,
            r.outside_addr,
            Egress::Outside,
            nh,
        ));
    }
    if m.frag == Frag::Later {
        let now = cx.now();
        return Err(cx.frags.later(f, m, fkey, now, &cx.counters));
    }
    match m.proto {
        Protocol::TCP | Protocol::UDP => {}
        Protocol::ICMP if m.is_icmp_error() => {
            return Err(icmp::error_out2in(cx, r, f, *m, hairpin));
        }
        Protocol::ICMP if m.icmp_type == ECHO_REPLY || m.icmp_type == ECHO_REQUEST => {}
        Protocol::ICMP => return Err(cx.discard(DropReason::IcmpUnsupported)),
        _ => return Err(cx.discard(DropReason::UnsupportedProtocol)),
    }
    Ok(ext)
}

/// A session for an inbound frame with none: static mappings and 1:1 addresses accept new
/// flows; dynamic mappings only as the realm's filtering allows. Nothing else creates state.
fn new_session(store: &mut Store, r: &Rules, ext: ExtAddr, m: &Meta) -> Result<u32, DropReason> {
    let opens = match m.proto {
        Protocol::TCP => m.tcp_flags & (tf::SYN | tf::ACK | tf::RST) == tf::SYN,
        Protocol::ICMP => m.icmp_type == ECHO_REQUEST,
        _ => true,
    };
    let target = inbound_target(store, r, ext, m)?;
    if !opens {
        return Err(if m.proto == Protocol::TCP {
            DropReason::TcpInvalid
        } else {
            DropReason::Unsolicited
        });
    }
    // Only a frame that opens a session may make room (a full table evicts): stray packets
    // and scans must not push out live sessions.
    store.make_session_room(true);
    // Making room may have deleted the mapping along with its last session: look again.
    let (realm_id, in_addr, in_port, map, one_to_one) = if target.3 == NONE {
        target
    } else {
        inbound_target(store, r, ext, m)?
    };
    let realm = &r.realms[realm_id as usize];
    let s = Session {
        in_addr,
        ext_addr: m.dst,
        rem_addr: m.src,
        in_port,
        ext_port: m.dport,
        rem_port: m.rem_port_out(),
        realm: realm_id,
        proto: m.proto,
        flags: flags::INBOUND | one_to_one,
        map,
        ..Session::default()
    };
    store.create_or_unwind(realm, s)
}

/// Where an inbound frame without a session would go: (realm, inside address and port,
/// mapping or NONE, the 1:1 flag). Changes nothing.
fn inbound_target(
    store: &Store,
    r: &Rules,
    ext: ExtAddr,
    m: &Meta,
) -> Result<(u16, u32, u16, u32, u8), DropReason> {
    match ext {
        ExtAddr::Pool { .. } | ExtAddr::StaticOnly { .. } => {
            if let Some(st) = r.static_by_ext(m.proto, m.dst, m.dport) {
                Ok((st.realm, st.in_addr, st.in_port, NONE, 0))
            } else if let ExtAddr::Pool { .. } = ext {
                let Some(mi) = store.mapping_by_ext(m.proto, m.dst, m.dport) else {
                    return Err(DropReason::Unsolicited);
                };
                let mp = *store.mapping(mi);
                let realm = &r.realms[mp.key.realm as usize];
                if !store.filter_allows(realm, mi, m.src) {
                    return Err(DropReason::Filtered);
                }
                Ok((mp.key.realm, mp.key.in_addr, mp.key.in_port, mi, 0))
            } else {
                Err(DropReason::Unsolicited)
            }
        }
        ExtAddr::OneToOne { index } => {
            let o = &r.one_to_one[index as usize];
            Ok((o.realm, o.in_addr, m.dport, NONE, flags::ONE_TO_ONE))
        }
        ExtAddr::Own => Err(DropReason::NotForUs),
    }
}
