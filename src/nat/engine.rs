//! The per-core NAT engine: no I/O of its own. The dataplane hands it batches of frames and a
//! timestamp; it rewrites them in place and returns a verdict per frame.
//!
//! in2out (`in2out.rs`) and out2in (`out2in.rs`) are separate paths, as in VPP's NAT44-ED;
//! ICMP errors and the engine's own replies live in `icmp.rs`, fragments in `frag.rs`.

use super::counters::Counters;
use super::fast::{self, Lane, Prep};
use super::frag::FragTable;
use super::ports::{Policy, PortAllocator};
use super::rng::Rng;
use super::rules::{PROTO_ICMP, PROTO_TCP, PROTO_UDP, RealmRules, Rules, proto_index};
use super::session::*;
use super::table::{FlowTable, Key};
use super::types::*;
use super::wire::*;
use crate::config::{Filtering, Mapping, PortPolicy};
use crate::packet::{checksum, icmp};
use std::net::Ipv4Addr;
use std::sync::Arc;

/// A frame and where it came in.
pub struct Pkt<'a> {
    pub frame: Frame<'a>,
    pub ingress: Ingress,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(crate) enum Frag {
    #[default]
    None,
    First,
    Later,
}

/// What `parse` learned about a frame; offsets are into `Frame::data()`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Meta {
    pub l3: usize,
    pub ihl: usize,
    pub tot: usize,
    pub l4: usize,
    pub proto: u8,
    pub ttl: u8,
    pub src: u32,
    pub dst: u32,
    /// TCP/UDP ports; for ICMP queries both hold the identifier.
    pub sport: u16,
    pub dport: u16,
    pub frag: Frag,
    pub ident: u16,
    pub icmp_type: u8,
    pub tcp_flags: u8,
    pub vlan: Option<u16>,
}

impl Meta {
    pub fn is_icmp_error(&self) -> bool {
        self.proto == PROTO_ICMP
            && self.frag != Frag::Later
            && matches!(
                self.icmp_type,
                icmp::DEST_UNREACHABLE | icmp::TIME_EXCEEDED | icmp::PARAMETER_PROBLEM
            )
    }
}

/// Sessions examined for expiry per batch: bounded work, no pauses; with 64-frame batches at
/// 1 Mpps a 1M-session table is swept about every 4 s (idle ticks sweep more). Lookups check
/// deadlines themselves and a full table reclaims on demand, so the sweep only keeps the
/// table and its gauge tidy; more per batch would cost the established path memory bandwidth.
const SWEEP_PER_BATCH: usize = 16;
/// Sessions examined per idle tick.
const SWEEP_PER_TICK: usize = 4096;
/// Expired sessions looked at when the table is full before giving up on a new flow.
const RECLAIM_TRIES: usize = 64;
/// RFC 6888 REQ-8 / RFC 4787: a freed external port is not reused for this long.
pub const PORT_HOLD_SECS: u32 = 120;
/// Held ports cap per realm and core (beyond it ports are freed early, counted).
const HOLD_CAP: usize = 1 << 22;
/// ICMP errors the engine itself may emit per second and core (RFC 1812 4.3.2.8 rate limit).
const ICMP_RATE: u32 = 1000;

pub struct Engine {
    pub(crate) core: usize,
    pub(crate) rules: Arc<Rules>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) now: u32,
    pub(crate) sessions: super::mem::Table<Session>,
    free_sessions: Vec<u32>,
    pub(crate) in_tab: FlowTable<InKey, InVal>,
    pub(crate) out_tab: FlowTable<OutKey, OutVal>,
    maps: super::mem::Table<MappingSlot>,
    free_maps: Vec<u32>,
    map_in: FlowTable<MapInKey>,
    map_out: FlowTable<MapOutKey>,
    hosts: super::mem::Table<HostSlot>,
    free_hosts: Vec<u32>,
    host_tab: FlowTable<super::rules::HostKey>,
    filt: FlowTable<FilterKey>,
    ports: Vec<PortAllocator>,
    pub(crate) frags: FragTable,
    rng: Rng,
    sweep_cursor: usize,
    icmp_tokens: u32,
    icmp_second: u32,
    pub(crate) ip_ident: u16,
    /// Per-batch scratch of the pipeline; grows to the largest batch once, then is reused.
    prep: Vec<Prep>,
}

/// Frames per pipeline round (see `process`).
const ROUND: usize = 32;

impl Engine {
    /// An engine for worker `core`; allocates every table up front.
    pub fn new(core: usize, rules: Arc<Rules>, counters: Arc<Counters>) -> Engine {
        let cap = rules.session_capacity.max(16) as usize;
        let ports = Self::port_allocators(&rules, core);
        let frags = FragTable::new(
            rules.frag_max_datagrams as usize,
            rules.frag_max_held as usize,
            rules.frag_timeout,
        );
        Engine {
            core,
            counters,
            now: 0,
            sessions: super::mem::table(cap, Session::default()),
            free_sessions: (0..cap as u32).rev().collect(),
            in_tab: FlowTable::with_capacity(cap),
            out_tab: FlowTable::with_capacity(cap),
            maps: super::mem::table(cap, MappingSlot::default()),
            free_maps: (0..cap as u32).rev().collect(),
            map_in: FlowTable::with_capacity(cap),
            map_out: FlowTable::with_capacity(cap),
            hosts: super::mem::table(cap, HostSlot::default()),
            free_hosts: (0..cap as u32).rev().collect(),
            host_tab: FlowTable::with_capacity(cap),
            filt: FlowTable::with_capacity(cap),
            ports,
            frags,
            rng: Rng::from_entropy(),
            sweep_cursor: 0,
            icmp_tokens: ICMP_RATE,
            icmp_second: 0,
            ip_ident: (core as u16).wrapping_mul(0x1000),
            prep: Vec::with_capacity(256),
            rules,
        }
    }

