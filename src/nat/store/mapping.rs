//! Dynamic mappings: finding or creating the mapping of an inside endpoint (paired pooling,
//! the per-host limit, port preservation or a bounded random search, RSS-aware port choice),
//! the address-dependent filter, and removing a mapping with its host and port.

use super::super::ports::Policy;
use super::super::rules::{HostKey, RealmRules, Rules};
use super::super::session::*;
use super::super::table::Key;
use super::super::types::DropReason;
use super::Store;
use crate::config::{Filtering, Mapping, PortPolicy};
use crate::packet::ipv4::Protocol;

/// The `key.proto` of a detached mapping (`detach_mapping`): no key with it is ever in
/// `map_in` (sessions are TCP, UDP or ICMP).
pub(super) const DETACHED: Protocol = FREE;

impl Store {
    pub fn delete_mapping(&mut self, mi: u32) {
        let mp = self.maps[mi as usize];
        self.counters.eventlog.mapping_del(&mp);
        if mp.key.proto != DETACHED {
            self.map_in.remove(&mp.key);
            self.map_out.remove(&MapOutKey {
                proto: mp.proto,
                port: mp.ext_port,
                addr: mp.ext_addr,
            });
        }
        self.maps[mi as usize].proto = FREE;
        self.free_maps.push(mi);
        // By address: a reload may have moved it in the pool, or removed it (nothing to
        // give back then).
        if let Some(p) = self.ports.get_mut(mp.key.realm as usize)
            && let Some(i) = p.index(mp.ext_addr)
        {
            p.alloc.release(i, mp.proto, mp.ext_port, self.now);
        }
        self.hosts[mp.host as usize].mappings -= 1;
        self.release_host(mp.host);
    }

