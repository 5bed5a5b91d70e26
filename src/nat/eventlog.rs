//! The engine's half of the NAT event log (RFC 6888 REQ-12, docs/eventlog.md): a small
//! fixed-size [`Record`] per event, pushed into a bounded lock-free ring per worker that the
//! management side's logger drains (`control::eventlog`). The engine does no I/O, never
//! allocates here and never waits: a full ring drops the record and counts it (`lost`).
//!
//! With logging off (the default) the store's hooks cost one load and one predictable branch
//! each: [`Sink::on`] is false until the logger enables a realm.

use super::counters::{Counter, REALM_SLOTS};
use super::session::{MapInKey, MappingSlot, Session};
use crossbeam::queue::ArrayQueue;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering::Relaxed};

/// What happened. The names are VPP's NAT syslog message ids where VPP has the event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum Kind {
    /// A dynamic mapping (address and port mapping) was created: VPP's `APMADD`.
    #[default]
    MappingAdd = 1,
    /// A dynamic mapping was removed (its last session ended): `APMDEL`.
    MappingDel = 2,
    /// A session was created: `SADD`.
    SessionAdd = 3,
    /// A session was removed (expired, evicted, cleared): `SDEL`.
    SessionDel = 4,
    /// A new inside host found no free port on any pool address: `AEXH` (natgw's own).
    AddressesExhausted = 5,
    /// A host's paired address has no free port left for it: `PEXH` (natgw's own).
    PortsExhausted = 6,
}

impl Kind {
    /// The RFC 5424 MSGID and the JSON `event` value.
    pub fn msgid(self) -> &'static str {
        match self {
            Kind::MappingAdd => "APMADD",
            Kind::MappingDel => "APMDEL",
            Kind::SessionAdd => "SADD",
            Kind::SessionDel => "SDEL",
            Kind::AddressesExhausted => "AEXH",
            Kind::PortsExhausted => "PEXH",
        }
    }
}

/// One event, 24 bytes, `Copy`: what the ring carries. Addresses are host-order `u32`s as
/// everywhere in the engine. The logger adds the time and the realm's name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Record {
    /// Inside source address and port.
    pub in_addr: u32,
    /// External (translated) source address and port; 0 for `AddressesExhausted`.
    pub ext_addr: u32,
    /// The remote (destination) address and port: only with [`Record::DEST`] in `flags`.
    pub rem_addr: u32,
    pub in_port: u16,
    pub ext_port: u16,
    pub rem_port: u16,
    /// The realm's stable id (`RealmRules::id`).
    pub realm: u16,
    pub kind: Kind,
    /// The IP protocol number.
    pub proto: u8,
    pub flags: u8,
}

impl Record {
    /// `rem_addr`/`rem_port` hold the session's destination (`destinations = true`).
    pub const DEST: u8 = 1;
}

/// Per realm id: which events the realm logs (`[realm.log]`).
pub mod mask {
    pub const MAPPINGS: u8 = 1;
    pub const SESSIONS: u8 = 2;
    pub const DESTINATIONS: u8 = 4;
    pub const EXHAUSTION: u8 = 8;
}

/// Slots of the exhaustion rate limit (by address and realm, hashed).
const EXH_SLOTS: usize = 256;

/// One worker's event sink: its ring, the realms' event masks, what was lost. The worker is
/// the only producer; the logger the only consumer; the management side sets the masks.
#[derive(Debug)]
pub struct Sink {
    /// Whether any realm logs anything: the one branch every hook pays.
    on: AtomicBool,
    masks: Box<[AtomicU8]>,
    /// Allocated once, when the logger first enables logging (never by the worker).
    ring: OnceLock<ArrayQueue<Record>>,
    /// Records dropped because the ring was full (the logger slow or stalled).
    pub lost: Counter,
    /// Exhaustion records left out by the rate limit (one per address and second).
    pub suppressed: Counter,
    /// Per hashed (address, realm): the engine second + 1 of the last exhaustion record.
    exh_last: Box<[AtomicU32]>,
}

impl Default for Sink {
    fn default() -> Self {
        Sink {
            on: AtomicBool::new(false),
            masks: (0..REALM_SLOTS).map(|_| AtomicU8::new(0)).collect(),
            ring: OnceLock::new(),
            lost: Counter::default(),
            suppressed: Counter::default(),
            exh_last: (0..EXH_SLOTS).map(|_| AtomicU32::new(0)).collect(),
        }
    }
}