    pub fn core(&self) -> usize {
        self.core
    }
    /// The engine's clock, seconds (as last given to `process` / `tick`).
    pub fn now_secs(&self) -> u32 {
        self.now
    }
    pub fn counters(&self) -> &Arc<Counters> {
        &self.counters
    }
    pub fn rules(&self) -> &Arc<Rules> {
        &self.rules
    }
    pub fn session_count(&self) -> usize {
        self.in_tab.len()
    }
    pub fn mapping_count(&self) -> usize {
        self.map_in.len()
    }
    /// Bytes of memory held by the engine's tables (fixed at construction).
    pub fn memory_bytes(&self) -> usize {
        use std::mem::size_of;
        self.sessions.len() * size_of::<Session>()
            + self.maps.len() * size_of::<MappingSlot>()
            + self.hosts.len() * size_of::<HostSlot>()
            + (self.free_sessions.capacity()
                + self.free_maps.capacity()
                + self.free_hosts.capacity())
                * 4
            + self.in_tab.memory_bytes()
            + self.out_tab.memory_bytes()
            + self.map_in.memory_bytes()
            + self.map_out.memory_bytes()
            + self.host_tab.memory_bytes()
            + self.filt.memory_bytes()
            + self
                .ports
                .iter()
                .map(PortAllocator::memory_bytes)
                .sum::<usize>()
            + self.frags.memory_bytes()
    }

