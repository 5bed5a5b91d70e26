//! ICMP: error translation in both directions (RFC 5508 section 4), echo replies for natgw's
//! own addresses, and the Time Exceeded natgw sends as a router (so traceroute works).
//!
//! Errors never create, refresh or delete a session.

use super::engine::{Engine, Frag, Meta};
use super::rules::{PROTO_ICMP, PROTO_TCP, PROTO_UDP, RealmRules, Rules};
use super::session::*;
use super::types::*;
use super::wire::*;
use crate::packet::{checksum, checksum::Delta, icmp};
use std::net::Ipv4Addr;

/// The IPv4 packet quoted in an ICMP error: its header plus at least 8 bytes of transport.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Embedded {
    pub ip: usize,
    pub l4: usize,
    pub end: usize,
    pub proto: u8,
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
}

impl Embedded {
    pub fn parse(d: &[u8], m: &Meta) -> Result<Embedded, DropReason> {
        let ip = m.l4 + 8;
        let end = (m.l3 + m.tot).min(d.len());
        if ip + 20 > end {
            return Err(DropReason::Truncated);
        }
        let ihl = ((d[ip] & 0x0f) as usize) * 4;
        if d[ip] >> 4 != 4 || ihl < 20 {
            return Err(DropReason::BadIpHeader);
        }
        let l4 = ip + ihl;
        if l4 + 8 > end {
            return Err(DropReason::Truncated);
        }
        if rd16(d, ip + 6) & 0x1fff != 0 {
            // A quoted non-first fragment has no ports to find the session by.
            return Err(DropReason::IcmpUnsupported);
        }
        let proto = d[ip + 9];
        let (sport, dport) = match proto {
            PROTO_TCP | PROTO_UDP => (rd16(d, l4), rd16(d, l4 + 2)),
            PROTO_ICMP if d[l4] == icmp::ECHO_REQUEST || d[l4] == icmp::ECHO_REPLY => {
                let id = rd16(d, l4 + 4);
                (id, id)
            }
            _ => return Err(DropReason::IcmpUnsupported),
        };
        Ok(Embedded {
            ip,
            l4,
            end,
            proto,
            src: rd32(d, ip + 12),
            dst: rd32(d, ip + 16),
            sport,
            dport,
        })
    }

    /// The quote of an error, parsed and with its checksums verified.
    pub fn checked(d: &[u8], m: &Meta) -> Result<Embedded, DropReason> {
        let e = Self::parse(d, m)?;
        if !e.checksums_ok(d, m) {
            return Err(DropReason::IcmpBadChecksum);
        }
        Ok(e)
    }

    fn checksums_ok(&self, d: &[u8], m: &Meta) -> bool {
        let ihl = self.l4 - self.ip;
        // RFC 5508 REQ-3: a bad ICMP checksum or a bad embedded IP header checksum is dropped;
        // the embedded transport checksum is not checked (the quote is truncated).
        (m.frag != Frag::None || checksum::checksum(&d[m.l4..self.end]) == 0)
            && checksum::checksum(&d[self.ip..self.ip + ihl]) == 0
    }
}

impl Engine {
    /// A session found for an error, unless it has expired: an expired session the sweep has
    /// not reached yet is gone all the same, and is left for the sweep (an error never
    /// deletes a session itself).
    fn live(&self, found: Option<u32>) -> Option<u32> {
        found.filter(|&i| self.deadline(i) > self.now)
    }

