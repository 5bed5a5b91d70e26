//! The session store: every piece of per-core NAT state and its one owner. Sessions with
//! their two index slots (`in_tab`, `out_tab`: the fast path's whole state), dynamic mappings
//! (`map_in`, `map_out`), inside hosts with their paired address, address-dependent filter
//! counts, and the per-realm port allocators. The translation paths and the pipeline change
//! state only through this API: look up, create, track (refresh and TCP state), publish,
//! delete, expire, reclaim, sweep, and, in tests, check the invariants.
//!
//! Identities: a session is named by its two keys (inside and outside 5-tuple plus realm id),
//! a mapping by its inside key; both carry the realm's stable id (see `Rules`), never the
//! position of a realm, a pool address or a static mapping in the configuration file.

mod extaddr;
#[cfg(test)]
mod invariants;
mod limits;
mod mapping;
mod reload;
mod slots;

pub(crate) use reload::RECONCILE_PER_BATCH;

use super::counters::Counters;
use super::listing::{self, Filter};
use super::ports::PortAllocator;
use super::rng::Rng;
use super::rules::{EndpointKey, HostKey, RealmRules, Rules};
use super::session::*;
use super::table::FlowTable;
use super::types::DropReason;
use crate::config::Filtering;
use crate::packet::ipv4::Protocol;
use reload::{RealmPorts, Recon};
use std::sync::Arc;

/// RFC 6888 REQ-8 / RFC 4787: a freed external port is not reused for this long.
pub const PORT_HOLD_SECS: u32 = 120;
/// Held ports cap per realm and core (beyond it ports are freed early, counted).
const HOLD_CAP: usize = 1 << 22;

pub(crate) struct Store {
    core: usize,
    counters: Arc<Counters>,
    now: u32,
    sessions: super::mem::Table<Session>,
    free_sessions: Vec<u32>,
    in_tab: FlowTable<InKey, InVal>,
    out_tab: FlowTable<OutKey, OutVal>,
    /// The external addresses of the sessions, interned for `InVal::ext_idx`.
    ext: extaddr::ExtAddrs,
    maps: super::mem::Table<MappingSlot>,
    free_maps: Vec<u32>,
    map_in: FlowTable<MapInKey>,
    map_out: FlowTable<MapOutKey>,
    hosts: super::mem::Table<HostSlot>,
    free_hosts: Vec<u32>,
    host_tab: FlowTable<HostKey>,
    filt: FlowTable<FilterKey>,
    /// Sessions opened from outside per static mapping (its inside endpoint) and per 1:1
    /// mapping (its inside address, `ANY_PROTO`): `inbound_key`.
    inbound: FlowTable<EndpointKey, limits::Inbound>,
    /// Per session slot: its links in its mapping's list of transitory inbound sessions
    /// (`limits::Inbound`), while it has `flags::EVICT_LISTED`.
    inbound_links: super::mem::Table<limits::Link>,
    /// Per realm id: its port allocator, numbering the pool's addresses.
    ports: Vec<RealmPorts>,
    /// A reload's reconciliation walk, while under way (`reload.rs`).
    recon: Option<Recon>,
    /// Entries reloads have looked at on this core (forwards compared or applied, inbound
    /// count slots copied), excluding the walk: what a test holds to O(changes).
    reload_steps: u64,
    rng: Rng,
    sweep_cursor: usize,
    evict_cursor: usize,
}

/// What a packet of an existing session tells its state (`Store::track`).
#[derive(Clone, Copy)]
pub(crate) struct Seen {
    /// Inside to outside.
    pub outbound: bool,
    /// The segment, for a TCP session.
    pub tcp: Option<tcp::Seg>,
    /// Restart the session's timer (RFC 4787 REQ-6 makes inbound refresh a choice).
    pub refresh: bool,
}

