//! The external addresses a core's sessions use, interned: a session's `in_tab` slot holds a
//! 16-bit index instead of the 32-bit address (see `InVal`), which leaves room in the 16-byte
//! value for the TCP receive point the RST check needs, so the slot stays 32 bytes.
//!
//! Owned by the store and independent of the `Rules`: sessions intern their address when they
//! are created and release it when they are removed, so a configuration reload, which may
//! drop or renumber pool addresses while sessions on them live on, changes nothing here.
//!
//! Bounded: `capacity` entries, at most 65535 (index `u16::MAX` is never handed out). Each
//! session holds one reference, so a table with as many entries as the store has session slots
//! can never be full; with more session slots than 65535 it fills only when one core's
//! sessions use more than 65535 distinct external addresses at once (pools are far smaller),
//! and then the new session is refused with `DropReason::ExtAddrTableFull`, counted.

use crate::nat::table::{FlowTable, Key, hash_words};

/// The most addresses one table interns.
pub const MAX: usize = u16::MAX as usize;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Addr(u32);

impl Key for Addr {
    /// The limited broadcast address is never an external address (`rules::martian`).
    const EMPTY: Addr = Addr(u32::MAX);
    #[inline(always)]
    fn hash(&self) -> u64 {
        hash_words(&[self.0 as u64])
    }
}

pub(crate) struct ExtAddrs {
    /// By index: the fast path reads this array alone (4 bytes an address, so a pool of 64
    /// addresses is 4 cache lines, hot). One entry for every `u16`, whatever the capacity,
    /// so that the fast path's read needs no bounds check (256 KiB; at the default session
    /// capacity the table has that many entries anyway).
    addrs: Box<[u32; 1 << 16]>,
    /// By index: sessions holding the address; 0 for a free index.
    refs: Box<[u32]>,
    index: FlowTable<Addr>,
    free: Vec<u16>,
}

impl ExtAddrs {
    /// A table for a store of `sessions` session slots.
    pub fn new(sessions: usize) -> ExtAddrs {
        let n = Self::entries(sessions);
        let addrs: Box<[u32; 1 << 16]> = vec![0u32; 1 << 16]
            .into_boxed_slice()
            .try_into()
            .expect("1 << 16 entries");
        ExtAddrs {
            addrs,
            refs: vec![0; n].into_boxed_slice(),
            index: FlowTable::with_capacity(n),
            free: (0..n as u16).rev().collect(),
        }
    }

    fn entries(sessions: usize) -> usize {
        sessions.clamp(1, MAX)
    }

    /// What `new(sessions).memory_bytes()` is, computed.
    pub fn bytes_for(sessions: usize) -> usize {
        let n = Self::entries(sessions);
        (1 << 16) * 4 + n * (4 + 2) + FlowTable::<Addr>::bytes_for(n)
    }

    pub fn memory_bytes(&self) -> usize {
        self.addrs.len() * 4
            + self.refs.len() * 4
            + self.free.capacity() * 2
            + self.index.memory_bytes()
    }

    /// One more reference to `addr`: its index, or None if the table is full.
    pub fn intern(&mut self, addr: u32) -> Option<u16> {
        let k = Addr(addr);
        if let Some(i) = self.index.get(&k) {
            self.refs[i as usize] += 1;
            return Some(i as u16);
        }
        let i = self.free.pop()?;
        if self.index.insert(k, u32::from(i)).is_err() {
            // Cannot happen (the index is sized for every entry); refuse rather than lose it.
            self.free.push(i);
            return None;
        }
        self.addrs[i as usize] = addr;
        self.refs[i as usize] = 1;
        Some(i)
    }

    /// Gives back one reference; the last frees the index.
    pub fn release(&mut self, i: u16) {
        let r = &mut self.refs[i as usize];
        debug_assert!(*r > 0, "release of a free external address index");
        if *r > 1 {
            *r -= 1;
            return;
        }
        *r = 0;
        self.index.remove(&Addr(self.addrs[i as usize]));
        self.free.push(i);
    }

    /// The address at an index a live session holds (any `u16` is in bounds).
    #[inline(always)]
    pub fn addr(&self, i: u16) -> u32 {
        self.addrs[i as usize]
    }

    /// Addresses interned now (tests).
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.index.len()
    }

    /// (index, address, references) of every interned address (tests).
    #[cfg(test)]
    pub fn entries_in_use(&self) -> Vec<(u16, u32, u32)> {
        (0..self.refs.len())
            .filter(|&i| self.refs[i] > 0)
            .map(|i| (i as u16, self.addrs[i], self.refs[i]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interns_counts_and_frees() {
        let mut t = ExtAddrs::new(4);
        let a = t.intern(0xc000_0201).unwrap();
        assert_eq!(t.intern(0xc000_0201), Some(a));
        let b = t.intern(0xc000_0202).unwrap();
        assert_ne!(a, b);
        assert_eq!(
            (t.addr(a), t.addr(b), t.len()),
            (0xc000_0201, 0xc000_0202, 2)
        );
        t.release(a);
        assert_eq!(t.len(), 2, "one reference left");
        t.release(a);
        assert_eq!(t.len(), 1);
        // Full: as many entries as session slots.
        for x in 0..3 {
            t.intern(0x0a00_0000 + x).unwrap();
        }
        assert_eq!(t.intern(0x0b00_0000), None);
        assert_eq!(
            t.intern(0xc000_0202),
            Some(b),
            "an interned address still is"
        );
        t.release(b);
        t.release(b);
        assert!(t.intern(0x0b00_0000).is_some(), "a freed index is reused");
        assert_eq!(t.memory_bytes(), ExtAddrs::bytes_for(4));
    }

    #[test]
    fn bounded_by_the_index_width() {
        let t = ExtAddrs::new(1 << 26);
        assert_eq!(t.refs.len(), MAX);
        assert!(t.free.iter().all(|&i| i != u16::MAX));
        assert_eq!(t.memory_bytes(), ExtAddrs::bytes_for(1 << 26));
    }
}