impl Sink {
    /// Management side: allocates the ring (`capacity` records, once; a later call keeps
    /// the first ring) and sets every realm's mask (`masks[id]`, ids beyond it off).
    pub fn configure(&self, capacity: usize, masks: &[u8]) {
        let _ = self.ring.get_or_init(|| ArrayQueue::new(capacity.max(1)));
        let mut any = false;
        for (i, m) in self.masks.iter().enumerate() {
            let v = masks.get(i).copied().unwrap_or(0);
            any |= v != 0;
            m.store(v, Relaxed);
        }
        self.on.store(any, Relaxed);
    }

    /// The logger's end of the ring.
    pub fn pop(&self) -> Option<Record> {
        self.ring.get()?.pop()
    }

    /// The ring's capacity (0 before `configure`).
    pub fn capacity(&self) -> usize {
        self.ring.get().map_or(0, ArrayQueue::capacity)
    }

    #[inline(always)]
    fn mask(&self, realm: u16) -> u8 {
        self.masks
            .get(usize::from(realm))
            .map_or(0, |m| m.load(Relaxed))
    }

    #[inline(always)]
    fn push(&self, r: Record) {
        match self.ring.get() {
            Some(q) if q.push(r).is_ok() => {}
            _ => self.lost.inc(),
        }
    }

    /// Hook: a dynamic mapping was created.
    #[inline(always)]
    pub fn mapping_add(&self, m: &MappingSlot) {
        self.mapping(Kind::MappingAdd, m)
    }

    /// Hook: a dynamic mapping is being removed.
    #[inline(always)]
    pub fn mapping_del(&self, m: &MappingSlot) {
        self.mapping(Kind::MappingDel, m)
    }

    /// Hook: a session was created.
    #[inline(always)]
    pub fn session_add(&self, s: &Session) {
        self.session(Kind::SessionAdd, s)
    }

    /// Hook: a session is being removed.
    #[inline(always)]
    pub fn session_del(&self, s: &Session) {
        self.session(Kind::SessionDel, s)
    }

    /// A dynamic mapping was created or is being removed.
    #[inline(always)]
    pub fn mapping(&self, kind: Kind, m: &MappingSlot) {
        if self.on.load(Relaxed) {
            self.mapping_cold(kind, m);
        }
    }

    #[cold]
    fn mapping_cold(&self, kind: Kind, m: &MappingSlot) {
        if self.mask(m.key.realm) & mask::MAPPINGS == 0 {
            return;
        }
        self.push(Record {
            in_addr: m.key.in_addr,
            ext_addr: m.ext_addr,
            in_port: m.key.in_port,
            ext_port: m.ext_port,
            realm: m.key.realm,
            kind,
            // `m.proto`, not `m.key.proto`: a reload marks a detached mapping in the key.
            proto: m.proto.0,
            ..Record::default()
        });
    }

    /// A session was created or is being removed.
    #[inline(always)]
    pub fn session(&self, kind: Kind, s: &Session) {
        if self.on.load(Relaxed) {
            self.session_cold(kind, s);
        }
    }

    #[cold]
    fn session_cold(&self, kind: Kind, s: &Session) {
        let m = self.mask(s.realm);
        if m & mask::SESSIONS == 0 {
            return;
        }
        let dest = m & mask::DESTINATIONS != 0;
        self.push(Record {
            in_addr: s.in_addr,
            ext_addr: s.ext_addr,
            rem_addr: if dest { s.rem_addr } else { 0 },
            in_port: s.in_port,
            ext_port: s.ext_port,
            rem_port: if dest { s.rem_port } else { 0 },
            realm: s.realm,
            kind,
            proto: s.proto.0,
            flags: if dest { Record::DEST } else { 0 },
        });
    }

    /// Hook: no port for a new mapping of `key`. `paired` is the host's paired address
    /// (ports exhausted there), None if every pool address was tried (addresses exhausted).
    /// At most one record per address (or, for the whole pool, per realm) and engine
    /// second; the others are counted in `suppressed`.
    #[inline(always)]
    pub fn exhausted(&self, key: &MapInKey, paired: Option<u32>, now: u32) {
        if self.on.load(Relaxed) {
            self.exhausted_cold(key, paired, now);
        }
    }

