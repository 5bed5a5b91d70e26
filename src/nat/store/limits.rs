//! Room and admission: what a new session must pass (the per-host session limit, a static
//! or 1:1 mapping's inbound limit) and how a full table makes room (expired sessions first,
//! then the least valuable live one, the way conntrack's early drop does). Every decision
//! is bounded and counted.
//!
//! A mapping at its inbound limit makes room from its own list of transitory TCP sessions
//! ([`Inbound`]), oldest first: O(1) and certain to find one if the mapping has any, where a
//! bounded scan of the whole table could miss a flood's half-open sessions among many others.

use super::Store;
use crate::nat::rules::{EndpointKey, HostKey, RealmRules, Rules};
use crate::nat::session::*;
use crate::nat::table::FlowTable;
use crate::nat::types::DropReason;
use crate::packet::ipv4::Protocol;

/// Expired sessions looked at when the table is full before giving up on a new flow.
const RECLAIM_TRIES: usize = 64;
/// Live sessions looked at for an eviction victim (after reclaiming found nothing expired),
/// and slots at most (free ones are skipped cheaply: slots are read in order).
const EVICT_TRIES: usize = 32;
const EVICT_SCAN: usize = 256;
/// A half-open outbound TCP connection is this many seconds safe from eviction: long enough
/// for its SYN-ACK (the first SYN retransmission comes after 1 s).
const HALF_OPEN_GRACE: u32 = 2;
/// The protocol of a 1:1 mapping's inbound count key: all protocols together.
const ANY_PROTO: Protocol = Protocol(255);

/// Per static or 1:1 mapping (the `inbound` table's value): the sessions opened from outside
/// through it, and the ends of its list of those that are transitory TCP (half-open from
/// outside, closing, reset) in the order they became so, linked through `Store::inbound_links`
/// by session index (NONE ends the list).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Inbound {
    pub count: u32,
    first: u32,
    last: u32,
}

impl Default for Inbound {
    fn default() -> Self {
        Inbound {
            count: 0,
            first: NONE,
            last: NONE,
        }
    }
}

impl Inbound {
    pub fn one() -> Self {
        Inbound {
            count: 1,
            ..Inbound::default()
        }
    }
}

/// A session's neighbours in its mapping's transitory list.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Link {
    prev: u32,
    next: u32,
}

/// Which sessions may be evicted to make room (see `Store::evict`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Evict {
    /// For a flow an inside host opens: transitory TCP first, else the most idle UDP/ICMP.
    Outbound,
    /// For a flow opened from outside: transitory TCP only. Unsolicited traffic never
    /// pushes out an inside host's UDP state.
    Inbound,
    /// Under a mapping's inbound limit: the oldest transitory TCP session of that same
    /// mapping (its list in [`Inbound`]).
    Rule(EndpointKey),
}

impl Store {
    /// Puts session `si` in its mapping's transitory list or takes it out, as its state now
    /// says: an inbound-counted TCP session belongs there while it is not established. Called
    /// on creation and after every TCP state change.
    pub(super) fn relist(&mut self, si: u32) {
        let s = self.sessions[si as usize];
        let want = s.flags & flags::INBOUND_COUNTED != 0
            && s.proto == Protocol::TCP
            && !tcp::is_established(s.tcp);
        let listed = s.flags & flags::EVICT_LISTED != 0;
        if want == listed {
            return;
        }
        if listed {
            self.unlist(si, &s);
            return;
        }
        let Some(c) = self.inbound.get_mut(&Self::inbound_key(&s)) else {
            return;
        };
        let last = c.last;
        if last == NONE {
            c.first = si;
        } else {
            self.inbound_links[last as usize].next = si;
        }
        c.last = si;
        self.inbound_links[si as usize] = Link {
            prev: last,
            next: NONE,
        };
        self.sessions[si as usize].flags |= flags::EVICT_LISTED;
    }

    /// Takes listed session `si` (whose record is `s`) out of its mapping's transitory list.
    pub(super) fn unlist(&mut self, si: u32, s: &Session) {
        let Link { prev, next } = self.inbound_links[si as usize];
        if let Some(c) = self.inbound.get_mut(&Self::inbound_key(s)) {
            if prev == NONE {
                c.first = next;
            } else {
                self.inbound_links[prev as usize].next = next;
            }
            if next == NONE {
                c.last = prev;
            } else {
                self.inbound_links[next as usize].prev = prev;
            }
        }
        self.sessions[si as usize].flags &= !flags::EVICT_LISTED;
    }

