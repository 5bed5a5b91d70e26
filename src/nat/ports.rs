//! Per-core external port allocator (one per worker, per realm).
//!
//! Every worker owns a disjoint slice of each external address's port space (a
//! [`Partition`]), so allocation needs no locks and return traffic can be steered to
//! the owning core. Behaviour follows RFC 4787 / 6056 / 6888, in the bounded style of
//! Linux `nf_nat_core.c`:
//!
//! - **Port classes** (RFC 4787 REQ-3). TCP/UDP inside ports `< 1024` get an external
//!   port in `1..=1023`, other inside ports get one in the configured `first..=last`
//!   (`first` is clamped to `>= 1024`). When this core has no free low port (with many
//!   cores some own none at all), a low inside port falls back to the high range: the
//!   RFC only RECOMMENDs class preservation, and failing e.g. NTP (source port 123)
//!   outright is worse. The reverse never happens, so an unprivileged inside port is
//!   never mapped to a privileged external one. [`PortAllocator::set_low_fallback`]
//!   turns the fallback off.
//! - **ICMP** echo identifiers have no classes: they use `1..=65535` (0 is avoided so
//!   it can never be confused with "no port"), independent of the configured range,
//!   because identifiers carry no privilege meaning and the whole space reduces
//!   exhaustion.
//! - **Selection** (RFC 6056). `PreserveThenRandom` keeps the inside port when this core
//!   owns it, it is in the right class and it is free; otherwise (and always for
//!   `Random`) a random start position is drawn and the class bitmap is scanned forward,
//!   word at a time, wrapping once. Cost is bounded by one pass over the bitmap
//!   (`owned / 64` words), and the result never depends on previous allocations.
//! - **Hold** (RFC 6888 REQ-8). Released ports stay unavailable for `hold_secs` in a
//!   preallocated FIFO; [`PortAllocator::tick`] frees expired ones with bounded work.
//! - **Static reservations** are permanent until [`PortAllocator::unreserve`].
//!
//! # Memory cost
//!
//! With `L`, `H`, `I` the number of ports this core owns in `1..=1023`, in
//! `first..=last` and in `1..=65535`, `w(x) = ceil(x / 64)`, `A = n_addrs`,
//! `C = hold_capacity` and `R` static reservations, the allocator uses about
//!
//! ```text
//! 2 * (L + H + I)                              sorted owned-port lists (shared by all addresses)
//! + A * 16 * (2 * w(L) + 2 * w(H) + w(I))      in-use and on-hold bitmaps (TCP, UDP, ICMP)
//! + A * 20                                     per-class counters
//! + 12 * C + 8 * R                             hold FIFO and reservations
//! ```
//!
//! bytes. One core with range `1024..=65535` costs about 48 KiB per address plus
//! ~260 KiB of lists; `k` cores split both terms by roughly `k`.
//! [`PortAllocator::memory_bytes`] reports the exact figure.

use crate::nat::rng::Rng;
use crate::packet::ipv4::Protocol;
use core::mem::size_of;

/// Index of a protocol in the allocator's per-protocol state: TCP and UDP have port
/// classes, ICMP query ids one list; other protocols have no ports to allocate.
const TCP: usize = 0;
const UDP: usize = 1;
const ICMP: usize = 2;

#[inline(always)]
fn index(p: Protocol) -> Option<usize> {
    match p {
        Protocol::TCP => Some(TCP),
        Protocol::UDP => Some(UDP),
        Protocol::ICMP => Some(ICMP),
        _ => None,
    }
}

/// Which core owns which port. Must be the same function on every core so that the
/// per-core slices are disjoint and cover the whole space.
pub trait Partition: Send + Sync {
    fn cores(&self) -> usize;
    fn owner(&self, port: u16) -> usize;
}

/// `owner = (port / block) % cores`: blocks keep one core's ports clustered (and keep
/// port parity usable within a block) while spreading every range over all cores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlockPartition {
    pub cores: usize,
    pub block: u16,
}

impl BlockPartition {
    pub const DEFAULT_BLOCK: u16 = 64;

    pub fn new(cores: usize) -> Self {
        BlockPartition {
            cores,
            block: Self::DEFAULT_BLOCK,
        }
    }
}

impl Partition for BlockPartition {
    fn cores(&self) -> usize {
        self.cores.max(1)
    }

