//! Latency histogram (hdrhistogram, 3 significant digits, 1 ns .. 60 s): allocated once,
//! recording never allocates. Values come from the CLOCK_MONOTONIC stamp in each frame, so
//! a one-way latency needs generator and sink on one machine (any namespaces); a round trip
//! (the sink reflecting) only needs the generator's own clock.

use hdrhistogram::Histogram;

use crate::json::Obj;

const MAX_NS: u64 = 60_000_000_000;

pub struct Latency {
    h: Histogram<u64>,
    /// Stamps later than the receiving clock: another machine's clock, or a corrupt frame.
    pub from_the_future: u64,
}

/// Percentiles in ns.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LatencySummary {
    pub count: u64,
    pub min: u64,
    pub mean: f64,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub from_the_future: u64,
}

impl Default for Latency {
    fn default() -> Self {
        Self::new()
    }
}

impl Latency {
    pub fn new() -> Latency {
        Latency {
            h: Histogram::new_with_bounds(1, MAX_NS, 3).expect("static histogram bounds"),
            from_the_future: 0,
        }
    }

    /// A frame stamped at `sent` arrived at `now`.
    #[inline]
    pub fn record(&mut self, sent: u64, now: u64) {
        match now.checked_sub(sent) {
            Some(d) => self.h.saturating_record(d.clamp(1, MAX_NS)),
            None => self.from_the_future += 1,
        }
    }

    pub fn merge(&mut self, o: &Latency) {
        // Same bounds on both sides: cannot fail.
        let _ = self.h.add(&o.h);
        self.from_the_future += o.from_the_future;
    }

    pub fn summary(&self) -> LatencySummary {
        let h = &self.h;
        let n = h.len();
        let q = |p: f64| if n == 0 { 0 } else { h.value_at_quantile(p) };
        LatencySummary {
            count: n,
            min: if n == 0 { 0 } else { h.min() },
            mean: if n == 0 { 0.0 } else { h.mean() },
            p50: q(0.5),
            p90: q(0.9),
            p99: q(0.99),
            p999: q(0.999),
            max: if n == 0 { 0 } else { h.max() },
            from_the_future: self.from_the_future,
        }
    }
}

impl LatencySummary {
    pub fn json(&self) -> Obj {
        Obj::new()
            .u("count", self.count)
            .u("min_ns", self.min)
            .f("mean_ns", (self.mean * 10.0).round() / 10.0)
            .u("p50_ns", self.p50)
            .u("p90_ns", self.p90)
            .u("p99_ns", self.p99)
            .u("p999_ns", self.p999)
            .u("max_ns", self.max)
            .u("from_the_future", self.from_the_future)
    }

    pub fn human(&self) -> String {
        let us = |v: u64| v as f64 / 1000.0;
        format!(
            "{} samples: min {:.1} us, p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
            self.count,
            us(self.min),
            us(self.p50),
            us(self.p99),
            us(self.p999),
            us(self.max)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut l = Latency::new();
        for i in 1..=1000u64 {
            l.record(0, i * 1000); // 1 .. 1000 us
        }
        l.record(10, 5); // from the future
        let s = l.summary();
        assert_eq!(s.count, 1000);
        assert_eq!(s.from_the_future, 1);
        let close = |v: u64, want: u64| v.abs_diff(want) * 1000 <= want; // 0.1 %
        assert!(close(s.p50, 500_000), "{s:?}");
        assert!(close(s.p99, 990_000), "{s:?}");
        assert!(close(s.p999, 999_000), "{s:?}");
        assert!(close(s.max, 1_000_000), "{s:?}");
        let mut m = Latency::new();
        m.merge(&l);
        assert_eq!(m.summary().count, 1000);
        assert_eq!(Latency::new().summary().p99, 0);
    }
}