impl Store {
    /// Allocates every table up front, for `rules.session_capacity` sessions.
    pub fn new(core: usize, rules: &Rules, counters: Arc<Counters>) -> Store {
        let cap = rules.session_capacity.max(16) as usize;
        Store {
            core,
            counters,
            now: 0,
            sessions: super::mem::table(cap, Session::default()),
            free_sessions: (0..cap as u32).rev().collect(),
            in_tab: FlowTable::with_capacity(cap),
            out_tab: FlowTable::with_capacity(cap),
            ext: extaddr::ExtAddrs::new(cap),
            maps: super::mem::table(cap, MappingSlot::default()),
            free_maps: (0..cap as u32).rev().collect(),
            map_in: FlowTable::with_capacity(cap),
            map_out: FlowTable::with_capacity(cap),
            hosts: super::mem::table(cap, HostSlot::default()),
            free_hosts: (0..cap as u32).rev().collect(),
            host_tab: FlowTable::with_capacity(cap),
            filt: FlowTable::with_capacity(cap),
            inbound: Self::inbound_table(rules),
            inbound_links: super::mem::table(cap, limits::Link::default()),
            ports: Self::port_allocators(rules, core),
            recon: None,
            reload_steps: 0,
            rng: Rng::from_entropy(),
            sweep_cursor: 0,
            evict_cursor: 0,
        }
    }

    /// What `Store::new(..).memory_bytes()` is for `capacity` session slots (without the
    /// port allocators, see `port_bytes`) and `mappings` static plus 1:1 mappings: computed,
    /// not allocated, to check a configuration before it is built.
    pub fn table_bytes(capacity: u32, mappings: usize) -> usize {
        use std::mem::size_of;
        let cap = capacity.max(16) as usize;
        cap * (size_of::<Session>()
            + size_of::<MappingSlot>()
            + size_of::<HostSlot>()
            + size_of::<limits::Link>()
            + 3 * 4)
            + FlowTable::<InKey, InVal>::bytes_for(cap)
            + FlowTable::<OutKey, OutVal>::bytes_for(cap)
            + extaddr::ExtAddrs::bytes_for(cap)
            + FlowTable::<MapInKey>::bytes_for(cap)
            + FlowTable::<MapOutKey>::bytes_for(cap)
            + FlowTable::<HostKey>::bytes_for(cap)
            + FlowTable::<FilterKey>::bytes_for(cap)
            + FlowTable::<EndpointKey, limits::Inbound>::bytes_for(mappings.max(1))
    }

    /// What one core's port allocator for a realm with `pool` addresses takes (as built by
    /// `port_allocators`), computed.
    pub fn port_bytes(
        pool: usize,
        range: (u16, u16),
        statics: usize,
        partition: &dyn super::ports::Partition,
        cores: usize,
    ) -> usize {
        let hold = (pool.saturating_mul(3 * 65536) / cores.max(1)).clamp(1024, HOLD_CAP);
        PortAllocator::bytes_for(pool.max(1), range.0, range.1, partition, 0, hold, statics)
            + FlowTable::<super::rules::AddrKey>::bytes_for(pool.max(1))
            + pool * 4
    }

    /// Hold-ring entries of a realm's allocator with `pool` addresses.
    fn hold_capacity(pool: usize, cores: usize) -> usize {
        (pool * 3 * 65536 / cores.max(1)).clamp(1024, HOLD_CAP)
    }

    /// One port allocator per realm, with the static mappings' ports reserved.
    fn port_allocators(rules: &Rules, core: usize) -> Vec<RealmPorts> {
        rules
            .realms
            .iter()
            .map(|r| {
                let mut pa = RealmPorts::new(
                    &r.pool,
                    (r.port_first, r.port_last),
                    rules.partition.as_ref(),
                    core,
                    PORT_HOLD_SECS,
                    Self::hold_capacity(r.pool.len(), rules.cores),
                );
                for s in rules.statics.iter().filter(|s| s.realm == r.id) {
                    if let Some(i) = pa.index(s.ext_addr) {
                        pa.alloc.reserve(i, s.proto, s.ext_port);
                    }
                }
                pa
            })
            .collect()
    }