    /// Translates a batch in place. `now_ns` is a monotonic clock in nanoseconds.
    pub fn process(&mut self, now_ns: u64, pkts: &mut [Pkt<'_>], verdicts: &mut [Verdict]) {
        self.set_time(now_ns);
        let rules = Arc::clone(&self.rules);
        let n = pkts.len().min(verdicts.len());
        // A software pipeline of three stages over rounds of ROUND frames, so that each
        // round's cache misses are in flight while earlier rounds are worked on:
        // - classify round r+2: parse, hash, prefetch the session slot;
        // - look up round r+1 (slots arrived meanwhile); a miss prefetches what set-up needs;
        // - translate round r.
        // An established packet's whole state is in its slot, so it costs one cache miss.
        // Taken out of self for the batch, so the stages can hold it while they call &mut self.
        let mut prep = std::mem::take(&mut self.prep);
        if prep.len() < n {
            prep.resize(n, Prep::SLOW);
        }
        let rounds = n.div_ceil(ROUND);
        let range = |r: usize| r * ROUND..((r + 1) * ROUND).min(n);
        let (mut fast_in, mut fast_out) = (0u64, 0u64);
        for step in 0..rounds + 2 {
            if step < rounds {
                let r = range(step);
                if rules.forward_only {
                    prep[r].fill(Prep::SLOW);
                } else {
                    self.classify(&rules, &pkts[r.clone()], &mut prep[r]);
                }
            }
            if step >= 1 && step <= rounds {
                self.lookup(&rules, &mut prep[range(step - 1)]);
            }
            if step >= 2 {
                let r = range(step - 2);
                let (i, o) = self.translate(
                    &rules,
                    &mut pkts[r.clone()],
                    &mut verdicts[r.clone()],
                    &prep[r],
                );
                fast_in += i;
                fast_out += o;
            }
        }
        self.prep = prep;
        let c = &self.counters;
        c.rx_frames.add(fast_in + fast_out);
        c.in2out.add(fast_in);
        c.out2in.add(fast_out);
        self.housekeeping(SWEEP_PER_BATCH);
    }

    /// Pipeline stage one: classify frames and prefetch their session slots.
    #[inline(always)]
    fn classify(&self, r: &Rules, pkts: &[Pkt<'_>], prep: &mut [Prep]) {
        for (p, x) in pkts.iter().zip(prep.iter_mut()) {
            *x = fast::classify(r, p);
            match x.lane {
                Lane::In(_) => self.in_tab.prefetch(x.hash),
                Lane::Out(_) => self.out_tab.prefetch(x.hash),
                Lane::Slow => {}
            }
        }
    }

    /// Pipeline stage three: the fast path where the slot allows it, else the full path.
    /// Returns the frames the fast path took, inbound and outbound.
    #[inline(always)]
    fn translate(
        &mut self,
        rules: &Rules,
        pkts: &mut [Pkt<'_>],
        verdicts: &mut [Verdict],
        prep: &[Prep],
    ) -> (u64, u64) {
        let (mut fast_in, mut fast_out) = (0u64, 0u64);
        for ((p, v), pr) in pkts.iter_mut().zip(verdicts.iter_mut()).zip(prep) {
            let fast = if pr.fast {
                match pr.lane {
                    Lane::In(k) => self.fast_in2out(rules, &mut p.frame, &k, pr),
                    Lane::Out(k) => self.fast_out2in(rules, &mut p.frame, &k, pr),
                    Lane::Slow => None,
                }
            } else {
                None
            };
            *v = match fast {
                Some(verdict) => {
                    if matches!(pr.lane, Lane::In(_)) {
                        fast_in += 1;
                    } else {
                        fast_out += 1;
                    }
                    verdict
                }
                None => {
                    let meta = Self::parse(p.frame.data());
                    self.process_one(rules, &mut p.frame, p.ingress, meta)
                }
            };
        }
        (fast_in, fast_out)
    }

    /// Bounded housekeeping when there is no traffic: expiry, port holds, fragment timeouts.
    pub fn tick(&mut self, now_ns: u64) {
        self.set_time(now_ns);
        self.housekeeping(SWEEP_PER_TICK);
    }

    /// One port allocator per realm, with the static mappings' ports reserved.
    fn port_allocators(rules: &Rules, core: usize) -> Vec<PortAllocator> {
        rules
            .realms
            .iter()
            .map(|r| {
                let hold = (r.pool.len() * 3 * 65536 / rules.cores).clamp(1024, HOLD_CAP);
                let mut pa = PortAllocator::new(
                    r.pool.len().max(1),
                    r.port_first,
                    r.port_last,
                    rules.partition.as_ref(),
                    core,
                    PORT_HOLD_SECS,
                    hold,
                );
                for s in rules.statics.iter().filter(|s| s.realm == r.id) {
                    if let Some(i) = r.pool.iter().position(|a| *a == s.ext_addr) {
                        pa.reserve(i, proto_index(s.proto), s.ext_port);
                    }
                }
                pa
            })
            .collect()
    }

    /// Replaces the rules (configuration reload). Timeouts, filtering, hairpinning and the
    /// like apply to existing sessions at once. When the translation layout changes (realms,
    /// their interfaces, prefixes, pools or port ranges, static or 1:1 mappings, the core
    /// partition), sessions refer to realm ids, pool indices and ports the new rules no longer
    /// mean the same by: they are all removed and the port allocators rebuilt (this allocates;
    /// reloads are rare and not per packet).
    pub fn set_rules(&mut self, rules: Arc<Rules>) {
        if !self.rules.same_layout(&rules) {
            self.clear_sessions();
            self.ports = Self::port_allocators(&rules, self.core);
        }
        self.rules = rules;
    }

    fn set_time(&mut self, now_ns: u64) {
        self.now = (now_ns / 1_000_000_000) as u32;
        if self.now != self.icmp_second {
            self.icmp_second = self.now;
            self.icmp_tokens = ICMP_RATE;
        }
    }

    fn housekeeping(&mut self, budget: usize) {
        self.sweep(budget);
        let now = self.now;
        for p in &mut self.ports {
            p.tick(now, budget);
        }
        self.frags.expire(now, &self.counters);
        self.counters.sessions_active.set(self.in_tab.len() as u64);
        self.counters.mappings_active.set(self.map_in.len() as u64);
    }

    fn sweep(&mut self, budget: usize) {
        let n = self.sessions.len();
        for _ in 0..budget.min(n) {
            let i = self.sweep_cursor;
            self.sweep_cursor = if i + 1 == n { 0 } else { i + 1 };
            let s = &self.sessions[i];
            if s.proto != 0 && s.expires <= self.now {
                self.expire_if_due(i as u32);
            }
        }
    }

    /// Which core owns this frame's flow (None: any core may handle it, e.g. a ping to natgw).
    pub fn owner(&self, frame: &Frame<'_>, ingress: Ingress) -> Option<usize> {
        let r = &self.rules;
        let m = Self::parse(frame.data()).ok()?;
        match ingress {
            Ingress::Inside(i) => {
                let realm = r.realm_for(i, m.vlan)?;
                Some(r.inside_owner(realm.id, self.inside_addr_of(frame.data(), &m)?))
            }
            Ingress::Outside | Ingress::Hairpin => {
                let (proto, addr, port) = Self::outside_endpoint(frame.data(), &m)?;
                r.outside_owner(proto, addr, port)
            }
        }
    }

    pub(crate) fn inside_addr_of(&self, d: &[u8], m: &Meta) -> Option<u32> {
        if m.is_icmp_error() {
            let e = super::icmp::Embedded::parse(d, m).ok()?;
            Some(e.dst)
        } else {
            Some(m.src)
        }
    }

    /// (protocol, external address, external port) an outside frame is addressed to.
    pub(crate) fn outside_endpoint(d: &[u8], m: &Meta) -> Option<(u8, u32, u16)> {
        if m.frag == Frag::Later {
            return None;
        }
        if m.is_icmp_error() {
            let e = super::icmp::Embedded::parse(d, m).ok()?;
            Some((e.proto, e.src, e.sport))
        } else {
            Some((m.proto, m.dst, m.dport))
        }
    }

    /// Validates Ethernet, IPv4 and the transport header; never panics on any input.
    pub(crate) fn parse(d: &[u8]) -> Result<Meta, Option<DropReason>> {
        use crate::packet::ethernet::{ETHERTYPE_IPV4, ETHERTYPE_VLAN};
        if d.len() < 14 {
            return Err(Some(DropReason::Truncated));
        }
        let mut m = Meta::default();
        let mut et = rd16(d, 12);
        let mut l3 = 14;
        if et == ETHERTYPE_VLAN {
            if d.len() < 18 {
                return Err(Some(DropReason::Truncated));
            }
            m.vlan = Some(rd16(d, 14) & 0x0fff);
            et = rd16(d, 16);
            l3 = 18;
        }
        if et != ETHERTYPE_IPV4 {
            return Err(None);
        }
        let ip = &d[l3..];
        if ip.len() < 20 {
            return Err(Some(DropReason::Truncated));
        }
        let ihl = ((ip[0] & 0x0f) as usize) * 4;
        let tot = rd16(ip, 2) as usize;
        if ip[0] >> 4 != 4 || ihl < 20 || tot < ihl {
            return Err(Some(DropReason::BadIpHeader));
        }
        if tot > ip.len() {
            return Err(Some(DropReason::Truncated));
        }
        let sum_ok = match ip[..ihl].first_chunk::<20>() {
            Some(h) if ihl == 20 => fast::header_checksum_ok(h),
            _ => checksum::checksum(&ip[..ihl]) == 0,
        };
        if !sum_ok {
            return Err(Some(DropReason::BadIpChecksum));
        }
        m.l3 = l3;
        m.ihl = ihl;
        m.tot = tot;
        m.l4 = l3 + ihl;
        m.ttl = ip[8];
        m.proto = ip[9];
        m.src = rd32(ip, 12);
        m.dst = rd32(ip, 16);
        m.ident = rd16(ip, 4);
        let frag = rd16(ip, 6);
        let (more, offset) = (frag & 0x2000 != 0, frag & 0x1fff);
        m.frag = if offset != 0 {
            Frag::Later
        } else if more {
            Frag::First
        } else {
            Frag::None
        };
        if m.frag == Frag::Later {
            return Ok(m);
        }
        let l4 = &d[m.l4..l3 + tot];
        match m.proto {
            PROTO_TCP => {
                if l4.len() < 20 {
                    return Err(Some(DropReason::Truncated));
                }
                if (l4[12] >> 4) < 5 {
                    return Err(Some(DropReason::BadL4Header));
                }
                m.sport = rd16(l4, 0);
                m.dport = rd16(l4, 2);
                m.tcp_flags = l4[13];
            }
            PROTO_UDP => {
                if l4.len() < 8 {
                    return Err(Some(DropReason::Truncated));
                }
                if rd16(l4, 4) < 8 {
                    return Err(Some(DropReason::BadL4Header));
                }
                m.sport = rd16(l4, 0);
                m.dport = rd16(l4, 2);
            }
            PROTO_ICMP => {
                if l4.len() < 8 {
                    return Err(Some(DropReason::Truncated));
                }
                m.icmp_type = l4[0];
                m.sport = rd16(l4, 4);
                m.dport = m.sport;
            }
            _ => {}
        }
        Ok(m)
    }

    /// Pipeline stage two: find each classified frame's session slot.
    #[inline(always)]
    fn lookup(&mut self, r: &Rules, prep: &mut [Prep]) {
        // Whether the slot lets the fast path take the packet is decided when it is
        // translated: an earlier frame of the batch may still change the slot.
        for p in prep.iter_mut() {
            match p.lane {
                Lane::In(k) => match self.in_tab.find(&k, p.hash) {
                    Some(pos) => {
                        p.pos = pos as u32;
                        p.epoch = self.in_tab.epoch();
                    }
                    None => {
                        p.fast = false;
                        // Probably a new flow: set-up will look up its mapping and its host next.
                        if let Some(realm) = r.realms.get(k.realm as usize) {
                            let mk = Self::map_key(
                                realm, k.proto, k.in_addr, k.in_port, k.rem_addr, k.rem_port,
                            );
                            self.map_in.prefetch(mk.hash());
                            self.host_tab.prefetch(
                                super::rules::HostKey {
                                    realm: k.realm,
                                    addr: k.in_addr,
                                }
                                .hash(),
                            );
                        }
                    }
                },
                Lane::Out(k) => match self.out_tab.find(&k, p.hash) {
                    Some(pos) => {
                        p.pos = pos as u32;
                        p.epoch = self.out_tab.epoch();
                    }
                    None => p.fast = false,
                },
                Lane::Slow => p.fast = false,
            }
        }
    }

    /// Established outbound packet: everything it needs is in its `in_tab` slot. None if an
    /// earlier frame of the batch moved or changed the slot: the full path takes over.
    #[inline(always)]
    fn fast_in2out(
        &mut self,
        r: &Rules,
        f: &mut Frame<'_>,
        k: &InKey,
        p: &Prep,
    ) -> Option<Verdict> {
        let now = self.now;
        let pos = p.pos as usize;
        if self.in_tab.epoch() != p.epoch && self.in_tab.key_at(pos) != k {
            return None;
        }
        let realm = r.realms.get(k.realm as usize)?;
        let v = self.in_tab.val_at_mut(pos);
        if !slot::fast_live(v.sess, v.expires, now) {
            return None;
        }
        let l3 = p.l3 as usize;
        let ip = f.buf.get_mut(f.off + l3..f.off + f.len)?;
        if !fast::rewrite::<true>(ip, k.proto, v.ext_addr, v.ext_port) {
            return None;
        }
        v.expires = now.saturating_add(class_timeout(realm, k.proto, v.sess & slot::EST != 0));
        if l3 != 14 {
            set_vlan(f.buf, &mut f.off, &mut f.len, None);
        }
        Some(Verdict::Forward {
            egress: Egress::Outside,
            next_hop: Ipv4Addr::from(r.outside_next_hop(k.rem_addr)),
        })
    }

    /// Established inbound packet, from its `out_tab` slot alone.
    #[inline(always)]
    fn fast_out2in(
        &mut self,
        r: &Rules,
        f: &mut Frame<'_>,
        k: &OutKey,
        p: &Prep,
    ) -> Option<Verdict> {
        let now = self.now;
        let pos = p.pos as usize;
        if self.out_tab.epoch() != p.epoch && self.out_tab.key_at(pos) != k {
            return None;
        }
        let v = *self.out_tab.val_at(pos);
        if !slot::fast_live(v.sess, v.expires, now) {
            return None;
        }
        let realm = r.realms.get(v.realm as usize)?;
        let ip = f.buf.get_mut(f.off + p.l3 as usize..f.off + f.len)?;
        if !fast::rewrite::<false>(ip, k.proto, v.in_addr, v.in_port) {
            return None;
        }
        // RFC 4787 REQ-6: inbound refresh is the operator's choice; TCP follows its state.
        if k.proto == PROTO_TCP || realm.inbound_refresh {
            let t = class_timeout(realm, k.proto, v.sess & slot::EST != 0);
            self.out_tab.val_at_mut(pos).expires = now.saturating_add(t);
        }
        if realm.vlan.is_some() && !set_vlan(f.buf, &mut f.off, &mut f.len, realm.vlan) {
            return Some(self.discard(DropReason::NoHeadroom));
        }
        Some(Verdict::Forward {
            egress: Egress::Inside(realm.iface),
            next_hop: Ipv4Addr::from(realm.next_hop(v.in_addr)),
        })
    }

    fn process_one(
        &mut self,
        r: &Rules,
        f: &mut Frame<'_>,
        ingress: Ingress,
        parsed: Result<Meta, Option<DropReason>>,
    ) -> Verdict {
        self.counters.rx_frames.inc();
        let m = match parsed {
            Ok(m) => m,
            Err(None) => {
                self.counters.to_kernel.inc();
                return Verdict::ToKernel;
            }
            Err(Some(reason)) => return self.discard(reason),
        };
        if r.forward_only {
            return self.forward_only(r, f, &m, ingress);
        }
        match ingress {
            Ingress::Inside(iface) => match r.realm_for(iface, m.vlan) {
                Some(realm) => self.in2out(r, realm, f, m, ingress),
                None => self.discard(DropReason::UnknownRealm),
            },
            Ingress::Outside => self.out2in(r, f, m, false),
            Ingress::Hairpin => self.out2in(r, f, m, true),
        }
    }

    #[inline]
    pub(crate) fn discard(&self, r: DropReason) -> Verdict {
        self.counters.dropped(r);
        Verdict::Drop(r)
    }

    /// Benchmark baseline: routes without translation (TTL decrement only).
    fn forward_only(
        &mut self,
        r: &Rules,
        f: &mut Frame<'_>,
        m: &Meta,
        ingress: Ingress,
    ) -> Verdict {
        if m.ttl <= 1 {
            return self.discard(DropReason::TtlExceeded);
        }
        let d = f.data_mut();
        dec_ttl(d, m);
        self.counters.forwarded_untranslated.inc();
        match ingress {
            Ingress::Outside | Ingress::Hairpin => {
                let realm = &r.realms[0];
                Verdict::Forward {
                    egress: Egress::Inside(realm.iface),
                    next_hop: Ipv4Addr::from(realm.next_hop(m.dst)),
                }
            }
            Ingress::Inside(_) => Verdict::Forward {
                egress: Egress::Outside,
                next_hop: Ipv4Addr::from(r.outside_next_hop(m.dst)),
            },
        }
    }

    /// Takes one ICMP-error token (rate limit for errors natgw originates).
    pub(crate) fn icmp_token(&mut self) -> bool {
        if self.icmp_tokens == 0 {
            return false;
        }
        self.icmp_tokens -= 1;
        true
    }

    // ---- sessions -------------------------------------------------------------------------

    #[inline]
    pub(crate) fn timeout(&self, realm: &RealmRules, s: &Session) -> u32 {
        class_timeout(realm, s.proto, tcp::is_established(s.tcp))
    }

    /// Looks a session up from inside; an expired one is removed and not returned.
    #[inline]
    pub(crate) fn find_in(&mut self, k: &InKey) -> Option<u32> {
        let v = self.in_tab.get(k)?;
        let si = v.sess & slot::INDEX;
        if v.expires > self.now {
            return Some(si);
        }
        self.expire_if_due(si).then_some(si)
    }

    #[inline]
    pub(crate) fn find_out(&mut self, k: &OutKey) -> Option<u32> {
        let v = self.out_tab.get(k)?;
        let si = v.sess & slot::INDEX;
        if v.expires > self.now {
            return Some(si);
        }
        self.expire_if_due(si).then_some(si)
    }

    /// The session an inside key names, live or not (no side effects).
    pub(crate) fn session_in(&self, k: &InKey) -> Option<u32> {
        self.in_tab.get(k).map(|v| v.sess & slot::INDEX)
    }

    pub(crate) fn session_out(&self, k: &OutKey) -> Option<u32> {
        self.out_tab.get(k).map(|v| v.sess & slot::INDEX)
    }

    /// A session's real deadline: the latest of its own and its two slots' (the fast path
    /// refreshes only the slot of the packet's direction).
    pub(crate) fn deadline(&self, si: u32) -> u32 {
        let s = &self.sessions[si as usize];
        let a = self.in_tab.get(&s.in_key()).map_or(0, |v| v.expires);
        let b = self.out_tab.get(&s.out_key()).map_or(0, |v| v.expires);
        s.expires.max(a).max(b)
    }

    /// Brings the session and both slots to the real deadline; deletes the session if that
    /// has passed. True if it lives.
    fn expire_if_due(&mut self, si: u32) -> bool {
        let d = self.deadline(si);
        if d > self.now {
            self.sessions[si as usize].expires = d;
            self.publish(si, true);
            return true;
        }
        self.delete_session(si);
        self.counters.sessions_expired.inc();
        false
    }

    /// Copies a session's fast-path flags (from its TCP state and hairpin flag) and, with
    /// `deadline`, its `expires` into both index slots. The slow path calls this after every
    /// change it makes, so the fast path never acts on stale state.
    pub(crate) fn publish(&mut self, si: u32, deadline: bool) {
        let s = self.sessions[si as usize];
        let tcp = s.proto == PROTO_TCP;
        let est = if tcp && tcp::is_established(s.tcp) {
            slot::EST
        } else {
            0
        };
        let fast_if = |seen: u8| {
            if !tcp || s.tcp & seen != 0 {
                slot::FAST
            } else {
                0
            }
        };
        let hairpin = s.flags & flags::HAIRPIN != 0;
        let in_flags = if hairpin { 0 } else { fast_if(tcp::SEEN_OUT) } | est;
        let out_flags = fast_if(tcp::SEEN_IN) | est;
        if let Some(v) = self.in_tab.get_mut(&s.in_key()) {
            v.sess = si | in_flags;
            if deadline {
                v.expires = s.expires;
            }
        }
        if let Some(v) = self.out_tab.get_mut(&s.out_key()) {
            v.sess = si | out_flags;
            if deadline {
                v.expires = s.expires;
            }
        }
    }

    /// Deletes expired sessions (looking at no more than `RECLAIM_TRIES` slots) until `enough`.
    /// Deleting a session may delete its mapping, so callers reclaim before they look up the
    /// mapping a new session will use, never between that lookup and the session's creation.
    fn reclaim(&mut self, enough: fn(&Engine) -> bool) {
        let n = self.sessions.len();
        for _ in 0..RECLAIM_TRIES.min(n) {
            if enough(self) {
                return;
            }
            let i = self.sweep_cursor;
            self.sweep_cursor = if i + 1 == n { 0 } else { i + 1 };
            let s = &self.sessions[i];
            if s.proto != 0 && s.expires <= self.now {
                self.expire_if_due(i as u32);
            }
        }
    }

    /// When the table is full, reclaims expired sessions so a new one fits. Called before a
    /// new session's mapping is looked up (see `reclaim`); creation fails later if no slot
    /// came free.
    pub(crate) fn make_session_room(&mut self) {
        if self.free_sessions.is_empty() {
            self.reclaim(|e| !e.free_sessions.is_empty());
        }
    }

    fn session_slot(&mut self) -> Option<u32> {
        self.free_sessions.pop()
    }

    /// Creates a session; `map` is the mapping it belongs to (NONE for static / 1:1).
    pub(crate) fn create_session(
        &mut self,
        realm: &RealmRules,
        mut s: Session,
    ) -> Result<u32, DropReason> {
        let Some(i) = self.session_slot() else {
            return Err(DropReason::SessionTableFull);
        };
        s.created = self.now;
        s.expires = self.now.saturating_add(self.timeout(realm, &s));
        let iv = InVal {
            sess: i,
            ext_addr: s.ext_addr,
            ext_port: s.ext_port,
            _pad: 0,
            expires: s.expires,
        };
        if self.in_tab.insert(s.in_key(), iv).is_err() {
            self.free_sessions.push(i);
            return Err(DropReason::SessionTableFull);
        }
        let ov = OutVal {
            sess: i,
            in_addr: s.in_addr,
            in_port: s.in_port,
            realm: s.realm,
            expires: s.expires,
        };
        if self.out_tab.insert(s.out_key(), ov).is_err() {
            self.in_tab.remove(&s.in_key());
            self.free_sessions.push(i);
            return Err(DropReason::SessionTableFull);
        }
        if s.map != NONE {
            self.maps[s.map as usize].sessions += 1;
            if realm.filtering == Filtering::AddressDependent {
                let mp = &mut self.maps[s.map as usize];
                if mp.rem0_sessions == 0 || mp.rem0 == s.rem_addr {
                    mp.rem0 = s.rem_addr;
                    mp.rem0_sessions += 1;
                } else {
                    let k = FilterKey {
                        map: s.map,
                        rem_addr: s.rem_addr,
                    };
                    match self.filt.get_mut(&k) {
                        Some(c) => *c += 1,
                        None => {
                            let _ = self.filt.insert(k, 1);
                        }
                    }
                }
                s.flags |= flags::FILTER_COUNTED;
            }
        }
        // The slots start with no fast-path flags (safe: the full path handles everything);
        // the caller publishes them once the first packet has been applied.
        self.sessions[i as usize] = s;
        self.counters.sessions_created.inc();
        Ok(i)
    }

    pub(crate) fn delete_session(&mut self, i: u32) {
        let s = self.sessions[i as usize];
        if s.proto == 0 {
            return;
        }
        self.in_tab.remove(&s.in_key());
        self.out_tab.remove(&s.out_key());
        self.sessions[i as usize].proto = 0;
        self.free_sessions.push(i);
        if s.map == NONE {
            return;
        }
        if s.flags & flags::FILTER_COUNTED != 0 {
            // The remote's sessions are counted inline and/or in the table; any place with a
            // positive count for it may give one back, the sum stays right.
            let mp = &mut self.maps[s.map as usize];
            if mp.rem0 == s.rem_addr && mp.rem0_sessions > 0 {
                mp.rem0_sessions -= 1;
            } else {
                let k = FilterKey {
                    map: s.map,
                    rem_addr: s.rem_addr,
                };
                match self.filt.get_mut(&k) {
                    Some(c) if *c > 1 => *c -= 1,
                    _ => {
                        self.filt.remove(&k);
                    }
                }
            }
        }
        let mp = &mut self.maps[s.map as usize];
        mp.sessions -= 1;
        if mp.sessions == 0 {
            self.delete_mapping(s.map);
        }
    }

    pub(crate) fn delete_mapping(&mut self, mi: u32) {
        let mp = self.maps[mi as usize];
        self.map_in.remove(&mp.key);
        self.map_out.remove(&MapOutKey {
            proto: mp.proto,
            port: mp.ext_port,
            addr: mp.ext_addr,
        });
        self.maps[mi as usize].proto = 0;
        self.free_maps.push(mi);
        if let Some(p) = self.ports.get_mut(mp.key.realm as usize) {
            p.release(
                mp.ext_index as usize,
                proto_index(mp.proto),
                mp.ext_port,
                self.now,
            );
        }
        let h = &mut self.hosts[mp.host as usize];
        h.mappings -= 1;
        if h.mappings == 0 {
            let k = super::rules::HostKey {
                realm: h.realm,
                addr: h.addr,
            };
            self.host_tab.remove(&k);
            self.free_hosts.push(mp.host);
        }
    }

    /// The mapping key of an inside endpoint under the realm's mapping behaviour.
    pub(crate) fn map_key(
        realm: &RealmRules,
        proto: u8,
        in_addr: u32,
        in_port: u16,
        rem_addr: u32,
        rem_port: u16,
    ) -> MapInKey {
        let (ra, rp) = match realm.mapping {
            Mapping::EndpointIndependent => (0, 0),
            Mapping::AddressDependent => (rem_addr, 0),
            Mapping::AddressAndPortDependent => (rem_addr, rem_port),
        };
        MapInKey {
            realm: realm.id,
            proto,
            in_port,
            rem_port: rp,
            in_addr,
            rem_addr: ra,
        }
    }

    /// Finds or creates the dynamic mapping for an inside endpoint (paired pooling, per-host
    /// limit, port preservation / bounded random search).
    /// `remote` is the first destination, for RSS-aware port choice.
    pub(crate) fn mapping_for(
        &mut self,
        r: &Rules,
        realm: &RealmRules,
        key: MapInKey,
        remote: (u32, u16),
    ) -> Result<u32, DropReason> {
        if let Some(mi) = self.map_in.get(&key) {
            return Ok(mi);
        }
        if realm.pool.is_empty() {
            return Err(DropReason::PortsExhausted);
        }
        if self.free_maps.is_empty() {
            // Every mapping slot is taken: expired sessions may be all that holds some.
            self.reclaim(|e| !e.free_maps.is_empty());
        }
        let hk = super::rules::HostKey {
            realm: realm.id,
            addr: key.in_addr,
        };
        let host = self.host_tab.get(&hk);
        if let Some(h) = host
            && self.hosts[h as usize].mappings >= realm.per_host_limit
        {
            return Err(DropReason::PerHostLimit);
        }
        let Some(mi) = self.free_maps.pop() else {
            return Err(DropReason::SessionTableFull);
        };
        let policy = match realm.policy {
            PortPolicy::PreserveThenRandom => Policy::PreserveThenRandom,
            PortPolicy::Random => Policy::Random,
        };
        let pidx = proto_index(key.proto);
        let alloc = &mut self.ports[realm.id as usize];
        // Paired pooling (RFC 4787 REQ-2): a host with mappings keeps its address; a new host
        // starts at an address derived from its own, trying the others only if that one is full.
        let n = realm.pool.len();
        let (start, tries) = match host {
            Some(h) => (self.hosts[h as usize].ext_index as usize, 1),
            None => ((key.in_addr as usize).wrapping_mul(0x9e37_79b1) % n, n),
        };
        let mut got = None;
        for t in 0..tries {
            let ai = (start + t) % n;
            // With a predictable outside RSS, prefer ports whose replies land on our queue.
            let ext = realm.pool[ai];
            let core = self.core;
            let steer = r
                .rss
                .as_ref()
                .filter(|s| r.cores > 1 && s.steers(key.proto));
            let pref =
                |p: u16| steer.is_some_and(|s| s.lands_on(core, key.proto, remote, (ext, p)));
            let prefer: Option<&dyn Fn(u16) -> bool> =
                if steer.is_some() { Some(&pref) } else { None };
            if let Some(p) = alloc.alloc(ai, pidx, key.in_port, policy, &mut self.rng, prefer) {
                got = Some((ai, p));
                break;
            }
        }
        let Some((ai, port)) = got else {
            self.free_maps.push(mi);
            return Err(DropReason::PortsExhausted);
        };
        // The external endpoint is known only now. The new mapping and the session about to be
        // created insert into two more tables at random places: start both loads at once so
        // their cache misses overlap instead of queueing one after the other.
        let ext_addr = realm.pool[ai];
        self.map_out.prefetch(
            MapOutKey {
                proto: key.proto,
                port,
                addr: ext_addr,
            }
            .hash(),
        );
        self.out_tab.prefetch(
            OutKey {
                proto: key.proto,
                ext_port: port,
                rem_port: remote.1,
                ext_addr,
                rem_addr: remote.0,
            }
            .hash(),
        );
        let h = match host {
            Some(h) => h,
            None => {
                let Some(h) = self.free_hosts.pop() else {
                    alloc.release(ai, pidx, port, self.now);
                    self.free_maps.push(mi);
                    return Err(DropReason::SessionTableFull);
                };
                self.hosts[h as usize] = HostSlot {
                    realm: realm.id,
                    ext_index: ai as u16,
                    addr: key.in_addr,
                    mappings: 0,
                };
                let _ = self.host_tab.insert(hk, h);
                h
            }
        };
        let ok = self.map_in.insert(key, mi).is_ok();
        if !ok
            || self
                .map_out
                .insert(
                    MapOutKey {
                        proto: key.proto,
                        port,
                        addr: ext_addr,
                    },
                    mi,
                )
                .is_err()
        {
            if ok {
                self.map_in.remove(&key);
            }
            self.ports[realm.id as usize].release(ai, pidx, port, self.now);
            self.free_maps.push(mi);
            if self.hosts[h as usize].mappings == 0 {
                self.host_tab.remove(&hk);
                self.free_hosts.push(h);
            }
            return Err(DropReason::SessionTableFull);
        }
        self.hosts[h as usize].mappings += 1;
        self.maps[mi as usize] = MappingSlot {
            key,
            ext_addr,
            ext_port: port,
            ext_index: ai as u16,
            proto: key.proto,
            sessions: 0,
            host: h,
            rem0: 0,
            rem0_sessions: 0,
        };
        self.counters.mappings_created.inc();
        Ok(mi)
    }

    /// A session's mapping, for out2in filtering.
    pub(crate) fn mapping_by_ext(&self, proto: u8, addr: u32, port: u16) -> Option<u32> {
        self.map_out.get(&MapOutKey { proto, port, addr })
    }

    pub(crate) fn mapping(&self, mi: u32) -> &MappingSlot {
        &self.maps[mi as usize]
    }

    pub(crate) fn filter_allows(&self, realm: &RealmRules, mi: u32, rem_addr: u32) -> bool {
        match realm.filtering {
            Filtering::EndpointIndependent => true,
            Filtering::AddressDependent => {
                let mp = &self.maps[mi as usize];
                (mp.rem0 == rem_addr && mp.rem0_sessions > 0)
                    || self.filt.get(&FilterKey { map: mi, rem_addr }).is_some()
            }
            Filtering::AddressAndPortDependent => false,
        }
    }

    /// Iterates over live sessions (management plane listing; not for the hot path), each
    /// with its real deadline in `expires`.
    pub fn for_each_session(&self, mut f: impl FnMut(&Session)) {
        for (i, s) in self.sessions.iter().enumerate() {
            if s.proto == 0 {
                continue;
            }
            let expires = self.deadline(i as u32);
            if expires > self.now {
                f(&Session { expires, ..*s })
            }
        }
    }

    /// Removes every session (management command).
    pub fn clear_sessions(&mut self) {
        for i in 0..self.sessions.len() {
            if self.sessions[i].proto != 0 {
                self.delete_session(i as u32);
            }
        }
    }

    /// Frames released from the fragment hold buffer, ready to send: `f(bytes, verdict)`.
    pub fn drain_ready(&mut self, f: impl FnMut(&[u8], Verdict)) {
        self.frags.drain_ready(f)
    }

    pub(crate) fn next_ident(&mut self) -> u16 {
        self.ip_ident = self.ip_ident.wrapping_add(1);
        self.ip_ident
    }
}

/// TTL - 1 with the IPv4 checksum patched (RFC 1624).
#[inline(always)]
pub(crate) fn dec_ttl(d: &mut [u8], m: &Meta) {
    let o = m.l3 + 8;
    let old = rd16(d, o);
    let new = old - 0x0100;
    wr16(d, o, new);
    let c = rd16(d, m.l3 + 10);
    wr16(d, m.l3 + 10, checksum::update16(c, old, new));
}

#[cfg(test)]
impl Engine {
    /// Cross-checks every table against the slots (tests only; O(capacity)).
    pub(crate) fn check_invariants(&self) {
        let live: Vec<u32> = (0..self.sessions.len() as u32)
            .filter(|&i| self.sessions[i as usize].proto != 0)
            .collect();
        assert_eq!(live.len(), self.in_tab.len(), "live sessions vs in_tab");
        assert_eq!(live.len(), self.out_tab.len(), "live sessions vs out_tab");
        assert_eq!(
            live.len() + self.free_sessions.len(),
            self.sessions.len(),
            "session slots leaked"
        );
        let mut per_map = std::collections::HashMap::<u32, u32>::new();
        let mut filt = std::collections::HashMap::<(u32, u32), u32>::new();
        for &i in &live {
            let s = &self.sessions[i as usize];
            let iv = self.in_tab.get(&s.in_key()).expect("in_tab entry");
            let ov = self.out_tab.get(&s.out_key()).expect("out_tab entry");
            assert_eq!(iv.sess & slot::INDEX, i, "in_tab of {s:?}");
            assert_eq!(ov.sess & slot::INDEX, i, "out_tab of {s:?}");
            assert_eq!((iv.ext_addr, iv.ext_port), (s.ext_addr, s.ext_port));
            assert_eq!(
                (ov.in_addr, ov.in_port, ov.realm),
                (s.in_addr, s.in_port, s.realm)
            );
            assert!(iv.expires >= s.expires && ov.expires >= s.expires, "{s:?}");
            if s.map != NONE {
                let mp = &self.maps[s.map as usize];
                assert_ne!(mp.proto, 0, "session on a free mapping");
                assert_eq!((mp.ext_addr, mp.ext_port), (s.ext_addr, s.ext_port));
                *per_map.entry(s.map).or_default() += 1;
                if s.flags & flags::FILTER_COUNTED != 0 {
                    *filt.entry((s.map, s.rem_addr)).or_default() += 1;
                }
            }
        }
        let live_maps: Vec<u32> = (0..self.maps.len() as u32)
            .filter(|&i| self.maps[i as usize].proto != 0)
            .collect();
        assert_eq!(live_maps.len(), self.map_in.len(), "mappings vs map_in");
        assert_eq!(live_maps.len(), self.map_out.len(), "mappings vs map_out");
        assert_eq!(live_maps.len() + self.free_maps.len(), self.maps.len());
        let mut per_host = std::collections::HashMap::<u32, u32>::new();
        for &mi in &live_maps {
            let mp = &self.maps[mi as usize];
            assert_eq!(self.map_in.get(&mp.key), Some(mi));
            assert_eq!(
                mp.sessions,
                per_map.get(&mi).copied().unwrap_or(0),
                "mapping session count"
            );
            assert!(mp.sessions > 0, "mapping without sessions kept");
            if mp.rem0_sessions > 0 {
                let n = filt.get(&(mi, mp.rem0)).copied().unwrap_or(0);
                assert!(
                    mp.rem0_sessions <= n,
                    "inline filter count without sessions"
                );
            }
            *per_host.entry(mp.host).or_default() += 1;
        }
        assert_eq!(per_host.len(), self.host_tab.len(), "hosts vs host_tab");
        assert_eq!(per_host.len() + self.free_hosts.len(), self.hosts.len());
        for (h, n) in &per_host {
            assert_eq!(self.hosts[*h as usize].mappings, *n, "host mapping count");
        }
        // Per (mapping, remote): the inline count plus the table's is the number of sessions.
        let mut in_table = 0;
        for (&(map, rem_addr), &n) in &filt {
            let mp = &self.maps[map as usize];
            let inline = if mp.rem0 == rem_addr {
                mp.rem0_sessions
            } else {
                0
            };
            assert!(inline <= n, "inline filter count");
            let k = FilterKey { map, rem_addr };
            let want = (n > inline).then_some(n - inline);
            assert_eq!(self.filt.get(&k), want, "filter count");
            in_table += usize::from(want.is_some());
        }
        assert_eq!(in_table, self.filt.len(), "filter entries");
    }
}

/// The timeout of a session of `proto` (for TCP: established or not) in `realm`.
#[inline(always)]
fn class_timeout(realm: &RealmRules, proto: u8, established: bool) -> u32 {
    let t = &realm.timeouts;
    match proto {
        PROTO_UDP => t.udp,
        PROTO_ICMP => t.icmp,
        _ if established => t.tcp_established,
        _ => t.tcp_transitory,
    }
}
