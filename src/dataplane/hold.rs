//! Frames waiting for their next hop's link-layer address, like the kernel's per-neighbour
//! `arp_queue` (`unres_qlen`): a frame whose neighbour is not resolved yet stays in its
//! UMEM chunk and only its position (pool, chunk, offset, length, egress port) is kept
//! here, in a structure preallocated once per worker. Nothing is copied or allocated per
//! frame.
//!
//! Bounded three ways: frames per worker, neighbours waited for per worker, frames per
//! neighbour. Like the kernel, a neighbour's full queue drops its oldest frame to make room
//! for the new one; when the worker-wide limits are reached the new frame is refused. The
//! worker releases a neighbour's frames in arrival order once the neighbour resolves, and
//! drops them when they are older than the timeout or the resolution failed.
//!
//! The queue knows nothing of UMEMs: every frame it gives back (released, evicted, refused,
//! expired, drained) goes back to the caller, who owns returning its chunk to its pool.

use std::net::Ipv4Addr;

/// Where a held frame lives and where it goes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Held {
    /// The UMEM pool the chunk belongs to.
    pub pool: u16,
    /// The port (AF_XDP socket) the frame leaves by.
    pub port: u16,
    /// Start of the frame within its chunk, and its length.
    pub off: u32,
    pub len: u32,
    /// The chunk's base address in its UMEM.
    pub base: u64,
}

/// The bounds of a [`HoldQueue`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HoldLimits {
    /// Frames held at once, all neighbours together.
    pub frames: usize,
    /// Neighbours waited for at once.
    pub neighbours: usize,
    /// Frames held for one neighbour (the kernel's `unres_qlen`).
    pub per_neighbour: usize,
    /// How long a frame may wait, in nanoseconds.
    pub timeout_ns: u64,
}

impl HoldLimits {
    /// The defaults for a worker whose UMEM has `umem_frames` chunks: 64 frames per
    /// neighbour (128 KiB of chunks, the order of the kernel's `unres_qlen_bytes` of
    /// 212992 bytes of buffer), up to 256 frames and 64 neighbours per worker but never
    /// more than an eighth of the UMEM, and 3 s: as long as the kernel keeps its own queue
    /// (three probes `retrans_time` apart, then FAILED), so a lost ARP request or reply
    /// costs a retry, not the frames; a resolution that fails drops them at once anyway.
    pub fn for_umem(umem_frames: usize) -> HoldLimits {
        let frames = (umem_frames / 8).clamp(1, 256);
        HoldLimits {
            frames,
            neighbours: frames.min(64),
            per_neighbour: frames.min(64),
            timeout_ns: 3_000_000_000,
        }
    }
}

const NIL: u32 = u32::MAX;

#[derive(Clone, Copy)]
struct Node {
    frame: Held,
    /// When the frame was held (the worker's clock, ns).
    since: u64,
    next: u32,
}

/// One neighbour with frames waiting: a FIFO of nodes.
#[derive(Clone, Copy)]
struct Pending {
    ifindex: u32,
    addr: Ipv4Addr,
    head: u32,
    tail: u32,
    count: u32,
    /// The neighbour table's generation when the first frame was held: a failure recorded
    /// after it is a failure of this resolution.
    since_gen: u64,
}

/// What [`HoldQueue::push`] did with a frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Push {
    /// Held; `first` when no frame was waiting for this neighbour before.
    Held { first: bool },
    /// Held, and the neighbour's oldest frame was dropped to make room: the caller drops it.
    Evicted(Held),
    /// Not held (the worker-wide limits are reached): the caller drops it.
    Refused(Held),
}

/// The frames of one worker that wait for a next hop.
pub struct HoldQueue {
    limits: HoldLimits,
    nodes: Box<[Node]>,
    free: u32,
    /// Neighbours with frames: the first `active` entries.
    pending: Box<[Pending]>,
    active: usize,
    held: usize,
}

