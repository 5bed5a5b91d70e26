//! The lock-free neighbour table the workers read: IPv4 neighbour MACs per interface,
//! kept current by the management thread from the kernel's neighbour dumps and
//! notifications (`natgw_kernel::netlink`).

use std::collections::HashSet;
use std::fmt;
use std::net::Ipv4Addr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering, fence};

use natgw_kernel::netlink::{NUD_FAILED, NeighEvent, Neighbour};

/// Why [`NeighTable::update`] refused an entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NeighTableError {
    /// No free slot within the probe window of the entry's home slot.
    Full,
    /// ifindex 0 or above `i32::MAX`, which no kernel interface has.
    BadIfindex(u32),
}

impl fmt::Display for NeighTableError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NeighTableError::Full => f.write_str("neighbour table full"),
            NeighTableError::BadIfindex(i) => write!(f, "invalid ifindex {i}"),
        }
    }
}

impl std::error::Error for NeighTableError {}

const EMPTY: u64 = 0;
/// Reachable from no valid key: valid keys have an ifindex in 1..=i32::MAX.
const TOMBSTONE: u64 = u64::MAX;
/// Lookups give up after this many slots, bounding the cost of a miss in a table
/// littered with tombstones; inserts only use slots within the same window.
const PROBE_LIMIT: usize = 32;
/// A reader that sees a slot mid-write this many times in a row reports a miss rather
/// than spin behind a descheduled writer.
const READ_RETRIES: usize = 64;
/// Set in the MAC word of an entry whose resolution failed (the kernel reported
/// NUD_FAILED); the other bits hold the table generation of the failure. A MAC uses only
/// the low 48 bits, so no MAC has this bit.
const FAILED: u64 = 1 << 63;

/// What the table knows of a neighbour (see [`NeighTable::state`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NeighState {
    /// Usable, with this MAC.
    Usable([u8; 6]),
    /// The kernel's last word was NUD_FAILED, recorded at this table generation.
    Failed(u64),
    /// Not in the table (never seen, being resolved, removed), or momentarily unreadable.
    Unknown,
}

fn make_key(ifindex: u32, addr: Ipv4Addr) -> Option<u64> {
    (ifindex != 0 && ifindex <= i32::MAX as u32)
        .then(|| (u64::from(ifindex) << 32) | u64::from(u32::from(addr)))
}

fn pack_mac(mac: [u8; 6]) -> u64 {
    let mut b = [0u8; 8];
    b[..6].copy_from_slice(&mac);
    u64::from_le_bytes(b)
}

fn unpack_mac(v: u64) -> [u8; 6] {
    let b = v.to_le_bytes();
    [b[0], b[1], b[2], b[3], b[4], b[5]]
}

/// One entry guarded by a sequence lock: odd `seq` means a write is in progress.
/// Fields are atomics so that a racing read is merely discarded, never undefined.
#[repr(C, align(32))]
struct Slot {
    seq: AtomicU32,
    key: AtomicU64,
    mac: AtomicU64,
}

impl Slot {
    #[inline]
    fn read(&self) -> Option<(u64, u64)> {
        for _ in 0..READ_RETRIES {
            let s1 = self.seq.load(Ordering::Acquire);
            if s1 & 1 == 0 {
                let key = self.key.load(Ordering::Relaxed);
                let mac = self.mac.load(Ordering::Relaxed);
                fence(Ordering::Acquire);
                if self.seq.load(Ordering::Relaxed) == s1 {
                    return Some((key, mac));
                }
            }
            std::hint::spin_loop();
        }
        None
    }

    /// Only called with the table's writer lock held.
    fn write(&self, key: u64, mac: u64) {
        let s = self.seq.load(Ordering::Relaxed);
        self.seq.store(s.wrapping_add(1), Ordering::Relaxed);
        fence(Ordering::Release);
        self.key.store(key, Ordering::Relaxed);
        self.mac.store(mac, Ordering::Relaxed);
        self.seq.store(s.wrapping_add(2), Ordering::Release);
    }