    fn owner(&self, port: u16) -> usize {
        // Zero block/cores would divide by zero; treat them as 1 (one core owns all).
        usize::from(port / self.block.max(1)) % self.cores.max(1)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    PreserveThenRandom,
    Random,
}

const LIST_LOW: usize = 0;
const LIST_HIGH: usize = 1;
const LIST_ICMP: usize = 2;
/// Buckets: (TCP, low), (TCP, high), (UDP, low), (UDP, high), (ICMP).
const BUCKETS: usize = 5;
/// How many free candidates the `prefer` predicate may reject before we give up on it.
const PREFER_MAX_CANDIDATES: usize = 256;

#[inline]
fn bucket(proto: usize, list: usize) -> usize {
    if proto == ICMP { 4 } else { proto * 2 + list }
}

#[inline]
fn bucket_list(b: usize) -> usize {
    if b == 4 { LIST_ICMP } else { b % 2 }
}

#[inline]
fn class_of(proto: usize, port: u16) -> usize {
    if proto == ICMP {
        LIST_ICMP
    } else if port < 1024 {
        LIST_LOW
    } else {
        LIST_HIGH
    }
}

/// One port on hold. Stores the bitmap position rather than the port so `tick` needs
/// no search.
#[derive(Debug, Clone, Copy, Default)]
struct Held {
    until: u32,
    addr: u32,
    pos: u16,
    bucket: u8,
}

pub struct PortAllocator {
    n_addrs: usize,
    /// Sorted ports this core owns, per list (low, high, ICMP).
    lists: [Box<[u16]>; 3],
    /// Word offset of each bucket's bitmap inside one address's block.
    bucket_off: [usize; BUCKETS],
    words_per_addr: usize,
    /// Bit set = in use, on hold or reserved. Padding bits past a list's end are set
    /// so the scan never returns them.
    used: Box<[u64]>,
    /// Bit set = on hold (subset of `used`); lets release reject double frees, which
    /// would otherwise free a port that was re-allocated in between.
    held: Box<[u64]>,
    /// Bits set in `used` per (addr, bucket), padding excluded.
    counts: Box<[u32]>,
    /// Sorted `(addr << 24) | (proto << 16) | port` of static reservations.
    reserved: Vec<u64>,
    ring: Box<[Held]>,
    ring_head: usize,
    ring_len: usize,
    hold_secs: u32,
    hold_overflow: u64,
    bad_release: u64,
    low_fallback: bool,
}

impl PortAllocator {
    /// `core` is this worker's index in `partition`; a core outside the partition owns
    /// nothing and every allocation fails. `range_first` is clamped to `>= 1024`; an
    /// empty range (`first > last`) leaves only the low class and ICMP.
    pub fn new(
        n_addrs: usize,
        range_first: u16,
        range_last: u16,
        partition: &dyn Partition,
        core: usize,
        hold_secs: u32,
        hold_capacity: usize,
    ) -> Self {
        let owned = |lo: u16, hi: u16| -> Box<[u16]> {
            if lo > hi {
                return Box::new([]);
            }
            (lo..=hi).filter(|&p| partition.owner(p) == core).collect()
        };
        let lists = [
            owned(1, 1023),
            owned(range_first.max(1024), range_last),
            owned(1, u16::MAX),
        ];
        let words = |l: usize| lists[l].len().div_ceil(64);
        let mut bucket_off = [0; BUCKETS];
        let mut off = 0;
        for (b, o) in bucket_off.iter_mut().enumerate() {
            *o = off;
            off += words(bucket_list(b));
        }
        let words_per_addr = off;

        let mut used = vec![0u64; n_addrs * words_per_addr].into_boxed_slice();
        for a in 0..n_addrs {
            for (b, &o) in bucket_off.iter().enumerate() {
                let n = lists[bucket_list(b)].len();
                if n % 64 != 0 {
                    used[a * words_per_addr + o + n / 64] = !0u64 << (n % 64);
                }
            }
        }
        PortAllocator {
            n_addrs,
            bucket_off,
            words_per_addr,
            held: vec![0u64; used.len()].into_boxed_slice(),
            used,
            counts: vec![0u32; n_addrs * BUCKETS].into_boxed_slice(),
            lists,
            reserved: Vec::new(),
            ring: vec![Held::default(); hold_capacity].into_boxed_slice(),
            ring_head: 0,
            ring_len: 0,
            hold_secs,
            hold_overflow: 0,
            bad_release: 0,
            low_fallback: true,
        }
    }

    /// Whether a low-class (inside port < 1024) TCP/UDP request may take a high port
    /// when no low port is free on this core. Default: true.
    pub fn set_low_fallback(&mut self, on: bool) {
        self.low_fallback = on;
    }

    /// Allocates an external port for `inside_port`, or `None` when the class is
    /// exhausted on this core (or `addr`/`proto` is out of range).
    ///
    /// `prefer` narrows the choice when possible (e.g. ports whose return traffic
    /// hashes to this core's RSS queue): the preserved port is kept only if it
    /// satisfies `prefer`; otherwise up to 256 free random-order candidates are tried
    /// against it; failing that, the preserved port, then any free port, is taken.
    pub fn alloc(
        &mut self,
        addr: usize,
        proto: Protocol,
        inside_port: u16,
        policy: Policy,
        rng: &mut Rng,
        prefer: Option<&dyn Fn(u16) -> bool>,
    ) -> Option<u16> {
        let proto = index(proto).filter(|_| addr < self.n_addrs)?;
        let list = class_of(proto, inside_port);
        let b = bucket(proto, list);
        let preserve = match policy {
            Policy::PreserveThenRandom => self.position(list, inside_port),
            Policy::Random => None,
        }
        .filter(|&pos| !self.is_used(addr, b, pos));

        let hb = bucket(proto, LIST_HIGH);
        let fallback = list == LIST_LOW && self.low_fallback;
        let pick = preserve
            .filter(|_| prefer.is_none_or(|f| f(inside_port)))
            .map(|pos| (b, pos))
            .or_else(|| prefer.and_then(|f| self.search_prefer(addr, b, rng, f).map(|p| (b, p))))
            .or_else(|| {
                preserve
                    .or_else(|| self.search(addr, b, rng))
                    .map(|p| (b, p))
            })
            .or_else(|| {
                if !fallback {
                    return None;
                }
                prefer
                    .and_then(|f| self.search_prefer(addr, hb, rng, f))
                    .or_else(|| self.search(addr, hb, rng))
                    .map(|p| (hb, p))
            });
        let (b, pos) = pick?;
        self.set_used(addr, b, pos);
        Some(self.lists[bucket_list(b)][pos])
    }

    /// Marks `port` permanently used (static mapping). Call it on every core: cores
    /// that do not own the port only remember the reservation, so `release` ignores
    /// it. A port a dynamic mapping holds or that is on hold is taken over (a reload
    /// added a port forward on it): the mapping's later release is a no-op and its hold
    /// ends. False if the port is already reserved or the arguments are out of range.
    /// Control plane only (may allocate).
    pub fn reserve(&mut self, addr: usize, proto: Protocol, port: u16) -> bool {
        let Some(proto) = index(proto).filter(|_| addr < self.n_addrs) else {
            return false;
        };
        let key = reserved_key(addr, proto, port);
        let Err(at) = self.reserved.binary_search(&key) else {
            return false;
        };
        let list = class_of(proto, port);
        if let Some(pos) = self.position(list, port) {
            let b = bucket(proto, list);
            let (w, bit) = self.word(addr, b, pos);
            if self.used[w] & bit == 0 {
                self.set_used(addr, b, pos);
            }
            // Its hold-ring entry stays behind and is skipped by `tick` (the held bit is
            // what makes an entry count).
            self.held[w] &= !bit;
        }
        self.reserved.insert(at, key);
        true
    }

