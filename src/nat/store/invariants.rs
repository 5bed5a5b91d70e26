//! The store's invariants, cross-checked in tests after every engine test step.

use super::Store;
use crate::nat::rules::{EndpointKey, HostKey};
use crate::nat::session::*;

impl Store {
    /// A session's `in_tab` slot value.
    pub fn in_val(&self, k: &InKey) -> Option<InVal> {
        self.in_tab.get(k)
    }

    /// Cross-checks every table against the slots (tests only; O(capacity)).
    pub fn check_invariants(&self) {
        let live: Vec<u32> = (0..self.sessions.len() as u32)
            .filter(|&i| self.sessions[i as usize].proto != FREE)
            .collect();
        assert_eq!(live.len(), self.in_tab.len(), "live sessions vs in_tab");
        assert_eq!(live.len(), self.out_tab.len(), "live sessions vs out_tab");
        assert_eq!(
            live.len() + self.free_sessions.len(),
            self.sessions.len(),
            "session slots leaked"
        );
        // The metrics' sessions per realm and protocol (created - removed) are the table's.
        let mut per_realm = std::collections::HashMap::<(u16, usize), u64>::new();
        for &i in &live {
            let s = &self.sessions[i as usize];
            let p = crate::nat::counters::SESSION_PROTOCOLS
                .iter()
                .position(|&p| p == s.proto)
                .unwrap_or(2);
            *per_realm.entry((s.realm, p)).or_default() += 1;
        }
        for realm in 0..crate::nat::counters::REALM_SLOTS as u16 {
            for p in 0..3 {
                assert_eq!(
                    self.counters.realm_sessions_of(realm, p).1,
                    per_realm.get(&(realm, p)).copied().unwrap_or(0),
                    "sessions of realm {realm}, protocol slot {p}"
                );
            }
        }
        let mut per_map = std::collections::HashMap::<u32, u32>::new();
        let mut filt = std::collections::HashMap::<(u32, u32), u32>::new();
        let mut ext_refs = std::collections::HashMap::<u16, u32>::new();
        for &i in &live {
            let s = &self.sessions[i as usize];
            let iv = self.in_tab.get(&s.in_key()).expect("in_tab entry");
            let ov = self.out_tab.get(&s.out_key()).expect("out_tab entry");
            assert_eq!(iv.sess & slot::INDEX, i, "in_tab of {s:?}");
            assert_eq!(ov.sess & slot::INDEX, i, "out_tab of {s:?}");
            assert_eq!(
                (self.ext.addr(iv.ext_idx), iv.ext_port),
                (s.ext_addr, s.ext_port)
            );
            *ext_refs.entry(iv.ext_idx).or_default() += 1;
            assert_eq!(
                (ov.in_addr, ov.in_port, ov.realm),
                (s.in_addr, s.in_port, s.realm)
            );
            assert!(iv.expires >= s.expires && ov.expires >= s.expires, "{s:?}");
            if s.map != NONE {
                let mp = &self.maps[s.map as usize];
                assert_ne!(mp.proto, FREE, "session on a free mapping");
                assert_eq!((mp.ext_addr, mp.ext_port), (s.ext_addr, s.ext_port));
                *per_map.entry(s.map).or_default() += 1;
                if s.flags & flags::FILTER_COUNTED != 0 {
                    *filt.entry((s.map, s.rem_addr)).or_default() += 1;
                }
            }
        }
        self.check_inbound_lists();
        // Every interned external address is held by exactly the sessions naming it.
        let interned = self.ext.entries_in_use();
        assert_eq!(interned.len(), ext_refs.len(), "external addresses leaked");
        assert_eq!(interned.len(), self.ext.len());
        for (i, _, refs) in interned {
            assert_eq!(
                ext_refs.get(&i),
                Some(&refs),
                "references of external address {i}"
            );
        }
        let live_maps: Vec<u32> = (0..self.maps.len() as u32)
            .filter(|&i| self.maps[i as usize].proto != FREE)
            .collect();
        // A mapping a reload detached is in neither index until its sessions are gone.
        let indexed = live_maps
            .iter()
            .filter(|&&i| self.maps[i as usize].key.proto != FREE)
            .count();
        assert_eq!(indexed, self.map_in.len(), "mappings vs map_in");
        assert_eq!(indexed, self.map_out.len(), "mappings vs map_out");
        for &mi in &live_maps {
            let mp = &self.maps[mi as usize];
            if mp.key.proto != FREE {
                assert_eq!(self.map_in.get(&mp.key), Some(mi), "map_in of {mp:?}");
            }
        }
        assert_eq!(live_maps.len() + self.free_maps.len(), self.maps.len());
        let mut per_host = std::collections::HashMap::<u32, u32>::new();
        for &mi in &live_maps {
            *per_host.entry(self.maps[mi as usize].host).or_default() += 1;
        }
        // Every session is counted once: in its host or in its mapping's inbound count.
        let mut host_sessions = std::collections::HashMap::<u32, u32>::new();
        let mut inbound =
            std::collections::HashMap::<(u16, u8, u16, u32), (EndpointKey, u32)>::new();
        for &i in &live {
            let s = &self.sessions[i as usize];
            let counted = s.flags & (flags::HOST_COUNTED | flags::INBOUND_COUNTED);
            assert!(
                counted == flags::HOST_COUNTED || counted == flags::INBOUND_COUNTED,
                "session counted once: {s:?}"
            );
            if counted == flags::INBOUND_COUNTED {
                assert_eq!(s.map, NONE, "inbound-counted session on a mapping");
                let k = Self::inbound_key(s);
                inbound
                    .entry((k.realm, k.proto.0, k.port, k.addr))
                    .or_insert((k, 0))
                    .1 += 1;
                continue;
            }
            let h = if s.map != NONE {
                self.maps[s.map as usize].host
            } else {
                self.host_tab
                    .get(&HostKey {
                        realm: s.realm,
                        addr: s.in_addr,
                    })
                    .expect("host of a counted session")
            };
            let hs = &self.hosts[h as usize];
            assert_eq!((hs.realm, hs.addr), (s.realm, s.in_addr), "host of {s:?}");
            *host_sessions.entry(h).or_default() += 1;
        }
        let hosts: std::collections::HashSet<u32> = per_host
            .keys()
            .chain(host_sessions.keys())
            .copied()
            .collect();
        assert_eq!(hosts.len(), self.host_tab.len(), "hosts vs host_tab");
        assert_eq!(hosts.len() + self.free_hosts.len(), self.hosts.len());
        for h in &hosts {
            let hs = &self.hosts[*h as usize];
            let k = HostKey {
                realm: hs.realm,
                addr: hs.addr,
            };
            assert_eq!(self.host_tab.get(&k), Some(*h), "host_tab of {hs:?}");
            let m = per_host.get(h).copied().unwrap_or(0);
            assert_eq!(hs.mappings, m, "host mapping count");
            let n = host_sessions.get(h).copied().unwrap_or(0);
            assert_eq!(hs.sessions, n, "host session count");
        }
        assert_eq!(inbound.len(), self.inbound.len(), "inbound counts");
        for (k, n) in inbound.values() {
            assert_eq!(
                self.inbound.get(k).map(|c| c.count),
                Some(*n),
                "inbound count of {k:?}"
            );
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
