//! IPv4 fragments without reassembly. The first fragment (which carries the ports) is
//! translated normally and leaves an entry keyed by (scope, protocol, source, destination,
//! identification) saying what to do with the rest; later fragments follow that entry. Later
//! fragments that overtake their first fragment are held in a fixed pool of buffers for a short
//! time (RFC 4787 REQ-14), then released or dropped and counted. Everything is bounded: entries,
//! held buffers and the work per call.

use super::counters::Counters;
use super::parse::{self, Frag, Meta};
use super::rewrite::{self, Rewrite, Side};
use super::table::{FlowTable, Key, hash_words};
use super::types::*;
use crate::packet::ipv4::Protocol;
use std::collections::VecDeque;

/// Scope of fragments arriving from outside; inside scopes are realm ids.
const SCOPE_OUTSIDE: u16 = u16::MAX;
const SCOPE_HAIRPIN: u16 = u16::MAX - 1;
/// Largest frame a hold slot keeps (4 bytes of headroom for a VLAN tag precede it).
pub const HOLD_SLOT: usize = 2048;
const HEADROOM: usize = 4;
/// Slots for the fragments natgw makes itself of datagrams too large for their egress link
/// (all but the first, which stays in the frame): they wait in `ready` like released
/// fragments until the worker drains it, at the latest after its current round. A round of
/// 1500-byte datagrams onto a 1400-byte link needs one slot per datagram.
pub const OUT_SLOTS: usize = 128;

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct FragKey {
    pub scope: u16,
    pub proto: Protocol,
    pub id: u16,
    pub src: u32,
    pub dst: u32,
}

impl Key for FragKey {
    /// A scope no realm and no outside scope uses.
    const EMPTY: FragKey = FragKey {
        scope: u16::MAX - 2,
        proto: Protocol(0),
        id: 0,
        src: 0,
        dst: 0,
    };
    fn hash(&self) -> u64 {
        hash_words(&[
            (self.scope as u64) << 32 | (self.proto.0 as u64) << 16 | self.id as u64,
            (self.src as u64) << 32 | self.dst as u64,
        ])
    }
}

impl FragKey {
    pub(crate) fn inside(realm: u16, m: &Meta) -> FragKey {
        FragKey {
            scope: realm,
            proto: m.proto,
            id: m.ident,
            src: m.src,
            dst: m.dst,
        }
    }
    pub(crate) fn outside(hairpin: bool, m: &Meta) -> FragKey {
        let scope = if hairpin {
            SCOPE_HAIRPIN
        } else {
            SCOPE_OUTSIDE
        };
        FragKey {
            scope,
            proto: m.proto,
            id: m.ident,
            src: m.src,
            dst: m.dst,
        }
    }
}

/// What to do with the later fragments of a datagram.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FragAction {
    Translate {
        src: Option<u32>,
        dst: Option<u32>,
        dec_ttl: bool,
        vlan: Option<u16>,
        next: Verdict,
    },
    Handoff {
        core: u16,
        ingress: Ingress,
    },
}

#[derive(Clone, Copy)]
struct Entry {
    key: FragKey,
    action: FragAction,
    expires: u32,
    live: bool,
}

#[derive(Clone, Copy, Default)]
struct Held {
    key: FragKey,
    ingress: Option<Ingress>,
    expires: u32,
    off: usize,
    len: usize,
}

pub struct FragTable {
    entries: Vec<Entry>,
    free: Vec<u32>,
    index: FlowTable<FragKey>,
    /// Entries in creation order; all live for the same timeout, so this is expiry order.
    fifo: VecDeque<(u32, u32)>,
    held: Vec<Held>,
    held_bufs: Vec<u8>,
    held_free: Vec<u32>,
    held_count: usize,
    /// Free slots of the egress-fragment pool: `held` and `held_bufs` positions
    /// `max_held..max_held + OUT_SLOTS`.
    out_free: Vec<u32>,
    max_held: usize,
    ready: VecDeque<(u32, Verdict)>,
    timeout: u32,
}

impl FragTable {
    pub fn new(max_datagrams: usize, max_held: usize, timeout: u32) -> FragTable {
        let max_datagrams = max_datagrams.max(1);
        let max_held = max_held.max(1);
        let blank = Entry {
            key: FragKey::default(),
            action: FragAction::Handoff {
                core: 0,
                ingress: Ingress::Outside,
            },
            expires: 0,
            live: false,
        };
        FragTable {
            entries: vec![blank; max_datagrams],
            free: (0..max_datagrams as u32).rev().collect(),
            index: FlowTable::with_capacity(max_datagrams),
            fifo: VecDeque::with_capacity(max_datagrams),
            held: vec![Held::default(); max_held + OUT_SLOTS],
            held_bufs: vec![0; (max_held + OUT_SLOTS) * (HOLD_SLOT + HEADROOM)],
            held_free: (0..max_held as u32).rev().collect(),
            held_count: 0,
            out_free: (max_held as u32..(max_held + OUT_SLOTS) as u32)
                .rev()
                .collect(),
            max_held,
            ready: VecDeque::with_capacity(max_held + OUT_SLOTS),
            timeout: timeout.max(1),
        }
    }

