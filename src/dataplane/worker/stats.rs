//! What a worker publishes beyond its counters, for the metrics: traffic per socket, how busy
//! its poll loop is, batch size and batch time histograms, its table use and its pool use,
//! and that it is alive. The worker is the only writer of everything here (relaxed stores,
//! like `Counter`); the management plane reads at scrape time. Per packet nothing is
//! published: traffic is added up per batch, the rest on the housekeeping tick (the pool
//! and the histograms at most once a second), so the hot path gains no lock, allocation or
//! syscall.

use crate::nat::counters::Counter;
use crate::nat::{Engine, Rules};
use crate::packet::ipv4::Protocol;
use crossbeam::utils::CachePadded;
use hdrhistogram::Histogram;
use natgw_kernel::xsk::XskStatsReader;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};

/// Upper bounds of the batch size histogram's buckets (frames; the batch is at most 1024).
pub const BATCH_SIZE_BOUNDS: &[u64] = &[1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024];
/// Upper bounds of the batch time histogram's buckets, ns (1 µs .. 10 ms).
pub const BATCH_NS_BOUNDS: &[u64] = &[
    1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000, 1_000_000, 2_000_000,
    5_000_000, 10_000_000,
];
/// Most buckets a published histogram has.
const MAX_BUCKETS: usize = 16;

/// How often the histograms, the busy ratio and the pool use are published (ns).
pub const PUBLISH_NS: u64 = 1_000_000_000;
/// Pool entries published per housekeeping tick: a pool of 65536 addresses (the most a
/// configuration has, 196608 entries) takes 12 ticks (0.6 s), a usual one a single tick.
const POOL_PER_TICK: usize = 16_384;

/// One socket's traffic (a worker has one socket per interface).
#[derive(Default, Debug)]
pub struct PortStats {
    /// The socket's interface, as an index into `Handle::interfaces` (outside first).
    pub interface: usize,
    pub queue: u32,
    pub rx_packets: Counter,
    pub rx_bytes: Counter,
    pub tx_packets: Counter,
    pub tx_bytes: Counter,
    /// The socket's `XDP_STATISTICS`, read by the management plane (None in unit tests, or
    /// if the descriptor could not be duplicated).
    pub xsk: Option<XskStatsReader>,
}

impl PortStats {
    pub fn new(interface: usize, queue: u32, xsk: Option<XskStatsReader>) -> PortStats {
        PortStats {
            interface,
            queue,
            xsk,
            ..PortStats::default()
        }
    }
}

/// A histogram as Prometheus wants it: cumulative counts per upper bound, the count and the
/// sum. Written from the worker's hdrhistogram once a second.
#[derive(Debug)]
pub struct PublishedHistogram {
    pub bounds: &'static [u64],
    /// `cumulative[i]`: observations <= `bounds[i]`.
    cumulative: [Counter; MAX_BUCKETS],
    count: Counter,
    sum: Counter,
}

impl PublishedHistogram {
    fn new(bounds: &'static [u64]) -> PublishedHistogram {
        assert!(bounds.len() <= MAX_BUCKETS);
        PublishedHistogram {
            bounds,
            cumulative: Default::default(),
            count: Counter::default(),
            sum: Counter::default(),
        }
    }

    /// (cumulative counts per bound, count, sum), as last published. Read while the worker
    /// may publish: made monotonic (each bucket at least the one below it, the count at
    /// least the last bucket), as Prometheus requires of a histogram.
    pub fn read(&self) -> (Vec<u64>, u64, u64) {
        let c = self.bounds.len();
        let mut buckets: Vec<u64> = self.cumulative[..c].iter().map(Counter::get).collect();
        for i in 1..buckets.len() {
            buckets[i] = buckets[i].max(buckets[i - 1]);
        }
        let count = self.count.get().max(buckets.last().copied().unwrap_or(0));
        (buckets, count, self.sum.get())
    }

    /// Publishes `h` (and the exact `sum` of what it recorded). hdrhistogram keeps values in
    /// bins (0.1 % wide for the batch size, 1 % for the batch time); a bin is counted at its
    /// highest value, so a bucket's edge is off by at most that.
    pub(crate) fn publish(&self, h: &Histogram<u64>, sum: u64) {
        let mut per = [0u64; MAX_BUCKETS];
        let n = self.bounds.len();
        for v in h.iter_recorded() {
            let at = v.value_iterated_to();
            if let Some(i) = self.bounds.iter().position(|&b| at <= b) {
                per[i] += v.count_at_value();
            }
        }
        let mut acc = 0;
        for (i, c) in per[..n].iter().enumerate() {
            acc += c;
            self.cumulative[i].set(acc);
        }
        self.sum.set(sum);
        self.count.set(h.len());
    }
}