    /// An error from inside about a flow that came in from outside: the quoted packet went
    /// remote -> inside host; restore the external address/port in it and translate the outer
    /// source.
    pub(crate) fn icmp_error_in2out(
        &mut self,
        r: &Rules,
        realm: &RealmRules,
        f: &mut Frame<'_>,
        mut m: Meta,
    ) -> Verdict {
        let e = match Embedded::checked(f.data(), &m) {
            Ok(e) => e,
            Err(x) => return self.discard(x),
        };
        let key = InKey {
            realm: realm.id,
            proto: e.proto,
            in_port: e.dport,
            rem_port: if e.proto == PROTO_ICMP { 0 } else { e.sport },
            in_addr: e.dst,
            rem_addr: e.src,
        };
        let Some(si) = self.live(self.session_in(&key)) else {
            return self.discard(DropReason::IcmpNoSession);
        };
        let s = self.sessions[si as usize];
        let d = f.data_mut();
        let icmpd = rewrite_embedded(d, &e, false, s.ext_addr, s.ext_port);
        let c = m.l4 + 2;
        wr16(d, c, icmpd.apply(rd16(d, c)));
        outer_rewrite(d, &m, true, s.ext_addr, true);
        self.counters.icmp_errors_translated.inc();
        self.counters.in2out.inc();
        m.src = s.ext_addr;
        if r.ext_addr(m.dst)
            .is_some_and(|x| x != super::rules::ExtAddr::Own)
        {
            if !realm.hairpinning {
                return self.discard(DropReason::HairpinDisabled);
            }
            let fkey = super::frag::FragKey::inside(realm.id, &m);
            return self.hairpin(r, f, m, fkey);
        }
        let nh = r.outside_next_hop(m.dst);
        self.send_outside(f, nh)
    }

    /// An error from outside about a flow natgw translated outwards: the quoted packet went
    /// external address -> remote; restore the inside address/port and the outer destination.
    pub(crate) fn icmp_error_out2in(
        &mut self,
        r: &Rules,
        f: &mut Frame<'_>,
        m: Meta,
        hairpin: bool,
    ) -> Verdict {
        let e = match Embedded::checked(f.data(), &m) {
            Ok(e) => e,
            Err(x) => return self.discard(x),
        };
        let key = OutKey {
            proto: e.proto,
            ext_port: e.sport,
            rem_port: if e.proto == PROTO_ICMP { 0 } else { e.dport },
            ext_addr: e.src,
            rem_addr: e.dst,
        };
        let Some(si) = self.live(self.session_out(&key)) else {
            return self.discard(DropReason::IcmpNoSession);
        };
        let s = self.sessions[si as usize];
        let realm = &r.realms[s.realm as usize];
        let d = f.data_mut();
        let icmpd = rewrite_embedded(d, &e, true, s.in_addr, s.in_port);
        let c = m.l4 + 2;
        wr16(d, c, icmpd.apply(rd16(d, c)));
        outer_rewrite(d, &m, false, s.in_addr, !hairpin);
        self.counters.icmp_errors_translated.inc();
        if hairpin {
            self.counters.hairpinned.inc();
        } else {
            self.counters.out2in.inc();
        }
        if !set_vlan(f.buf, &mut f.off, &mut f.len, realm.vlan) {
            return self.discard(DropReason::NoHeadroom);
        }
        Verdict::Forward {
            egress: Egress::Inside(realm.iface),
            next_hop: Ipv4Addr::from(realm.next_hop(s.in_addr)),
        }
    }

    /// Turns an echo request for natgw into its reply, in place.
    pub(crate) fn echo_reply(
        &mut self,
        f: &mut Frame<'_>,
        m: &Meta,
        egress: Egress,
        nh: u32,
    ) -> Verdict {
        let d = f.data_mut();
        // Swapping source and destination leaves the header sum unchanged.
        wr32(d, m.l3 + 12, m.dst);
        wr32(d, m.l3 + 16, m.src);
        let t = m.l3 + 8;
        let old = rd16(d, t);
        let new = (64u16 << 8) | (old & 0xff);
        wr16(d, t, new);
        let c = m.l3 + 10;
        wr16(d, c, checksum::update16(rd16(d, c), old, new));
        let old = rd16(d, m.l4);
        let new = (icmp::ECHO_REPLY as u16) << 8 | (old & 0xff);
        wr16(d, m.l4, new);
        let c = m.l4 + 2;
        wr16(d, c, checksum::update16(rd16(d, c), old, new));
        self.counters.replies.inc();
        Verdict::Reply {
            egress,
            next_hop: Ipv4Addr::from(nh),
        }
    }