impl HoldQueue {
    pub fn new(limits: HoldLimits) -> HoldQueue {
        let limits = HoldLimits {
            frames: limits.frames.clamp(1, NIL as usize - 1),
            neighbours: limits.neighbours.max(1),
            per_neighbour: limits.per_neighbour.max(1),
            ..limits
        };
        let empty = Held {
            pool: 0,
            port: 0,
            off: 0,
            len: 0,
            base: 0,
        };
        let nodes = (0..limits.frames)
            .map(|i| Node {
                frame: empty,
                since: 0,
                next: if i + 1 < limits.frames {
                    i as u32 + 1
                } else {
                    NIL
                },
            })
            .collect();
        let pending = vec![
            Pending {
                ifindex: 0,
                addr: Ipv4Addr::UNSPECIFIED,
                head: NIL,
                tail: NIL,
                count: 0,
                since_gen: 0,
            };
            limits.neighbours
        ]
        .into_boxed_slice();
        HoldQueue {
            limits,
            nodes,
            free: 0,
            pending,
            active: 0,
            held: 0,
        }
    }

    pub fn limits(&self) -> HoldLimits {
        self.limits
    }

    /// Frames held now.
    #[inline(always)]
    pub fn held(&self) -> usize {
        self.held
    }

    /// Neighbours with frames waiting; they are numbered `0..pending()` until one is
    /// removed (see [`remove`](Self::remove)).
    pub fn pending(&self) -> usize {
        self.active
    }

    /// (ifindex, next hop, table generation when the wait started) of waiting neighbour `i`.
    pub fn neighbour(&self, i: usize) -> (u32, Ipv4Addr, u64) {
        let p = &self.pending[i];
        (p.ifindex, p.addr, p.since_gen)
    }

    /// The number of the neighbour `addr` on `ifindex` if frames wait for it.
    pub fn find(&self, ifindex: u32, addr: Ipv4Addr) -> Option<usize> {
        self.pending[..self.active]
            .iter()
            .position(|p| p.ifindex == ifindex && p.addr == addr)
    }

    /// Holds `frame` for `addr` on `ifindex` at time `now`; `generation` is the neighbour
    /// table's generation, recorded when this is the neighbour's first frame.
    pub fn push(
        &mut self,
        ifindex: u32,
        addr: Ipv4Addr,
        frame: Held,
        now: u64,
        generation: u64,
    ) -> Push {
        let (i, first) = match self.find(ifindex, addr) {
            Some(i) => (i, false),
            None => {
                if self.active == self.pending.len() || self.free == NIL {
                    return Push::Refused(frame);
                }
                self.pending[self.active] = Pending {
                    ifindex,
                    addr,
                    head: NIL,
                    tail: NIL,
                    count: 0,
                    since_gen: generation,
                };
                self.active += 1;
                (self.active - 1, true)
            }
        };
        let mut evicted = None;
        if self.pending[i].count as usize >= self.limits.per_neighbour {
            evicted = self.pop(i);
        }
        if self.free == NIL {
            // Worker-wide limit reached: only a neighbour that already waits gets here.
            debug_assert!(evicted.is_none() && !first);
            return Push::Refused(frame);
        }
        let n = self.free;
        self.free = self.nodes[n as usize].next;
        self.nodes[n as usize] = Node {
            frame,
            since: now,
            next: NIL,
        };
        let p = &mut self.pending[i];
        match p.tail {
            NIL => p.head = n,
            t => self.nodes[t as usize].next = n,
        }
        p.tail = n;
        p.count += 1;
        self.held += 1;
        match evicted {
            Some(e) => Push::Evicted(e),
            None => Push::Held { first },
        }
    }

    /// The oldest frame waiting for neighbour `i`, taken out of the queue. The neighbour
    /// keeps its number (and stays listed, possibly empty) until [`remove`](Self::remove).
    pub fn pop(&mut self, i: usize) -> Option<Held> {
        let p = &mut self.pending[i];
        let n = p.head;
        if n == NIL {
            return None;
        }
        let node = self.nodes[n as usize];
        p.head = node.next;
        if p.head == NIL {
            p.tail = NIL;
        }
        p.count -= 1;
        self.nodes[n as usize].next = self.free;
        self.free = n;
        self.held -= 1;
        Some(node.frame)
    }

