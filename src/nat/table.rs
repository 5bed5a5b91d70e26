//! Fixed-capacity open-addressing hash map `K -> V` for session lookup.
//!
//! Design constraints come from the data path: tens of millions of lookups per second
//! over 1M+ entries, no allocation after construction, and predictable O(1) cost.
//!
//! - Linear probing, load factor at most 1/2 (slots = next_pow2(2 * max_entries)), so
//!   probe sequences stay short and an empty slot always exists (lookups terminate).
//! - Key and value live inline in the slot and nothing else does: the session tables keep
//!   a 16-byte key next to 16 bytes of fast-path data, so a 32-byte slot never straddles a
//!   cache line and an established packet touches one line of memory (see `engine.rs`).
//!   An empty slot holds `Key::EMPTY`, a value no real key takes, so no tag is needed.
//! - Deletion is backward-shift (no tombstones), so a long-running table with heavy
//!   churn never degrades and never needs a rehash.
//!
//! Hashes are keyed by a process-wide random seed so that outside hosts cannot
//! craft flows that collide into one probe chain (hash flooding).

use core::mem::size_of;
use core::sync::atomic::{AtomicU64, Ordering};

/// A key that computes its own 64-bit hash, normally with [`hash_words`].
///
/// The low bits select the home slot, so the whole hash should be well mixed.
pub trait Key: Copy + Eq {
    /// Marks an empty slot: a value no real key takes. Looking it up finds nothing and
    /// inserting it is refused.
    const EMPTY: Self;
    fn hash(&self) -> u64;
}

/// 0 means "not chosen yet"; the stored value is a derived key, never 0 once set.
static SEED: AtomicU64 = AtomicU64::new(0);

const P0: u64 = 0xa076_1d64_78bd_642f;
const P1: u64 = 0xe703_7ed1_a0b4_28db;
const P2: u64 = 0x8ebc_6af0_9c88_c6e3;

#[inline(always)]
fn folded_mul(a: u64, b: u64) -> u64 {
    let t = u128::from(a) * u128::from(b);
    (t as u64) ^ ((t >> 64) as u64)
}

fn derive(seed: u64) -> u64 {
    folded_mul(seed ^ P0, P2).max(1)
}

#[cold]
fn init_seed() -> u64 {
    let s = derive(crate::nat::rng::entropy_u64());
    match SEED.compare_exchange(0, s, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => s,
        Err(existing) => existing,
    }
}

#[inline(always)]
fn seed() -> u64 {
    let s = SEED.load(Ordering::Relaxed);
    if s != 0 { s } else { init_seed() }
}

/// Fix the hash seed, for deterministic tests and benchmarks.
///
/// The seed can only be chosen once per process (here, or randomly by the first
/// hash): changing it later would silently strand every entry of every populated
/// table. Returns true if the process now uses `seed`, false if a different seed
/// was already in effect.
pub fn set_seed(seed: u64) -> bool {
    let s = derive(seed);
    match SEED.compare_exchange(0, s, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => true,
        Err(existing) => existing == s,
    }
}

