//! Frames that belong to another core's flows: handed to it over a bounded queue, taken
//! from ours and run through the engine; and fragments the engine released from its hold.

use super::*;

impl Worker {
    /// Copies a frame onto the handoff queue of the core that owns its flow; a full queue
    /// or no free buffer drops it, counted. The caller recycles the frame's chunk.
    pub(super) fn hand_off(
        &mut self,
        pool: usize,
        base: u64,
        off: usize,
        len: usize,
        core: usize,
        ingress: Ingress,
    ) {
        let q = self.shared.handoff.get(core);
        let boxed = self.shared.handoff_free.pop();
        match (q, boxed) {
            (Some(q), Some(mut b)) if len <= HANDOFF_MTU => {
                let src = self.pools[pool].umem.frame(base + off as u64, len);
                b.data[..src.len()].copy_from_slice(src);
                b.len = src.len() as u16;
                b.ingress = ingress;
                if let Err(b) = q.push(b) {
                    let _ = self.shared.handoff_free.push(b);
                    self.counters.dropped(DropReason::HandoffFull);
                }
            }
            (_, b) => {
                if let Some(b) = b {
                    let _ = self.shared.handoff_free.push(b);
                }
                self.counters.dropped(DropReason::HandoffFull);
            }
        }
    }

    /// Frames other cores handed to us: copied into our UMEM and run through the engine.
    pub(super) fn process_handoffs(&mut self, sc: &mut Scratch) -> bool {
        let Some(q) = self.shared.handoff.get(self.engine.core()).cloned() else {
            return false;
        };
        let mut any = false;
        loop {
            sc.pos.clear();
            let mut ingress = None;
            while sc.pos.len() < self.batch && !self.pools[0].free.is_empty() {
                // One engine call per ingress kind: stop at a change. A frame taken but not
                // processed waits in `handoff_carry` and goes first next time: pushing it
                // back to the end of the queue would reorder the frames of its flow.
                let Some(b) = self.handoff_carry.take().or_else(|| q.pop()) else {
                    break;
                };
                if ingress.is_some_and(|i| i != b.ingress) {
                    self.handoff_carry = Some(b);
                    break;
                }
                ingress = Some(b.ingress);
                let base = self.pools[0].free.pop().unwrap_or_default();
                let len = b.len as usize;
                // SAFETY: a free chunk is ours alone.
                let dst = unsafe { self.pools[0].umem.frame_mut(base + TX_HEADROOM as u64, len) };
                let n = dst.len().min(len);
                dst[..n].copy_from_slice(&b.data[..n]);
                let _ = self.shared.handoff_free.push(b);
                sc.pos.push((base, TX_HEADROOM, n));
                self.dp.handoff_in.inc();
            }
            let Some(ingress) = ingress else { break };
            any = true;
            self.process_frames(0, ingress, sc);
        }
        any
    }

    /// Fragments released from the engine's hold buffer.
    pub(super) fn drain_ready(&mut self, sc: &mut Scratch) {
        sc.ready.clear();
        let pools = &mut self.pools;
        let ready = &mut sc.ready;
        let counters = &self.counters;
        self.engine.drain_ready(|bytes, v| {
            let Some(base) = pools[0].free.pop() else {
                // The engine has let go of the fragment: it is lost, and counted.
                counters.dropped(DropReason::TxFull);
                return;
            };
            // A fragment may have grown by a VLAN tag past what fits after TX_HEADROOM:
            // start it earlier rather than cut it.
            let fsize = pools[0].umem.frame_size() as usize;
            let off = TX_HEADROOM.min(fsize.saturating_sub(bytes.len()));
            // SAFETY: a free chunk is ours alone.
            let dst = unsafe { pools[0].umem.frame_mut(base + off as u64, bytes.len()) };
            let n = dst.len().min(bytes.len());
            dst[..n].copy_from_slice(&bytes[..n]);
            ready.push((base, off, n, v));
        });
        for i in 0..sc.ready.len() {
            let (base, off, len, v) = sc.ready[i];
            self.route(0, base, off, len, v, &mut sc.outs);
        }
    }
}
