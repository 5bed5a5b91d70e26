//! NAT engine micro-benchmark: per-packet cost of established flows and the session set-up rate.
//!
//! - `cargo bench --bench engine`: the full run (about a minute on a 2-core VM).
//! - `cargo bench --bench engine -- --quick`: CI smoke run with small sizes; every verdict is
//!   checked, so it fails if the engine stops translating.
//! - `cargo bench --bench engine -- --only <substring>`: only the cases whose name contains it
//!   (for profiling one path, e.g. `--only in2out_1M`).
//! - `--profile`: no copy baselines and 4x longer repetitions, so that a profiler attached
//!   after the set-up phase sees (almost) only the engine.
//! - `--hugepages`: allocations of 4 MiB and more (the engine's session arrays and hash
//!   tables) are advised as transparent huge pages, to measure what huge pages would give the
//!   engine without changing it.
//!
//! - `--scrape MS` (issue 12): a thread renders the Prometheus exposition over the running
//!   engine's counters every MS milliseconds while the cases run, as natgw's management thread
//!   does for each scrape; run with and without it, alternating, to see what scraping costs
//!   the worker (bench/README.md, "Scraping").
//!
//! The engine rewrites frames in place, so before each batch the frames are restored from a
//! pristine template, as if the NIC had delivered fresh ones. That copy is timed on its own with
//! the same access pattern and subtracted: `engine = total - copy`. The batch buffers stay in L1
//! (like UMEM chunks the NIC just wrote), the session state does not: flows are visited
//! round-robin, so with 1M flows almost every lookup misses the caches.

use natgw::nat::ports::BlockPartition;
use natgw::nat::session::{InKey, InVal, tcp};
use natgw::nat::table::{FlowTable, Key};
use natgw::nat::{Counters, Egress, Engine, Frame, Ingress, Pkt, Rules, Verdict};
use natgw::packet::ipv4::Protocol;
use natgw::packet::{checksum, read_u16, read_u32, write_u16, write_u32};
use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const BATCH: usize = 64;
const FRAME_LEN: usize = 64;
/// Inside hosts the flows are spread over; flow `i` is host `i % HOSTS`, port `1024 + i / HOSTS`,
/// so 1M flows need 1024 ports per host and 16 hosts share each of the 64 pool addresses.
const HOSTS: u32 = 1024;
/// A fixed clock (1000 s): nothing expires during a run, the timeout check still runs.
const NOW_NS: u64 = 1_000_000_000_000;

const TCP_ACK: u8 = 0x10;
const ICMP_ECHO_REPLY: u8 = 0;
const ICMP_ECHO_REQUEST: u8 = 8;

/// 10.1.0.0: first inside host (realm prefix 10.0.0.0/8).
const INSIDE_BASE: u32 = 0x0a01_0000;
/// 198.51.100.1: first of 200 remote servers.
const REMOTE_BASE: u32 = 0xc633_6401;
/// 203.0.113.0/26: the 64-address pool.
const POOL_BASE: u32 = 0xcb00_7100;
const POOL_MASK: u32 = 0xffff_ffc0;

/// The system allocator; with `--hugepages`, large blocks are `madvise(MADV_HUGEPAGE)`d before
/// anything touches them (THP is usually in "madvise" mode, so plain `Vec`s get 4 KiB pages).
struct Alloc;

static HUGE_PAGES: AtomicBool = AtomicBool::new(false);
const HUGE_MIN: usize = 4 << 20;

fn advise(p: *mut u8, size: usize) {
    if p.is_null() || size < HUGE_MIN || !HUGE_PAGES.load(Ordering::Relaxed) {
        return;
    }
    // Only whole 2 MiB pages inside the block: madvise needs a page-aligned start.
    const HP: usize = 2 << 20;
    let start = (p as usize).next_multiple_of(HP);
    let end = (p as usize + size) & !(HP - 1);
    if end > start {
        // SAFETY: the range lies inside a block we just allocated; a failed advice is harmless.
        unsafe { libc::madvise(start as *mut libc::c_void, end - start, libc::MADV_HUGEPAGE) };
    }
}

// SAFETY: every call is forwarded to `System`; `advise` only adds a hint on memory it returned.
unsafe impl GlobalAlloc for Alloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc(l) };
        advise(p, l.size());
        p
    }
    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        // SAFETY: same contract as ours.
        let p = unsafe { System.alloc_zeroed(l) };
        advise(p, l.size());
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        // SAFETY: same contract as ours.
        let q = unsafe { System.realloc(p, l, new) };
        advise(q, new);
        q
    }
}

#[global_allocator]
static GLOBAL: Alloc = Alloc;

fn config(capacity: usize) -> String {
    format!(
        r#"
[outside]
interface = "eth1"
address = "192.0.2.2"
gateway = "192.0.2.1"

[[inside]]
interface = "eth0"

[sessions]
capacity_per_core = {capacity}

[[realm]]
name = "bench"
interface = "eth0"
prefixes = ["10.0.0.0/8"]
gateway = "10.0.0.1"
pool = ["203.0.113.0/26"]

[realm.ports]
per_host_limit = 65535
"#
    )
}