    /// When the oldest frame of neighbour `i` was held.
    pub fn oldest(&self, i: usize) -> Option<u64> {
        let h = self.pending[i].head;
        (h != NIL).then(|| self.nodes[h as usize].since)
    }

    /// Pops neighbour `i`'s oldest frame if it has waited longer than the timeout at `now`.
    pub fn pop_expired(&mut self, i: usize, now: u64) -> Option<Held> {
        let since = self.oldest(i)?;
        if now.saturating_sub(since) < self.limits.timeout_ns {
            return None;
        }
        self.pop(i)
    }

    /// Stops listing neighbour `i` once it has no frames left (then the last neighbour takes
    /// number `i`: iterate from the highest number down). Returns whether it was removed.
    pub fn remove(&mut self, i: usize) -> bool {
        if self.pending[i].head != NIL {
            return false;
        }
        self.active -= 1;
        self.pending.swap(i, self.active);
        true
    }

    /// Takes every frame out (in order per neighbour) and forgets every neighbour.
    pub fn drain(&mut self, mut f: impl FnMut(Held)) {
        for i in (0..self.active).rev() {
            while let Some(h) = self.pop(i) {
                f(h);
            }
            self.remove(i);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 3);
    const C: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 4);

    /// Two pools of chunk addresses standing in for two UMEMs: a chunk must come back to
    /// the pool it came from, exactly once.
    struct Pools {
        free: [Vec<u64>; 2],
        size: usize,
    }

    impl Pools {
        fn new(size: usize) -> Pools {
            Pools {
                free: [0, 1].map(|p| (0..size as u64).map(|i| (p << 32) | (i * 2048)).collect()),
                size,
            }
        }
        fn take(&mut self, pool: u16, len: u32) -> Held {
            let base = self.free[pool as usize].pop().expect("a free chunk");
            Held {
                pool,
                port: pool,
                off: 256,
                len,
                base,
            }
        }
        fn give(&mut self, h: Held) {
            assert_eq!(h.base >> 32, u64::from(h.pool), "chunk of another pool");
            let f = &mut self.free[h.pool as usize];
            assert!(!f.contains(&h.base), "chunk returned twice");
            f.push(h.base);
        }
        fn all_back(&self) -> bool {
            self.free.iter().all(|f| f.len() == self.size)
        }
    }

    fn limits(frames: usize, neighbours: usize, per_neighbour: usize) -> HoldLimits {
        HoldLimits {
            frames,
            neighbours,
            per_neighbour,
            timeout_ns: 1000,
        }
    }

    fn release(q: &mut HoldQueue, ifindex: u32, addr: Ipv4Addr, pools: &mut Pools) -> Vec<u32> {
        let i = q.find(ifindex, addr).expect("neighbour waits");
        let mut out = Vec::new();
        while let Some(h) = q.pop(i) {
            out.push(h.len);
            pools.give(h);
        }
        assert!(q.remove(i));
        out
    }

    #[test]
    fn frames_are_released_in_order_per_neighbour() {
        let mut pools = Pools::new(16);
        let mut q = HoldQueue::new(limits(16, 4, 8));
        for (k, addr) in [A, B, A, A, B, C, A].into_iter().enumerate() {
            let h = pools.take((k % 2) as u16, k as u32);
            let first = [0, 1, 5].contains(&k);
            assert_eq!(q.push(1, addr, h, 0, 7), Push::Held { first });
        }
        assert_eq!((q.held(), q.pending()), (7, 3));
        assert_eq!(q.neighbour(q.find(1, B).unwrap()), (1, B, 7));
        assert_eq!(q.find(2, A), None, "keyed by interface too");
        assert_eq!(release(&mut q, 1, A, &mut pools), [0, 2, 3, 6]);
        assert_eq!(release(&mut q, 1, C, &mut pools), [5]);
        assert_eq!(release(&mut q, 1, B, &mut pools), [1, 4]);
        assert_eq!((q.held(), q.pending()), (0, 0));
        assert!(pools.all_back());
        // Every node is free again: one neighbour fills its 8 places once more.
        for k in 0..8 {
            let h = pools.take(0, k);
            assert!(matches!(q.push(1, A, h, 0, 0), Push::Held { .. }), "{k}");
        }
        assert_eq!(q.held(), 8);
        q.drain(|h| pools.give(h));
        assert!(pools.all_back());
    }