    /// What `new(max_datagrams, max_held, _).memory_bytes()` is, without allocating.
    pub fn bytes_for(max_datagrams: usize, max_held: usize) -> usize {
        let (d, h) = (max_datagrams.max(1), max_held.max(1) + OUT_SLOTS);
        d * (std::mem::size_of::<Entry>() + 4 + 8)
            + FlowTable::<FragKey>::bytes_for(d)
            + h * (HOLD_SLOT + HEADROOM)
            + h * (std::mem::size_of::<Held>() + 4 + 8)
    }

    pub fn memory_bytes(&self) -> usize {
        self.entries.len() * (std::mem::size_of::<Entry>() + 4 + 8)
            + self.index.memory_bytes()
            + self.held_bufs.len()
            + self.held.len() * (std::mem::size_of::<Held>() + 4 + 8)
    }

    /// (in use, capacity) of the datagram entries, the hold slots for out-of-order
    /// fragments and the egress-fragment pool.
    pub fn usage(&self) -> [(usize, usize); 3] {
        [
            (self.entries.len() - self.free.len(), self.entries.len()),
            (self.held_count, self.max_held),
            (OUT_SLOTS - self.out_free.len(), OUT_SLOTS),
        ]
    }

    pub fn lookup(&self, k: &FragKey) -> Option<FragAction> {
        self.index.get(k).map(|i| self.entries[i as usize].action)
    }

    fn insert_entry(&mut self, k: FragKey, action: FragAction, now: u32) -> Result<(), DropReason> {
        if let Some(i) = self.index.get(&k) {
            self.entries[i as usize].action = action;
            return Ok(());
        }
        if self.free.is_empty() {
            self.expire_entries(now);
        }
        let Some(i) = self.free.pop() else {
            return Err(DropReason::FragmentTableFull);
        };
        let expires = now.saturating_add(self.timeout);
        self.entries[i as usize] = Entry {
            key: k,
            action,
            expires,
            live: true,
        };
        let _ = self.index.insert(k, i);
        self.fifo.push_back((i, expires));
        Ok(())
    }

    fn expire_entries(&mut self, now: u32) {
        while let Some(&(i, exp)) = self.fifo.front() {
            if exp > now {
                break;
            }
            self.fifo.pop_front();
            let e = &mut self.entries[i as usize];
            if e.live && e.expires == exp {
                e.live = false;
                let k = e.key;
                self.index.remove(&k);
                self.free.push(i);
            }
        }
    }

    /// Drops entries and held fragments past their time.
    pub fn expire(&mut self, now: u32, counters: &Counters) {
        self.expire_entries(now);
        if self.held_count == 0 {
            return;
        }
        for i in 0..self.max_held {
            let h = &mut self.held[i];
            if h.ingress.is_some() && h.expires <= now {
                h.ingress = None;
                self.held_count -= 1;
                self.held_free.push(i as u32);
                counters.dropped(DropReason::FragmentTimeout);
            }
        }
    }

    fn hold(
        &mut self,
        k: FragKey,
        ingress: Ingress,
        data: &[u8],
        now: u32,
    ) -> Result<(), DropReason> {
        if data.len() > HOLD_SLOT {
            return Err(DropReason::FragmentTooLarge);
        }
        let Some(i) = self.held_free.pop() else {
            return Err(DropReason::FragmentBufferFull);
        };
        let base = i as usize * (HOLD_SLOT + HEADROOM);
        self.held_bufs[base + HEADROOM..base + HEADROOM + data.len()].copy_from_slice(data);
        self.held[i as usize] = Held {
            key: k,
            ingress: Some(ingress),
            expires: now.saturating_add(self.timeout),
            off: HEADROOM,
            len: data.len(),
        };
        self.held_count += 1;
        Ok(())
    }

    pub fn drain_ready(&mut self, mut f: impl FnMut(&[u8], Verdict)) {
        while let Some((i, v)) = self.ready.pop_front() {
            let h = self.held[i as usize];
            let base = i as usize * (HOLD_SLOT + HEADROOM);
            f(&self.held_bufs[base + h.off..base + h.off + h.len], v);
            if (i as usize) < self.max_held {
                self.held_free.push(i);
            } else {
                self.out_free.push(i);
            }
        }
    }

    /// Free slots for egress fragments.
    pub(crate) fn out_room(&self) -> usize {
        self.out_free.len()
    }