    /// Every mapping's transitory list holds exactly its listed sessions, linked both ways,
    /// and a session is listed exactly when `relist` says it should be (tests).
    #[cfg(test)]
    pub(super) fn check_inbound_lists(&self) {
        let mut seen = 0;
        for (k, c) in self.inbound.iter() {
            let (mut prev, mut i) = (NONE, c.first);
            while i != NONE {
                let s = &self.sessions[i as usize];
                assert_ne!(
                    s.flags & flags::EVICT_LISTED,
                    0,
                    "unflagged session {i} listed"
                );
                assert_eq!(
                    Self::inbound_key(s),
                    k,
                    "session {i} in another mapping's list"
                );
                assert_eq!(
                    self.inbound_links[i as usize].prev, prev,
                    "back link of {i}"
                );
                seen += 1;
                assert!(seen <= self.sessions.len(), "a cycle in the list of {k:?}");
                (prev, i) = (i, self.inbound_links[i as usize].next);
            }
            assert_eq!(c.last, prev, "last of {k:?}");
        }
        let should = self
            .sessions
            .iter()
            .filter(|s| {
                s.proto == Protocol::TCP
                    && s.flags & flags::INBOUND_COUNTED != 0
                    && !tcp::is_established(s.tcp)
            })
            .count();
        let flagged = self
            .sessions
            .iter()
            .filter(|s| s.proto != FREE && s.flags & flags::EVICT_LISTED != 0)
            .count();
        assert_eq!(
            (seen, flagged),
            (should, should),
            "transitory inbound sessions listed"
        );
    }

    /// Deletes expired sessions (looking at no more than `RECLAIM_TRIES` slots) until `enough`.
    /// Deleting a session may delete its mapping, so callers reclaim before they look up the
    /// mapping a new session will use, never between that lookup and the session's creation.
    pub(super) fn reclaim(&mut self, enough: fn(&Store) -> bool) {
        for _ in 0..RECLAIM_TRIES.min(self.sessions.len()) {
            if enough(self) {
                return;
            }
            self.examine_next();
        }
    }

    /// When the table is full, reclaims expired sessions so a new one fits, else evicts the
    /// least valuable session the way conntrack's early drop does (`evict`; `inbound`: the
    /// new flow comes from outside). Called before a new session's mapping is looked up
    /// (see `reclaim`); creation fails later if no slot came free.
    pub fn make_session_room(&mut self, inbound: bool) {
        if self.free_sessions.is_empty() {
            self.reclaim(|e| !e.free_sessions.is_empty());
        }
        if self.free_sessions.is_empty() {
            self.evict(if inbound {
                Evict::Inbound
            } else {
                Evict::Outbound
            });
        }
    }

    /// Deletes one session that `mode` allows. For `Rule`: the mapping's oldest transitory
    /// session, from its list. Otherwise, looking at no more than `EVICT_TRIES` live
    /// sessions (`EVICT_SCAN` slots), in slot order from where the last search stopped:
    /// the first transitory TCP session found (half-open from outside, half-open from
    /// inside for longer than `HALF_OPEN_GRACE`, closed or reset); failing that, for
    /// `Outbound`, the UDP/ICMP session with the earliest deadline (the most idle). An
    /// established TCP connection is never evicted. True if a slot came free.
    fn evict(&mut self, mode: Evict) -> bool {
        if let Evict::Rule(k) = mode {
            // The mapping's oldest transitory session, from its list.
            let Some(si) = self.inbound.get(&k).map(|c| c.first).filter(|&i| i != NONE) else {
                return false;
            };
            self.delete_session(si);
            self.counters.sessions_evicted_transitory.inc();
            return true;
        }
        let n = self.sessions.len();
        let now = self.now;
        let mut idle: Option<(u32, u32)> = None;
        let mut live = 0;
        for _ in 0..EVICT_SCAN.min(n) {
            if live == EVICT_TRIES {
                break;
            }
            let i = self.evict_cursor;
            self.evict_cursor = if i + 1 == n { 0 } else { i + 1 };
            let s = self.sessions[i];
            if s.proto == FREE {
                continue;
            }
            live += 1;
            if s.proto == Protocol::TCP {
                let half_open_out = s.flags & flags::INBOUND == 0
                    && s.tcp & (tcp::RST | tcp::FIN_OUT | tcp::FIN_IN) == 0
                    && s.created.saturating_add(HALF_OPEN_GRACE) > now;
                if tcp::is_established(s.tcp) || half_open_out {
                    continue;
                }
                self.delete_session(i as u32);
                self.counters.sessions_evicted_transitory.inc();
                return true;
            }
            if mode == Evict::Outbound {
                let d = self.deadline(i as u32);
                if idle.is_none_or(|(best, _)| d < best) {
                    idle = Some((d, i as u32));
                }
            }
        }
        let Some((d, i)) = idle else {
            return false;
        };
        self.delete_session(i);
        if d <= now {
            self.counters.sessions_expired.inc();
        } else {
            self.counters.sessions_evicted_idle.inc();
        }
        true
    }

