//! Rate pacing by the clock, in batches: at time `t` after the start, `rate * t` packets
//! are due; a batch sends what is due and not yet sent, at most one batch. A thread that
//! fell behind (descheduled, ring full) catches up at most `max_debt` packets, so a stall
//! never turns into a burst longer than that; the rest is forgiven and counted.

/// `CLOCK_MONOTONIC` in ns: the timestamp in every frame (the same clock in every network
/// namespace of one machine, so a sink there can take one-way latency).
#[inline]
pub fn now_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out-pointer; CLOCK_MONOTONIC always exists (vDSO, no syscall).
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    t.tv_sec as u64 * 1_000_000_000 + t.tv_nsec as u64
}

#[derive(Clone, Debug)]
pub struct Pacer {
    /// Packets per second; 0 = flat out.
    rate: u64,
    start: u64,
    /// Packets accounted for since `start`: sent, or forgiven.
    done: u64,
    max_debt: u64,
    /// Packets forgiven because the thread fell further behind than `max_debt`.
    pub forgiven: u64,
}

impl Pacer {
    /// `rate` pps (0 = unpaced) from `start` ns; at most `max_debt` packets (>= 1) of
    /// backlog are caught up.
    pub fn new(rate: u64, start: u64, max_debt: u64) -> Pacer {
        Pacer {
            rate,
            start,
            done: 0,
            max_debt: max_debt.max(1),
            forgiven: 0,
        }
    }

    /// Packets due at `now` and not yet sent (`u64::MAX` unpaced).
    #[inline]
    pub fn due(&mut self, now: u64) -> u64 {
        if self.rate == 0 {
            return u64::MAX;
        }
        let elapsed = now.saturating_sub(self.start) as u128;
        let due = (elapsed * self.rate as u128 / 1_000_000_000) as u64;
        let owed = due.saturating_sub(self.done);
        if owed > self.max_debt {
            self.forgiven += owed - self.max_debt;
            self.done = due - self.max_debt;
            return self.max_debt;
        }
        owed
    }

    /// `n` packets went out.
    #[inline]
    pub fn sent(&mut self, n: u64) {
        self.done += n;
    }

    /// ns from `now` until the next packet is due (0 if one is due or unpaced).
    pub fn wait_ns(&self, now: u64) -> u64 {
        if self.rate == 0 {
            return 0;
        }
        // The time at which packet number `done + 1` is due.
        let next = ((self.done + 1) as u128 * 1_000_000_000).div_ceil(self.rate as u128) as u64;
        (self.start + next).saturating_sub(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn due_follows_rate_times_elapsed() {
        let mut p = Pacer::new(1_000_000, 1000, 1 << 20);
        assert_eq!(p.due(1000), 0);
        assert_eq!(p.due(1000 + 1_000), 1); // 1 us at 1 Mpps
        assert_eq!(p.due(1000 + 64_000), 64);
        p.sent(64);
        assert_eq!(p.due(1000 + 64_000), 0);
        assert_eq!(p.wait_ns(1000 + 64_000), 1_000);
        assert_eq!(p.due(1000 + 1_000_000_000), 1_000_000 - 64);
        // Sub-pps rates: one packet every 3 s at 1/3 ... expressed as 1 pps here.
        let mut slow = Pacer::new(1, 0, 10);
        assert_eq!(slow.due(999_999_999), 0);
        assert_eq!(slow.due(1_000_000_000), 1);
        assert_eq!(slow.wait_ns(0), 1_000_000_000);
    }

    #[test]
    fn a_stall_is_caught_up_only_to_max_debt() {
        let mut p = Pacer::new(1_000_000, 0, 128);
        // 10 ms stalled: 10_000 due, 128 caught up, the rest forgiven.
        assert_eq!(p.due(10_000_000), 128);
        assert_eq!(p.forgiven, 10_000 - 128);
        p.sent(128);
        assert_eq!(p.due(10_000_000), 0);
        // Then back on schedule.
        assert_eq!(p.due(10_001_000), 1);
    }

    #[test]
    fn unpaced_is_always_due() {
        let mut p = Pacer::new(0, 0, 1);
        assert_eq!(p.due(0), u64::MAX);
        assert_eq!(p.wait_ns(5), 0);
    }

    #[test]
    fn average_rate_over_many_batches_is_exact() {
        // 2.5 Mpps in 32-packet batches polled every 7 us: after 1 s exactly 2.5M sent.
        let mut p = Pacer::new(2_500_000, 0, 1 << 16);
        let mut sent = 0;
        let mut t = 0;
        while t <= 1_000_000_000 {
            let n = p.due(t).min(32);
            p.sent(n);
            sent += n;
            t += 7_000;
        }
        assert!((2_499_900..=2_500_000).contains(&sent), "{sent}");
        assert_eq!(p.forgiven, 0);
    }
}