    /// Replaces a frame whose TTL ran out with an ICMP Time Exceeded from `src` back to its
    /// sender (RFC 792 / RFC 1812 4.3.2): never about an ICMP error or a non-first fragment,
    /// and rate limited.
    pub(crate) fn time_exceeded(
        &mut self,
        f: &mut Frame<'_>,
        m: &Meta,
        src: u32,
        egress: Egress,
        nh: u32,
    ) -> Verdict {
        if m.is_icmp_error() || m.frag == Frag::Later || !self.icmp_token() {
            return self.discard(DropReason::TtlExceeded);
        }
        let quote = (m.ihl + 8).min(m.tot);
        let mut q = [0u8; 68];
        q[..quote].copy_from_slice(&f.data()[m.l3..m.l3 + quote]);
        let new_len = m.l3 + 28 + quote;
        if f.off + new_len > f.buf.len() {
            return self.discard(DropReason::NoHeadroom);
        }
        f.len = new_len;
        let ident = self.next_ident();
        let d = f.data_mut();
        let ip = m.l3;
        d[ip] = 0x45;
        d[ip + 1] = 0xc0;
        wr16(d, ip + 2, (28 + quote) as u16);
        wr16(d, ip + 4, ident);
        wr16(d, ip + 6, 0);
        d[ip + 8] = 64;
        d[ip + 9] = PROTO_ICMP;
        wr16(d, ip + 10, 0);
        wr32(d, ip + 12, src);
        wr32(d, ip + 16, m.src);
        let c = checksum::checksum(&d[ip..ip + 20]);
        wr16(d, ip + 10, c);
        let ic = ip + 20;
        d[ic] = icmp::TIME_EXCEEDED;
        d[ic + 1] = 0;
        wr16(d, ic + 2, 0);
        wr32(d, ic + 4, 0);
        d[ic + 8..ic + 8 + quote].copy_from_slice(&q[..quote]);
        let c = checksum::checksum(&d[ic..ic + 8 + quote]);
        wr16(d, ic + 2, c);
        self.counters.dropped(DropReason::TtlExceeded);
        self.counters.replies.inc();
        Verdict::Reply {
            egress,
            next_hop: Ipv4Addr::from(nh),
        }
    }
}

/// Rewrites the quoted packet's source (`src_side`) or destination endpoint, keeping its IP
/// checksum and (where quoted) transport checksum right; returns the change to the outer ICMP
/// checksum, which covers all of it.
fn rewrite_embedded(d: &mut [u8], e: &Embedded, src_side: bool, addr: u32, port: u16) -> Delta {
    let mut icmpd = Delta::new();
    let ao = e.ip + if src_side { 12 } else { 16 };
    let old_addr = rd32(d, ao);
    wr32(d, ao, addr);
    icmpd.add32(old_addr, addr);
    let c = e.ip + 10;
    let old_c = rd16(d, c);
    let new_c = checksum::update32(old_c, old_addr, addr);
    wr16(d, c, new_c);
    icmpd.add16(old_c, new_c);
    match e.proto {
        PROTO_TCP | PROTO_UDP => {
            let po = e.l4 + if src_side { 0 } else { 2 };
            let old_port = rd16(d, po);
            wr16(d, po, port);
            icmpd.add16(old_port, port);
            let mut l4 = Delta::new();
            l4.add32(old_addr, addr);
            l4.add16(old_port, port);
            let co = e.l4 + if e.proto == PROTO_UDP { 6 } else { 16 };
            if co + 2 <= e.end {
                let old = rd16(d, co);
                let new = if e.proto == PROTO_UDP {
                    l4.apply_udp(old)
                } else {
                    l4.apply(old)
                };
                wr16(d, co, new);
                icmpd.add16(old, new);
            }
        }
        _ => {
            let io = e.l4 + 4;
            let old_id = rd16(d, io);
            wr16(d, io, port);
            icmpd.add16(old_id, port);
            let co = e.l4 + 2;
            let old = rd16(d, co);
            let new = checksum::update16(old, old_id, port);
            wr16(d, co, new);
            icmpd.add16(old, new);
        }
    }
    icmpd
}

/// Outer header of a translated ICMP error: one address and the TTL.
fn outer_rewrite(d: &mut [u8], m: &Meta, src_side: bool, addr: u32, dec: bool) {
    let ao = m.l3 + if src_side { 12 } else { 16 };
    let old = rd32(d, ao);
    wr32(d, ao, addr);
    let mut ipd = Delta::new();
    ipd.add32(old, addr);
    if dec {
        let t = m.l3 + 8;
        let o = rd16(d, t);
        let n = o.wrapping_sub(0x0100);
        wr16(d, t, n);
        ipd.add16(o, n);
    }
    let c = m.l3 + 10;
    wr16(d, c, ipd.apply(rd16(d, c)));
}