    /// Whether an inside host already holds its realm's share of sessions (checked before
    /// a new flow's mapping is made, so a refused flow costs no port).
    pub fn host_full(&self, realm: &RealmRules, addr: u32) -> bool {
        let k = HostKey {
            realm: realm.id,
            addr,
        };
        self.host_tab
            .get(&k)
            .is_some_and(|h| self.hosts[h as usize].sessions >= realm.per_host_sessions)
    }

    /// The host slot a new session is counted in: its mapping's, or for a static / 1:1
    /// session found or created by address.
    pub(super) fn host_of(&mut self, s: &Session) -> Result<u32, DropReason> {
        if s.map != NONE {
            return Ok(self.maps[s.map as usize].host);
        }
        let hk = HostKey {
            realm: s.realm,
            addr: s.in_addr,
        };
        if let Some(h) = self.host_tab.get(&hk) {
            return Ok(h);
        }
        let Some(h) = self.free_hosts.pop() else {
            return Err(DropReason::SessionTableFull);
        };
        self.hosts[h as usize] = HostSlot {
            realm: s.realm,
            ext_addr: 0,
            addr: s.in_addr,
            mappings: 0,
            sessions: 0,
        };
        if self.host_tab.insert(hk, h).is_err() {
            self.free_hosts.push(h);
            return Err(DropReason::SessionTableFull);
        }
        Ok(h)
    }

    /// Admits a new session under its limits: an inbound static / 1:1 session against its
    /// mapping's inbound count (evicting a transitory one of the same mapping at the limit),
    /// any other against its inside host's. Ok: the host slot to count it in, if any.
    pub(super) fn admit(
        &mut self,
        realm: &RealmRules,
        s: &Session,
    ) -> Result<Option<u32>, DropReason> {
        if s.flags & flags::INBOUND != 0 && s.map == NONE {
            let k = Self::inbound_key(s);
            if self.inbound.get(&k).map_or(0, |c| c.count) >= realm.inbound_per_mapping
                && !self.evict(Evict::Rule(k))
            {
                return Err(DropReason::InboundLimit);
            }
            return Ok(None);
        }
        let h = self.host_of(s)?;
        if self.hosts[h as usize].sessions >= realm.per_host_sessions {
            self.release_host(h);
            return Err(DropReason::PerHostSessions);
        }
        Ok(Some(h))
    }

    /// Room for a count per static and 1:1 mapping: their number rounded up to a power of
    /// two. The table's slots are a power of two anyway (twice the entries at most), so
    /// this costs no memory, and a reload grows the table only when the mappings pass the
    /// next power of two (`Store::grow_inbound`).
    pub(super) fn inbound_capacity(rules: &Rules) -> usize {
        (rules.statics.len() + rules.one_to_one.len())
            .max(1)
            .next_power_of_two()
    }

    pub(super) fn inbound_table(rules: &Rules) -> FlowTable<EndpointKey, Inbound> {
        FlowTable::with_capacity(Self::inbound_capacity(rules))
    }

    /// The count an inbound-opened static or 1:1 session is held against.
    pub(super) fn inbound_key(s: &Session) -> EndpointKey {
        if s.flags & flags::ONE_TO_ONE != 0 {
            EndpointKey {
                realm: s.realm,
                proto: ANY_PROTO,
                port: 0,
                addr: s.in_addr,
            }
        } else {
            EndpointKey {
                realm: s.realm,
                proto: s.proto,
                port: s.in_port,
                addr: s.in_addr,
            }
        }
    }
}