/// The counters of the engine being measured, for the `--scrape` thread.
static SCRAPED: Mutex<Option<Arc<Counters>>> = Mutex::new(None);

/// `--eventlog`: every engine logs its mappings and sessions (realm 0) into its event ring,
/// which a consumer thread drains (as the logger would, without formatting or writing).
static EVENTLOG: AtomicBool = AtomicBool::new(false);
/// Records the `--eventlog` consumers took off the rings.
static EVENTLOG_DRAINED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// The `--eventlog` consumer of one engine's ring: polls it until the engine is gone,
/// sleeping 100 µs when it is empty (the logger sleeps 10 ms; a shorter nap keeps the
/// 64 Ki-record ring from overflowing at the set-up case's 2-4 M records/s).
fn eventlog_drain(c: &Arc<Counters>) {
    use natgw::nat::eventlog::mask;
    c.eventlog
        .configure(1 << 16, &[mask::MAPPINGS | mask::SESSIONS]);
    let w = Arc::downgrade(c);
    std::thread::spawn(move || {
        while let Some(c) = w.upgrade() {
            let mut n = 0u64;
            while let Some(r) = c.eventlog.pop() {
                black_box(r);
                n += 1;
            }
            EVENTLOG_DRAINED.fetch_add(n, Ordering::Relaxed);
            drop(c);
            if n == 0 {
                std::thread::sleep(Duration::from_micros(100));
            }
        }
    });
}

fn new_engine(capacity: usize) -> Engine {
    let cfg = natgw::config::parse(&config(capacity)).expect("benchmark config must parse");
    let rules = Rules::new(&cfg, Arc::new(BlockPartition::new(1)));
    let counters = Arc::new(Counters::default());
    if EVENTLOG.load(Ordering::Relaxed) {
        eventlog_drain(&counters);
    }
    if let Ok(mut s) = SCRAPED.lock() {
        *s = Some(Arc::clone(&counters));
    }
    Engine::new(0, Arc::new(rules), counters)
}