impl Default for PublishedHistogram {
    fn default() -> Self {
        PublishedHistogram::new(&[])
    }
}

/// Ports of one pool address and protocol on one worker.
#[derive(Debug)]
pub struct PoolEntry {
    pub realm: u16,
    pub addr: Ipv4Addr,
    pub proto: Protocol,
    /// In use, on hold or reserved.
    pub used: Counter,
    /// This worker's share of the address's ports for the protocol.
    pub usable: Counter,
}

/// One worker's pool use, laid out for one set of rules (replaced when the rules change).
#[derive(Debug, Default)]
pub struct PoolUse {
    pub entries: Box<[PoolEntry]>,
}

impl PoolUse {
    fn of(engine: &Engine) -> PoolUse {
        let mut v = Vec::new();
        engine.pool_port_use(0, |realm, addr, proto, _, _| {
            v.push(PoolEntry {
                realm,
                addr,
                proto,
                used: Counter::default(),
                usable: Counter::default(),
            });
            true
        });
        PoolUse {
            entries: v.into_boxed_slice(),
        }
    }
}

/// Gauges of the worker's bounded tables, set on the housekeeping tick.
#[derive(Default, Debug)]
pub struct TableGauges {
    pub sessions_capacity: Counter,
    pub frag_datagrams: Counter,
    pub frag_datagrams_capacity: Counter,
    pub frag_held: Counter,
    pub frag_held_capacity: Counter,
    pub frag_out: Counter,
    pub frag_out_capacity: Counter,
    pub neigh_hold_capacity: Counter,
}

/// Everything a worker publishes besides its counters (see the module documentation).
#[derive(Debug, Default)]
pub struct WorkerStats {
    /// Per socket, in the worker's port order; each on cache lines of its own.
    pub ports: Box<[CachePadded<PortStats>]>,
    /// The poll loop's time, ns: all of it and the part spent on work.
    pub loop_ns: Counter,
    pub busy_ns: Counter,
    /// busy / all over the last publishing period (f64 bits).
    busy_ratio: AtomicU64,
    pub batch_size: CachePadded<PublishedHistogram>,
    pub batch_ns: CachePadded<PublishedHistogram>,
    pub tables: TableGauges,
    /// The worker's clock (ns since start) at its last housekeeping tick; 0 before the
    /// first. A worker whose heartbeat stops is not up.
    pub heartbeat_ns: Counter,
    /// Set while `Worker::run` runs (cleared on the way out, also by a panic's unwinding).
    pub running: AtomicBool,
    /// Ports of each pool address; the worker writes through its own `Arc` and swaps in a
    /// new layout when the rules change (rare: the lock is never taken per packet, and
    /// the management plane holds it only to clone the `Arc`).
    pub pool: Mutex<Arc<PoolUse>>,
}

impl WorkerStats {
    pub fn new(ports: Vec<PortStats>) -> WorkerStats {
        WorkerStats {
            ports: ports.into_iter().map(CachePadded::new).collect(),
            batch_size: CachePadded::new(PublishedHistogram::new(BATCH_SIZE_BOUNDS)),
            batch_ns: CachePadded::new(PublishedHistogram::new(BATCH_NS_BOUNDS)),
            ..WorkerStats::default()
        }
    }

    pub fn busy_ratio(&self) -> f64 {
        f64::from_bits(self.busy_ratio.load(Relaxed))
    }

    pub fn pool(&self) -> Arc<PoolUse> {
        match self.pool.lock() {
            Ok(p) => Arc::clone(&p),
            Err(p) => Arc::clone(&p.into_inner()),
        }
    }
}

/// The worker's side: what it accumulates between publications (owned by the loop, plain
/// integers) and its pool layout.
pub(super) struct Meter {
    batch_size: Histogram<u64>,
    batch_ns: Histogram<u64>,
    batch_ns_sum: u64,
    batch_size_sum: u64,
    loop_ns: u64,
    busy_ns: u64,
    /// loop_ns and busy_ns at the last publication.
    last: (u64, u64),
    last_publish: u64,
    pool: Arc<PoolUse>,
    /// Rules the pool layout was built for (held, so that no later rules can have its
    /// address).
    pool_rules: Option<Arc<Rules>>,
    /// Where the current pass over the pool stands (None: no pass under way).
    pool_cursor: Option<usize>,
}

