//! Inside to outside: source translation, session creation, hairpinning.

use super::engine::{Engine, Frag, Meta};
use super::frag::{FragAction, FragKey};
use super::rules::{ExtAddr, PROTO_ICMP, PROTO_TCP, PROTO_UDP, RealmRules, Rules};
use super::session::*;
use super::types::*;
use super::wire::*;
use crate::packet::{checksum::Delta, icmp};
use std::net::Ipv4Addr;

impl Engine {
    pub(crate) fn in2out(
        &mut self,
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
            rem_port: rem_port(&m),
            in_addr: m.src,
            rem_addr: m.dst,
        };
        // The full path: every check, then the session (found or created). Established
        // packets of plain flows rarely get here: `Engine::fast_in2out` takes them.
        if realm.gateway == Some(m.dst) {
            return self.for_own_inside(realm, f, &m);
        }
        if !realm.contains(m.src) {
            return self.discard(DropReason::SourceNotInside);
        }
        if r.cores > 1 {
            let inside = match self.inside_addr_of(f.data(), &m) {
                Some(a) => a,
                None => return self.discard(DropReason::BadL4Header),
            };
            let owner = r.inside_owner(realm.id, inside);
            if owner != self.core {
                return self.handoff(owner, ingress, &m, FragKey::inside(realm.id, &m));
            }
        }
        if m.ttl <= 1 {
            let src = realm.gateway.unwrap_or(r.outside_addr);
            let nh = realm.next_hop(m.src);
            return self.time_exceeded(f, &m, src, Egress::Inside(realm.iface), nh);
        }
        if m.frag == Frag::Later {
            return self.frag_later(r, f, &m, FragKey::inside(realm.id, &m));
        }
        match m.proto {
            PROTO_TCP | PROTO_UDP => {}
            PROTO_ICMP if m.is_icmp_error() => {
                return self.icmp_error_in2out(r, realm, f, m);
            }
            PROTO_ICMP if m.icmp_type == icmp::ECHO_REQUEST || m.icmp_type == icmp::ECHO_REPLY => {}
            PROTO_ICMP => return self.discard(DropReason::IcmpUnsupported),
            _ => return self.discard(DropReason::UnsupportedProtocol),
        }
        let ext = r.ext_addr(m.dst);
        if let Some(e) = ext
            && e != ExtAddr::Own
            && !matches!(e, ExtAddr::OneToOne { .. })
            && m.proto == PROTO_ICMP
            && m.icmp_type == icmp::ECHO_REQUEST
        {
            // Pings from inside to natgw's pool addresses are answered directly.
            return self.for_own_inside(realm, f, &m);
        }
        if ext == Some(ExtAddr::Own) {
            return self.for_own_inside(realm, f, &m);
        }
        let hairpin = ext.is_some();
        if hairpin && !realm.hairpinning {
            return self.discard(DropReason::HairpinDisabled);
        }
        let si = match self.find_in(&key) {
            Some(i) => i,
            None => match self.new_outbound_session(r, realm, &m) {
                Ok(i) => i,
                Err(e) => return self.discard(e),
            },
        };
        if hairpin {
            self.sessions[si as usize].flags |= flags::HAIRPIN;
        }
        // Also set if an earlier packet of this session found its destination external.
        let hairpin = self.sessions[si as usize].flags & flags::HAIRPIN != 0;
        if hairpin && !realm.hairpinning {
            // Hairpinning was switched off by a reload after the session was created.
            return self.discard(DropReason::HairpinDisabled);
        }
        let now = self.now;
        let s = &mut self.sessions[si as usize];
        if m.proto == PROTO_TCP {
            s.tcp = tcp::update(s.tcp, m.tcp_flags, true);
        }
        let s = *s;
        self.sessions[si as usize].expires = now.saturating_add(self.timeout(realm, &s));
        self.publish(si, true);
        rewrite(f.data_mut(), &m, true, s.ext_addr, s.ext_port, true);
        self.counters.in2out.inc();
        let fkey = FragKey::inside(realm.id, &m);
        m.src = s.ext_addr;
        m.sport = s.ext_port;
        if hairpin {
            return self.hairpin(r, f, m, fkey);
        }
        let nh = r.outside_next_hop(m.dst);
        if m.frag == Frag::First {
            self.record_frag(
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
        self.send_outside(f, nh)
    }

    /// Untags the frame and sends it to the outside next hop.
    pub(crate) fn send_outside(&mut self, f: &mut Frame<'_>, nh: u32) -> Verdict {
        set_vlan(f.buf, &mut f.off, &mut f.len, None);
        Verdict::Forward {
            egress: Egress::Outside,
            next_hop: Ipv4Addr::from(nh),
        }
    }

    /// The second half of a hairpin: the frame, now carrying the sender's external address,
    /// is translated inwards as if it had arrived from outside (RFC 4787 REQ-9a), on the core
    /// that owns the destination mapping.
    pub(crate) fn hairpin(
        &mut self,
        r: &Rules,
        f: &mut Frame<'_>,
        m: Meta,
        fkey: FragKey,
    ) -> Verdict {
        let owner = Self::outside_endpoint(f.data(), &m)
            .and_then(|(p, a, port)| r.outside_owner(p, a, port));
        if let Some(o) = owner
            && o != self.core
        {
            self.counters.handoffs.inc();
            let v = Verdict::Handoff {
                core: o as u16,
                ingress: Ingress::Hairpin,
            };
            if m.frag == Frag::First {
                let src = Some(m.src);
                self.record_frag(
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
        let v = self.out2in(r, f, m, true);
        if m.frag == Frag::First
            && let Verdict::Forward { .. } = v
            && let Ok(after) = Self::parse(f.data())
        {
            // Later fragments get both halves at once.
            self.record_frag(
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

    fn new_outbound_session(
        &mut self,
        r: &Rules,
        realm: &RealmRules,
        m: &Meta,
    ) -> Result<u32, DropReason> {
        if m.proto == PROTO_ICMP && m.icmp_type != icmp::ECHO_REQUEST {
            // An echo reply from inside answers an inbound request: it needs its session.
            return Err(DropReason::Unsolicited);
        }
        self.make_session_room();
        let (ext_addr, ext_port, map) =
            if let Some(st) = r.static_by_in(realm.id, m.proto, m.src, m.sport) {
                (st.ext_addr, st.ext_port, NONE)
            } else if let Some(o) = r.one_to_one_by_in(realm.id, m.src) {
                (o.ext_addr, m.sport, NONE)
            } else {
                let mk = Self::map_key(realm, m.proto, m.src, m.sport, m.dst, rem_port(m));
                let mi = self.mapping_for(r, realm, mk, (m.dst, rem_port(m)))?;
                let mp = self.mapping(mi);
                (mp.ext_addr, mp.ext_port, mi)
            };
        let s = Session {
            in_addr: m.src,
            ext_addr,
            rem_addr: m.dst,
            in_port: m.sport,
            ext_port,
            rem_port: rem_port(m),
            realm: realm.id,
            proto: m.proto,
            map,
            ..Session::default()
        };
        self.create_session_or_unwind(realm, s)
    }

    /// Creates a session; a mapping created for it alone is removed again if that fails.
    pub(crate) fn create_session_or_unwind(
        &mut self,
        realm: &RealmRules,
        s: Session,
    ) -> Result<u32, DropReason> {
        let map = s.map;
        let r = self.create_session(realm, s);
        if r.is_err() && map != NONE && self.mapping(map).sessions == 0 {
            self.delete_mapping(map);
        }
        r
    }

    /// Answers pings to natgw's inside address; anything else for it belongs to the kernel.
    fn for_own_inside(&mut self, realm: &RealmRules, f: &mut Frame<'_>, m: &Meta) -> Verdict {
        if m.proto == PROTO_ICMP && m.icmp_type == icmp::ECHO_REQUEST && m.frag == Frag::None {
            return self.echo_reply(f, m, Egress::Inside(realm.iface), realm.next_hop(m.src));
        }
        self.counters.to_kernel.inc();
        Verdict::ToKernel
    }

    /// A frame handed to its owner; the first fragment leaves a note so later fragments follow.
    pub(crate) fn handoff(
        &mut self,
        core: usize,
        ingress: Ingress,
        m: &Meta,
        fkey: FragKey,
    ) -> Verdict {
        self.counters.handoffs.inc();
        let v = Verdict::Handoff {
            core: core as u16,
            ingress,
        };
        if m.frag == Frag::First {
            self.record_frag(
                fkey,
                FragAction::Handoff {
                    core: core as u16,
                    ingress,
                },
            );
        }
        v
    }
}

/// The remote port of an inside frame's session key (its destination port); ICMP queries
/// have none.
#[inline(always)]
pub(crate) fn rem_port(m: &Meta) -> u16 {
    if m.proto == PROTO_ICMP { 0 } else { m.dport }
}

/// Rewrites the source (`src_side`) or destination address and port, patching the IPv4 and
/// transport checksums incrementally (RFC 1624), and optionally decrements the TTL.
#[inline(always)]
pub(crate) fn rewrite(d: &mut [u8], m: &Meta, src_side: bool, addr: u32, port: u16, dec: bool) {
    let ao = m.l3 + if src_side { 12 } else { 16 };
    let old_addr = rd32(d, ao);
    let mut ipd = Delta::new();
    ipd.add32(old_addr, addr);
    wr32(d, ao, addr);
    if dec {
        let t = m.l3 + 8;
        let old = rd16(d, t);
        let new = old.wrapping_sub(0x0100);
        wr16(d, t, new);
        ipd.add16(old, new);
    }
    let c = m.l3 + 10;
    wr16(d, c, ipd.apply(rd16(d, c)));
    if m.frag == Frag::Later {
        return;
    }
    match m.proto {
        PROTO_TCP | PROTO_UDP => {
            let po = m.l4 + if src_side { 0 } else { 2 };
            let old_port = rd16(d, po);
            wr16(d, po, port);
            let mut l4 = Delta::new();
            l4.add32(old_addr, addr);
            l4.add16(old_port, port);
            if m.proto == PROTO_TCP {
                let c = m.l4 + 16;
                wr16(d, c, l4.apply(rd16(d, c)));
            } else {
                let c = m.l4 + 6;
                wr16(d, c, l4.apply_udp(rd16(d, c)));
            }
        }
        PROTO_ICMP => {
            // Query identifier; the ICMP checksum has no pseudo-header.
            let io = m.l4 + 4;
            let old_id = rd16(d, io);
            wr16(d, io, port);
            let c = m.l4 + 2;
            let mut sum = crate::packet::checksum::update16(rd16(d, c), old_id, port);
            if sum == 0 && m.frag == Frag::None {
                // Only an all-zero message sums to -0 incrementally; its checksum is 0xFFFF.
                wr16(d, c, 0);
                sum = crate::packet::checksum::checksum(&d[m.l4..m.l3 + m.tot]);
            }
            wr16(d, c, sum);
        }
        _ => {}
    }
}