    fn key_locked(&self) -> u64 {
        // Under the writer lock nothing else writes, so a relaxed load is exact.
        self.key.load(Ordering::Relaxed)
    }
}

/// IPv4 neighbour MACs that worker threads read without locks or allocation while the
/// management thread applies kernel notifications.
///
/// A fixed-size linear-probing hash table whose slots are individually seqlocked.
/// `lookup` is a handful of loads per probed slot. Writers serialise on a mutex that
/// readers never touch. Removal leaves a tombstone (reused by later inserts, and cleared
/// when it ends a probe chain), so entries never move and a reader cannot miss an
/// entry that stays put. A reader racing a writer may see the table as it was just
/// before or after the change.
pub struct NeighTable {
    slots: Box<[Slot]>,
    mask: usize,
    writer: Mutex<()>,
    len: AtomicUsize,
    generation: AtomicU64,
}

impl fmt::Debug for NeighTable {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NeighTable")
            .field("capacity", &self.slots.len())
            .field("len", &self.len())
            .field("generation", &self.generation())
            .finish()
    }
}

impl NeighTable {
    /// A table for about `entries` neighbours; it keeps at least half its slots free so
    /// probe chains stay short.
    pub fn new(entries: usize) -> Self {
        let slots = entries
            .saturating_mul(2)
            .clamp(16, 1 << 24)
            .next_power_of_two();
        Self {
            slots: (0..slots)
                .map(|_| Slot {
                    seq: AtomicU32::new(0),
                    key: AtomicU64::new(EMPTY),
                    mac: AtomicU64::new(0),
                })
                .collect(),
            mask: slots - 1,
            writer: Mutex::new(()),
            len: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
        }
    }

    #[inline]
    fn home(&self, key: u64) -> usize {
        // Fibonacci hashing: the multiply spreads ifindex and address bits into the
        // high half, which we fold down.
        (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32) as usize & self.mask
    }

    fn probe_len(&self) -> usize {
        PROBE_LIMIT.min(self.slots.len())
    }

    /// The MAC of a usable neighbour, or `None` (unknown, unresolved, or momentarily
    /// being rewritten). Lock-free and allocation-free.
    #[inline]
    pub fn lookup(&self, ifindex: u32, addr: Ipv4Addr) -> Option<[u8; 6]> {
        let key = make_key(ifindex, addr)?;
        let mut i = self.home(key);
        for _ in 0..self.probe_len() {
            let (k, mac) = self.slots.get(i)?.read()?;
            if k == key {
                return (mac & FAILED == 0).then(|| unpack_mac(mac));
            }
            if k == EMPTY {
                return None;
            }
            i = (i + 1) & self.mask;
        }
        None
    }