    /// Removes a static reservation and frees the port immediately. False if it was
    /// not reserved.
    pub fn unreserve(&mut self, addr: usize, proto: Protocol, port: u16) -> bool {
        let Some(proto) = index(proto).filter(|_| addr < self.n_addrs) else {
            return false;
        };
        let Ok(at) = self
            .reserved
            .binary_search(&reserved_key(addr, proto, port))
        else {
            return false;
        };
        self.reserved.remove(at);
        let list = class_of(proto, port);
        if let Some(pos) = self.position(list, port) {
            self.clear_used(addr, bucket(proto, list), pos);
        }
        true
    }

    /// Returns a port allocated by [`alloc`](Self::alloc) to the pool after the hold
    /// time. `now_secs` is a monotonic seconds clock (wrapping is handled). Reserved
    /// ports are ignored; releasing a port that is not allocated here (not owned, free,
    /// or already on hold) is ignored and counted in [`bad_release`](Self::bad_release).
    pub fn release(&mut self, addr: usize, proto: Protocol, port: u16, now_secs: u32) {
        let Some(proto) = index(proto).filter(|_| addr < self.n_addrs) else {
            self.bad_release += 1;
            return;
        };
        if !self.reserved.is_empty()
            && self
                .reserved
                .binary_search(&reserved_key(addr, proto, port))
                .is_ok()
        {
            return;
        }
        let list = class_of(proto, port);
        let b = bucket(proto, list);
        let Some(pos) = self.position(list, port) else {
            self.bad_release += 1;
            return;
        };
        let (w, bit) = self.word(addr, b, pos);
        if self.used[w] & bit == 0 || self.held[w] & bit != 0 {
            self.bad_release += 1;
            return;
        }
        if self.hold_secs == 0 {
            self.clear_used(addr, b, pos);
            return;
        }
        if self.ring_len == self.ring.len() {
            self.hold_overflow += 1;
            self.clear_used(addr, b, pos);
            return;
        }
        self.held[w] |= bit;
        let tail = (self.ring_head + self.ring_len) % self.ring.len();
        self.ring[tail] = Held {
            until: now_secs.wrapping_add(self.hold_secs),
            addr: addr as u32,
            pos: pos as u16,
            bucket: b as u8,
        };
        self.ring_len += 1;
    }

    /// Frees held ports whose hold expired by `now_secs`, at most `max` of them.
    /// Returns how many were freed. Entries leave in release order, so a release with
    /// an earlier clock than its predecessor is merely held a little longer.
    pub fn tick(&mut self, now_secs: u32, max: usize) -> usize {
        let mut freed = 0;
        while freed < max && self.ring_len > 0 {
            let e = self.ring[self.ring_head];
            if (now_secs.wrapping_sub(e.until) as i32) < 0 {
                break;
            }
            let (addr, b, pos) = (e.addr as usize, usize::from(e.bucket), usize::from(e.pos));
            let (w, bit) = self.word(addr, b, pos);
            self.ring_head = (self.ring_head + 1) % self.ring.len();
            self.ring_len -= 1;
            if self.held[w] & bit == 0 {
                // The port was reserved while on hold (`reserve`): nothing to free.
                continue;
            }
            self.held[w] &= !bit;
            self.clear_used(addr, b, pos);
            freed += 1;
        }
        freed
    }

    /// This allocator for another list of addresses (a reload changed the pool): new
    /// address `i` was address `from[i]` here, or is new (`None`, every port free). What
    /// kept addresses had (ports in use, held ports with their deadlines, reservations)
    /// comes along; what removed addresses had is dropped. The port range and partition
    /// stay, so the owned-port lists and bitmap layout are the same. The hold ring is
    /// reused (compacted in place) unless `hold_capacity` asks for a larger one: it can be
    /// tens of megabytes. Control plane work (allocates the bitmaps; O(addresses * bitmap
    /// words + hold entries)).
    pub fn remapped(self, from: &[Option<usize>], hold_capacity: usize) -> PortAllocator {
        let n = from.len();
        let wpa = self.words_per_addr;
        let mut used = vec![0u64; n * wpa].into_boxed_slice();
        let mut held = vec![0u64; n * wpa].into_boxed_slice();
        let mut counts = vec![0u32; n * BUCKETS].into_boxed_slice();
        let mut to = vec![None; self.n_addrs];
        for (i, f) in from.iter().enumerate() {
            match f {
                Some(o) if *o < self.n_addrs => {
                    to[*o] = Some(i);
                    used[i * wpa..(i + 1) * wpa]
                        .copy_from_slice(&self.used[o * wpa..(o + 1) * wpa]);
                    held[i * wpa..(i + 1) * wpa]
                        .copy_from_slice(&self.held[o * wpa..(o + 1) * wpa]);
                    counts[i * BUCKETS..(i + 1) * BUCKETS]
                        .copy_from_slice(&self.counts[o * BUCKETS..(o + 1) * BUCKETS]);
                }
                _ => {
                    for (b, &off) in self.bucket_off.iter().enumerate() {
                        let len = self.lists[bucket_list(b)].len();
                        if !len.is_multiple_of(64) {
                            used[i * wpa + off + len / 64] = !0u64 << (len % 64);
                        }
                    }
                }
            }
        }
        let mut reserved: Vec<u64> = self
            .reserved
            .iter()
            .filter_map(|&k| {
                let a = to.get((k >> 24) as usize).copied().flatten()?;
                Some(((a as u64) << 24) | (k & 0xff_ffff))
            })
            .collect();
        reserved.sort_unstable();
        let (old_head, old_len, old_cap) = (self.ring_head, self.ring_len, self.ring.len());
        let grow = hold_capacity > old_cap;
        let (ring, old) = if grow {
            let fresh = vec![Held::default(); hold_capacity].into_boxed_slice();
            (fresh, Some(self.ring))
        } else {
            (self.ring, None)
        };
        let mut out = PortAllocator {
            n_addrs: n,
            lists: self.lists,
            bucket_off: self.bucket_off,
            words_per_addr: wpa,
            used,
            held,
            counts,
            reserved,
            ring,
            ring_head: if grow { 0 } else { old_head },
            ring_len: 0,
            hold_secs: self.hold_secs,
            hold_overflow: self.hold_overflow,
            bad_release: self.bad_release,
            low_fallback: self.low_fallback,
        };
        // In order, so deadlines stay sorted; in place the write position never passes
        // the read position.
        let cap = out.ring.len();
        for k in 0..old_len {
            let from = (old_head + k) % old_cap.max(1);
            let e = old.as_ref().map_or(out.ring[from], |o| o[from]);
            let Some(a) = to.get(e.addr as usize).copied().flatten() else {
                continue;
            };
            let (b, pos) = (usize::from(e.bucket), usize::from(e.pos));
            let (w, bit) = out.word(a, b, pos);
            if out.held[w] & bit == 0 {
                continue;
            }
            let at = (out.ring_head + out.ring_len) % cap;
            out.ring[at] = Held {
                addr: a as u32,
                ..e
            };
            out.ring_len += 1;
        }
        out
    }