    /// The store's clock, seconds.
    #[inline(always)]
    pub fn now(&self) -> u32 {
        self.now
    }

    pub fn set_now(&mut self, now: u32) {
        self.now = now;
    }

    pub fn session_count(&self) -> usize {
        self.in_tab.len()
    }

    pub fn mapping_count(&self) -> usize {
        self.map_in.len()
    }

    /// Session slots (fixed at construction).
    pub fn session_capacity(&self) -> usize {
        self.sessions.len()
    }

    /// The port allocator of the realm with id `realm` (metrics).
    pub fn ports_of(&self, realm: usize) -> Option<&PortAllocator> {
        self.ports.get(realm).map(|p| &p.alloc)
    }

    /// Bytes of memory held by the tables (fixed at construction).
    pub fn memory_bytes(&self) -> usize {
        use std::mem::size_of;
        self.sessions.len() * size_of::<Session>()
            + self.maps.len() * size_of::<MappingSlot>()
            + self.hosts.len() * size_of::<HostSlot>()
            + self.inbound_links.len() * size_of::<limits::Link>()
            + (self.free_sessions.capacity()
                + self.free_maps.capacity()
                + self.free_hosts.capacity())
                * 4
            + self.in_tab.memory_bytes()
            + self.out_tab.memory_bytes()
            + self.ext.memory_bytes()
            + self.map_in.memory_bytes()
            + self.map_out.memory_bytes()
            + self.host_tab.memory_bytes()
            + self.filt.memory_bytes()
            + self.inbound.memory_bytes()
            + self
                .ports
                .iter()
                .map(RealmPorts::memory_bytes)
                .sum::<usize>()
    }

    /// Bounded housekeeping: advances a reload's reconciliation walk, examines `budget`
    /// sessions for expiry, releases held ports, updates the gauges.
    pub fn housekeeping(&mut self, budget: usize) {
        if self.recon.is_some() {
            self.reconcile(RECONCILE_PER_BATCH);
        }
        let n = self.sessions.len();
        for _ in 0..budget.min(n) {
            self.examine_next();
        }
        let now = self.now;
        for p in &mut self.ports {
            p.alloc.tick(now, budget);
        }
        self.counters.sessions_active.set(self.in_tab.len() as u64);
        self.counters.mappings_active.set(self.map_in.len() as u64);
    }

    /// Advances the sweep cursor by one session, expiring it if it is due.
    fn examine_next(&mut self) {
        let n = self.sessions.len();
        let i = self.sweep_cursor;
        self.sweep_cursor = if i + 1 == n { 0 } else { i + 1 };
        let s = &self.sessions[i];
        if s.proto != FREE && s.expires <= self.now {
            self.expire_if_due(i as u32);
        }
    }

    /// A session (by the index a lookup returned).
    #[inline(always)]
    pub fn session(&self, si: u32) -> &Session {
        &self.sessions[si as usize]
    }

    /// Marks a session as an inside-to-inside flow through an external address; true if it
    /// is one (now or already).
    pub fn mark_hairpin(&mut self, si: u32, hairpin: bool) -> bool {
        let s = &mut self.sessions[si as usize];
        if hairpin {
            s.flags |= flags::HAIRPIN;
        }
        s.flags & flags::HAIRPIN != 0
    }

    /// Applies what a packet of session `si` says: its TCP flags, a refreshed timer. The
    /// change is published to both index slots (the deadline only when refreshed). Returns
    /// the session as it is now.
    pub fn track(&mut self, si: u32, realm: &RealmRules, seen: Seen) -> Session {
        let now = self.now;
        let s = &mut self.sessions[si as usize];
        if let Some(seg) = seen.tcp {
            s.tcp = tcp::update(s.tcp, seg.flags, seen.outbound);
            if seen.outbound {
                s.tcp = Self::track_receiver(&mut self.in_tab, s.in_key(), s.tcp, &seg);
            }
            self.relist(si);
        }
        let s = &mut self.sessions[si as usize];
        if seen.refresh {
            s.expires = now.saturating_add(Self::timeout(realm, s));
        }
        let s = *s;
        self.publish(si, seen.refresh);
        s
    }

