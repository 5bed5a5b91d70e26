//! Fixed-capacity open-addressing hash map `K -> u32` for session lookup.
//!
//! Design constraints come from the data path: tens of millions of lookups per second
//! over 1M+ entries, no allocation after construction, and predictable O(1) cost.
//!
//! - Linear probing, load factor at most 1/2 (slots = next_pow2(2 * max_entries)), so
//!   probe sequences stay short and an empty slot always exists (lookups terminate).
//! - Keys live inline in the slot next to a 32-bit hash tag: the common lookup touches
//!   one cache line and rejects non-matching slots without comparing keys.
//! - Deletion is backward-shift (no tombstones), so a long-running table with heavy
//!   churn never degrades and never needs a rehash.
//!
//! Hashes are keyed by a process-wide random seed so that outside hosts cannot
//! craft flows that collide into one probe chain (hash flooding).

use core::mem::{MaybeUninit, size_of};
use core::sync::atomic::{AtomicU64, Ordering};

/// A key that computes its own 64-bit hash, normally with [`hash_words`].
///
/// The low bits select the home slot and the high 32 bits form the slot tag, so the
/// whole hash should be well mixed.
pub trait Key: Copy + Eq {
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
/// both the index bits (low) and the tag bits (high).
#[inline]
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
}

/// `tag == 0` marks an empty slot; `key` is initialised whenever `tag != 0`.
struct Slot<K> {
    tag: u32,
    val: u32,
    key: MaybeUninit<K>,
}

// Manual impls: derive would require `K: Clone` for `Clone` without knowing `K: Copy`.
impl<K: Copy> Clone for Slot<K> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<K: Copy> Copy for Slot<K> {}

#[inline(always)]
fn tag_of(hash: u64) -> u32 {
    // High bits: the low bits are (mostly) equal along one probe chain already.
    ((hash >> 32) as u32) | 1
}

/// Fixed-capacity map from flow keys to `u32` (typically a session index).
pub struct FlowTable<K: Key> {
    slots: Box<[Slot<K>]>,
    mask: usize,
    len: usize,
    max_len: usize,
}

impl<K: Key> FlowTable<K> {
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
            tag: 0,
            val: 0,
            key: MaybeUninit::uninit(),
        };
        FlowTable {
            slots: super::mem::table(n, empty).into_boxed_slice(),
            mask: n - 1,
            len: 0,
            max_len: max_entries,
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
    pub fn get(&self, k: &K) -> Option<u32> {
        self.get_hashed(k, k.hash())
    }

    /// Like [`get`](Self::get) with `hash == k.hash()` already computed, so a batch
    /// loop can hash and [`prefetch`](Self::prefetch) all keys before looking them up.
    #[inline]
    pub fn get_hashed(&self, k: &K, hash: u64) -> Option<u32> {
        self.find(k, hash).map(|i| self.slots[i].val)
    }

    /// Hint the CPU to load the home slot of `hash` into cache.
    #[inline]
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

    pub fn insert(&mut self, k: K, v: u32) -> Result<(), InsertError> {
        let hash = k.hash();
        let tag = tag_of(hash);
        let mut i = hash as usize & self.mask;
        loop {
            let s = &self.slots[i];
            if s.tag == 0 {
                break;
            }
            // SAFETY: tag != 0 means the key was written by insert.
            if s.tag == tag && unsafe { s.key.assume_init() } == k {
                return Err(InsertError::Exists);
            }
            i = (i + 1) & self.mask;
        }
        if self.len >= self.max_len {
            return Err(InsertError::Full);
        }
        self.slots[i] = Slot {
            tag,
            val: v,
            key: MaybeUninit::new(k),
        };
        self.len += 1;
        Ok(())
    }

    pub fn remove(&mut self, k: &K) -> Option<u32> {
        let mut hole = self.find(k, k.hash())?;
        let val = self.slots[hole].val;
        // Backward shift: pull later members of the cluster into the hole when that
        // does not move them before their home slot, so no probe chain is broken.
        let mut j = (hole + 1) & self.mask;
        loop {
            let s = self.slots[j];
            if s.tag == 0 {
                break;
            }
            // SAFETY: tag != 0 means the key was written by insert.
            let home = unsafe { s.key.assume_init() }.hash() as usize & self.mask;
            let dist_home = j.wrapping_sub(home) & self.mask;
            let dist_hole = j.wrapping_sub(hole) & self.mask;
            if dist_home >= dist_hole {
                self.slots[hole] = s;
                hole = j;
            }
            j = (j + 1) & self.mask;
        }
        self.slots[hole].tag = 0;
        self.len -= 1;
        Some(val)
    }

    /// Overwrites the value of an existing key; false (and no insert) if absent.
    pub fn set(&mut self, k: &K, v: u32) -> bool {
        match self.find(k, k.hash()) {
            Some(i) => {
                self.slots[i].val = v;
                true
            }
            None => false,
        }
    }

    /// Removes every entry, keeping the allocation.
    pub fn clear(&mut self) {
        for s in self.slots.iter_mut() {
            s.tag = 0;
        }
        self.len = 0;
    }

    /// All entries in slot order (control plane / diagnostics; O(slots)).
    pub fn iter(&self) -> impl Iterator<Item = (K, u32)> + '_ {
        self.slots
            .iter()
            .filter(|s| s.tag != 0)
            // SAFETY: tag != 0 means the key was written by insert.
            .map(|s| (unsafe { s.key.assume_init() }, s.val))
    }

    /// Bytes owned by the table (slot array plus the header).
    pub fn memory_bytes(&self) -> usize {
        self.slots.len() * size_of::<Slot<K>>() + size_of::<Self>()
    }

    #[inline(always)]
    fn find(&self, k: &K, hash: u64) -> Option<usize> {
        let tag = tag_of(hash);
        let mut i = hash as usize & self.mask;
        // Terminates: len <= max_entries < slots, so an empty slot always exists.
        loop {
            let s = &self.slots[i];
            if s.tag == 0 {
                return None;
            }
            // SAFETY: tag != 0 means the key was written by insert.
            if s.tag == tag && unsafe { s.key.assume_init_ref() } == k {
                return Some(i);
            }
            i = (i + 1) & self.mask;
        }
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
        fn hash(&self) -> u64 {
            hash_words(&[
                u64::from(self.a) << 32 | u64::from(self.b),
                u64::from(self.ports),
            ])
        }
    }

    /// Deliberately terrible hash: 5 home slots near the end of the array (forcing
    /// wrap-around) and one shared tag, so every lookup relies on key compares.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
    struct Weak(u16);
    impl Key for Weak {
        fn hash(&self) -> u64 {
            u64::from(self.0 % 5) + 13
        }
    }

    fn check_invariants<K: Key>(t: &FlowTable<K>) {
        let mut n = 0;
        for (i, s) in t.slots.iter().enumerate() {
            if s.tag == 0 {
                continue;
            }
            n += 1;
            let k = unsafe { s.key.assume_init() };
            let h = k.hash();
            assert_eq!(s.tag, tag_of(h));
            // No empty slot between home and position (otherwise unreachable).
            let mut j = h as usize & t.mask;
            while j != i {
                assert_ne!(t.slots[j].tag, 0, "hole in probe chain of slot {i}");
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
        assert!(t.slots.iter().all(|s| s.tag == 0));
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
        assert!(t.memory_bytes() >= 2048 * (8 + 12));
        assert!(t.memory_bytes() < 2048 * 32 + 1024);
        t.prefetch(12345);
    }
}