    #[test]
    fn a_full_neighbour_drops_its_oldest_frame() {
        let mut pools = Pools::new(16);
        let mut q = HoldQueue::new(limits(16, 4, 3));
        for k in 0..3 {
            let h = pools.take(0, k);
            assert!(matches!(q.push(1, A, h, 0, 0), Push::Held { .. }));
        }
        let h = pools.take(0, 3);
        let Push::Evicted(old) = q.push(1, A, h, 0, 0) else {
            panic!("no eviction");
        };
        assert_eq!(old.len, 0, "the oldest goes");
        pools.give(old);
        assert_eq!(q.held(), 3);
        assert_eq!(release(&mut q, 1, A, &mut pools), [1, 2, 3]);
        assert!(pools.all_back());
    }

    #[test]
    fn worker_limits_refuse_new_frames() {
        let mut pools = Pools::new(16);
        // Frames: 4 in all; neighbours: 2.
        let mut q = HoldQueue::new(limits(4, 2, 4));
        for (k, addr) in [A, A, B].into_iter().enumerate() {
            let h = pools.take(1, k as u32);
            assert!(matches!(q.push(1, addr, h, 0, 0), Push::Held { .. }));
        }
        // A third neighbour: refused although frames are free.
        let h = pools.take(1, 10);
        assert_eq!(q.push(1, C, h, 0, 0), Push::Refused(h));
        pools.give(h);
        let h = pools.take(1, 3);
        assert!(matches!(q.push(1, B, h, 0, 0), Push::Held { first: false }));
        // Every frame in use: refused, also for a neighbour that waits.
        let h = pools.take(1, 11);
        assert_eq!(q.push(1, A, h, 0, 0), Push::Refused(h));
        pools.give(h);
        assert_eq!(q.held(), 4);
        assert_eq!(release(&mut q, 1, B, &mut pools), [2, 3]);
        // Room again: C gets in now.
        let h = pools.take(1, 12);
        assert_eq!(q.push(1, C, h, 0, 0), Push::Held { first: true });
        q.drain(|h| pools.give(h));
        assert_eq!((q.held(), q.pending()), (0, 0));
        assert!(pools.all_back());
    }

    #[test]
    fn frames_expire_after_the_timeout_oldest_first() {
        let mut pools = Pools::new(16);
        let mut q = HoldQueue::new(limits(16, 4, 8));
        for (k, (addr, t)) in [(A, 0), (B, 100), (A, 500), (A, 900)]
            .into_iter()
            .enumerate()
        {
            let h = pools.take(0, k as u32);
            q.push(1, addr, h, t, 0);
        }
        let sweep = |q: &mut HoldQueue, pools: &mut Pools, now| {
            let mut gone = Vec::new();
            for i in (0..q.pending()).rev() {
                while let Some(h) = q.pop_expired(i, now) {
                    gone.push(h.len);
                    pools.give(h);
                }
                q.remove(i);
            }
            gone.sort_unstable();
            gone
        };
        assert_eq!(sweep(&mut q, &mut pools, 999), Vec::<u32>::new());
        assert_eq!(sweep(&mut q, &mut pools, 1000), [0]);
        assert_eq!(sweep(&mut q, &mut pools, 1500), [1, 2]);
        assert_eq!(q.pending(), 1, "B has gone, A still waits");
        assert_eq!(q.oldest(0), Some(900));
        assert_eq!(sweep(&mut q, &mut pools, 1900), [3]);
        assert_eq!((q.held(), q.pending()), (0, 0));
        assert!(pools.all_back());
    }

    #[test]
    fn defaults_follow_the_umem() {
        let d = HoldLimits::for_umem(8192);
        assert_eq!((d.frames, d.neighbours, d.per_neighbour), (256, 64, 64));
        assert_eq!(d.timeout_ns, 3_000_000_000);
        let small = HoldLimits::for_umem(128);
        assert_eq!(
            (small.frames, small.neighbours, small.per_neighbour),
            (16, 16, 16)
        );
    }
}