    #[cold]
    fn exhausted_cold(&self, key: &MapInKey, paired: Option<u32>, now: u32) {
        if self.mask(key.realm) & mask::EXHAUSTION == 0 {
            return;
        }
        let addr = paired.unwrap_or(0);
        let h = (addr ^ u32::from(key.realm).wrapping_mul(0x85eb_ca6b)).wrapping_mul(0x9e37_79b1);
        let slot = &self.exh_last[(h >> 24) as usize % EXH_SLOTS];
        let stamp = now.wrapping_add(1);
        if slot.load(Relaxed) == stamp {
            self.suppressed.inc();
            return;
        }
        slot.store(stamp, Relaxed);
        self.push(Record {
            in_addr: key.in_addr,
            ext_addr: addr,
            in_port: key.in_port,
            realm: key.realm,
            kind: if paired.is_some() {
                Kind::PortsExhausted
            } else {
                Kind::AddressesExhausted
            },
            proto: key.proto.0,
            ..Record::default()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::ipv4::Protocol;

    fn slot() -> MappingSlot {
        MappingSlot {
            key: MapInKey {
                realm: 3,
                proto: Protocol::UDP,
                in_port: 4000,
                rem_port: 0,
                in_addr: 0x0a00_0002,
                rem_addr: 0,
            },
            ext_addr: 0xc0a8_010a,
            ext_port: 5000,
            proto: Protocol::UDP,
            ..MappingSlot::default()
        }
    }

    #[test]
    fn record_is_small() {
        assert!(std::mem::size_of::<Record>() <= 32);
    }

    #[test]
    fn off_by_default_and_per_realm() {
        let s = Sink::default();
        s.mapping(Kind::MappingAdd, &slot());
        assert_eq!(s.pop(), None);
        assert_eq!(
            s.lost.get(),
            0,
            "logging off loses nothing: it records nothing"
        );
        let mut masks = vec![0u8; 4];
        masks[2] = mask::MAPPINGS;
        s.configure(4, &masks);
        s.mapping(Kind::MappingAdd, &slot());
        assert_eq!(s.pop(), None, "realm 3 does not log");
        masks[3] = mask::MAPPINGS;
        s.configure(4, &masks);
        s.mapping(Kind::MappingAdd, &slot());
        let r = s.pop().unwrap();
        assert_eq!(
            (
                r.kind, r.in_addr, r.in_port, r.ext_addr, r.ext_port, r.proto
            ),
            (Kind::MappingAdd, 0x0a00_0002, 4000, 0xc0a8_010a, 5000, 17)
        );
    }

    #[test]
    fn full_ring_drops_and_counts() {
        let s = Sink::default();
        s.configure(4, &[0, 0, 0, mask::MAPPINGS]);
        for _ in 0..10 {
            s.mapping(Kind::MappingAdd, &slot());
        }
        assert_eq!(s.lost.get(), 6);
        let mut n = 0;
        while s.pop().is_some() {
            n += 1;
        }
        assert_eq!(n, 4);
        s.mapping(Kind::MappingDel, &slot());
        assert_eq!(s.pop().map(|r| r.kind), Some(Kind::MappingDel));
    }

    #[test]
    fn destinations_only_when_asked() {
        let s = Sink::default();
        let sess = Session {
            in_addr: 1,
            ext_addr: 2,
            rem_addr: 3,
            in_port: 4,
            ext_port: 5,
            rem_port: 6,
            realm: 0,
            proto: Protocol::TCP,
            ..Session::default()
        };
        s.configure(8, &[mask::SESSIONS]);
        s.session(Kind::SessionAdd, &sess);
        let r = s.pop().unwrap();
        assert_eq!((r.rem_addr, r.rem_port, r.flags), (0, 0, 0));
        s.configure(8, &[mask::SESSIONS | mask::DESTINATIONS]);
        s.session(Kind::SessionDel, &sess);
        let r = s.pop().unwrap();
        assert_eq!((r.rem_addr, r.rem_port, r.flags), (3, 6, Record::DEST));
        s.mapping(Kind::MappingAdd, &slot());
        assert_eq!(s.pop(), None, "sessions only");
    }

    #[test]
    fn exhaustion_is_rate_limited_per_address_and_second() {
        let s = Sink::default();
        s.configure(16, &[0, 0, 0, mask::EXHAUSTION]);
        let k = slot().key;
        for _ in 0..5 {
            s.exhausted(&k, Some(0xc0a8_010a), 100);
        }
        s.exhausted(&k, None, 100);
        s.exhausted(&k, Some(0xc0a8_010a), 101);
        let kinds: Vec<Kind> = std::iter::from_fn(|| s.pop()).map(|r| r.kind).collect();
        assert_eq!(
            kinds,
            [
                Kind::PortsExhausted,
                Kind::AddressesExhausted,
                Kind::PortsExhausted
            ]
        );
        assert_eq!(s.suppressed.get(), 4);
    }
}