/// `--scrape`: renders natgw's exposition over the current engine's counters (and a worker's
/// other published figures, two sockets' worth) every `every` until `stop`. Returns the
/// number of scrapes and their mean time.
fn scraper(every: Duration, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<(u64, Duration)> {
    use natgw::dataplane::worker::DpCounters;
    use natgw::dataplane::worker::stats::{PortStats, WorkerStats};
    std::thread::spawn(move || {
        let cfg = natgw::config::parse(&config(1 << 16)).expect("benchmark config must parse");
        let rules = Arc::new(Rules::new(&cfg, Arc::new(BlockPartition::new(1))));
        let cfg = Arc::new(cfg);
        let dp = Arc::new(DpCounters {
            stats: WorkerStats::new(vec![PortStats::new(0, 0, None), PortStats::new(1, 0, None)]),
            ..DpCounters::default()
        });
        let metrics = natgw::control::metrics::Metrics::new();
        let (mut n, mut spent) = (0u64, Duration::ZERO);
        while !stop.load(Ordering::Relaxed) {
            std::thread::sleep(every);
            let Some(c) = SCRAPED.lock().ok().and_then(|s| s.clone()) else {
                continue;
            };
            let h = natgw::dataplane::run::Handle {
                counters: vec![c],
                dp: vec![Arc::clone(&dp)],
                control: Vec::new(),
                rules: Arc::clone(&rules),
                neigh: Arc::new(natgw::dataplane::neigh::NeighTable::new(16)),
                started: Instant::now(),
                xdp_modes: Vec::new(),
                copy_fallbacks: 0,
                interfaces: vec!["bench-out".into(), "bench-in".into()],
                health: Arc::default(),
                pass: Vec::new(),
                config: Arc::clone(&cfg),
                generation: 1,
            };
            let t = Instant::now();
            black_box(metrics.render(&h).len());
            spent += t.elapsed();
            n += 1;
        }
        (n, spent / n.max(1) as u32)
    })
}

// ---- frames ---------------------------------------------------------------------------------

/// One frame, on its own cache line.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([u8; FRAME_LEN]);

/// A UMEM-like chunk: frames start on a cache line and have room behind them.
#[repr(C, align(64))]
struct Chunk([u8; 128]);

#[derive(Clone, Copy, Debug)]
struct Flow {
    proto: Protocol,
    src: u32,
    sport: u16,
    dst: u32,
    dport: u16,
    /// TCP flags, or the ICMP type.
    kind: u8,
}

/// The `i`-th outbound flow of protocol `proto` (for ICMP, `sport` is the echo identifier).
fn inside_flow(i: usize, proto: Protocol) -> Flow {
    let i = i as u32;
    let (dport, kind) = match proto {
        Protocol::TCP => (443, TCP_ACK),
        Protocol::ICMP => (0, ICMP_ECHO_REQUEST),
        _ => (443, 0),
    };
    Flow {
        proto,
        src: INSIDE_BASE + i % HOSTS,
        sport: 1024 + (i / HOSTS) as u16,
        dst: REMOTE_BASE + i % 200,
        dport,
        kind,
    }
}

/// The flows in a fixed pseudo-random order. Sessions are created in flow order (the engine
/// hands out session slots sequentially), so visiting them shuffled keeps the session array
/// from being streamed by the hardware prefetcher: real traffic does not arrive in set-up order.
fn shuffled<T: Copy>(v: &[T]) -> Vec<T> {
    let mut v = v.to_vec();
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    for i in (1..v.len()).rev() {
        // xorshift64*
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
        v.swap(i, (r % (i as u64 + 1)) as usize);
    }
    v
}

const L3: usize = 14;
const L4: usize = L3 + 20;
const L4_LEN: usize = FRAME_LEN - L4;

/// A 64-byte Ethernet/IPv4 frame with valid IP and transport checksums.
fn build(f: &Flow) -> Line {
    let mut b = [0u8; FRAME_LEN];
    b[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]);
    b[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]);
    write_u16(&mut b, 12, 0x0800);
    b[L3] = 0x45;
    write_u16(&mut b, L3 + 2, (FRAME_LEN - L3) as u16);
    write_u16(&mut b, L3 + 4, f.sport ^ 0x5a5a);
    write_u16(&mut b, L3 + 6, 0x4000);
    b[L3 + 8] = 64;
    b[L3 + 9] = f.proto.0;
    write_u32(&mut b, L3 + 12, f.src);
    write_u32(&mut b, L3 + 16, f.dst);
    let c = checksum::checksum(&b[L3..L4]);
    write_u16(&mut b, L3 + 10, c);
    for (k, x) in b[L4..].iter_mut().enumerate() {
        *x = k as u8;
    }
    let pseudo = checksum::pseudo_header_sum(
        Ipv4Addr::from(f.src),
        Ipv4Addr::from(f.dst),
        f.proto,
        L4_LEN as u16,
    );
    match f.proto {
        Protocol::UDP => {
            write_u16(&mut b, L4, f.sport);
            write_u16(&mut b, L4 + 2, f.dport);
            write_u16(&mut b, L4 + 4, L4_LEN as u16);
            write_u16(&mut b, L4 + 6, 0);
            let c = !checksum::fold(pseudo + checksum::sum(&b[L4..]));
            write_u16(&mut b, L4 + 6, if c == 0 { 0xffff } else { c });
        }
        Protocol::TCP => {
            write_u16(&mut b, L4, f.sport);
            write_u16(&mut b, L4 + 2, f.dport);
            write_u32(&mut b, L4 + 4, 1000);
            write_u32(&mut b, L4 + 8, 2000);
            b[L4 + 12] = 0x50;
            b[L4 + 13] = f.kind;
            write_u16(&mut b, L4 + 14, 65535);
            write_u16(&mut b, L4 + 16, 0);
            write_u16(&mut b, L4 + 18, 0);
            let c = !checksum::fold(pseudo + checksum::sum(&b[L4..]));
            write_u16(&mut b, L4 + 16, c);
        }
        _ => {
            b[L4] = f.kind;
            b[L4 + 1] = 0;
            write_u16(&mut b, L4 + 2, 0);
            write_u16(&mut b, L4 + 4, f.sport);
            write_u16(&mut b, L4 + 6, 1);
            let c = checksum::checksum(&b[L4..]);
            write_u16(&mut b, L4 + 2, c);
        }
    }
    Line(b)
}

/// Reads a frame back; panics (this is a benchmark's self-check) if a checksum is wrong.
fn parse_checked(b: &[u8]) -> Flow {
    assert_eq!(read_u16(b, 12), 0x0800, "untagged IPv4 expected");
    assert_eq!(checksum::checksum(&b[L3..L4]), 0, "IPv4 checksum");
    let proto = Protocol(b[L3 + 9]);
    let (src, dst) = (read_u32(b, L3 + 12), read_u32(b, L3 + 16));
    let l4 = &b[L4..L3 + read_u16(b, L3 + 2) as usize];
    let ok = match proto {
        Protocol::ICMP => checksum::checksum(l4) == 0,
        _ if proto == Protocol::UDP && read_u16(l4, 6) == 0 => true,
        _ => {
            let p = checksum::pseudo_header_sum(
                Ipv4Addr::from(src),
                Ipv4Addr::from(dst),
                proto,
                l4.len() as u16,
            );
            !checksum::fold(p + checksum::sum(l4)) == 0
        }
    };
    assert!(ok, "transport checksum of a translated frame");
    let (sport, dport, kind) = match proto {
        Protocol::ICMP => (read_u16(l4, 4), 0, l4[0]),
        Protocol::TCP => (read_u16(l4, 0), read_u16(l4, 2), l4[13]),
        _ => (read_u16(l4, 0), read_u16(l4, 2), 0),
    };
    Flow {
        proto,
        src,
        sport,
        dst,
        dport,
        kind,
    }
}

/// The answer a remote server sends to a translated outbound frame.
fn reply_to(out: &Flow) -> Flow {
    if out.proto == Protocol::ICMP {
        // An echo reply carries the request's identifier, which is `sport` in a `Flow`.
        return Flow {
            src: out.dst,
            dst: out.src,
            kind: ICMP_ECHO_REPLY,
            ..*out
        };
    }
    Flow {
        proto: out.proto,
        src: out.dst,
        sport: out.dport,
        dst: out.src,
        dport: out.sport,
        kind: out.kind,
    }
}