    /// Queues a frame natgw made, the concatenation of `parts`, to leave with verdict `v`
    /// through `drain_ready`. False, queuing nothing: no free slot, or larger than a slot.
    pub(crate) fn push_out(&mut self, parts: &[&[u8]], v: Verdict) -> bool {
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len > HOLD_SLOT {
            return false;
        }
        let Some(i) = self.out_free.pop() else {
            return false;
        };
        let mut at = i as usize * (HOLD_SLOT + HEADROOM) + HEADROOM;
        for p in parts {
            self.held_bufs[at..at + p.len()].copy_from_slice(p);
            at += p.len();
        }
        self.held[i as usize] = Held {
            off: HEADROOM,
            len,
            ..Held::default()
        };
        self.ready.push_back((i, v));
        true
    }
}

impl FragTable {
    /// Remembers what the first fragment's translation was, and releases held fragments of the
    /// same datagram.
    pub(crate) fn record(&mut self, k: FragKey, action: FragAction, now: u32, counters: &Counters) {
        if self.insert_entry(k, action, now).is_err() {
            // Later fragments will be held and time out; the first one still goes through.
            counters.dropped(DropReason::FragmentTableFull);
            return;
        }
        if self.held_count == 0 {
            return;
        }
        for i in 0..self.max_held {
            let h = self.held[i];
            if h.ingress.is_none() || h.key != k {
                continue;
            }
            let base = i * (HOLD_SLOT + HEADROOM);
            let buf = &mut self.held_bufs[base..base + HOLD_SLOT + HEADROOM];
            let mut fr = Frame::new(buf, h.off, h.len);
            let v = match parse::parse(fr.data()) {
                Ok(m) => apply(&mut fr, &m, action),
                Err(_) => Verdict::Drop(DropReason::BadIpHeader),
            };
            let (off, len) = (fr.off, fr.len);
            self.held_count -= 1;
            // No longer waiting: neither released twice nor timed out (which would free the
            // slot while it is still queued in `ready`).
            self.held[i].ingress = None;
            match v {
                Verdict::Drop(r) => {
                    counters.dropped(r);
                    self.held_free.push(i as u32);
                }
                v => {
                    counters.fragments_translated.inc();
                    self.held[i].off = off;
                    self.held[i].len = len;
                    self.ready.push_back((i as u32, v));
                }
            }
        }
    }

    /// A non-first fragment: follow its datagram's entry, or hold it until the first arrives.
    pub(crate) fn later(
        &mut self,
        f: &mut Frame<'_>,
        m: &Meta,
        k: FragKey,
        now: u32,
        counters: &Counters,
    ) -> Verdict {
        match self.lookup(&k) {
            Some(FragAction::Handoff { core, ingress }) => {
                counters.handoffs.inc();
                Verdict::Handoff { core, ingress }
            }
            Some(a) => {
                let v = apply(f, m, a);
                match v {
                    Verdict::Drop(r) => {
                        counters.dropped(r);
                        Verdict::Drop(r)
                    }
                    v => {
                        counters.fragments_translated.inc();
                        v
                    }
                }
            }
            None => {
                let ingress = match k.scope {
                    SCOPE_OUTSIDE => Ingress::Outside,
                    SCOPE_HAIRPIN => Ingress::Hairpin,
                    _ => Ingress::Inside(0),
                };
                match self.hold(k, ingress, f.data(), now) {
                    Ok(()) => {
                        counters.fragments_held.inc();
                        Verdict::Held
                    }
                    Err(r) => {
                        counters.dropped(r);
                        Verdict::Drop(r)
                    }
                }
            }
        }
    }
}

/// Applies a recorded translation to a later fragment (IP header only: it has no ports).
fn apply(f: &mut Frame<'_>, m: &Meta, a: FragAction) -> Verdict {
    match a {
        FragAction::Handoff { core, ingress } => Verdict::Handoff { core, ingress },
        FragAction::Translate {
            src,
            dst,
            dec_ttl,
            vlan,
            next,
        } => {
            debug_assert_eq!(m.frag, Frag::Later);
            if dec_ttl && m.ttl <= 1 {
                return Verdict::Drop(DropReason::TtlExceeded);
            }
            let d = f.data_mut();
            let mut dec = dec_ttl;
            for (side, addr) in [(Side::Src, src), (Side::Dst, dst)] {
                if let Some(addr) = addr {
                    // A later fragment has no ports: the address (and the TTL, once).
                    Rewrite {
                        side,
                        addr,
                        port: 0,
                        dec_ttl: dec,
                    }
                    .apply(d, m);
                    dec = false;
                }
            }
            if dec {
                rewrite::dec_ttl(d, m);
            }
            if !f.set_vlan(vlan) {
                return Verdict::Drop(DropReason::NoHeadroom);
            }
            next
        }
    }
}