impl Meter {
    pub(super) fn new() -> Meter {
        Meter {
            // Fixed bounds: recording never resizes (allocates); beyond the highest value a
            // sample is recorded as the highest.
            batch_size: Histogram::new_with_bounds(1, 1 << 16, 3).expect("static bounds"),
            // Two significant digits (bins of at most 1 %) keep the counts array small
            // (~4k entries), so the once-a-second publication walks it in microseconds.
            batch_ns: Histogram::new_with_bounds(1, 10_000_000_000, 2).expect("static bounds"),
            batch_ns_sum: 0,
            batch_size_sum: 0,
            loop_ns: 0,
            busy_ns: 0,
            last: (0, 0),
            last_publish: 0,
            pool: Arc::default(),
            pool_rules: None,
            pool_cursor: None,
        }
    }

    /// One engine batch of `n` frames that took `ns`.
    #[inline]
    pub(super) fn batch(&mut self, n: usize, ns: u64) {
        self.batch_size.saturating_record(n as u64);
        self.batch_ns.saturating_record(ns);
        self.batch_size_sum += n as u64;
        self.batch_ns_sum += ns;
    }

    /// `ns` of the poll loop went by, working or not.
    #[inline]
    pub(super) fn account(&mut self, ns: u64, worked: bool) {
        self.loop_ns += ns;
        if worked {
            self.busy_ns += ns;
        }
    }

    /// On the housekeeping tick: heartbeat, loop time and table use every tick; once a
    /// second the busy ratio, the histograms and a pass over the pool use (spread over
    /// ticks of at most `POOL_PER_TICK` entries).
    pub(super) fn tick(&mut self, now: u64, engine: &Engine, stats: &WorkerStats) {
        stats.heartbeat_ns.set(now.max(1));
        stats.loop_ns.set(self.loop_ns);
        stats.busy_ns.set(self.busy_ns);
        self.tables(engine, &stats.tables);
        if self.pool_cursor.is_some() {
            self.pool(engine, stats);
        }
        if self.last_publish != 0 && now.saturating_sub(self.last_publish) < PUBLISH_NS {
            return;
        }
        self.last_publish = now.max(1);
        let (all, busy) = (self.loop_ns - self.last.0, self.busy_ns - self.last.1);
        self.last = (self.loop_ns, self.busy_ns);
        if all > 0 {
            stats
                .busy_ratio
                .store((busy as f64 / all as f64).to_bits(), Relaxed);
        }
        stats
            .batch_size
            .publish(&self.batch_size, self.batch_size_sum);
        stats.batch_ns.publish(&self.batch_ns, self.batch_ns_sum);
        if self.pool_cursor.is_none() {
            self.pool_cursor = Some(0);
            self.pool(engine, stats);
        }
    }

    fn tables(&self, engine: &Engine, t: &TableGauges) {
        let u = engine.table_use();
        t.sessions_capacity.set(u.sessions_capacity as u64);
        t.frag_datagrams.set(u.frag_datagrams as u64);
        t.frag_datagrams_capacity
            .set(u.frag_datagrams_capacity as u64);
        t.frag_held.set(u.frag_held as u64);
        t.frag_held_capacity.set(u.frag_held_capacity as u64);
        t.frag_out.set(u.frag_out as u64);
        t.frag_out_capacity.set(u.frag_out_capacity as u64);
    }