    /// What an outbound segment tells of the inside host as a receiver, for the check of
    /// inbound RST and FIN (`tcp::inbound_acceptable`): its window scale from its SYN or
    /// SYN-ACK, its ISN + 1 from a SYN before anything else, and its acknowledgement number
    /// (kept in the `in_tab` slot, where `fast::in2out` updates it too). Returns the state.
    fn track_receiver(
        in_tab: &mut FlowTable<InKey, InVal>,
        k: InKey,
        mut st: u16,
        seg: &tcp::Seg,
    ) -> u16 {
        use crate::packet::tcp::flags as f;
        let Some(v) = in_tab.get_mut(&k) else {
            return st;
        };
        if seg.flags & f::SYN != 0 {
            st = tcp::set_wscale(st, seg.wscale);
        }
        if seg.flags & f::ACK != 0 {
            // The highest ACK: a reordered older segment must not pull the window back.
            if st & tcp::ACK_OUT == 0 || (seg.ack.wrapping_sub(v.ack) as i32) > 0 {
                v.ack = seg.ack;
            }
            st |= tcp::ACK_OUT;
        } else if seg.flags & f::SYN != 0 {
            // A SYN without ACK: the host (re)starts a connection and is in SYN-SENT, even on
            // a session that was synchronised (the same ports reused without a close natgw
            // saw): the refusal it may get (RST|ACK of ISN + 1) must reach it.
            st &= !tcp::ACK_OUT;
            v.ack = seg.seq.wrapping_add(1);
        }
        st
    }

    /// Whether inbound segment `seg` may change TCP session `si` (see
    /// `tcp::inbound_acceptable`); the full out2in path drops it if not.
    pub fn tcp_acceptable(&self, si: u32, seg: &tcp::Seg) -> bool {
        use crate::packet::tcp::flags as f;
        if seg.flags & (f::RST | f::FIN) == 0 {
            // Accepted whatever the window: no need to look the receive point up.
            return true;
        }
        let s = &self.sessions[si as usize];
        let rcv = self.in_tab.get(&s.in_key()).map_or(0, |v| v.ack);
        tcp::inbound_acceptable(s.tcp, rcv, seg)
    }

    #[inline]
    fn timeout(realm: &RealmRules, s: &Session) -> u32 {
        realm.timeout(s.proto, tcp::is_established(s.tcp))
    }

    /// Looks a session up from inside; an expired one is removed and not returned.
    /// While a reload's walk is under way, a session that no longer belongs is removed
    /// and not returned either.
    #[inline]
    pub fn find_in(&mut self, k: &InKey) -> Option<u32> {
        let v = self.in_tab.get(k)?;
        let si = v.sess & slot::INDEX;
        if self.recon.is_some() && self.stale(si) {
            return None;
        }
        if v.expires > self.now {
            return Some(si);
        }
        self.expire_if_due(si).then_some(si)
    }

    #[inline]
    pub fn find_out(&mut self, k: &OutKey) -> Option<u32> {
        let v = self.out_tab.get(k)?;
        let si = v.sess & slot::INDEX;
        if self.recon.is_some() && self.stale(si) {
            return None;
        }
        if v.expires > self.now {
            return Some(si);
        }
        self.expire_if_due(si).then_some(si)
    }

    /// The session an inside key names, live or not (no side effects).
    pub fn session_in(&self, k: &InKey) -> Option<u32> {
        self.in_tab.get(k).map(|v| v.sess & slot::INDEX)
    }

    pub fn session_out(&self, k: &OutKey) -> Option<u32> {
        self.out_tab.get(k).map(|v| v.sess & slot::INDEX)
    }