    /// Ports of `proto` on `addr` that are in use, on hold or reserved (owned by this
    /// core; all classes).
    pub fn in_use(&self, addr: usize, proto: Protocol) -> usize {
        let Some(proto) = index(proto).filter(|_| addr < self.n_addrs) else {
            return 0;
        };
        let bs: &[usize] = if proto == ICMP {
            &[4]
        } else {
            &[proto * 2, proto * 2 + 1]
        };
        bs.iter()
            .map(|&b| self.counts[addr * BUCKETS + b] as usize)
            .sum()
    }

    /// Ports of `proto` on `addr` this core may ever hand out (all classes; reserved ones
    /// included, as `in_use` counts them): its share of the address's range.
    pub fn usable(&self, addr: usize, proto: Protocol) -> usize {
        match index(proto).filter(|_| addr < self.n_addrs) {
            Some(ICMP) => self.lists[LIST_ICMP].len(),
            Some(_) => self.lists[LIST_LOW].len() + self.lists[LIST_HIGH].len(),
            None => 0,
        }
    }

    /// Free ports of one class (`class_low`: the `1..=1023` class; ignored for ICMP).
    pub fn available(&self, addr: usize, proto: Protocol, class_low: bool) -> usize {
        let Some(proto) = index(proto).filter(|_| addr < self.n_addrs) else {
            return 0;
        };
        let list = if proto == ICMP {
            LIST_ICMP
        } else if class_low {
            LIST_LOW
        } else {
            LIST_HIGH
        };
        let b = bucket(proto, list);
        self.lists[list].len() - self.counts[addr * BUCKETS + b] as usize
    }

    /// Releases that found the hold FIFO full and freed the port at once.
    pub fn hold_overflow(&self) -> u64 {
        self.hold_overflow
    }

    /// Releases ignored because the port was not allocated here (engine bug indicator).
    pub fn bad_release(&self) -> u64 {
        self.bad_release
    }

    /// Ports currently on hold.
    pub fn held(&self) -> usize {
        self.ring_len
    }

    /// Whether this core owns `port` for `proto` (i.e. may ever allocate it).
    pub fn owns(&self, proto: Protocol, port: u16) -> bool {
        index(proto).is_some_and(|proto| self.position(class_of(proto, port), port).is_some())
    }

    /// What an allocator for `n_addrs` addresses with `hold_capacity` hold entries and
    /// `reserved` static reservations takes, without allocating its per-address bitmaps:
    /// for checking a configuration before building it.
    pub fn bytes_for(
        n_addrs: usize,
        range_first: u16,
        range_last: u16,
        partition: &dyn Partition,
        core: usize,
        hold_capacity: usize,
        reserved: usize,
    ) -> usize {
        let shape = Self::new(0, range_first, range_last, partition, core, 0, 0);
        shape.memory_bytes().saturating_add(
            n_addrs
                .saturating_mul(shape.words_per_addr * 16 + BUCKETS * 4)
                .saturating_add(hold_capacity.saturating_mul(size_of::<Held>()))
                .saturating_add(match reserved {
                    // A Vec of u64 grows 0, 4, 8, 16, ...
                    0 => 0,
                    n => n.next_power_of_two().max(4) * 8,
                }),
        )
    }

    pub fn memory_bytes(&self) -> usize {
        size_of::<Self>()
            + self.lists.iter().map(|l| l.len() * 2).sum::<usize>()
            + (self.used.len() + self.held.len()) * 8
            + self.counts.len() * 4
            + self.ring.len() * size_of::<Held>()
            + self.reserved.capacity() * 8
    }

    #[inline]
    fn position(&self, list: usize, port: u16) -> Option<usize> {
        let l = &self.lists[list];
        // Lists are sorted and usually one contiguous run (one core, or a core's block of a
        // partition): try the direct offset before the binary search (16 probes for 64k).
        let guess = usize::from(port).wrapping_sub(usize::from(*l.first()?));
        if l.get(guess) == Some(&port) {
            return Some(guess);
        }
        l.binary_search(&port).ok()
    }

    #[inline]
    fn word(&self, addr: usize, b: usize, pos: usize) -> (usize, u64) {
        (
            addr * self.words_per_addr + self.bucket_off[b] + pos / 64,
            1u64 << (pos % 64),
        )
    }

    #[inline]
    fn is_used(&self, addr: usize, b: usize, pos: usize) -> bool {
        let (w, bit) = self.word(addr, b, pos);
        self.used[w] & bit != 0
    }

    fn set_used(&mut self, addr: usize, b: usize, pos: usize) {
        let (w, bit) = self.word(addr, b, pos);
        debug_assert_eq!(self.used[w] & bit, 0);
        self.used[w] |= bit;
        self.counts[addr * BUCKETS + b] += 1;
    }

    fn clear_used(&mut self, addr: usize, b: usize, pos: usize) {
        let (w, bit) = self.word(addr, b, pos);
        if self.used[w] & bit != 0 {
            self.used[w] &= !bit;
            self.counts[addr * BUCKETS + b] -= 1;
        }
    }

    fn bitmap(&self, addr: usize, b: usize) -> (&[u64], &[u16]) {
        let list = &self.lists[bucket_list(b)];
        let start = addr * self.words_per_addr + self.bucket_off[b];
        (&self.used[start..start + list.len().div_ceil(64)], list)
    }

