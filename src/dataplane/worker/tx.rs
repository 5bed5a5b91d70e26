//! The transmit side of a worker: link-layer addresses for a next hop, the egress port's
//! queue (copying between UMEMs where two sockets do not share one), transmit rings, fill
//! rings and completions.

use super::*;

impl Worker {
    /// Fills in the link-layer addresses for `next_hop` on `egress` and queues the frame on
    /// that port (copied into the port's UMEM when it has its own). For an unresolved
    /// neighbour the kernel is asked to resolve it and the frame is held in its chunk
    /// until it resolves (see `hold`).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn send(
        &mut self,
        pool: usize,
        base: u64,
        off: usize,
        len: usize,
        egress: Egress,
        next_hop: Ipv4Addr,
        outs: &mut Vec<Out>,
    ) {
        let port = self.egress_ports[match egress {
            Egress::Outside => 0,
            Egress::Inside(i) => 1 + i as usize,
        }];
        let ifindex = self.egress_ifindex(port, pool, base + off as u64, len);
        let Some(dst_mac) = self.shared.neigh.lookup(ifindex, next_hop) else {
            self.hold_frame(pool, base, off, len, port, ifindex, next_hop);
            return;
        };
        if self.hold.held() != 0
            && (self.hold_recheck || self.shared.neigh.generation() != self.hold_gen)
        {
            // Frames held for this next hop go first (it resolved since the last check).
            // With the neighbour table unchanged since the round's `release_held` every
            // next hop still waited for is unresolved, so this one has nothing held: no
            // search, even while some unreachable host keeps frames waiting.
            self.release_neighbour(ifindex, next_hop, dst_mac, outs);
        }
        self.emit(pool, base, off, len, port, dst_mac, outs);
    }

    /// Fills in the MACs of a frame for `port` and queues it there (copied into the
    /// port's UMEM when it has its own).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    pub(super) fn emit(
        &mut self,
        pool: usize,
        base: u64,
        off: usize,
        len: usize,
        port: usize,
        dst_mac: [u8; 6],
        outs: &mut Vec<Out>,
    ) {
        let (src_mac, epool) = (self.ports[port].mac, self.ports[port].pool);
        // SAFETY: we own the chunk (see process_frames; a held chunk stays ours).
        let d = unsafe { self.pools[pool].umem.frame_mut(base + off as u64, 12) };
        d[..6].copy_from_slice(&dst_mac);
        d[6..12].copy_from_slice(&src_mac);
        let desc = if epool == pool {
            Desc {
                addr: base + off as u64,
                len: len as u32,
            }
        } else {
            match self.copy_to_pool(pool, base, off, len, epool) {
                Some(desc) => desc,
                None => return,
            }
        };
        outs.push(Out { port, desc });
    }

    /// The interface whose neighbours a frame leaving by `port` goes to: the port's own, or
    /// for a frame the engine tagged with one of the port's VLANs, that VLAN's device.
    #[inline]
    pub(super) fn egress_ifindex(&self, port: usize, pool: usize, addr: u64, len: usize) -> u32 {
        let p = &self.ports[port];
        if p.vlan_ifindex.is_empty() || len < 18 {
            return p.ifindex;
        }
        // The engine has already set the frame's tag for its egress VLAN.
        let d = self.pools[pool].umem.frame(addr, 16);
        if d.len() >= 16 && d[12..14] == [0x81, 0x00] {
            let vid = u16::from_be_bytes([d[14], d[15]]) & 0x0fff;
            if let Some(&(_, i)) = p.vlan_ifindex.iter().find(|(v, _)| *v == vid) {
                return i;
            }
        }
        p.ifindex
    }

    /// No shared UMEM between the receiving and the sending socket: the frame is copied into
    /// a free chunk of `epool` (counted) and its own chunk recycled. None: no free chunk, the
    /// frame is dropped and counted.
    pub(super) fn copy_to_pool(
        &mut self,
        pool: usize,
        base: u64,
        off: usize,
        len: usize,
        epool: usize,
    ) -> Option<Desc> {
        let Some(nb) = self.pools[epool].free.pop() else {
            self.counters.dropped(DropReason::TxFull);
            self.pools[pool].free.push(base);
            return None;
        };
        let src = self.pools[pool].umem.frame(base + off as u64, len);
        // Same offset as in the source chunk: `off + len` fits a chunk, while a frame that
        // grew in front (VLAN tag pushed) need not fit after TX_HEADROOM. Both pools use
        // FRAME_SIZE chunks.
        // SAFETY: `nb` came from the free list: ours alone.
        let dst = unsafe { self.pools[epool].umem.frame_mut(nb + off as u64, len) };
        let n = dst.len().min(src.len());
        dst[..n].copy_from_slice(&src[..n]);
        self.pools[pool].free.push(base);
        self.dp.copied_frames.inc();
        Some(Desc {
            addr: nb + off as u64,
            len: n as u32,
        })
    }

    pub(super) fn transmit(&mut self, sc: &mut Scratch) {
        if sc.outs.is_empty() {
            return;
        }
        for pi in 0..self.ports.len() {
            sc.tx.clear();
            sc.tx
                .extend(sc.outs.iter().filter(|o| o.port == pi).map(|o| o.desc));
            if sc.tx.is_empty() {
                continue;
            }
            let sent = self.ports[pi].sock.send(&sc.tx);
            self.dp.tx_frames.add(sent as u64);
            if let Some(ps) = self.dp.stats.ports.get(pi) {
                ps.tx_packets.add(sent as u64);
                ps.tx_bytes
                    .add(sc.tx[..sent].iter().map(|d| u64::from(d.len)).sum());
            }
            for d in &sc.tx[sent..] {
                let pool = self.ports[pi].pool;
                let base = self.pools[pool].chunk(d.addr);
                self.pools[pool].free.push(base);
                self.counters.dropped(DropReason::TxFull);
            }
            let _ = self.ports[pi].sock.kick_tx();
        }
        sc.outs.clear();
    }

    /// Gives every socket's fill ring free frames, keeping some back for transmit copies.
    pub(super) fn refill(&mut self) {
        for p in &mut self.ports {
            let pool = &mut self.pools[p.pool];
            let n = pool
                .free
                .len()
                .saturating_sub(self.batch * 2)
                .min(self.batch * 4);
            if n == 0 {
                continue;
            }
            let start = pool.free.len() - n;
            let given = p.sock.fill(&pool.free[start..]);
            // `fill` takes a prefix of the slice: remove exactly those frames.
            pool.free.drain(start..start + given);
            if given > 0 {
                p.sock.wakeup_rx();
            }
        }
    }

    pub(super) fn reap_completions(&mut self, scratch: &mut [u64]) {
        for p in &mut self.ports {
            loop {
                let n = p.sock.complete(scratch);
                let pool = &mut self.pools[p.pool];
                for a in &scratch[..n] {
                    let base = pool.chunk(*a);
                    pool.free.push(base);
                }
                if n < scratch.len() {
                    break;
                }
            }
        }
    }
}