    /// A session's real deadline: the latest of its own and its two slots' (the fast path
    /// refreshes only the slot of the packet's direction).
    pub fn deadline(&self, si: u32) -> u32 {
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
    pub fn publish(&mut self, si: u32, deadline: bool) {
        let s = self.sessions[si as usize];
        let tcp = s.proto == Protocol::TCP;
        let est = if tcp && tcp::is_established(s.tcp) {
            slot::EST
        } else {
            0
        };
        let fast_if = |seen: u16| {
            if !tcp || tcp::plain_changes_nothing(s.tcp, seen) {
                slot::FAST
            } else {
                0
            }
        };
        let hairpin = s.flags & flags::HAIRPIN != 0;
        // Outbound TCP takes the fast path only once the full path has recorded an ACK of
        // the inside host (`tcp::ACK_OUT`): from then on `InVal::ack` is in the peer's
        // sequence space, and the fast path only has to keep it at the highest.
        let ack_known = !tcp || s.tcp & tcp::ACK_OUT != 0;
        let in_flags = if hairpin || !ack_known {
            0
        } else {
            fast_if(tcp::SEEN_OUT)
        } | est;
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

    /// Frees a host slot that holds neither mappings nor sessions.
    pub(super) fn release_host(&mut self, h: u32) {
        let hs = self.hosts[h as usize];
        if hs.mappings == 0 && hs.sessions == 0 {
            self.host_tab.remove(&HostKey {
                realm: hs.realm,
                addr: hs.addr,
            });
            self.free_hosts.push(h);
        }
    }

    fn session_slot(&mut self) -> Option<u32> {
        self.free_sessions.pop()
    }

    /// Creates a session; `map` is the mapping it belongs to (NONE for static / 1:1).
    pub fn create_session(
        &mut self,
        realm: &RealmRules,
        mut s: Session,
    ) -> Result<u32, DropReason> {
        let host = self.admit(realm, &s)?;
        let undo_host = |st: &mut Store| {
            if let Some(h) = host {
                st.release_host(h);
            }
        };
        let Some(i) = self.session_slot() else {
            undo_host(self);
            return Err(DropReason::SessionTableFull);
        };
        let Some(ext_idx) = self.ext.intern(s.ext_addr) else {
            self.free_sessions.push(i);
            undo_host(self);
            return Err(DropReason::ExtAddrTableFull);
        };
        s.created = self.now;
        s.expires = self.now.saturating_add(Self::timeout(realm, &s));
        let iv = InVal {
            sess: i,
            ext_idx,
            ext_port: s.ext_port,
            ack: 0,
            expires: s.expires,
        };
        if self.in_tab.insert(s.in_key(), iv).is_err() {
            self.ext.release(ext_idx);
            self.free_sessions.push(i);
            undo_host(self);
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
            self.ext.release(ext_idx);
            self.free_sessions.push(i);
            undo_host(self);
            return Err(DropReason::SessionTableFull);
        }
        match host {
            Some(h) => {
                self.hosts[h as usize].sessions += 1;
                s.flags |= flags::HOST_COUNTED;
            }
            None => {
                let k = Self::inbound_key(&s);
                match self.inbound.get_mut(&k) {
                    Some(c) => c.count += 1,
                    None => {
                        let _ = self.inbound.insert(k, limits::Inbound::one());
                    }
                }
                s.flags |= flags::INBOUND_COUNTED;
            }
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
        self.relist(i);
        self.counters.sessions_created.inc();
        self.counters.session_opened(s.realm, s.proto);
        self.counters.eventlog.session_add(&s);
        Ok(i)
    }

    /// A session found for an ICMP error, unless it has expired: an expired session the
    /// sweep has not reached yet is gone all the same, and is left for the sweep (an error
    /// never deletes a session for expiry). One a reload removed what it was made through
    /// of is removed now, like any lookup does during the reload's walk.
    pub fn live(&mut self, found: Option<u32>) -> Option<u32> {
        let i = found.filter(|&i| self.deadline(i) > self.now)?;
        (self.recon.is_none() || !self.stale(i)).then_some(i)
    }

    /// Creates a session; a mapping created for it alone is removed again if that fails.
    pub fn create_or_unwind(&mut self, realm: &RealmRules, s: Session) -> Result<u32, DropReason> {
        let map = s.map;
        let r = self.create_session(realm, s);
        if r.is_err() && map != NONE && self.mapping(map).sessions == 0 {
            self.delete_mapping(map);
        }
        r
    }

    pub fn delete_session(&mut self, i: u32) {
        let s = self.sessions[i as usize];
        if s.proto == FREE {
            return;
        }
        if let Some(v) = self.in_tab.remove(&s.in_key()) {
            self.ext.release(v.ext_idx);
        }
        self.out_tab.remove(&s.out_key());
        self.sessions[i as usize].proto = FREE;
        self.free_sessions.push(i);
        if s.flags & flags::EVICT_LISTED != 0 {
            self.unlist(i, &s);
        }
        self.counters.session_closed(s.realm, s.proto);
        self.counters.eventlog.session_del(&s);
        if s.flags & flags::INBOUND_COUNTED != 0 {
            let k = Self::inbound_key(&s);
            match self.inbound.get_mut(&k) {
                Some(c) if c.count > 1 => c.count -= 1,
                _ => {
                    self.inbound.remove(&k);
                }
            }
        }
        if s.flags & flags::HOST_COUNTED != 0 {
            let h = if s.map != NONE {
                Some(self.maps[s.map as usize].host)
            } else {
                self.host_tab.get(&HostKey {
                    realm: s.realm,
                    addr: s.in_addr,
                })
            };
            if let Some(h) = h {
                self.hosts[h as usize].sessions -= 1;
                // With a mapping the host holds it still; the mapping's removal below
                // releases the host if it was the last.
                self.release_host(h);
            }
        }
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

    /// Iterates over live sessions (management plane listing; not for the hot path), each
    /// with its real deadline in `expires`.
    pub fn for_each_session(&self, mut f: impl FnMut(&Session)) {
        for (i, s) in self.sessions.iter().enumerate() {
            if s.proto == FREE {
                continue;
            }
            let expires = self.deadline(i as u32);
            if expires > self.now {
                f(&Session { expires, ..*s })
            }
        }
    }

    /// One bounded step of a management listing: visits the live sessions that match
    /// `filter` from slot `from` on (each with its real deadline in `expires`) and returns
    /// where the next step resumes (see [`crate::nat::listing`]).
    pub fn list_step(
        &self,
        from: u32,
        filter: &Filter,
        mut f: impl FnMut(u32, &Session),
    ) -> listing::Cursor {
        let end = (from as usize)
            .saturating_add(listing::STEP_SLOTS as usize)
            .min(self.sessions.len());
        let mut live = 0;
        for i in from as usize..end {
            let s = &self.sessions[i];
            if s.proto == FREE {
                continue;
            }
            if live == listing::STEP_LIVE {
                return Some(i as u32);
            }
            live += 1;
            if !filter.matches(s) {
                continue;
            }
            let expires = self.deadline(i as u32);
            if expires > self.now {
                f(i as u32, &Session { expires, ..*s })
            }
        }
        (end < self.sessions.len()).then_some(end as u32)
    }

    /// One bounded step of a management deletion: removes the sessions that match
    /// `filter` from slot `from` on; returns how many and where the next step resumes.
    pub fn delete_step(&mut self, from: u32, filter: &Filter) -> (u32, listing::Cursor) {
        let end = (from as usize)
            .saturating_add(listing::STEP_SLOTS as usize)
            .min(self.sessions.len());
        let mut removed = 0;
        for i in from as usize..end {
            let s = &self.sessions[i];
            if s.proto != FREE && filter.matches(s) {
                self.delete_session(i as u32);
                removed += 1;
                if removed == listing::STEP_LIVE {
                    return (removed, Some(i as u32 + 1));
                }
            }
        }
        (removed, (end < self.sessions.len()).then_some(end as u32))
    }

    /// Removes every session (management command).
    pub fn clear(&mut self) {
        for i in 0..self.sessions.len() {
            if self.sessions[i].proto != FREE {
                self.delete_session(i as u32);
            }
        }
    }
}