    /// Random start, first free bit forward (wrapping once).
    fn search(&self, addr: usize, b: usize, rng: &mut Rng) -> Option<usize> {
        let (words, list) = self.bitmap(addr, b);
        if list.is_empty() || self.counts[addr * BUCKETS + b] as usize >= list.len() {
            return None;
        }
        let start = rng.below(list.len() as u32) as usize;
        scan_free(words, start).next()
    }

    /// Like `search`, but only accepts ports satisfying `f`, examining at most
    /// `PREFER_MAX_CANDIDATES` free ports.
    fn search_prefer(
        &self,
        addr: usize,
        b: usize,
        rng: &mut Rng,
        f: &dyn Fn(u16) -> bool,
    ) -> Option<usize> {
        let (words, list) = self.bitmap(addr, b);
        if list.is_empty() || self.counts[addr * BUCKETS + b] as usize >= list.len() {
            return None;
        }
        let start = rng.below(list.len() as u32) as usize;
        scan_free(words, start)
            .take(PREFER_MAX_CANDIDATES)
            .find(|&pos| f(list[pos]))
    }
}

fn reserved_key(addr: usize, proto: usize, port: u16) -> u64 {
    ((addr as u64) << 24) | ((proto as u64) << 16) | u64::from(port)
}

/// Positions of clear bits in `words`, starting at bit `start` and wrapping once
/// around; visits each word at most twice (the start word is split).
fn scan_free(words: &[u64], start: usize) -> impl Iterator<Item = usize> + '_ {
    let nw = words.len();
    let (sw, sb) = (start / 64, start % 64);
    (0..=nw).flat_map(move |i| {
        let w = (sw + i) % nw;
        let mut free = !words[w];
        if i == 0 {
            free &= !0u64 << sb;
        } else if i == nw {
            free &= (1u64 << sb) - 1;
        }
        core::iter::from_fn(move || {
            if free == 0 {
                return None;
            }
            let bit = free.trailing_zeros() as usize;
            free &= free - 1;
            Some(w * 64 + bit)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn one_core(first: u16, last: u16) -> PortAllocator {
        PortAllocator::new(2, first, last, &BlockPartition::new(1), 0, 120, 1024)
    }

    #[test]
    fn preserves_inside_port() {
        let mut a = one_core(1024, 65535);
        let mut r = Rng::new(1);
        let pol = Policy::PreserveThenRandom;
        assert_eq!(
            a.alloc(0, Protocol::TCP, 5000, pol, &mut r, None),
            Some(5000)
        );
        assert_eq!(a.alloc(0, Protocol::TCP, 80, pol, &mut r, None), Some(80));
        assert_eq!(a.alloc(0, Protocol::ICMP, 77, pol, &mut r, None), Some(77));
        // Same port again: taken, so a different one in the same class.
        let p = a.alloc(0, Protocol::TCP, 5000, pol, &mut r, None).unwrap();
        assert_ne!(p, 5000);
        assert!(p >= 1024);
        // Other protocol and other address are independent spaces.
        assert_eq!(
            a.alloc(0, Protocol::UDP, 5000, pol, &mut r, None),
            Some(5000)
        );
        assert_eq!(
            a.alloc(1, Protocol::TCP, 5000, pol, &mut r, None),
            Some(5000)
        );
        // Random policy does not preserve (overwhelmingly likely over 20 tries).
        let hits = (0..20)
            .filter(|&i| {
                a.alloc(1, Protocol::UDP, 6000 + i, Policy::Random, &mut r, None) == Some(6000 + i)
            })
            .count();
        assert!(hits < 2);
        // Inside port outside the configured range is not preserved.
        let mut b = one_core(20000, 30000);
        let p = b.alloc(0, Protocol::UDP, 5000, pol, &mut r, None).unwrap();
        assert!((20000..=30000).contains(&p));
    }

    #[test]
    fn class_kept() {
        let mut a = one_core(20000, 30000);
        let mut r = Rng::new(2);
        for pol in [Policy::Random, Policy::PreserveThenRandom] {
            for i in 0..500u16 {
                let lo = a.alloc(0, Protocol::TCP, 80, pol, &mut r, None).unwrap();
                assert!((1..=1023).contains(&lo), "{lo}");
                let hi = a
                    .alloc(0, Protocol::UDP, 5000 + i, pol, &mut r, None)
                    .unwrap();
                assert!((20000..=30000).contains(&hi), "{hi}");
            }
        }
        assert_eq!(a.available(0, Protocol::TCP, true), 1023 - 1000);
        assert_eq!(a.available(0, Protocol::UDP, false), 10001 - 1000);
    }

    #[test]
    fn low_class_falls_back_to_high_only_when_allowed() {
        let mut a = one_core(20000, 20009);
        let mut r = Rng::new(3);
        for _ in 0..1023 {
            a.alloc(0, Protocol::TCP, 22, Policy::Random, &mut r, None)
                .unwrap();
        }
        assert_eq!(a.available(0, Protocol::TCP, true), 0);
        let p = a
            .alloc(0, Protocol::TCP, 22, Policy::Random, &mut r, None)
            .unwrap();
        assert!((20000..=20009).contains(&p));
        a.set_low_fallback(false);
        assert_eq!(
            a.alloc(0, Protocol::TCP, 22, Policy::Random, &mut r, None),
            None
        );
        // High never falls back to low.
        for _ in 0..9 {
            a.alloc(0, Protocol::TCP, 5000, Policy::Random, &mut r, None)
                .unwrap();
        }
        a.release(0, Protocol::TCP, 80, 0);
        a.tick(1000, usize::MAX);
        assert_eq!(a.available(0, Protocol::TCP, true), 1);
        assert_eq!(
            a.alloc(0, Protocol::TCP, 5000, Policy::Random, &mut r, None),
            None
        );
    }

    #[test]
    fn partition_respected_and_covering() {
        for cores in [1usize, 2, 4] {
            let part = BlockPartition::new(cores);
            let mut seen_hi = HashSet::new();
            let mut seen_lo = HashSet::new();
            let mut seen_icmp = HashSet::new();
            for core in 0..cores {
                let mut a = PortAllocator::new(1, 30000, 31999, &part, core, 120, 16);
                let mut r = Rng::new(core as u64);
                let mut take = |proto, inside, set: &mut HashSet<u16>| {
                    while let Some(p) =
                        a.alloc(0, proto, inside, Policy::PreserveThenRandom, &mut r, None)
                    {
                        assert_eq!(part.owner(p), core, "port {p} cores {cores}");
                        assert!(set.insert(p), "port {p} handed out twice");
                    }
                };
                take(Protocol::UDP, 30001, &mut seen_hi);
                take(Protocol::UDP, 53, &mut seen_lo);
                take(Protocol::ICMP, 1, &mut seen_icmp);
            }
            // Together the cores hand out exactly the class ranges, each port once.
            assert_eq!(seen_hi, (30000..=31999).collect::<HashSet<u16>>());
            assert_eq!(seen_lo, (1..=1023).collect::<HashSet<u16>>());
            assert_eq!(seen_icmp, (1..=65535).collect::<HashSet<u16>>());
        }
    }

    #[test]
    fn exhaustion() {
        let mut a = one_core(40000, 40099);
        let mut r = Rng::new(4);
        let mut got = HashSet::new();
        for _ in 0..100 {
            assert!(
                got.insert(
                    a.alloc(0, Protocol::TCP, 5000, Policy::Random, &mut r, None)
                        .unwrap()
                )
            );
        }
        assert_eq!(
            a.alloc(0, Protocol::TCP, 5000, Policy::Random, &mut r, None),
            None
        );
        assert_eq!(
            a.alloc(
                0,
                Protocol::TCP,
                40000,
                Policy::PreserveThenRandom,
                &mut r,
                None
            ),
            None
        );
        assert_eq!(a.in_use(0, Protocol::TCP), 100);
        assert_eq!(a.available(0, Protocol::TCP, false), 0);
        // Other spaces unaffected.
        assert!(
            a.alloc(0, Protocol::UDP, 5000, Policy::Random, &mut r, None)
                .is_some()
        );
        assert!(
            a.alloc(1, Protocol::TCP, 5000, Policy::Random, &mut r, None)
                .is_some()
        );
        assert!(
            a.alloc(0, Protocol::TCP, 80, Policy::Random, &mut r, None)
                .is_some()
        );
        // Out-of-range arguments are refused, not panics.
        assert_eq!(
            a.alloc(2, Protocol::TCP, 5000, Policy::Random, &mut r, None),
            None
        );
        assert_eq!(
            a.alloc(0, Protocol(3), 5000, Policy::Random, &mut r, None),
            None
        );
        // Freeing one makes exactly that one available again.
        a.release(0, Protocol::TCP, 40050, 10);
        assert_eq!(
            a.alloc(0, Protocol::TCP, 5000, Policy::Random, &mut r, None),
            None
        );
        assert_eq!(a.tick(130, 10), 1);
        assert_eq!(
            a.alloc(0, Protocol::TCP, 5000, Policy::Random, &mut r, None),
            Some(40050)
        );
    }

    #[test]
    fn hold_before_reuse() {
        let mut a = one_core(50000, 50000);
        let mut r = Rng::new(5);
        let pol = Policy::PreserveThenRandom;
        assert_eq!(
            a.alloc(0, Protocol::UDP, 50000, pol, &mut r, None),
            Some(50000)
        );
        a.release(0, Protocol::UDP, 50000, 1000);
        assert_eq!(a.held(), 1);
        assert_eq!(a.in_use(0, Protocol::UDP), 1);
        assert_eq!(a.alloc(0, Protocol::UDP, 50000, pol, &mut r, None), None);
        assert_eq!(a.tick(1000, 10), 0);
        assert_eq!(a.tick(1119, 10), 0);
        assert_eq!(a.alloc(0, Protocol::UDP, 50000, pol, &mut r, None), None);
        // Double release while held must not queue it twice.
        a.release(0, Protocol::UDP, 50000, 1050);
        assert_eq!(a.bad_release(), 1);
        assert_eq!(a.tick(1120, 10), 1);
        assert_eq!(a.in_use(0, Protocol::UDP), 0);
        assert_eq!(
            a.alloc(0, Protocol::UDP, 50000, pol, &mut r, None),
            Some(50000)
        );
        // Releasing a free / foreign port is ignored and counted.
        a.release(0, Protocol::UDP, 50001, 0);
        a.release(0, Protocol::TCP, 50000, 0);
        assert_eq!(a.bad_release(), 3);
        assert_eq!(a.in_use(0, Protocol::UDP), 1);
    }

    #[test]
    fn tick_is_bounded_and_clock_wraps() {
        let mut a = PortAllocator::new(1, 1024, 65535, &BlockPartition::new(1), 0, 120, 100);
        let mut r = Rng::new(6);
        let start = u32::MAX - 50;
        let ports: Vec<u16> = (0..10)
            .map(|_| {
                a.alloc(0, Protocol::TCP, 9999, Policy::Random, &mut r, None)
                    .unwrap()
            })
            .collect();
        for &p in &ports {
            a.release(0, Protocol::TCP, p, start);
        }
        assert_eq!(a.tick(start.wrapping_add(119), 100), 0);
        assert_eq!(a.tick(start.wrapping_add(120), 3), 3);
        assert_eq!(a.tick(start.wrapping_add(200), 100), 7);
        assert_eq!(a.in_use(0, Protocol::TCP), 0);
    }

    #[test]
    fn hold_overflow_frees_immediately() {
        let mut a = PortAllocator::new(1, 1024, 65535, &BlockPartition::new(1), 0, 120, 2);
        let mut r = Rng::new(7);
        let pol = Policy::PreserveThenRandom;
        for p in [2000, 2001, 2002] {
            assert_eq!(a.alloc(0, Protocol::TCP, p, pol, &mut r, None), Some(p));
            a.release(0, Protocol::TCP, p, 0);
        }
        assert_eq!(a.hold_overflow(), 1);
        assert_eq!(a.held(), 2);
        assert_eq!(a.in_use(0, Protocol::TCP), 2);
        assert_eq!(
            a.alloc(0, Protocol::TCP, 2002, pol, &mut r, None),
            Some(2002)
        );
        assert_eq!(
            a.alloc(0, Protocol::TCP, 2000, pol, &mut r, None)
                .map(|p| p != 2000),
            Some(true)
        );
    }

    #[test]
    fn reserved_never_handed_out() {
        let mut a = one_core(60000, 60009);
        let mut r = Rng::new(8);
        assert!(a.reserve(0, Protocol::UDP, 60003));
        assert!(!a.reserve(0, Protocol::UDP, 60003));
        assert!(a.reserve(0, Protocol::UDP, 60007));
        // Ports outside this core's space: remembered, nothing else.
        assert!(a.reserve(0, Protocol::UDP, 5000));
        assert_eq!(a.in_use(0, Protocol::UDP), 2);
        let mut got = HashSet::new();
        while let Some(p) = a.alloc(
            0,
            Protocol::UDP,
            60003,
            Policy::PreserveThenRandom,
            &mut r,
            None,
        ) {
            got.insert(p);
        }
        assert_eq!(got.len(), 8);
        assert!(!got.contains(&60003) && !got.contains(&60007));
        // Releasing a reserved port is a no-op.
        a.release(0, Protocol::UDP, 60003, 0);
        a.tick(10_000, 100);
        assert_eq!(a.in_use(0, Protocol::UDP), 10);
        assert_eq!(a.bad_release(), 0);
        assert!(a.unreserve(0, Protocol::UDP, 60003));
        assert!(!a.unreserve(0, Protocol::UDP, 60003));
        assert_eq!(
            a.alloc(
                0,
                Protocol::UDP,
                60003,
                Policy::PreserveThenRandom,
                &mut r,
                None
            ),
            Some(60003)
        );
    }

    /// A pool change keeps what the kept addresses had: ports in use, held ports (with
    /// their deadlines) and reservations move with their address; a removed address's
    /// go; an added address starts free.
    #[test]
    fn remapped_follows_the_addresses() {
        let mut a = PortAllocator::new(3, 1024, 65535, &BlockPartition::new(1), 0, 120, 16);
        let mut r = Rng::new(13);
        let pol = Policy::PreserveThenRandom;
        for addr in 0..3 {
            assert_eq!(
                a.alloc(addr, Protocol::UDP, 5000, pol, &mut r, None),
                Some(5000)
            );
            assert_eq!(
                a.alloc(addr, Protocol::TCP, 6000, pol, &mut r, None),
                Some(6000)
            );
            a.release(addr, Protocol::TCP, 6000, 100);
            assert!(a.reserve(addr, Protocol::TCP, 8080));
        }
        // Old 2 becomes 0, old 0 becomes 2, old 1 goes, 1 is new.
        let mut b = a.remapped(&[Some(2), None, Some(0)], 16);
        for addr in [0, 2] {
            assert_eq!(b.in_use(addr, Protocol::UDP), 1);
            assert_eq!(b.in_use(addr, Protocol::TCP), 2, "held and reserved");
            assert_ne!(
                b.alloc(addr, Protocol::UDP, 5000, pol, &mut r, None),
                Some(5000)
            );
        }
        assert_eq!(b.in_use(1, Protocol::UDP), 0);
        assert_eq!(b.in_use(1, Protocol::TCP), 0);
        assert_eq!(b.held(), 2, "the removed address's hold went with it");
        assert_eq!(b.tick(219, 16), 0);
        assert_eq!(b.tick(220, 16), 2);
        assert_eq!(b.in_use(0, Protocol::TCP), 1, "the reservation stays");
        assert!(b.unreserve(2, Protocol::TCP, 8080));
        assert!(!b.unreserve(1, Protocol::TCP, 8080));
        b.release(0, Protocol::UDP, 5000, 300);
        assert_eq!(b.bad_release(), 0);
    }

    /// A reservation takes over a port a mapping holds or that is on hold: the mapping's
    /// release and the hold's end leave it reserved.
    #[test]
    fn reserve_takes_over_used_and_held_ports() {
        let mut a = one_core(1024, 65535);
        let mut r = Rng::new(14);
        let pol = Policy::PreserveThenRandom;
        assert_eq!(
            a.alloc(0, Protocol::UDP, 5353, pol, &mut r, None),
            Some(5353)
        );
        assert!(a.reserve(0, Protocol::UDP, 5353));
        a.release(0, Protocol::UDP, 5353, 0);
        assert_eq!(a.in_use(0, Protocol::UDP), 1);
        assert_eq!(a.held(), 0);
        assert_eq!(
            a.alloc(0, Protocol::TCP, 7000, pol, &mut r, None),
            Some(7000)
        );
        a.release(0, Protocol::TCP, 7000, 0);
        assert!(a.reserve(0, Protocol::TCP, 7000));
        assert_eq!(a.tick(1000, 16), 0, "a stale hold entry frees nothing");
        assert_eq!(a.in_use(0, Protocol::TCP), 1);
        assert_ne!(
            a.alloc(0, Protocol::TCP, 7000, pol, &mut r, None),
            Some(7000)
        );
        assert_eq!(a.bad_release(), 0);
    }

    #[test]
    fn reserve_on_non_owner_core() {
        let part = BlockPartition::new(2);
        // Port 64..127 belong to core 1.
        let mut a = PortAllocator::new(1, 1024, 65535, &part, 0, 120, 16);
        assert!(!a.owns(Protocol::TCP, 100));
        assert!(a.reserve(0, Protocol::TCP, 100));
        assert!(!a.reserve(0, Protocol::TCP, 100));
        assert_eq!(a.in_use(0, Protocol::TCP), 0);
        a.release(0, Protocol::TCP, 100, 0);
        assert_eq!(a.bad_release(), 0);
    }

    #[test]
    fn random_not_sequential() {
        let mut a = PortAllocator::new(1, 1024, 65535, &BlockPartition::new(1), 0, 120, 16);
        let mut r = Rng::new(9);
        let v: Vec<u16> = (0..1000)
            .map(|_| {
                a.alloc(0, Protocol::UDP, 5000, Policy::Random, &mut r, None)
                    .unwrap()
            })
            .collect();
        let ups = v.windows(2).filter(|w| w[1] > w[0]).count();
        // A sequential allocator gives 999; random gives about half.
        assert!((350..650).contains(&ups), "{ups}");
        let min = *v.iter().min().unwrap();
        let max = *v.iter().max().unwrap();
        assert!(min < 5000 && max > 60000, "{min}..{max}");
        // Different seeds give different sequences.
        let mut b = PortAllocator::new(1, 1024, 65535, &BlockPartition::new(1), 0, 120, 16);
        let mut r2 = Rng::new(10);
        let w: Vec<u16> = (0..10)
            .map(|_| {
                b.alloc(0, Protocol::UDP, 5000, Policy::Random, &mut r2, None)
                    .unwrap()
            })
            .collect();
        assert_ne!(&v[..10], &w[..]);
    }

    #[test]
    fn prefer_honoured_when_satisfiable() {
        let mut a = PortAllocator::new(1, 1024, 65535, &BlockPartition::new(2), 1, 120, 16);
        let mut r = Rng::new(11);
        let even = |p: u16| p.is_multiple_of(2);
        let pred: &dyn Fn(u16) -> bool = &even;
        for _ in 0..500 {
            let p = a
                .alloc(0, Protocol::TCP, 7777, Policy::Random, &mut r, Some(pred))
                .unwrap();
            assert!(even(p));
            assert_eq!(BlockPartition::new(2).owner(p), 1);
        }
        // Preservation yields to the preference, but wins when it satisfies it.
        let p = a
            .alloc(
                0,
                Protocol::UDP,
                1089,
                Policy::PreserveThenRandom,
                &mut r,
                Some(pred),
            )
            .unwrap();
        assert!(even(p));
        assert_eq!(
            a.alloc(
                0,
                Protocol::UDP,
                1090,
                Policy::PreserveThenRandom,
                &mut r,
                Some(pred)
            ),
            Some(1090)
        );
        // Unsatisfiable predicate: falls back to the preserved port, then any.
        let never: &dyn Fn(u16) -> bool = &|_| false;
        assert_eq!(
            a.alloc(
                0,
                Protocol::UDP,
                1091,
                Policy::PreserveThenRandom,
                &mut r,
                Some(never)
            ),
            Some(1091)
        );
        assert!(
            a.alloc(
                0,
                Protocol::UDP,
                1091,
                Policy::PreserveThenRandom,
                &mut r,
                Some(never)
            )
            .is_some()
        );
        // A rare predicate (one port in the class) is still found if the bounded
        // search window covers it (77 free ports < 256 candidates).
        let mut b = PortAllocator::new(1, 1024, 1100, &BlockPartition::new(1), 0, 120, 16);
        let only: &dyn Fn(u16) -> bool = &|p| p == 1050;
        assert_eq!(
            b.alloc(0, Protocol::TCP, 5000, Policy::Random, &mut r, Some(only)),
            Some(1050)
        );
        assert_eq!(
            b.alloc(
                0,
                Protocol::TCP,
                1050,
                Policy::PreserveThenRandom,
                &mut r,
                Some(only)
            )
            .map(|p| p != 1050),
            Some(true)
        );
    }

    #[test]
    fn scan_wraps_and_skips_padding() {
        // 70 bits: word 1 has 6 valid bits, rest padding.
        let words = [!0u64 ^ (1 << 3), !0u64 << 6];
        assert_eq!(
            scan_free(&words, 10).collect::<Vec<_>>(),
            [64, 65, 66, 67, 68, 69, 3]
        );
        assert_eq!(
            scan_free(&words, 66).collect::<Vec<_>>(),
            [66, 67, 68, 69, 3, 64, 65]
        );
        assert_eq!(scan_free(&[!0u64], 5).next(), None);
    }

    #[test]
    fn empty_and_degenerate_configs() {
        let mut r = Rng::new(12);
        let mut a = PortAllocator::new(0, 1024, 65535, &BlockPartition::new(1), 0, 120, 0);
        assert_eq!(
            a.alloc(0, Protocol::TCP, 5000, Policy::Random, &mut r, None),
            None
        );
        let mut b = PortAllocator::new(1, 2000, 1500, &BlockPartition::new(1), 0, 0, 0);
        assert_eq!(b.available(0, Protocol::TCP, false), 0);
        assert_eq!(
            b.alloc(0, Protocol::TCP, 5000, Policy::Random, &mut r, None),
            None
        );
        b.set_low_fallback(false);
        assert!(
            b.alloc(0, Protocol::TCP, 80, Policy::Random, &mut r, None)
                .is_some()
        );
        // hold_secs 0: freed at once.
        assert_eq!(
            b.alloc(
                0,
                Protocol::ICMP,
                9,
                Policy::PreserveThenRandom,
                &mut r,
                None
            ),
            Some(9)
        );
        b.release(0, Protocol::ICMP, 9, 0);
        assert_eq!(b.in_use(0, Protocol::ICMP), 0);
        let mut c = PortAllocator::new(
            1,
            1024,
            65535,
            &BlockPartition { cores: 0, block: 0 },
            5,
            120,
            0,
        );
        assert_eq!(
            c.alloc(0, Protocol::UDP, 5000, Policy::Random, &mut r, None),
            None
        );
        // First < 1024 is clamped to the high class start.
        let d = PortAllocator::new(1, 10, 2000, &BlockPartition::new(1), 0, 120, 0);
        assert_eq!(d.available(0, Protocol::UDP, false), 2000 - 1024 + 1);
        assert!(d.memory_bytes() > 0);
    }

    #[test]
    fn memory_formula_matches() {
        let a = PortAllocator::new(256, 1024, 65535, &BlockPartition::new(4), 2, 120, 4096);
        let w = |x: usize| x.div_ceil(64);
        let (l, h, i) = (a.lists[0].len(), a.lists[1].len(), a.lists[2].len());
        let formula =
            2 * (l + h + i) + 256 * 16 * (2 * w(l) + 2 * w(h) + w(i)) + 256 * 20 + 12 * 4096;
        let m = a.memory_bytes();
        assert!(m >= formula && m < formula + 512, "{m} vs {formula}");
    }
}
