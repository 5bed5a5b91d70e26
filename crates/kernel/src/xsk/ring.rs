//! The four single-producer/single-consumer rings shared with the kernel (fill, rx, tx,
//! completion), and the descriptor the rx and tx rings carry. `produce` and `consume` run
//! once per batch on the workers' hot path.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicU32, Ordering};

use crate::sys;

/// An rx or tx descriptor: a frame address and the length of the packet in it.
/// Sockets are bound without `XDP_USE_SG`, so a packet always fits one frame and the
/// kernel's `options` field is not needed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
}

/// One mmapped ring. `T` is `u64` (fill, completion) or `xdp_desc` (rx, tx).
///
/// The producer and consumer indexes are free-running u32 counters; the kernel side is
/// synchronised with acquire loads of the other side's index and release stores of ours,
/// as in libxdp's xsk.h. `cached_*` avoid touching the shared cache lines on every call.
pub(super) struct Ring<T> {
    map: NonNull<libc::c_void>,
    map_len: usize,
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    descs: NonNull<T>,
    mask: u32,
    size: u32,
    pub(super) cached_prod: u32,
    cached_cons: u32,
}

impl<T: Copy> Ring<T> {
    /// Maps a ring of `size` entries at page offset `pgoff` of socket `fd`.
    pub(super) fn map(
        fd: BorrowedFd<'_>,
        off: &libc::xdp_ring_offset,
        size: u32,
        pgoff: u64,
        producer_side: bool,
    ) -> io::Result<Ring<T>> {
        let map_len = off.desc as usize + size as usize * size_of::<T>();
        // SAFETY: maps the kernel's ring memory for this socket; checked below.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                pgoff as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(sys::last_os_error("mmap(AF_XDP ring)"));
        }
        let base = p.cast::<u8>();
        let at = |o: u64| {
            // SAFETY: the kernel's offsets lie inside the ring mapping.
            NonNull::new(unsafe { base.add(o as usize) }).expect("mmap result is non-null")
        };
        let mut r = Ring {
            map: NonNull::new(p).expect("mmap result is non-null"),
            map_len,
            producer: at(off.producer).cast(),
            consumer: at(off.consumer).cast(),
            flags: at(off.flags).cast(),
            descs: at(off.desc).cast(),
            mask: size - 1,
            size,
            cached_prod: 0,
            cached_cons: 0,
        };
        r.cached_prod = r.producer().load(Ordering::Relaxed);
        r.cached_cons = r.consumer().load(Ordering::Relaxed);
        if producer_side {
            // Seen from the producer, `cached_cons` is one lap ahead: free = cons - prod.
            r.cached_cons = r.cached_cons.wrapping_add(size);
        }
        Ok(r)
    }

    #[inline]
    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into the live mapping; the kernel only accesses it atomically.
        unsafe { self.producer.as_ref() }
    }

    #[inline]
    pub(super) fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.consumer.as_ref() }
    }

    #[inline]
    pub(super) fn needs_wakeup(&self) -> bool {
        // SAFETY: as for `producer`.
        let flags = unsafe { self.flags.as_ref() };
        flags.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    #[inline]
    fn slot(&self, idx: u32) -> *mut T {
        // SAFETY: `idx & mask` < size, inside the mapping.
        unsafe { self.descs.as_ptr().add((idx & self.mask) as usize) }
    }

    /// Producer side: free slots, up to `want`.
    #[inline]
    fn free(&mut self, want: u32) -> u32 {
        let free = self.cached_cons.wrapping_sub(self.cached_prod);
        if free >= want {
            return want;
        }
        // Acquire: the kernel finished reading the slots before it advanced `consumer`.
        self.cached_cons = self
            .consumer()
            .load(Ordering::Acquire)
            .wrapping_add(self.size);
        self.cached_cons.wrapping_sub(self.cached_prod).min(want)
    }

    /// Producer side: writes `items` (as many as fit) and publishes them.
    #[inline]
    pub(super) fn produce<S>(&mut self, items: &[S], conv: impl Fn(&S) -> T) -> usize {
        let want = items.len().min(self.size as usize) as u32;
        let n = self.free(want);
        for (i, item) in items[..n as usize].iter().enumerate() {
            // SAFETY: slots between cached_prod and cached_cons are ours to write.
            unsafe {
                ptr::write_volatile(
                    self.slot(self.cached_prod.wrapping_add(i as u32)),
                    conv(item),
                )
            };
        }
        if n > 0 {
            self.cached_prod = self.cached_prod.wrapping_add(n);
            // Release: the slot contents are visible before the new producer index.
            self.producer().store(self.cached_prod, Ordering::Release);
        }
        n as usize
    }

    /// Consumer side: reads up to `out.len()` entries and releases their slots.
    #[inline]
    pub(super) fn consume<S>(&mut self, out: &mut [S], conv: impl Fn(T) -> S) -> usize {
        let want = out.len().min(self.size as usize) as u32;
        let mut avail = self.cached_prod.wrapping_sub(self.cached_cons);
        if avail == 0 {
            // Acquire: slot contents written before `producer` advanced are visible.
            self.cached_prod = self.producer().load(Ordering::Acquire);
            avail = self.cached_prod.wrapping_sub(self.cached_cons);
        }
        let n = avail.min(want);
        for (i, o) in out[..n as usize].iter_mut().enumerate() {
            // SAFETY: slots between cached_cons and cached_prod were published to us.
            *o = conv(unsafe {
                ptr::read_volatile(self.slot(self.cached_cons.wrapping_add(i as u32)))
            });
        }
        if n > 0 {
            self.cached_cons = self.cached_cons.wrapping_add(n);
            // Release: we are done reading the slots before the kernel may reuse them.
            self.consumer().store(self.cached_cons, Ordering::Release);
        }
        n as usize
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `map`.
        unsafe { libc::munmap(self.map.as_ptr(), self.map_len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring over plain memory, to check index arithmetic without a kernel.
    fn fake_ring<T: Copy>(mem: &mut Vec<u64>, size: u32, producer_side: bool) -> Ring<T> {
        // Layout: producer at 0, consumer at 8, flags at 16, descs from 64.
        mem.resize(8 + size as usize * size_of::<T>().div_ceil(8), 0);
        let base = mem.as_mut_ptr().cast::<u8>();
        let at = |o: usize| NonNull::new(unsafe { base.add(o) }).unwrap();
        let mut r = Ring {
            map: NonNull::dangling(),
            map_len: 0,
            producer: at(0).cast(),
            consumer: at(8).cast(),
            flags: at(16).cast(),
            descs: at(64).cast(),
            mask: size - 1,
            size,
            cached_prod: 0,
            cached_cons: 0,
        };
        if producer_side {
            r.cached_cons = size;
        }
        r
    }

    #[test]
    fn ring_produce_consume_wraps() {
        let mut mem = Vec::new();
        let mut prod: Ring<u64> = fake_ring(&mut mem, 4, true);
        // Second view of the same memory playing the kernel's consumer role.
        let mut cons: Ring<u64> = Ring {
            map: NonNull::dangling(),
            map_len: 0,
            producer: prod.producer,
            consumer: prod.consumer,
            flags: prod.flags,
            descs: prod.descs,
            mask: 3,
            size: 4,
            cached_prod: 0,
            cached_cons: 0,
        };
        let mut out = [0u64; 8];
        for round in 0..5u64 {
            let items: Vec<u64> = (0..6).map(|i| round * 100 + i).collect();
            assert_eq!(prod.produce(&items, |&a| a), 4, "only 4 slots");
            assert_eq!(prod.produce(&items, |&a| a), 0, "ring full");
            assert_eq!(cons.consume(&mut out[..3], |a| a), 3);
            assert_eq!(&out[..3], &items[..3]);
            assert_eq!(prod.produce(&items[4..], |&a| a), 2);
            assert_eq!(cons.consume(&mut out, |a| a), 1);
            assert_eq!(out[0], items[3]);
            assert_eq!(cons.consume(&mut out, |a| a), 2);
            assert_eq!(&out[..2], &items[4..6]);
            assert_eq!(cons.consume(&mut out, |a| a), 0);
        }
        assert_eq!(prod.producer().load(Ordering::Relaxed), 30);
        // Do not munmap the fake mappings.
        std::mem::forget(prod);
        std::mem::forget(cons);
    }

    /// The indexes are free-running u32s: a ring that has moved 2^32 entries keeps working.
    /// Starts a few entries before the wrap and crosses it in every phase: full ring,
    /// partial produce, partial consume, empty ring.
    #[test]
    fn ring_indices_cross_the_u32_wrap() {
        for start in [u32::MAX - 5, u32::MAX - 3, u32::MAX, 0u32.wrapping_sub(8)] {
            let mut mem = Vec::new();
            let mut prod: Ring<u64> = fake_ring(&mut mem, 8, true);
            prod.producer().store(start, Ordering::Relaxed);
            prod.consumer().store(start, Ordering::Relaxed);
            prod.cached_prod = start;
            prod.cached_cons = start.wrapping_add(8);
            let mut cons: Ring<u64> = Ring {
                map: NonNull::dangling(),
                map_len: 0,
                producer: prod.producer,
                consumer: prod.consumer,
                flags: prod.flags,
                descs: prod.descs,
                mask: 7,
                size: 8,
                cached_prod: start,
                cached_cons: start,
            };
            let mut next = 0u64;
            let mut expect = 0u64;
            let mut out = [0u64; 16];
            for round in 0..40u64 {
                // Produce 1..=8 entries, consume 1..=8: the fill level wanders over 0..=8.
                let want = (round * 5 % 8 + 1) as usize;
                let items: Vec<u64> = (next..next + want as u64).collect();
                let level = next - expect;
                let n = prod.produce(&items, |&a| a);
                assert_eq!(
                    n as u64,
                    (want as u64).min(8 - level),
                    "free space at {start}"
                );
                next += n as u64;
                let take = (round * 3 % 8 + 1) as usize;
                let m = cons.consume(&mut out[..take], |a| a);
                // The consumer re-reads the producer index only when its cached view is
                // empty (as libxdp's peek does), so it may see fewer, never more, and
                // never nothing when there is something.
                let avail = next - expect;
                assert!(m as u64 <= (take as u64).min(avail));
                assert!(m > 0 || avail == 0, "entries lost at the wrap ({start})");
                for &v in &out[..m] {
                    assert_eq!(v, expect, "order across the wrap at {start}");
                    expect += 1;
                }
            }
            while next > expect {
                let m = cons.consume(&mut out, |a| a);
                assert!(m > 0);
                for &v in &out[..m] {
                    assert_eq!(v, expect);
                    expect += 1;
                }
            }
            assert_eq!(
                prod.producer().load(Ordering::Relaxed),
                start.wrapping_add(next as u32)
            );
            assert_eq!(
                prod.producer().load(Ordering::Relaxed),
                cons.consumer().load(Ordering::Relaxed)
            );
            std::mem::forget(prod);
            std::mem::forget(cons);
        }
    }
}
