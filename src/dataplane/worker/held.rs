//! Frames a worker holds for a next hop the kernel is still resolving: held in their UMEM
//! chunks (`dataplane::hold`), released in order once the neighbour table has the address,
//! dropped and counted on overflow, timeout or failure.

use super::*;

impl Worker {
    /// A frame whose next hop is not resolved: ask the kernel and hold the frame in its
    /// chunk. Only on a miss; bounded work (a scan of the neighbours already waited for).
    #[allow(clippy::too_many_arguments)]
    pub(super) fn hold_frame(
        &mut self,
        pool: usize,
        base: u64,
        off: usize,
        len: usize,
        port: usize,
        ifindex: u32,
        next_hop: Ipv4Addr,
    ) {
        let frame = Held {
            pool: pool as u16,
            port: port as u16,
            off: off as u32,
            len: len as u32,
            base,
        };
        let now = self.now_ns();
        let generation = self.shared.neigh.generation();
        let push = self.hold.push(ifindex, next_hop, frame, now, generation);
        // A new wait always asks the kernel, even if it was asked less than a second ago
        // (the neighbour may have been flushed since); later frames ask at most once a
        // second, in case a request was lost.
        self.ask_resolve(ifindex, next_hop, push == Push::Held { first: true });
        match push {
            Push::Held { .. } => self.dp.neigh_held.inc(),
            Push::Evicted(old) => {
                self.dp.neigh_held.inc();
                self.drop_held(old, HoldDrop::Overflow);
            }
            Push::Refused(f) => self.drop_held(f, HoldDrop::Overflow),
        }
        // The neighbour may have resolved between the lookup and now, without a later
        // generation change: look again at the next check.
        self.hold_recheck = true;
        self.dp.neigh_hold_active.set(self.hold.held() as u64);
    }

    /// Returns a held frame's chunk to its pool, counted.
    pub(super) fn drop_held(&mut self, h: Held, why: HoldDrop) {
        self.pools[h.pool as usize].free.push(h.base);
        self.counters.dropped(DropReason::NoNeighbour);
        match why {
            HoldDrop::Overflow => &self.dp.neigh_hold_overflow,
            HoldDrop::Expired => &self.dp.neigh_hold_expired,
            HoldDrop::Failed => &self.dp.neigh_hold_failed,
        }
        .inc();
    }

    /// Sends the frames held for `addr` on `ifindex`, oldest first, now that its MAC is
    /// known.
    pub(super) fn release_neighbour(
        &mut self,
        ifindex: u32,
        addr: Ipv4Addr,
        mac: [u8; 6],
        outs: &mut Vec<Out>,
    ) {
        if let Some(i) = self.hold.find(ifindex, addr) {
            self.release_at(i, mac, outs);
        }
    }

    pub(super) fn release_at(&mut self, i: usize, mac: [u8; 6], outs: &mut Vec<Out>) {
        while let Some(h) = self.hold.pop(i) {
            self.dp.neigh_released.inc();
            let (pool, port) = (h.pool as usize, h.port as usize);
            self.emit(
                pool,
                h.base,
                h.off as usize,
                h.len as usize,
                port,
                mac,
                outs,
            );
        }
        self.hold.remove(i);
        self.dp.neigh_hold_active.set(self.hold.held() as u64);
    }

    /// Once per round while frames are held: if the neighbour table changed (or a frame
    /// was just held), looks up every neighbour waited for, sends the frames of those now
    /// resolved and drops those whose resolution failed after they were held. Returns
    /// whether any frame left the queue.
    pub(super) fn release_held(&mut self, outs: &mut Vec<Out>) -> bool {
        let generation = self.shared.neigh.generation();
        if generation == self.hold_gen && !self.hold_recheck {
            return false;
        }
        self.hold_gen = generation;
        self.hold_recheck = false;
        let before = self.hold.held();
        // From the highest number down: removing one renumbers only the last.
        for i in (0..self.hold.pending()).rev() {
            let (ifindex, addr, since_gen) = self.hold.neighbour(i);
            match self.shared.neigh.state(ifindex, addr) {
                NeighState::Usable(mac) => self.release_at(i, mac, outs),
                NeighState::Failed(at) if at > since_gen => {
                    self.dp.neighbour_resolution_failures.inc();
                    self.drop_neighbour(i, HoldDrop::Failed)
                }
                // Still being resolved, or a failure from before this wait (the kernel
                // was asked again).
                NeighState::Failed(_) | NeighState::Unknown => {}
            }
        }
        self.dp.neigh_hold_active.set(self.hold.held() as u64);
        self.hold.held() != before
    }

    /// Drops held frames older than the hold time (on the housekeeping tick).
    pub(super) fn expire_held(&mut self, now: u64) {
        if self.hold.held() == 0 {
            return;
        }
        for i in (0..self.hold.pending()).rev() {
            while let Some(h) = self.hold.pop_expired(i, now) {
                self.drop_held(h, HoldDrop::Expired);
            }
            self.hold.remove(i);
        }
        self.dp.neigh_hold_active.set(self.hold.held() as u64);
    }

    /// At shutdown: every held chunk back to its pool, counted as expired.
    pub(super) fn discard_held(&mut self) {
        for i in (0..self.hold.pending()).rev() {
            self.drop_neighbour(i, HoldDrop::Expired);
        }
        self.dp.neigh_hold_active.set(0);
    }

    /// Drops every frame held for neighbour `i` and stops waiting for it.
    fn drop_neighbour(&mut self, i: usize, why: HoldDrop) {
        while let Some(h) = self.hold.pop(i) {
            self.drop_held(h, why);
        }
        self.hold.remove(i);
    }

    /// Asks the management thread to have the kernel resolve `addr` on `ifindex`: at most
    /// once a second per neighbour, unless `now_anyway`.
    pub(super) fn ask_resolve(&mut self, ifindex: u32, addr: Ipv4Addr, now_anyway: bool) {
        let now = self.now_ns();
        if !now_anyway
            && self.asked.iter().any(|&(i, a, t)| {
                i == ifindex && a == addr && now.saturating_sub(t) < 1_000_000_000
            })
        {
            return;
        }
        self.asked[self.asked_next] = (ifindex, addr, now);
        self.asked_next = (self.asked_next + 1) % self.asked.len();
        if self.shared.resolve.push((ifindex, addr)).is_ok() {
            self.dp.neigh_requests.inc();
            // At most once a second per neighbour (above): the management thread sleeps
            // until traffic of its own or this.
            self.shared.mgmt_wake.signal();
        }
    }
}