/// Seeded 64-bit hash of a few words (wyhash-style folded multiply).
///
/// Each word is absorbed by one 64x64->128 multiply whose halves are folded, which
/// spreads every input bit over the whole state; a final keyed multiply avalanches
/// the index bits.
#[inline(always)]
pub fn hash_words(words: &[u64]) -> u64 {
    let s = seed();
    let mut h = s ^ (words.len() as u64).wrapping_mul(P0);
    for &w in words {
        h = folded_mul(h ^ w, P1);
    }
    folded_mul(h ^ P2, s ^ P0)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InsertError {
    /// `capacity()` entries are already stored.
    Full,
    /// The key is already present; its value was not changed.
    Exists,
    /// The key is `Key::EMPTY`, which marks empty slots.
    Reserved,
}

#[derive(Clone, Copy)]
struct Slot<K, V> {
    key: K,
    val: V,
}

/// Fixed-capacity map from flow keys to small `Copy` values (by default a `u32` index).
pub struct FlowTable<K: Key, V: Copy + Default = u32> {
    slots: super::mem::Table<Slot<K, V>>,
    mask: usize,
    len: usize,
    max_len: usize,
    /// Bumped by every insert, remove and clear (see [`epoch`](Self::epoch)).
    epoch: u32,
}

impl<K: Key, V: Copy + Default> FlowTable<K, V> {
    /// Allocates `next_power_of_two(2 * max_entries).max(16)` slots up front (and
    /// touches them, so no page faults happen later on the data path).
    ///
    /// Panics only if the slot array size overflows `usize`, like `Vec::with_capacity`.
    pub fn with_capacity(max_entries: usize) -> Self {
        let n = max_entries
            .checked_mul(2)
            .and_then(usize::checked_next_power_of_two)
            .expect("FlowTable capacity overflow")
            .max(16);
        let empty = Slot {
            key: K::EMPTY,
            val: V::default(),
        };
        FlowTable {
            slots: super::mem::table(n, empty),
            mask: n - 1,
            len: 0,
            max_len: max_entries,
            epoch: 0,
        }
    }

    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    #[inline]
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Maximum number of entries (not the number of slots).
    #[inline]
    pub fn capacity(&self) -> usize {
        self.max_len
    }

    #[inline]
    pub fn get(&self, k: &K) -> Option<V> {
        self.get_hashed(k, k.hash())
    }

    /// Like [`get`](Self::get) with `hash == k.hash()` already computed, so a batch
    /// loop can hash and [`prefetch`](Self::prefetch) all keys before looking them up.
    #[inline]
    pub fn get_hashed(&self, k: &K, hash: u64) -> Option<V> {
        self.find(k, hash).map(|i| self.slots[i].val)
    }

    #[inline]
    pub fn get_mut(&mut self, k: &K) -> Option<&mut V> {
        let i = self.find(k, k.hash())?;
        Some(&mut self.slots[i].val)
    }

    /// Where `k` is stored. A position stays valid until the next insert or remove (which
    /// may move entries), so a holder re-checks [`key_at`](Self::key_at) before using it.
    #[inline(always)]
    pub fn find(&self, k: &K, hash: u64) -> Option<usize> {
        if *k == K::EMPTY {
            return None;
        }
        let mut i = hash as usize & self.mask;
        // Terminates: len <= max_entries < slots, so an empty slot always exists.
        loop {
            let s = &self.slots[i];
            if s.key == *k {
                return Some(i);
            }
            if s.key == K::EMPTY {
                return None;
            }
            i = (i + 1) & self.mask;
        }
    }

    /// Changes whenever entries may have moved. A position from [`find`](Self::find) is
    /// still the key's position while the epoch is unchanged (fewer than 2^32 changes
    /// apart, which a batch never comes near), so a holder can skip the re-check.
    #[inline(always)]
    pub fn epoch(&self) -> u32 {
        self.epoch
    }

    /// The key at a position from [`find`](Self::find) (`Key::EMPTY` if that slot is free).
    #[inline(always)]
    pub fn key_at(&self, pos: usize) -> &K {
        &self.slots[pos & self.mask].key
    }

    #[inline(always)]
    pub fn val_at(&self, pos: usize) -> &V {
        &self.slots[pos & self.mask].val
    }

    #[inline(always)]
    pub fn val_at_mut(&mut self, pos: usize) -> &mut V {
        &mut self.slots[pos & self.mask].val
    }

    /// Hint the CPU to load the home slot of `hash` into cache.
    #[inline(always)]
    pub fn prefetch(&self, hash: u64) {
        #[cfg(target_arch = "x86_64")]
        {
            use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
            let p = self.slots.as_ptr().wrapping_add(hash as usize & self.mask);
            // SAFETY: prefetch is only a hint and never faults; SSE is baseline on x86_64.
            unsafe { _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>()) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = hash;
    }

    pub fn insert(&mut self, k: K, v: V) -> Result<(), InsertError> {
        if k == K::EMPTY {
            return Err(InsertError::Reserved);
        }
        let mut i = k.hash() as usize & self.mask;
        loop {
            let s = &self.slots[i];
            if s.key == K::EMPTY {
                break;
            }
            if s.key == k {
                return Err(InsertError::Exists);
            }
            i = (i + 1) & self.mask;
        }
        if self.len >= self.max_len {
            return Err(InsertError::Full);
        }
        self.slots[i] = Slot { key: k, val: v };
        self.len += 1;
        self.epoch = self.epoch.wrapping_add(1);
        Ok(())
    }

    pub fn remove(&mut self, k: &K) -> Option<V> {
        let mut hole = self.find(k, k.hash())?;
        let val = self.slots[hole].val;
        // Backward shift: pull later members of the cluster into the hole when that
        // does not move them before their home slot, so no probe chain is broken.
        let mut j = (hole + 1) & self.mask;
        loop {
            let s = self.slots[j];
            if s.key == K::EMPTY {
                break;
            }
            let home = s.key.hash() as usize & self.mask;
            let dist_home = j.wrapping_sub(home) & self.mask;
            let dist_hole = j.wrapping_sub(hole) & self.mask;
            if dist_home >= dist_hole {
                self.slots[hole] = s;
                hole = j;
            }
            j = (j + 1) & self.mask;
        }
        self.slots[hole].key = K::EMPTY;
        self.len -= 1;
        self.epoch = self.epoch.wrapping_add(1);
        Some(val)
    }

    /// Overwrites the value of an existing key; false (and no insert) if absent.
    pub fn set(&mut self, k: &K, v: V) -> bool {
        match self.get_mut(k) {
            Some(x) => {
                *x = v;
                true
            }
            None => false,
        }
    }

    /// Removes every entry, keeping the allocation.
    pub fn clear(&mut self) {
        for s in self.slots.iter_mut() {
            s.key = K::EMPTY;
        }
        self.len = 0;
        self.epoch = self.epoch.wrapping_add(1);
    }

    /// All entries in slot order (control plane / diagnostics; O(slots)).
    pub fn iter(&self) -> impl Iterator<Item = (K, V)> + '_ {
        self.slots
            .iter()
            .filter(|s| s.key != K::EMPTY)
            .map(|s| (s.key, s.val))
    }

    /// Bytes owned by the table (slot array plus the header).
    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * size_of::<Slot<K, V>>() + size_of::<Self>()
    }

    /// Bytes of one slot (for the memory documentation and tests).
    pub const SLOT_BYTES: usize = size_of::<Slot<K, V>>();

    /// What `with_capacity(max_entries).memory_bytes()` is, without allocating (saturating:
    /// for a size check, not an allocation).
    pub fn bytes_for(max_entries: usize) -> usize {
        let n = max_entries
            .saturating_mul(2)
            .checked_next_power_of_two()
            .unwrap_or(usize::MAX)
            .max(16);
        n.saturating_mul(Self::SLOT_BYTES)
            .saturating_add(size_of::<Self>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    /// Realistic key: hashed with the seeded mixer.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    struct Flow {
        a: u32,
        b: u32,
        ports: u32,
    }
    impl Key for Flow {
        const EMPTY: Flow = Flow {
            a: u32::MAX,
            b: u32::MAX,
            ports: u32::MAX,
        };
        fn hash(&self) -> u64 {
            hash_words(&[
                u64::from(self.a) << 32 | u64::from(self.b),
                u64::from(self.ports),
            ])
        }
    }

    /// Deliberately terrible hash: 5 home slots near the end of the array (forcing
    /// wrap-around), so every lookup walks a long probe chain.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    struct Weak(u16);
    impl Key for Weak {
        const EMPTY: Weak = Weak(u16::MAX);
        fn hash(&self) -> u64 {
            u64::from(self.0 % 5) + 13
        }
    }

    fn check_invariants<K: Key>(t: &FlowTable<K>) {
        let mut n = 0;
        for (i, s) in t.slots.iter().enumerate() {
            if s.key == K::EMPTY {
                continue;
            }
            n += 1;
            let h = s.key.hash();
            // No empty slot between home and position (otherwise unreachable).
            let mut j = h as usize & t.mask;
            while j != i {
                assert!(
                    t.slots[j].key != K::EMPTY,
                    "hole in probe chain of slot {i}"
                );
                j = (j + 1) & t.mask;
            }
        }
        assert_eq!(n, t.len());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Insert(u16, u32),
        Remove(u16),
        Get(u16),
        Set(u16, u32),
    }

    fn op(keys: u16) -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..keys, any::<u32>()).prop_map(|(k, v)| Op::Insert(k, v)),
            2 => (0..keys).prop_map(Op::Remove),
            2 => (0..keys).prop_map(Op::Get),
            1 => (0..keys, any::<u32>()).prop_map(|(k, v)| Op::Set(k, v)),
        ]
    }

    fn run_model<K: Key + std::hash::Hash + std::fmt::Debug>(
        cap: usize,
        ops: &[Op],
        mk: impl Fn(u16) -> K,
    ) {
        let mut t = FlowTable::<K>::with_capacity(cap);
        let mut m: HashMap<K, u32> = HashMap::new();
        for o in ops {
            match *o {
                Op::Insert(k, v) => {
                    let k = mk(k);
                    let want = if m.contains_key(&k) {
                        Err(InsertError::Exists)
                    } else if m.len() >= cap {
                        Err(InsertError::Full)
                    } else {
                        m.insert(k, v);
                        Ok(())
                    };
                    assert_eq!(t.insert(k, v), want);
                }
                Op::Remove(k) => assert_eq!(t.remove(&mk(k)), m.remove(&mk(k))),
                Op::Get(k) => assert_eq!(t.get(&mk(k)), m.get(&mk(k)).copied()),
                Op::Set(k, v) => {
                    let k = mk(k);
                    let want = m.get_mut(&k).map(|x| *x = v).is_some();
                    assert_eq!(t.set(&k, v), want);
                }
            }
            assert_eq!(t.len(), m.len());
        }
        check_invariants(&t);
        for (k, v) in &m {
            assert_eq!(t.get(k), Some(*v));
            assert_eq!(t.get_hashed(k, Key::hash(k)), Some(*v));
        }
        let mut dumped: Vec<(K, u32)> = t.iter().collect();
        assert_eq!(dumped.len(), m.len());
        dumped.retain(|(k, v)| m.get(k) != Some(v));
        assert!(dumped.is_empty());
    }

    proptest! {
        #[test]
        fn matches_hashmap_weak_hash(cap in 1usize..12, ops in prop::collection::vec(op(24), 0..300)) {
            run_model(cap, &ops, Weak);
        }

        #[test]
        fn matches_hashmap_real_hash(cap in 1usize..200, ops in prop::collection::vec(op(300), 0..600)) {
            run_model(cap, &ops, |k| Flow { a: u32::from(k) * 7, b: 1, ports: u32::from(k % 3) });
        }
    }

    #[test]
    fn full_table() {
        let mut t = FlowTable::with_capacity(100);
        assert_eq!(t.capacity(), 100);
        assert_eq!(t.slots.len(), 256);
        for i in 0..100 {
            t.insert(
                Flow {
                    a: i,
                    b: 0,
                    ports: 0,
                },
                i,
            )
            .unwrap();
        }
        assert_eq!(
            t.insert(
                Flow {
                    a: 1000,
                    b: 0,
                    ports: 0
                },
                0
            ),
            Err(InsertError::Full)
        );
        // An existing key is reported as such even when full.
        assert_eq!(
            t.insert(
                Flow {
                    a: 5,
                    b: 0,
                    ports: 0
                },
                0
            ),
            Err(InsertError::Exists)
        );
        assert_eq!(
            t.get(&Flow {
                a: 1000,
                b: 0,
                ports: 0
            }),
            None
        );
        assert_eq!(
            t.remove(&Flow {
                a: 5,
                b: 0,
                ports: 0
            }),
            Some(5)
        );
        t.insert(
            Flow {
                a: 1000,
                b: 0,
                ports: 0,
            },
            7,
        )
        .unwrap();
        assert_eq!(
            t.get(&Flow {
                a: 1000,
                b: 0,
                ports: 0
            }),
            Some(7)
        );
        for i in (0..100).filter(|&i| i != 5) {
            assert_eq!(
                t.get(&Flow {
                    a: i,
                    b: 0,
                    ports: 0
                }),
                Some(i)
            );
        }
        check_invariants(&t);
    }

    #[test]
    fn empty_key_is_reserved() {
        let mut t = FlowTable::with_capacity(4);
        assert_eq!(t.insert(Weak::EMPTY, 1), Err(InsertError::Reserved));
        assert_eq!(t.get(&Weak::EMPTY), None);
        t.insert(Weak(1), 1).unwrap();
        // Every free slot holds EMPTY: looking it up must still find nothing.
        assert_eq!(t.get(&Weak::EMPTY), None);
        assert_eq!(t.remove(&Weak::EMPTY), None);
        assert_eq!(t.len(), 1);
    }

    /// A position found before an unchanged epoch still holds the key; any change that can
    /// move entries (a remove shifts its cluster back) changes the epoch.
    #[test]
    fn epoch_tracks_every_change_that_can_move_entries() {
        let mut t = FlowTable::with_capacity(8);
        // Weak keys 1, 6 and 11 share a home slot: one cluster.
        for k in [1, 6, 11] {
            t.insert(Weak(k), k.into()).unwrap();
        }
        let e = t.epoch();
        let pos = t.find(&Weak(11), Weak(11).hash()).unwrap();
        *t.val_at_mut(pos) += 1;
        assert_eq!(t.get(&Weak(6)), Some(6));
        assert_eq!(t.insert(Weak(6), 0), Err(InsertError::Exists));
        assert_eq!(t.remove(&Weak(2)), None);
        assert_eq!(
            t.epoch(),
            e,
            "reads, value updates and refused changes move nothing"
        );
        assert_eq!(*t.key_at(pos), Weak(11));
        t.remove(&Weak(1)).unwrap();
        assert_ne!(t.epoch(), e);
        assert_ne!(
            *t.key_at(pos),
            Weak(11),
            "the remove shifted the cluster back"
        );
        let e = t.epoch();
        t.insert(Weak(2), 2).unwrap();
        assert_ne!(t.epoch(), e);
        let e = t.epoch();
        t.clear();
        assert_ne!(t.epoch(), e);
    }

    #[test]
    fn zero_capacity_refuses_inserts() {
        let mut t = FlowTable::with_capacity(0);
        assert_eq!(t.insert(Weak(1), 1), Err(InsertError::Full));
        assert_eq!(t.get(&Weak(1)), None);
        assert_eq!(t.remove(&Weak(1)), None);
        assert!(t.is_empty());
    }

    #[test]
    fn remove_keeps_cluster_reachable() {
        // 8 entries share 5 homes 13..=17 in a 16-slot table, so the cluster wraps
        // past slot 15. Remove each key in turn from a fresh table and check that
        // every other key is still found.
        for victim in 0..8u16 {
            let mut t = FlowTable::with_capacity(8);
            for k in 0..8u16 {
                t.insert(Weak(k), u32::from(k)).unwrap();
            }
            assert_eq!(t.remove(&Weak(victim)), Some(u32::from(victim)));
            assert_eq!(t.remove(&Weak(victim)), None);
            for k in (0..8u16).filter(|&k| k != victim) {
                assert_eq!(t.get(&Weak(k)), Some(u32::from(k)), "victim {victim}");
            }
            check_invariants(&t);
        }
    }

    #[test]
    fn churn_does_not_degrade() {
        // Many insert/remove cycles must not accumulate state (no tombstones).
        let mut t = FlowTable::with_capacity(1000);
        for round in 0..50u32 {
            for i in 0..1000 {
                t.insert(
                    Flow {
                        a: round,
                        b: i,
                        ports: 0,
                    },
                    i,
                )
                .unwrap();
            }
            for i in 0..1000 {
                assert_eq!(
                    t.remove(&Flow {
                        a: round,
                        b: i,
                        ports: 0
                    }),
                    Some(i)
                );
            }
        }
        assert!(t.is_empty());
        assert!(t.slots.iter().all(|s| s.key == Flow::EMPTY));
    }

    #[test]
    fn hash_words_mixes() {
        let a = hash_words(&[1, 2]);
        assert_eq!(a, hash_words(&[1, 2]));
        assert_ne!(a, hash_words(&[2, 1]));
        assert_ne!(a, hash_words(&[1, 2, 0]));
        assert_ne!(hash_words(&[0]), hash_words(&[0, 0]));
        // Flipping one input bit flips about half the output bits.
        let mut total = 0;
        for bit in 0..64 {
            total += (hash_words(&[0, 0]) ^ hash_words(&[1 << bit, 0])).count_ones();
            total += (hash_words(&[0, 0]) ^ hash_words(&[0, 1 << bit])).count_ones();
        }
        let avg = f64::from(total) / 128.0;
        assert!((26.0..38.0).contains(&avg), "avg flipped bits {avg}");
        // Sequential keys spread over the low (index) bits.
        let mut buckets = [0u32; 64];
        for i in 0..64_000u64 {
            buckets[(hash_words(&[i]) & 63) as usize] += 1;
        }
        assert!(
            buckets.iter().all(|&b| (800..1200).contains(&b)),
            "{buckets:?}"
        );
    }

    #[test]
    fn seed_is_set_once() {
        let _ = hash_words(&[1]);
        let current = SEED.load(Ordering::Relaxed);
        assert_ne!(current, 0);
        // Some seed is already in effect; a different one must be refused.
        let other = (0..4u64).find(|&s| derive(s) != current).unwrap();
        assert!(!set_seed(other));
        assert_eq!(SEED.load(Ordering::Relaxed), current);
    }

    #[test]
    fn memory_accounting() {
        let t = FlowTable::<Flow>::with_capacity(1000);
        assert_eq!(t.slots.len(), 2048);
        assert_eq!(FlowTable::<Flow>::SLOT_BYTES, 16);
        assert!(t.memory_bytes() >= 2048 * 16);
        assert!(t.memory_bytes() < 2048 * 16 + 1024);
        t.prefetch(12345);
    }
}
