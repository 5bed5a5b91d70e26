//! Outside to inside: destination translation, filtering, inbound-initiated sessions (static
//! and 1:1 mappings, endpoint-independent filtering).

use super::engine::{Engine, Frag, Meta};
use super::frag::{FragAction, FragKey};
use super::rules::{ExtAddr, PROTO_ICMP, PROTO_TCP, PROTO_UDP, Rules};
use super::session::*;
use super::types::*;
use super::wire::*;
use crate::packet::{icmp, tcp::flags as tf};
use std::net::Ipv4Addr;

impl Engine {
    pub(crate) fn out2in(
        &mut self,
        r: &Rules,
        f: &mut Frame<'_>,
        m: Meta,
        hairpin: bool,
    ) -> Verdict {
        let ingress = if hairpin {
            Ingress::Hairpin
        } else {
            Ingress::Outside
        };
        let fkey = FragKey::outside(hairpin, &m);
        let key = OutKey {
            proto: m.proto,
            ext_port: m.dport,
            rem_port: rem_port_out(&m),
            ext_addr: m.dst,
            rem_addr: m.src,
        };
        // The full path: every check, then the session (found or created). Established
        // packets of plain flows rarely get here: `Engine::fast_out2in` takes them.
        let Some(ext) = r.ext_addr(m.dst) else {
            return self.discard(DropReason::NotForUs);
        };
        let echo_request =
            m.proto == PROTO_ICMP && m.icmp_type == icmp::ECHO_REQUEST && m.frag != Frag::Later;
        match ext {
            // natgw answers pings to its own and its pool addresses; 1:1 addresses belong to
            // their inside host, which answers itself.
            ExtAddr::Own | ExtAddr::Pool { .. } | ExtAddr::StaticOnly { .. } if echo_request => {
                if m.frag != Frag::None {
                    return self.discard(DropReason::IcmpUnsupported);
                }
                if hairpin {
                    // A hairpinned ping to a pool address: answer towards the sender's mapping.
                    return self.discard(DropReason::IcmpUnsupported);
                }
                return self.echo_reply(f, &m, Egress::Outside, r.outside_next_hop(m.src));
            }
            ExtAddr::Own => {
                self.counters.to_kernel.inc();
                return Verdict::ToKernel;
            }
            _ => {}
        }
        if r.cores > 1
            && m.frag != Frag::Later
            && let Some((p, a, port)) = Self::outside_endpoint(f.data(), &m)
            && let Some(o) = r.outside_owner(p, a, port)
            && o != self.core
        {
            return self.handoff(o, ingress, &m, fkey);
        }
        if !hairpin && m.ttl <= 1 {
            return self.time_exceeded(
                f,
                &m,
                r.outside_addr,
                Egress::Outside,
                r.outside_next_hop(m.src),
            );
        }
        if m.frag == Frag::Later {
            return self.frag_later(r, f, &m, fkey);
        }
        match m.proto {
            PROTO_TCP | PROTO_UDP => {}
            PROTO_ICMP if m.is_icmp_error() => {
                return self.icmp_error_out2in(r, f, m, hairpin);
            }
            PROTO_ICMP if m.icmp_type == icmp::ECHO_REPLY || m.icmp_type == icmp::ECHO_REQUEST => {}
            PROTO_ICMP => return self.discard(DropReason::IcmpUnsupported),
            _ => return self.discard(DropReason::UnsupportedProtocol),
        }
        let si = match self.find_out(&key) {
            Some(i) => i,
            None => match self.new_inbound_session(r, ext, &m) {
                Ok(i) => i,
                Err(e) => return self.discard(e),
            },
        };
        if hairpin {
            // Its remote is one of our external addresses: the inside end's replies
            // must hairpin too.
            self.sessions[si as usize].flags |= flags::HAIRPIN;
        }
        let now = self.now;
        let s = &mut self.sessions[si as usize];
        if m.proto == PROTO_TCP {
            s.tcp = tcp::update(s.tcp, m.tcp_flags, false);
        }
        let s = *s;
        let realm = &r.realms[s.realm as usize];
        // RFC 4787 REQ-6: inbound refresh is the operator's choice; TCP follows its state.
        let refresh = m.proto == PROTO_TCP || realm.inbound_refresh;
        if refresh {
            self.sessions[si as usize].expires = now.saturating_add(self.timeout(realm, &s));
        }
        self.publish(si, refresh);
        super::in2out::rewrite(f.data_mut(), &m, false, s.in_addr, s.in_port, !hairpin);
        if hairpin {
            self.counters.hairpinned.inc();
        } else {
            self.counters.out2in.inc();
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
            self.record_frag(fkey, a);
        }
        if !set_vlan(f.buf, &mut f.off, &mut f.len, realm.vlan) {
            return self.discard(DropReason::NoHeadroom);
        }
        v
    }

    /// A session for an inbound frame with none: static mappings and 1:1 addresses accept new
    /// flows; dynamic mappings only as the realm's filtering allows. Nothing else creates state.
    fn new_inbound_session(
        &mut self,
        r: &Rules,
        ext: ExtAddr,
        m: &Meta,
    ) -> Result<u32, DropReason> {
        let opens = match m.proto {
            PROTO_TCP => m.tcp_flags & (tf::SYN | tf::ACK | tf::RST) == tf::SYN,
            PROTO_ICMP => m.icmp_type == icmp::ECHO_REQUEST,
            _ => true,
        };
        self.make_session_room();
        let (realm_id, in_addr, in_port, map) = match ext {
            ExtAddr::Pool { .. } | ExtAddr::StaticOnly { .. } => {
                if let Some(st) = r.static_by_ext(m.proto, m.dst, m.dport) {
                    (st.realm, st.in_addr, st.in_port, NONE)
                } else if let ExtAddr::Pool { .. } = ext {
                    let Some(mi) = self.mapping_by_ext(m.proto, m.dst, m.dport) else {
                        return Err(DropReason::Unsolicited);
                    };
                    let mp = *self.mapping(mi);
                    let realm = &r.realms[mp.key.realm as usize];
                    if !self.filter_allows(realm, mi, m.src) {
                        return Err(DropReason::Filtered);
                    }
                    (mp.key.realm, mp.key.in_addr, mp.key.in_port, mi)
                } else {
                    return Err(DropReason::Unsolicited);
                }
            }
            ExtAddr::OneToOne { index } => {
                let o = &r.one_to_one[index as usize];
                (o.realm, o.in_addr, m.dport, NONE)
            }
            ExtAddr::Own => return Err(DropReason::NotForUs),
        };
        if !opens {
            return Err(if m.proto == PROTO_TCP {
                DropReason::TcpInvalid
            } else {
                DropReason::Unsolicited
            });
        }
        let realm = &r.realms[realm_id as usize];
        let s = Session {
            in_addr,
            ext_addr: m.dst,
            rem_addr: m.src,
            in_port,
            ext_port: m.dport,
            rem_port: rem_port_out(m),
            realm: realm_id,
            proto: m.proto,
            flags: flags::INBOUND,
            map,
            ..Session::default()
        };
        self.create_session_or_unwind(realm, s)
    }
}

/// The remote port of an outside frame's session key (its source port); none for ICMP.
#[inline(always)]
pub(crate) fn rem_port_out(m: &Meta) -> u16 {
    if m.proto == PROTO_ICMP { 0 } else { m.sport }
}