/// Pristine frames; `lines.len()` is a multiple of `BATCH` (frame `j` is flow `j % flows`).
struct Templates {
    lines: Vec<Line>,
    flows: usize,
}

impl Templates {
    fn new(flows: &[Flow]) -> Templates {
        let n = flows.len().div_ceil(BATCH) * BATCH;
        Templates {
            lines: (0..n).map(|j| build(&flows[j % flows.len()])).collect(),
            flows: flows.len(),
        }
    }
    fn batches(&self) -> usize {
        self.lines.len() / BATCH
    }
    fn batch(&self, b: usize) -> &[Line] {
        &self.lines[b * BATCH..(b + 1) * BATCH]
    }
}

// ---- batches --------------------------------------------------------------------------------

#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: prefetch is only a hint and never faults.
    unsafe {
        use core::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>(p.cast::<i8>())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// A batch of `Pkt`s over fixed buffers, reused for every batch (like a receive ring).
struct Runner {
    pkts: Vec<Pkt<'static>>,
    verdicts: Vec<Verdict>,
    /// Round-robin position in the templates, in batches.
    cursor: usize,
}

impl Runner {
    fn new(ingress: Ingress) -> Runner {
        // Lives for the whole process: `Pkt` borrows its buffer.
        let store: &'static mut [Chunk] =
            Vec::from_iter((0..BATCH).map(|_| Chunk([0; 128]))).leak();
        let pkts = store
            .iter_mut()
            .map(|c| Pkt {
                frame: Frame::new(&mut c.0, 0, FRAME_LEN),
                ingress,
            })
            .collect();
        Runner {
            pkts,
            verdicts: vec![Verdict::ToKernel; BATCH],
            cursor: 0,
        }
    }

    #[inline(always)]
    fn load(&mut self, t: &[Line]) {
        for (p, l) in self.pkts.iter_mut().zip(t) {
            p.frame.off = 0;
            p.frame.len = FRAME_LEN;
            p.frame.buf[..FRAME_LEN].copy_from_slice(&l.0);
        }
    }

    /// `batches` batches round-robin over `t`: copy in, then (if `ENGINE`) translate.
    /// `check`: assert every verdict (smoke mode) instead of only the counters afterwards.
    #[inline(never)]
    fn run<const ENGINE: bool>(
        &mut self,
        e: &mut Engine,
        t: &Templates,
        batches: usize,
        check: Option<Egress>,
    ) {
        let nb = t.batches();
        for _ in 0..batches {
            self.load(t.batch(self.cursor));
            // The next batch's source frames, so the harness's own reads (a 64 MiB stream at
            // 1M flows, restarting on every 4 KiB page) do not queue behind the engine's
            // table misses: a NIC-fed ring hands the engine frames that are already written.
            let next = if self.cursor + 1 == nb {
                0
            } else {
                self.cursor + 1
            };
            for l in t.batch(next) {
                prefetch(l.0.as_ptr());
            }
            if ENGINE {
                e.process(black_box(NOW_NS), &mut self.pkts, &mut self.verdicts);
            }
            black_box(&mut self.pkts);
            black_box(&mut self.verdicts);
            if let Some(eg) = check {
                self.assert_forward(eg);
            }
            self.cursor += 1;
            if self.cursor == nb {
                self.cursor = 0;
            }
        }
    }

    fn assert_forward(&self, egress: Egress) {
        for v in &self.verdicts {
            match v {
                Verdict::Forward { egress: e, .. } if *e == egress => {}
                v => panic!("expected Forward to {egress:?}, engine said {v:?}"),
            }
        }
    }
}

/// Sends every template frame through the engine once (creating the sessions), checks each
/// verdict and translation, and returns the translated flows (to build replies from).
fn prime(e: &mut Engine, t: &Templates, ingress: Ingress) -> Vec<Flow> {
    let egress = match ingress {
        Ingress::Inside(_) => Egress::Outside,
        _ => Egress::Inside(0),
    };
    let mut r = Runner::new(ingress);
    let mut out = Vec::with_capacity(t.flows);
    for b in 0..t.batches() {
        let before: Vec<Flow> = t.batch(b).iter().map(|l| parse_checked(&l.0)).collect();
        r.load(t.batch(b));
        e.process(NOW_NS, &mut r.pkts, &mut r.verdicts);
        r.assert_forward(egress);
        for (p, orig) in r.pkts.iter().zip(&before) {
            let f = parse_checked(p.frame.data());
            match ingress {
                Ingress::Inside(_) => {
                    assert_eq!(f.src & POOL_MASK, POOL_BASE, "source not translated: {f:?}");
                    assert_eq!((f.dst, f.dport), (orig.dst, orig.dport));
                }
                _ => {
                    assert_eq!(
                        f.dst & 0xffff_0000,
                        INSIDE_BASE,
                        "dest not translated: {f:?}"
                    );
                    assert_eq!(f.src, orig.src);
                    if f.proto != Protocol::ICMP {
                        // An ICMP identifier is translated back; ports on this side are not.
                        assert_eq!(f.sport, orig.sport);
                    }
                }
            }
            if out.len() < t.flows {
                out.push(f);
            }
        }
    }
    assert_eq!(e.counters().total_drops(), 0, "drops while priming");
    out
}

// ---- measurement ----------------------------------------------------------------------------

#[derive(Clone, Copy)]
struct Plan {
    quick: bool,
    /// Skip the copy baselines (profiling).
    no_baseline: bool,
    warmup: Duration,
    rep_time: Duration,
    reps: usize,
}

/// ns per unit: median, min, max over the repetitions.
#[derive(Clone, Copy, Debug)]
struct Stat {
    median: f64,
    min: f64,
    max: f64,
}

fn stat(mut v: Vec<f64>) -> Stat {
    v.sort_by(f64::total_cmp);
    Stat {
        median: v[v.len() / 2],
        min: v[0],
        max: v[v.len() - 1],
    }
}

/// Repeats `chunk` (which does some work and returns how many units it did) for `warmup`, then
/// `reps` times for at least `rep_time` each; ns per unit of every repetition.
fn measure(p: &Plan, mut chunk: impl FnMut() -> u64) -> Stat {
    let t = Instant::now();
    while t.elapsed() < p.warmup {
        chunk();
    }
    let v = (0..p.reps)
        .map(|_| {
            let t = Instant::now();
            let mut n = 0;
            while n == 0 || t.elapsed() < p.rep_time {
                n += chunk();
            }
            t.elapsed().as_nanos() as f64 / n as f64
        })
        .collect();
    stat(v)
}

struct Row {
    name: String,
    sessions: usize,
    total: Stat,
    copy: Stat,
}

impl Row {
    fn engine_ns(&self) -> f64 {
        (self.total.median - self.copy.median).max(0.0)
    }
}

/// Batches per timed chunk: long enough that reading the clock is noise.
const CHUNK_BATCHES: usize = 256;

/// Established-flow cost: the engine already holds a session for every template frame.
fn established(
    p: &Plan,
    e: &mut Engine,
    name: String,
    t: &Templates,
    ingress: Ingress,
    egress: Egress,
) -> Row {
    let check = p.quick.then_some(egress);
    let mut r = Runner::new(ingress);
    let c = Arc::clone(e.counters());
    let (drops0, fwd0) = (c.total_drops(), c.in2out.get() + c.out2in.get());
    let mut frames = 0u64;
    let total = measure(p, || {
        r.run::<true>(e, t, CHUNK_BATCHES, check);
        frames += (CHUNK_BATCHES * BATCH) as u64;
        (CHUNK_BATCHES * BATCH) as u64
    });
    assert_forward_last(&r, egress);
    assert_eq!(c.total_drops(), drops0, "{name}: engine dropped frames");
    assert_eq!(
        c.in2out.get() + c.out2in.get() - fwd0,
        frames,
        "{name}: not every frame was translated"
    );
    let mut r = Runner::new(ingress);
    let copy = if p.no_baseline {
        stat(vec![0.0])
    } else {
        measure(p, || {
            r.run::<false>(e, t, CHUNK_BATCHES, None);
            (CHUNK_BATCHES * BATCH) as u64
        })
    };
    Row {
        name,
        sessions: e.session_count(),
        total,
        copy,
    }
}

fn assert_forward_last(r: &Runner, egress: Egress) {
    r.assert_forward(egress);
}

struct Setup {
    sessions: usize,
    total: Stat,
    copy: Stat,
}

impl Setup {
    fn engine_ns(&self) -> f64 {
        (self.total.median - self.copy.median).max(0.0)
    }
}

/// New-session rate: every frame opens a new UDP session in a fresh engine, until `n` exist.
fn setup_rate(p: &Plan, n: usize, capacity: usize) -> Setup {
    let flows: Vec<Flow> = (0..n).map(|i| inside_flow(i, Protocol::UDP)).collect();
    let t = Templates::new(&flows);
    assert_eq!(
        t.lines.len(),
        n,
        "set-up size must be a multiple of the batch"
    );
    let check = p.quick.then_some(Egress::Outside);
    let reps = if p.quick { 2 } else { p.reps.min(5) };
    let mut v = Vec::new();
    for _ in 0..reps {
        let mut e = new_engine(capacity);
        let mut r = Runner::new(Ingress::Inside(0));
        let start = Instant::now();
        r.run::<true>(&mut e, &t, t.batches(), check);
        v.push(start.elapsed().as_nanos() as f64 / n as f64);
        let c = e.counters();
        if EVENTLOG.load(Ordering::Relaxed) {
            eprintln!(
                "eventlog: {} records lost, {} drained so far",
                c.eventlog.lost.get(),
                EVENTLOG_DRAINED.load(Ordering::Relaxed)
            );
        }
        assert_eq!(c.total_drops(), 0, "set-up: engine dropped frames");
        assert_eq!(
            c.sessions_created.get(),
            n as u64,
            "set-up: sessions created"
        );
        assert_eq!(e.session_count(), n);
    }
    let total = stat(v);
    if p.no_baseline {
        return Setup {
            sessions: n,
            total,
            copy: stat(vec![0.0]),
        };
    }
    let mut e = new_engine(1024);
    let mut r = Runner::new(Ingress::Inside(0));
    let copy = stat(
        (0..reps)
            .map(|_| {
                let start = Instant::now();
                r.run::<false>(&mut e, &t, t.batches(), None);
                start.elapsed().as_nanos() as f64 / n as f64
            })
            .collect(),
    );
    Setup {
        sessions: n,
        total,
        copy,
    }
}

/// What the engine's established path costs in memory alone: a `FlowTable<InKey, InVal>`
/// sized like the engine's (`capacity` entries, 32-byte slots) holding `n` keys, and a
/// read-modify-write of the hit slot's deadline, like the fast path's refresh: one random
/// cache line per packet. Keys are looked up in shuffled order, either one after the other or
/// per batch of 64 in two passes (hash + prefetch slot; look up + update).
fn lookup_reference(p: &Plan, n: usize, capacity: usize) -> (Stat, Stat) {
    let key = |i: usize| {
        let f = inside_flow(i, Protocol::UDP);
        InKey {
            realm: 0,
            proto: f.proto,
            in_port: f.sport,
            rem_port: f.dport,
            in_addr: f.src,
            rem_addr: f.dst,
        }
    };
    let mut tab = FlowTable::<InKey, InVal>::with_capacity(capacity);
    for i in 0..n {
        let v = InVal {
            sess: i as u32,
            ..InVal::default()
        };
        tab.insert(key(i), v).expect("insert");
    }
    let order: Vec<InKey> = shuffled(
        &(0..n.div_ceil(BATCH) * BATCH)
            .map(|i| key(i % n))
            .collect::<Vec<_>>(),
    );
    let nb = order.len() / BATCH;
    let mut cur = 0;
    let plain = measure(p, || {
        for _ in 0..CHUNK_BATCHES {
            for k in &order[cur * BATCH..(cur + 1) * BATCH] {
                let v = tab.get_mut(black_box(k)).expect("hit");
                v.expires = v.expires.wrapping_add(1);
            }
            cur = (cur + 1) % nb;
        }
        (CHUNK_BATCHES * BATCH) as u64
    });
    let mut hashes = [0u64; BATCH];
    let batched = measure(p, || {
        for _ in 0..CHUNK_BATCHES {
            let keys = &order[cur * BATCH..(cur + 1) * BATCH];
            for (h, k) in hashes.iter_mut().zip(keys) {
                *h = black_box(k).hash();
                tab.prefetch(*h);
            }
            for (h, k) in hashes.iter().zip(keys) {
                let pos = tab.find(k, *h).expect("hit");
                let v = tab.val_at_mut(pos);
                v.expires = v.expires.wrapping_add(1);
            }
            cur = (cur + 1) % nb;
        }
        (CHUNK_BATCHES * BATCH) as u64
    });
    black_box(&tab);
    (plain, batched)
}

/// The size in a case name like `ref_lookup_1M`.
fn big_of(name: &str) -> usize {
    let s = name.rsplit('_').next().unwrap_or("0");
    let (num, mul) = match s.as_bytes().last() {
        Some(b'M') => (&s[..s.len() - 1], 1_000_000),
        Some(b'k') => (&s[..s.len() - 1], 1000),
        _ => (s, 1),
    };
    num.parse::<usize>().unwrap_or(0) * mul
}

fn count_name(n: usize) -> String {
    match n {
        n if n >= 1_000_000 && n % 1_000_000 == 0 => format!("{}M", n / 1_000_000),
        n if n >= 1000 && n % 1000 == 0 => format!("{}k", n / 1000),
        n => n.to_string(),
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let only = args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
        .cloned();
    let profile = args.iter().any(|a| a == "--profile");
    let huge = args.iter().any(|a| a == "--hugepages");
    HUGE_PAGES.store(huge, Ordering::Relaxed);
    EVENTLOG.store(args.iter().any(|a| a == "--eventlog"), Ordering::Relaxed);
    let scrape_ms: Option<u64> = args
        .iter()
        .position(|a| a == "--scrape")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("--scrape takes milliseconds"));
    let scrape_stop = Arc::new(AtomicBool::new(false));
    let scrape = scrape_ms.map(|ms| scraper(Duration::from_millis(ms), Arc::clone(&scrape_stop)));

    // Same hash layout on every run.
    natgw::nat::table::set_seed(0x6e61_7467_7762_656e);

    let plan = if quick {
        Plan {
            quick,
            no_baseline: profile,
            warmup: Duration::from_millis(5),
            rep_time: Duration::from_millis(10),
            reps: 3,
        }
    } else {
        Plan {
            quick,
            no_baseline: profile,
            warmup: Duration::from_millis(200),
            rep_time: Duration::from_millis(if profile { 1000 } else { 250 }),
            reps: if profile { 5 } else { 7 },
        }
    };
    // The "1M" cases shrink in the smoke run; names carry the real sizes.
    let (big, capacity) = if quick {
        (64_000, 1 << 17)
    } else {
        (1_000_000, 1 << 21)
    };
    let names: Vec<String> = [
        "udp_in2out_1".into(),
        "udp_in2out_10k".into(),
        format!("udp_in2out_{}", count_name(big)),
        format!("udp_out2in_{}", count_name(big)),
        format!("setup_{}", count_name(big)),
        "mix_in2out_10k".into(),
        format!("ref_lookup_{}", count_name(big)),
        format!("list_{}", count_name(big)),
    ]
    .to_vec();
    // An exact case name selects that case only; anything else selects by substring.
    let wanted = |name: &str| {
        only.as_deref()
            .is_none_or(|o| name == o || (!names.iter().any(|n| n == o) && name.contains(o)))
    };
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut setup = None;
    let mut listing = None;

    for n in [1, 10_000, big] {
        let in_name = format!("udp_in2out_{}", count_name(n));
        let out_name = format!("udp_out2in_{}", count_name(n));
        let list_name = format!("list_{}", count_name(n));
        let want_out = n == big && wanted(&out_name);
        let want_list = n == big && wanted(&list_name);
        if !wanted(&in_name) && !want_out && !want_list {
            continue;
        }
        let mut e = new_engine(capacity);
        let flows: Vec<Flow> = (0..n).map(|i| inside_flow(i, Protocol::UDP)).collect();
        let t = Templates::new(&flows);
        let translated = prime(&mut e, &t, Ingress::Inside(0));
        assert_eq!(e.session_count(), n);
        if wanted(&in_name) {
            let row = established(
                &plan,
                &mut e,
                in_name,
                &Templates::new(&shuffled(&flows)),
                Ingress::Inside(0),
                Egress::Outside,
            );
            rows.push(row);
        }
        if want_list {
            listing = Some(list_steps(&e, n));
        }
        if want_out {
            let replies: Vec<Flow> = translated.iter().map(reply_to).collect();
            let rt = Templates::new(&replies);
            prime(&mut e, &rt, Ingress::Outside);
            assert_eq!(e.session_count(), n, "replies must not create sessions");
            let row = established(
                &plan,
                &mut e,
                out_name,
                &Templates::new(&shuffled(&replies)),
                Ingress::Outside,
                Egress::Inside(0),
            );
            rows.push(row);
        }
    }

    let setup_name = format!("setup_{}", count_name(big));
    if wanted(&setup_name) {
        setup = Some(setup_rate(&plan, big, capacity));
    }

    let mix_name = "mix_in2out_10k".to_string();
    if wanted(&mix_name) {
        let n = 10_000;
        let mut e = new_engine(capacity);
        // 70 % UDP, 25 % TCP, 5 % ICMP echo, interleaved so every batch is mixed.
        let flows: Vec<Flow> = (0..n)
            .map(|i| {
                let proto = match i % 20 {
                    0..14 => Protocol::UDP,
                    14..19 => Protocol::TCP,
                    _ => Protocol::ICMP,
                };
                inside_flow(i, proto)
            })
            .collect();
        let t = Templates::new(&flows);
        let translated = prime(&mut e, &t, Ingress::Inside(0));
        // The replies make the TCP sessions established (both directions seen).
        let replies: Vec<Flow> = translated.iter().map(reply_to).collect();
        prime(&mut e, &Templates::new(&replies), Ingress::Outside);
        let mut tcp_sessions = 0;
        e.for_each_session(|s| {
            if s.proto == Protocol::TCP {
                assert!(tcp::is_established(s.tcp), "TCP session not established");
                tcp_sessions += 1;
            }
        });
        assert_eq!(tcp_sessions, n / 4);
        assert_eq!(e.session_count(), n);
        let row = established(
            &plan,
            &mut e,
            mix_name,
            &Templates::new(&shuffled(&flows)),
            Ingress::Inside(0),
            Egress::Outside,
        );
        rows.push(row);
    }

    let lookup_name = format!("ref_lookup_{}", count_name(big));
    let lookup =
        wanted(&lookup_name).then(|| (lookup_name, lookup_reference(&plan, big, capacity)));

    scrape_stop.store(true, Ordering::Relaxed);
    if let (Some(ms), Some(t)) = (scrape_ms, scrape) {
        let (n, mean) = t.join().expect("scrape thread");
        println!(
            "scraped every {ms} ms: {n} renders of the exposition, {:.1} µs each",
            mean.as_secs_f64() * 1e6
        );
    }
    report(
        &plan,
        huge,
        &rows,
        setup.as_ref(),
        lookup.as_ref(),
        started.elapsed(),
    );
    if let Some(l) = listing {
        println!("{l}");
    }
}

/// A management listing of the whole table in the worker's bounded steps (what a worker
/// spends between two batches per `GET /sessions` step): the slowest step, the median step
/// and the whole walk.
fn list_steps(e: &Engine, sessions: usize) -> String {
    use natgw::nat::listing::Filter;
    let filter = Filter::default();
    let mut times = Vec::new();
    let (mut listed, mut from) = (0usize, Some(0));
    let all = Instant::now();
    while let Some(slot) = from {
        let t = Instant::now();
        from = e.list_sessions(slot, &filter, |_, s| {
            listed += 1;
            std::hint::black_box(s);
        });
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    let total = all.elapsed().as_secs_f64() * 1e3;
    assert_eq!(listed, sessions, "the walk lists every session");
    times.sort_by(f64::total_cmp);
    format!(
        "list_{}: {} steps, median {:.1} us, max {:.1} us per step, {total:.1} ms for the walk",
        count_name(sessions),
        times.len(),
        times[times.len() / 2],
        times[times.len() - 1]
    )
}

fn report(
    p: &Plan,
    huge: bool,
    rows: &[Row],
    setup: Option<&Setup>,
    lookup: Option<&(String, (Stat, Stat))>,
    elapsed: Duration,
) {
    println!();
    println!(
        "natgw engine benchmark{}{}: batch {BATCH}, {FRAME_LEN}-byte frames, 1 core; \
         median of {} reps (min..max), engine = total - copy",
        if p.quick { " (--quick smoke run)" } else { "" },
        if huge { " with THP advised" } else { "" },
        p.reps
    );
    println!();
    println!(
        "{:<22} {:>9} {:>22} {:>10} {:>10} {:>10}",
        "case", "sessions", "total ns/pkt", "copy ns", "engine ns", "Mpps/core"
    );
    for r in rows {
        println!(
            "{:<22} {:>9} {:>7.1} ({:>5.1}..{:>5.1}) {:>10.1} {:>10.1} {:>10.2}",
            r.name,
            r.sessions,
            r.total.median,
            r.total.min,
            r.total.max,
            r.copy.median,
            r.engine_ns(),
            1e3 / r.engine_ns()
        );
    }
    if let Some(s) = setup {
        println!();
        println!(
            "{:<22} {:>9} {:>7.1} ({:>5.1}..{:>5.1}) {:>10.1} {:>10.1} {:>10.2} M sessions/s",
            format!("setup_{}", count_name(s.sessions)),
            s.sessions,
            s.total.median,
            s.total.min,
            s.total.max,
            s.copy.median,
            s.engine_ns(),
            1e3 / s.engine_ns()
        );
    }
    if let Some((name, (plain, batched))) = lookup {
        println!();
        println!(
            "reference, not the engine: FlowTable<InKey, InVal> look-up + slot update (one line)"
        );
        println!(
            "{:<22} {:>9} {:>7.1} ({:>5.1}..{:>5.1})   one key after the other",
            format!("{name}_plain"),
            count_name(big_of(name)),
            plain.median,
            plain.min,
            plain.max
        );
        println!(
            "{:<22} {:>9} {:>7.1} ({:>5.1}..{:>5.1})   batch of 64: hash+prefetch, then look up+update",
            format!("{name}_batched"),
            count_name(big_of(name)),
            batched.median,
            batched.min,
            batched.max
        );
    }
    println!();
    if let Some(r) = rows.iter().find(|r| r.name == "udp_in2out_1M") {
        let ok = r.engine_ns() <= 50.0;
        println!(
            "target established <= 50 ns/pkt at 1M sessions: {:.1} ns  {}",
            r.engine_ns(),
            if ok { "MET" } else { "NOT MET" }
        );
    }
    if let Some(s) = setup.filter(|s| s.sessions == 1_000_000) {
        let rate = 1e3 / s.engine_ns();
        println!(
            "target set-up >= 2 M sessions/s/core: {rate:.2} M/s  {}",
            if rate >= 2.0 { "MET" } else { "NOT MET" }
        );
    }
    println!("elapsed {:.1} s", elapsed.as_secs_f64());

    let mut j = format!(
        "{{\"bench\":\"engine\",\"quick\":{},\"hugepages\":{huge},\"batch\":{BATCH},\
         \"frame_bytes\":{FRAME_LEN},\"results\":[",
        p.quick
    );
    let mut items: Vec<String> = rows
        .iter()
        .map(|r| {
            format!(
                "{{\"name\":\"{}\",\"sessions\":{},\"ns_per_pkt\":{:.2},\"mpps\":{:.3},\
                 \"total_ns_per_pkt\":{:.2},\"copy_ns_per_pkt\":{:.2}}}",
                r.name,
                r.sessions,
                r.engine_ns(),
                1e3 / r.engine_ns(),
                r.total.median,
                r.copy.median
            )
        })
        .collect();
    if let Some(s) = setup {
        items.push(format!(
            "{{\"name\":\"setup_{}\",\"sessions\":{},\"ns_per_session\":{:.2},\
             \"sessions_per_s\":{:.0},\"total_ns_per_session\":{:.2},\"copy_ns_per_pkt\":{:.2}}}",
            count_name(s.sessions),
            s.sessions,
            s.engine_ns(),
            1e9 / s.engine_ns(),
            s.total.median,
            s.copy.median
        ));
    }
    if let Some((name, (plain, batched))) = lookup {
        for (suffix, st) in [("plain", plain), ("batched", batched)] {
            items.push(format!(
                "{{\"name\":\"{name}_{suffix}\",\"ns_per_lookup\":{:.2}}}",
                st.median
            ));
        }
    }
    j.push_str(&items.join(","));
    j.push_str("]}");
    println!("JSON: {j}");
}