    /// Publishes the next `POOL_PER_TICK` entries of the pool use. New rules get a new
    /// layout (this allocates, as the engine does for new rules).
    fn pool(&mut self, engine: &Engine, stats: &WorkerStats) {
        if !self
            .pool_rules
            .as_ref()
            .is_some_and(|r| Arc::ptr_eq(r, engine.rules()))
        {
            self.pool_rules = Some(Arc::clone(engine.rules()));
            self.pool = Arc::new(PoolUse::of(engine));
            self.pool_cursor = Some(0);
            if let Ok(mut p) = stats.pool.lock() {
                *p = Arc::clone(&self.pool);
            }
        }
        let entries = &self.pool.entries;
        let from = self.pool_cursor.unwrap_or(0);
        let to = (from + POOL_PER_TICK).min(entries.len());
        let mut i = from;
        if from < to {
            engine.pool_port_use(from, |_, _, _, used, usable| {
                if let Some(e) = entries.get(i) {
                    e.used.set(used as u64);
                    e.usable.set(usable as u64);
                }
                i += 1;
                i < to
            });
        }
        self.pool_cursor = (to < entries.len()).then_some(to);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::Counters;

    fn engine(cores: usize) -> Engine {
        let cfg =
            crate::config::parse(include_str!("../../../deploy/examples/minimal.toml")).unwrap();
        let rules = Arc::new(Rules::new(
            &cfg,
            Arc::new(crate::nat::ports::BlockPartition::new(cores)),
        ));
        Engine::new(0, rules, Arc::new(Counters::default()))
    }

    #[test]
    fn histogram_publishes_cumulative_buckets_count_and_sum() {
        let p = PublishedHistogram::new(BATCH_NS_BOUNDS);
        let mut h = Histogram::<u64>::new_with_bounds(1, 60_000_000_000, 3).unwrap();
        // 500 ns, 1 µs (on the first bound), 1.5 µs, 7 ms, 1 s (beyond the last bound).
        let vals = [500, 1_000, 1_500, 7_000_000, 1_000_000_000];
        for v in vals {
            h.saturating_record(v);
        }
        p.publish(&h, vals.iter().sum());
        let (b, count, sum) = p.read();
        assert_eq!(b[0], 2, "<= 1 µs: {b:?}");
        assert_eq!(b[1], 3, "<= 2 µs: {b:?}");
        assert_eq!(b[11], 3, "<= 5 ms: {b:?}");
        assert_eq!(b[12], 4, "<= 10 ms: {b:?}");
        assert_eq!(count, 5);
        assert_eq!(sum, vals.iter().sum::<u64>());
    }

    /// The pool's order (address by address, TCP, UDP, ICMP) from any entry on, stopping
    /// when asked: what a pass spread over ticks relies on.
    #[test]
    fn pool_port_use_starts_at_an_entry_and_stops_when_asked() {
        let e = engine(1);
        let mut all = Vec::new();
        e.pool_port_use(0, |_, _, p, _, _| {
            all.push(p);
            true
        });
        assert_eq!(all, [Protocol::TCP, Protocol::UDP, Protocol::ICMP]);
        let mut from1 = Vec::new();
        e.pool_port_use(1, |_, _, p, _, _| {
            from1.push(p);
            true
        });
        assert_eq!(from1, [Protocol::UDP, Protocol::ICMP]);
        let mut one = Vec::new();
        e.pool_port_use(0, |_, _, p, _, _| {
            one.push(p);
            false
        });
        assert_eq!(one, [Protocol::TCP]);
        let mut none = 0;
        e.pool_port_use(3, |_, _, _, _, _| {
            none += 1;
            true
        });
        assert_eq!(none, 0);
    }

    /// The first tick lays out the pool (one entry per address and protocol) and publishes
    /// this worker's share of the ports; the busy ratio is busy / all since the last second.
    #[test]
    fn tick_publishes_pool_layout_and_busy_ratio() {
        let e = engine(2);
        let stats = WorkerStats::new(Vec::new());
        let mut m = Meter::new();
        m.account(300, true);
        m.account(700, false);
        m.batch(32, 5_000);
        m.tick(1_000, &e, &stats);
        let pool = stats.pool();
        let got: Vec<(Protocol, u64, u64)> = pool
            .entries
            .iter()
            .map(|e| (e.proto, e.used.get(), e.usable.get()))
            .collect();
        assert_eq!(pool.entries.len(), 3, "{got:?}");
        assert!(
            pool.entries
                .iter()
                .all(|x| x.addr == Ipv4Addr::new(192, 168, 1, 10))
        );
        // Two cores: this one owns about half of each range.
        for (proto, used, usable) in &got {
            assert_eq!(*used, 0);
            assert!((30_000..=34_000).contains(usable), "{proto:?}: {usable}");
        }
        assert!((stats.busy_ratio() - 0.3).abs() < 1e-9);
        assert_eq!(stats.batch_size.read().1, 1);
        assert_eq!(stats.heartbeat_ns.get(), 1_000);
        assert!(stats.tables.sessions_capacity.get() >= 1024);
        // Not a second later: the ratio stays; a second later it covers only the new time.
        m.account(1_000, true);
        m.tick(2_000, &e, &stats);
        assert!((stats.busy_ratio() - 0.3).abs() < 1e-9);
        m.tick(1_000_002_000, &e, &stats);
        assert!((stats.busy_ratio() - 1.0).abs() < 1e-9);
    }
}
