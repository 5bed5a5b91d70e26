//! Per-flow sequence accounting: received, lost (gaps), reordered (late but new),
//! duplicates, and packets too late to tell. State per flow: the next expected sequence
//! number and a 64-bit window of the ones just below it; allocated once for a fixed number
//! of flows.

/// How far back (in sequence numbers) a late packet can still be told from a duplicate.
pub const WINDOW: u32 = 64;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct FlowState {
    /// Highest sequence number seen + 1 (0: nothing seen yet).
    next: u32,
    /// Bit `i` set: `next - 1 - i` was received.
    seen: u64,
}

/// Totals over all flows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SeqStats {
    /// Packets with a valid flow id (duplicates included).
    pub received: u64,
    /// Distinct sequence numbers received.
    pub unique: u64,
    /// Gaps below the highest sequence number seen, net of late arrivals that filled them.
    pub lost: u64,
    /// Arrived after a higher sequence number of their flow (each is also in `unique`).
    pub reordered: u64,
    pub duplicates: u64,
    /// More than [`WINDOW`] behind: counted as reordered, though it could be a duplicate.
    pub too_late: u64,
    /// Flow id outside the tracked range (counted nowhere else).
    pub out_of_range: u64,
    /// Flows with at least one packet.
    pub flows_seen: u64,
}

pub struct Tracker {
    flows: Vec<FlowState>,
    pub stats: SeqStats,
}

impl Tracker {
    /// Tracks flow ids `0..flows`.
    pub fn new(flows: usize) -> Tracker {
        Tracker {
            flows: vec![FlowState::default(); flows],
            stats: SeqStats::default(),
        }
    }

    pub fn capacity(&self) -> usize {
        self.flows.len()
    }

    #[inline]
    pub fn record(&mut self, flow: u32, seq: u32) {
        let Some(st) = self.flows.get_mut(flow as usize) else {
            self.stats.out_of_range += 1;
            return;
        };
        let s = &mut self.stats;
        s.received += 1;
        if st.next == 0 && st.seen == 0 {
            s.flows_seen += 1;
        }
        if seq >= st.next {
            // New highest: everything between the old next and seq is (for now) lost.
            let gap = seq - st.next;
            s.lost += gap as u64;
            s.unique += 1;
            let shift = gap as u64 + 1;
            st.seen = if shift >= 64 { 0 } else { st.seen << shift };
            st.seen |= 1;
            st.next = seq.wrapping_add(1);
            if st.next == 0 {
                // 2^32 packets in one flow: start over rather than wrap into "late".
                st.seen = 0;
            }
            return;
        }
        let back = st.next - 1 - seq;
        if back >= WINDOW {
            s.too_late += 1;
            s.reordered += 1;
            s.unique += 1;
            s.lost = s.lost.saturating_sub(1);
            return;
        }
        let bit = 1u64 << back;
        if st.seen & bit != 0 {
            s.duplicates += 1;
        } else {
            st.seen |= bit;
            s.reordered += 1;
            s.unique += 1;
            s.lost = s.lost.saturating_sub(1);
        }
    }

    /// Adds `other`'s totals (another thread's tracker). A flow seen by both (its packets
    /// spread over queues) is counted as seen twice; RSS keeps a flow on one queue.
    pub fn merge_stats(a: &mut SeqStats, b: &SeqStats) {
        a.received += b.received;
        a.unique += b.unique;
        a.lost += b.lost;
        a.reordered += b.reordered;
        a.duplicates += b.duplicates;
        a.too_late += b.too_late;
        a.out_of_range += b.out_of_range;
        a.flows_seen += b.flows_seen;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(seqs: &[(u32, u32)]) -> SeqStats {
        let mut t = Tracker::new(4);
        for &(f, s) in seqs {
            t.record(f, s);
        }
        t.stats
    }

    #[test]
    fn in_order_is_clean() {
        let s = run(&[(0, 0), (0, 1), (1, 0), (0, 2), (1, 1)]);
        assert_eq!(s.received, 5);
        assert_eq!(s.unique, 5);
        assert_eq!((s.lost, s.reordered, s.duplicates), (0, 0, 0));
        assert_eq!(s.flows_seen, 2);
    }

    #[test]
    fn gaps_are_loss_until_filled() {
        let s = run(&[(0, 0), (0, 3), (0, 4)]);
        assert_eq!(s.lost, 2);
        let s = run(&[(0, 0), (0, 3), (0, 1), (0, 2)]);
        assert_eq!((s.lost, s.reordered, s.unique), (0, 2, 4));
        // A flow whose first packets were lost.
        let s = run(&[(2, 5)]);
        assert_eq!((s.lost, s.unique), (5, 1));
    }

    #[test]
    fn duplicates_are_told_from_reordering() {
        let s = run(&[(0, 0), (0, 1), (0, 1), (0, 0), (0, 2)]);
        assert_eq!((s.duplicates, s.reordered, s.lost, s.unique), (2, 0, 0, 3));
        let s = run(&[(0, 0), (0, 2), (0, 1), (0, 1)]);
        assert_eq!((s.duplicates, s.reordered, s.lost), (1, 1, 0));
    }

    #[test]
    fn beyond_the_window_is_too_late() {
        let mut v = vec![(0, 0)];
        v.push((0, 100));
        v.push((0, 1)); // 99 behind
        let s = run(&v);
        assert_eq!((s.too_late, s.reordered, s.lost), (1, 1, 98));
        // A jump larger than the window clears it: the old ones are late, not duplicates.
        let s = run(&[(0, 0), (0, 1), (0, 200), (0, 150)]);
        assert_eq!((s.duplicates, s.reordered, s.too_late), (0, 1, 0));
    }

    #[test]
    fn out_of_range_flows_are_counted_apart() {
        let s = run(&[(4, 0), (u32::MAX, 1), (0, 0)]);
        assert_eq!((s.out_of_range, s.received), (2, 1));
    }
}