    /// Like [`lookup`](Self::lookup), but also tells a failed resolution from an unknown
    /// neighbour. For the workers' hold queue, not the per-packet path.
    pub fn state(&self, ifindex: u32, addr: Ipv4Addr) -> NeighState {
        let Some(key) = make_key(ifindex, addr) else {
            return NeighState::Unknown;
        };
        let mut i = self.home(key);
        for _ in 0..self.probe_len() {
            let Some((k, mac)) = self.slots.get(i).and_then(Slot::read) else {
                return NeighState::Unknown;
            };
            if k == key {
                return match mac & FAILED {
                    0 => NeighState::Usable(unpack_mac(mac)),
                    _ => NeighState::Failed(mac & !FAILED),
                };
            }
            if k == EMPTY {
                break;
            }
            i = (i + 1) & self.mask;
        }
        NeighState::Unknown
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ()> {
        // The guarded state lives in atomics that are consistent after every store, so
        // a writer that panicked leaves nothing to repair.
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records `n`: usable neighbours are inserted or updated; a FAILED one is kept as a
    /// failure (no MAC, stamped with a new generation) so workers holding frames for it
    /// can tell that its resolution failed; others (INCOMPLETE, no MAC) are removed so
    /// workers stop using a stale MAC.
    pub fn update(&self, n: &Neighbour) -> Result<(), NeighTableError> {
        let key = make_key(n.ifindex, n.addr).ok_or(NeighTableError::BadIfindex(n.ifindex))?;
        if n.state & NUD_FAILED != 0 {
            let _guard = self.lock();
            return self.insert_failed_locked(key);
        }
        let (true, Some(mac)) = (n.is_usable(), n.mac) else {
            self.remove(n.ifindex, n.addr);
            return Ok(());
        };
        let _guard = self.lock();
        self.insert_locked(key, pack_mac(mac))
    }

    fn insert_locked(&self, key: u64, mac: u64) -> Result<(), NeighTableError> {
        let mut i = self.home(key);
        let mut free = None;
        for _ in 0..self.probe_len() {
            let slot = &self.slots[i];
            let k = slot.key_locked();
            if k == key {
                if slot.mac.load(Ordering::Relaxed) != mac {
                    slot.write(key, mac);
                    self.generation.fetch_add(1, Ordering::Release);
                }
                return Ok(());
            }
            if k == TOMBSTONE && free.is_none() {
                free = Some(i);
            }
            if k == EMPTY {
                free = free.or(Some(i));
                break;
            }
            i = (i + 1) & self.mask;
        }
        let i = free.ok_or(NeighTableError::Full)?;
        self.slots[i].write(key, mac);
        self.len.fetch_add(1, Ordering::Relaxed);
        self.generation.fetch_add(1, Ordering::Release);
        Ok(())
    }

    /// Records a failed resolution of `key`: every report is a new failure, with a new
    /// generation.
    fn insert_failed_locked(&self, key: u64) -> Result<(), NeighTableError> {
        // insert_locked bumps the generation exactly once (the stored value is new: it
        // carries the new generation), so the stamp is the table's generation after it.
        let g = self.generation.load(Ordering::Relaxed).wrapping_add(1);
        self.insert_locked(key, FAILED | (g & !FAILED))?;
        debug_assert_eq!(self.generation.load(Ordering::Relaxed), g);
        Ok(())
    }

    fn find_locked(&self, key: u64) -> Option<usize> {
        let mut i = self.home(key);
        for _ in 0..self.probe_len() {
            match self.slots[i].key_locked() {
                k if k == key => return Some(i),
                EMPTY => return None,
                _ => i = (i + 1) & self.mask,
            }
        }
        None
    }

    /// Forgets `addr` on `ifindex`; returns whether it was present.
    pub fn remove(&self, ifindex: u32, addr: Ipv4Addr) -> bool {
        let Some(key) = make_key(ifindex, addr) else {
            return false;
        };
        let _guard = self.lock();
        self.remove_locked(key)
    }

    fn remove_locked(&self, key: u64) -> bool {
        let mut i = self.home(key);
        for _ in 0..self.probe_len() {
            let k = self.slots[i].key_locked();
            if k == key {
                self.slots[i].write(TOMBSTONE, 0);
                let left = self.len.fetch_sub(1, Ordering::Relaxed) - 1;
                self.generation.fetch_add(1, Ordering::Release);
                if left == 0 {
                    // No live key means no chain to preserve; this also recovers a
                    // table that was once completely full (no empty slot to anchor
                    // the cleanup below).
                    for s in &self.slots {
                        if s.key_locked() == TOMBSTONE {
                            s.write(EMPTY, 0);
                        }
                    }
                } else {
                    self.clear_tombstones_before((i + 1) & self.mask);
                }
                return true;
            }
            if k == EMPTY {
                return false;
            }
            i = (i + 1) & self.mask;
        }
        false
    }

    /// If slot `next` is empty, no probe chain continues through the tombstones just
    /// before it, so they can become empty again (keeping misses short).
    fn clear_tombstones_before(&self, next: usize) {
        if self.slots[next].key_locked() != EMPTY {
            return;
        }
        let mut i = next;
        for _ in 0..self.slots.len() {
            i = i.wrapping_sub(1) & self.mask;
            if self.slots[i].key_locked() != TOMBSTONE {
                break;
            }
            self.slots[i].write(EMPTY, 0);
        }
    }

    /// Applies one kernel notification.
    pub fn apply(&self, ev: &NeighEvent) -> Result<(), NeighTableError> {
        match ev {
            NeighEvent::New(n) => self.update(n),
            NeighEvent::Del(n) => {
                self.remove(n.ifindex, n.addr);
                Ok(())
            }
        }
    }

    /// Makes the table equal to the usable entries of a full dump (after start-up, or
    /// after notifications were lost). Reports `Full` if some entries did not fit; the
    /// others are still applied. A FAILED entry of the dump keeps a failure already
    /// recorded but records no new one: a dump does not say when it failed.
    pub fn sync(&self, dump: &[Neighbour]) -> Result<(), NeighTableError> {
        let _guard = self.lock();
        let mut keep = HashSet::with_capacity(dump.len());
        let mut result = Ok(());
        for n in dump {
            if n.state & NUD_FAILED != 0
                && let Some(key) = make_key(n.ifindex, n.addr)
            {
                match self.find_locked(key) {
                    None => {}
                    Some(i) if self.slots[i].mac.load(Ordering::Relaxed) & FAILED != 0 => {
                        keep.insert(key);
                    }
                    // Usable here, failed in the kernel: a failure we did not hear of.
                    Some(_) => {
                        keep.insert(key);
                        if let Err(e) = self.insert_failed_locked(key) {
                            result = Err(e);
                        }
                    }
                }
                continue;
            }
            if let (true, Some(mac), Some(key)) =
                (n.is_usable(), n.mac, make_key(n.ifindex, n.addr))
            {
                keep.insert(key);
                if let Err(e) = self.insert_locked(key, pack_mac(mac)) {
                    result = Err(e);
                }
            }
        }
        let stale: Vec<u64> = self
            .slots
            .iter()
            .map(Slot::key_locked)
            .filter(|&k| k != EMPTY && k != TOMBSTONE && !keep.contains(&k))
            .collect();
        for k in stale {
            self.remove_locked(k);
        }
        result
    }

    /// Number of entries.
    pub fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Incremented on every change, so a worker can tell whether MACs it cached per
    /// flow may be stale.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use natgw_kernel::netlink::{NUD_FAILED, NUD_REACHABLE};
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    const MAC: [u8; 6] = [2, 0, 0, 0xaa, 0xbb, 0xcc];

    fn neigh(ifindex: u32, last: u8, mac: [u8; 6]) -> Neighbour {
        Neighbour {
            ifindex,
            addr: Ipv4Addr::new(10, 0, 0, last),
            mac: Some(mac),
            state: NUD_REACHABLE,
        }
    }

    #[test]
    fn table_update_lookup_remove() {
        let t = NeighTable::new(8);
        let a = neigh(2, 1, MAC);
        assert_eq!(t.lookup(2, a.addr), None);
        t.update(&a).unwrap();
        assert_eq!(t.lookup(2, a.addr), Some(MAC));
        assert_eq!(t.lookup(3, a.addr), None, "keyed by interface too");
        let g = t.generation();
        t.update(&a).unwrap();
        assert_eq!(t.generation(), g, "an unchanged entry is not a change");
        let moved = [2, 0, 0, 1, 1, 1];
        t.update(&neigh(2, 1, moved)).unwrap();
        assert_eq!(t.lookup(2, a.addr), Some(moved));
        assert_eq!(t.len(), 1);
        assert!(t.remove(2, a.addr));
        assert!(!t.remove(2, a.addr));
        assert_eq!(t.lookup(2, a.addr), None);
        assert!(t.is_empty());
    }

    #[test]
    fn table_unusable_update_removes() {
        let t = NeighTable::new(8);
        let mut n = neigh(2, 1, MAC);
        t.update(&n).unwrap();
        n.state = NUD_FAILED;
        t.update(&n).unwrap();
        assert_eq!(t.lookup(2, n.addr), None);
        assert_eq!(
            t.update(&neigh(0, 1, MAC)),
            Err(NeighTableError::BadIfindex(0))
        );
    }

    /// A failed resolution is remembered with the generation it happened at, so that a
    /// worker can tell it from an older failure; it is never a usable MAC.
    #[test]
    fn table_records_failures_with_their_generation() {
        let t = NeighTable::new(8);
        let mut n = neigh(2, 1, MAC);
        n.mac = None;
        n.state = NUD_FAILED;
        assert_eq!(t.state(2, n.addr), NeighState::Unknown);
        t.update(&n).unwrap();
        let g1 = t.generation();
        assert_eq!(t.state(2, n.addr), NeighState::Failed(g1));
        assert_eq!(t.lookup(2, n.addr), None);
        // Failed again (the kernel tried once more): a new failure.
        t.update(&n).unwrap();
        let g2 = t.generation();
        assert!(g2 > g1);
        assert_eq!(t.state(2, n.addr), NeighState::Failed(g2));
        // Resolved at last.
        t.update(&neigh(2, 1, MAC)).unwrap();
        assert_eq!(t.state(2, n.addr), NeighState::Usable(MAC));
        assert_eq!(t.lookup(2, n.addr), Some(MAC));
        // A usable entry the kernel reports FAILED loses its MAC at once.
        t.update(&n).unwrap();
        assert_eq!(t.lookup(2, n.addr), None);
        assert_eq!(t.len(), 1);
        assert!(t.remove(2, n.addr));
        assert_eq!(t.state(2, n.addr), NeighState::Unknown);
    }

    /// A dump says a neighbour failed, not when: a known failure keeps its generation, a
    /// usable entry the dump calls failed becomes a failure, an unknown one stays unknown.
    #[test]
    fn table_sync_and_failures() {
        let t = NeighTable::new(16);
        let failed = |last| Neighbour {
            mac: None,
            state: NUD_FAILED,
            ..neigh(1, last, MAC)
        };
        t.update(&failed(1)).unwrap();
        let g1 = t.generation();
        t.update(&neigh(1, 2, MAC)).unwrap();
        t.sync(&[failed(1), failed(2), failed(3)]).unwrap();
        let at = |last| t.state(1, Ipv4Addr::new(10, 0, 0, last));
        assert_eq!(at(1), NeighState::Failed(g1));
        assert!(matches!(at(2), NeighState::Failed(g) if g > g1));
        assert_eq!(at(3), NeighState::Unknown);
        t.sync(&[]).unwrap();
        assert!(t.is_empty());
    }

    #[test]
    fn table_fills_up_and_recovers() {
        let t = NeighTable::new(8); // 16 slots
        let mut inserted = Vec::new();
        for i in 1..=40u8 {
            match t.update(&neigh(1, i, [2, 0, 0, 0, 0, i])) {
                Ok(()) => inserted.push(i),
                Err(e) => assert_eq!(e, NeighTableError::Full),
            }
        }
        assert_eq!(inserted.len(), 16);
        for &i in &inserted {
            assert_eq!(
                t.lookup(1, Ipv4Addr::new(10, 0, 0, i)),
                Some([2, 0, 0, 0, 0, i])
            );
        }
        // Removing everything and re-inserting works: tombstones are reused/cleared.
        for &i in &inserted {
            assert!(t.remove(1, Ipv4Addr::new(10, 0, 0, i)));
        }
        assert!(t.slots.iter().all(|s| s.key_locked() == EMPTY));
        for i in 100..108u8 {
            t.update(&neigh(1, i, MAC)).unwrap();
        }
        assert_eq!(t.len(), 8);
    }

    #[test]
    fn table_probe_chains_survive_removal() {
        let t = NeighTable::new(512);
        for i in 1..=250u8 {
            t.update(&neigh(1, i, [0, 0, 0, 0, 0, i])).unwrap();
        }
        for i in (1..=250u8).step_by(2) {
            assert!(t.remove(1, Ipv4Addr::new(10, 0, 0, i)));
        }
        for i in 1..=250u8 {
            let want = (i % 2 == 0).then_some([0, 0, 0, 0, 0, i]);
            assert_eq!(t.lookup(1, Ipv4Addr::new(10, 0, 0, i)), want, "{i}");
        }
    }

    #[test]
    fn table_sync_replaces_contents() {
        let t = NeighTable::new(16);
        t.update(&neigh(1, 1, MAC)).unwrap();
        t.update(&neigh(1, 2, MAC)).unwrap();
        let mut failed = neigh(1, 3, MAC);
        failed.state = NUD_FAILED;
        t.sync(&[neigh(1, 2, [9; 6]), neigh(1, 4, MAC), failed])
            .unwrap();
        assert_eq!(t.lookup(1, Ipv4Addr::new(10, 0, 0, 1)), None);
        assert_eq!(t.lookup(1, Ipv4Addr::new(10, 0, 0, 2)), Some([9; 6]));
        assert_eq!(t.lookup(1, Ipv4Addr::new(10, 0, 0, 3)), None);
        assert_eq!(t.lookup(1, Ipv4Addr::new(10, 0, 0, 4)), Some(MAC));
        assert_eq!(t.len(), 2);
    }

    /// Readers must never see a MAC belonging to another key or a half-written one: the
    /// writer stores MACs that encode their own address and a counter, and keeps moving
    /// entries between slots by removing and re-inserting them.
    #[test]
    fn table_reads_are_consistent_under_writes() {
        use std::sync::atomic::AtomicU64;
        let t = Arc::new(NeighTable::new(16));
        let stop = Arc::new(AtomicBool::new(false));
        let hits: Arc<[AtomicU64; 2]> = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
        let readers: Vec<_> = (0..2)
            .map(|r| {
                let (t, stop, hits) = (t.clone(), stop.clone(), hits.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        for i in 1..=24u8 {
                            if let Some(mac) = t.lookup(1, Ipv4Addr::new(10, 0, 0, i)) {
                                assert_eq!(mac[0], i, "MAC of another key");
                                assert_eq!(mac[1], !mac[2], "torn MAC");
                                assert_eq!(mac[3], !mac[4], "torn MAC");
                                hits[r].fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }
                })
            })
            .collect();
        // At least 100k rounds, and on a loaded machine as long as it takes (bounded) for
        // both readers to have been scheduled and read entries while the writer runs.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        let mut round = 0u32;
        while round < 100_000
            || (hits.iter().any(|h| h.load(Ordering::Relaxed) < 1000)
                && std::time::Instant::now() < deadline)
        {
            let i = (round % 24) as u8 + 1;
            let c = (round >> 5) as u8;
            let mac = [i, c, !c, c ^ 0x5a, !(c ^ 0x5a), 0];
            if round.is_multiple_of(3) {
                t.remove(1, Ipv4Addr::new(10, 0, 0, i));
            } else {
                let _ = t.update(&neigh(1, i, mac));
            }
            round = round.wrapping_add(1);
        }
        stop.store(true, Ordering::Relaxed);
        for r in readers {
            r.join().unwrap();
        }
        for h in hits.iter() {
            assert!(h.load(Ordering::Relaxed) > 0, "reader never hit an entry");
        }
    }
}