    /// The mapping key of an inside endpoint under the realm's mapping behaviour.
    pub fn map_key(
        realm: &RealmRules,
        proto: Protocol,
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
    pub fn mapping_for(
        &mut self,
        r: &Rules,
        realm: &RealmRules,
        key: MapInKey,
        remote: (u32, u16),
    ) -> Result<u32, DropReason> {
        if let Some(mi) = self.map_in.get(&key) {
            // A mapping a reload removed is detached, and the endpoint gets a new one.
            if self.recon.is_none() || !self.stale_mapping(mi) {
                return Ok(mi);
            }
        }
        if realm.pool.is_empty() {
            return Err(DropReason::PortsExhausted);
        }
        if self.free_maps.is_empty() {
            // Every mapping slot is taken: expired sessions may be all that holds some.
            self.reclaim(|e| !e.free_maps.is_empty());
        }
        let hk = HostKey {
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
        let pidx = key.proto;
        // A host slot without mappings (only static or 1:1 sessions) has no paired address
        // yet, nor has one whose address a reload took out of the pool.
        let ports = &self.ports[realm.id as usize];
        let paired = host
            .filter(|&h| self.hosts[h as usize].mappings > 0)
            .and_then(|h| Some((h, ports.index(self.hosts[h as usize].ext_addr)?)));
        let Some((ai, port)) = self.choose_port(r, realm, &key, paired, remote) else {
            let pa = paired.map(|(h, _)| self.hosts[h as usize].ext_addr);
            self.counters.eventlog.exhausted(&key, pa, self.now);
            self.free_maps.push(mi);
            return Err(DropReason::PortsExhausted);
        };
        let ext_addr = realm.pool[ai];
        self.prefetch_new(&key, (ext_addr, port), remote);
        let h = match host {
            Some(h) => {
                if paired.is_none() {
                    self.hosts[h as usize].ext_addr = ext_addr;
                }
                h
            }
            None => {
                let Some(h) = self.free_hosts.pop() else {
                    self.ports[realm.id as usize]
                        .alloc
                        .release(ai, pidx, port, self.now);
                    self.free_maps.push(mi);
                    return Err(DropReason::SessionTableFull);
                };
                self.hosts[h as usize] = HostSlot {
                    realm: realm.id,
                    ext_addr,
                    addr: key.in_addr,
                    mappings: 0,
                    sessions: 0,
                };
                let _ = self.host_tab.insert(hk, h);
                h
            }
        };
        let out = MapOutKey {
            proto: key.proto,
            port,
            addr: ext_addr,
        };
        let ok = self.map_in.insert(key, mi).is_ok();
        if !ok || self.map_out.insert(out, mi).is_err() {
            // Undo in reverse: the inside index, the port, the slot, a host made for it.
            if ok {
                self.map_in.remove(&key);
            }
            self.ports[realm.id as usize]
                .alloc
                .release(ai, pidx, port, self.now);
            self.free_maps.push(mi);
            self.release_host(h);
            return Err(DropReason::SessionTableFull);
        }
        self.hosts[h as usize].mappings += 1;
        self.maps[mi as usize] = MappingSlot {
            key,
            ext_addr,
            ext_port: port,
            proto: key.proto,
            sessions: 0,
            host: h,
            rem0: 0,
            rem0_sessions: 0,
        };
        self.counters.mappings_created.inc();
        self.counters.eventlog.mapping_add(&self.maps[mi as usize]);
        Ok(mi)
    }

    /// The pool address (index) and port of a new mapping. Paired pooling (RFC 4787 REQ-2):
    /// a host with mappings keeps its address; a new host starts at an address derived from
    /// its own, trying the others only if that one is full. Within an address the realm's
    /// port policy decides, preferring, with a predictable outside RSS, ports whose replies
    /// land on this core's queue.
    fn choose_port(
        &mut self,
        r: &Rules,
        realm: &RealmRules,
        key: &MapInKey,
        paired: Option<(u32, usize)>,
        remote: (u32, u16),
    ) -> Option<(usize, u16)> {
        let policy = match realm.policy {
            PortPolicy::PreserveThenRandom => Policy::PreserveThenRandom,
            PortPolicy::Random => Policy::Random,
        };
        let pidx = key.proto;
        let alloc = &mut self.ports[realm.id as usize].alloc;
        let n = realm.pool.len();
        let (start, tries) = match paired {
            Some((_, ai)) => (ai, 1),
            None => ((key.in_addr as usize).wrapping_mul(0x9e37_79b1) % n, n),
        };
        let core = self.core;
        let steer = r
            .rss
            .as_ref()
            .filter(|s| r.cores > 1 && s.steers(key.proto));
        for t in 0..tries {
            let ai = (start + t) % n;
            let ext = realm.pool[ai];
            let pref =
                |p: u16| steer.is_some_and(|s| s.lands_on(core, key.proto, remote, (ext, p)));
            let prefer: Option<&dyn Fn(u16) -> bool> =
                if steer.is_some() { Some(&pref) } else { None };
            if let Some(p) = alloc.alloc(ai, pidx, key.in_port, policy, &mut self.rng, prefer) {
                return Some((ai, p));
            }
        }
        None
    }

    /// The external endpoint is known only once the port is chosen. The new mapping and the
    /// session about to be created insert into two more tables at random places: start both
    /// loads at once so their cache misses overlap instead of queueing one after the other.
    #[inline(always)]
    fn prefetch_new(&self, key: &MapInKey, ext: (u32, u16), remote: (u32, u16)) {
        let (ext_addr, port) = ext;
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
    }

    /// A session's mapping, for out2in filtering.
    pub fn mapping_by_ext(&self, proto: Protocol, addr: u32, port: u16) -> Option<u32> {
        // A mapping a reload removed is detached (out of `map_out`) when a lookup meets it;
        // until then an inbound flow must not open a session on it either.
        self.map_out
            .get(&MapOutKey { proto, port, addr })
            .filter(|&mi| self.recon.is_none() || self.mapping_still_belongs(mi))
    }

    /// Takes a mapping out of both indexes (a reload removed what it was made through):
    /// no new session finds it and its key may be used by a new mapping, while its
    /// sessions hold it until they are removed. `key.proto` marks it.
    pub(super) fn detach_mapping(&mut self, mi: u32) {
        let mp = self.maps[mi as usize];
        if mp.key.proto == DETACHED {
            return;
        }
        self.map_in.remove(&mp.key);
        self.map_out.remove(&MapOutKey {
            proto: mp.proto,
            port: mp.ext_port,
            addr: mp.ext_addr,
        });
        self.maps[mi as usize].key.proto = DETACHED;
    }

    pub fn mapping(&self, mi: u32) -> &MappingSlot {
        &self.maps[mi as usize]
    }

    pub fn filter_allows(&self, realm: &RealmRules, mi: u32, rem_addr: u32) -> bool {
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
}
