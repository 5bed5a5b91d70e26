//! The sink: one thread per queue, each with its own UMEM, socket, sequence tracker and
//! latency histogram (merged at the end; RSS keeps a flow on one queue). It counts what
//! arrives, every frame that is not a bench frame by reason, the source addresses (to see
//! a NAT's pool), and can reflect bench frames back out of the interface so that the
//! generator measures round trips.

use std::io;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use natgw_kernel::xsk::{BadDesc, Desc, XdpStatistics};

use crate::frame::{self, NotBench};
use crate::generator::{Live, MAX_BATCH, progress, round3, seq_json, xdp_json};
use crate::json::{Obj, Value};
use crate::latency::{Latency, LatencySummary};
use crate::pace::now_ns;
use crate::port::{self, PortOptions, QueuePort, attach_mode_name};
use crate::track::{SeqStats, Tracker};

/// Frames that were not bench frames, by reason.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Unexpected {
    /// Too short for its headers, or not IPv4 (the XDP program passes non-IPv4 to the
    /// kernel, so this is a malformed IPv4 frame).
    pub malformed: u64,
    /// IPv4 but a protocol the bench never sends, or a fragment.
    pub other_protocol: u64,
    /// UDP/TCP/ICMP without the bench magic.
    pub no_magic: u64,
    /// Descriptors outside the UMEM or their frame (a kernel bug if ever seen).
    pub bad_desc: u64,
}

impl Unexpected {
    #[inline]
    pub fn count(&mut self, e: NotBench) {
        match e {
            NotBench::Malformed => self.malformed += 1,
            NotBench::OtherProtocol => self.other_protocol += 1,
            NotBench::NoMagic => self.no_magic += 1,
        }
    }

    pub fn total(&self) -> u64 {
        self.malformed + self.other_protocol + self.no_magic + self.bad_desc
    }

    fn add(&mut self, o: &Unexpected) {
        self.malformed += o.malformed;
        self.other_protocol += o.other_protocol;
        self.no_magic += o.no_magic;
        self.bad_desc += o.bad_desc;
    }

    pub fn json(&self) -> Obj {
        Obj::new()
            .u("malformed", self.malformed)
            .u("other_protocol", self.other_protocol)
            .u("no_magic", self.no_magic)
            .u("bad_desc", self.bad_desc)
    }
}

/// Source addresses seen, with packet counts: a fixed table of [`SOURCES`] entries, the
/// rest counted together.
pub const SOURCES: usize = 64;

#[derive(Clone, Debug)]
pub struct Sources {
    pub table: Vec<(Ipv4Addr, u64)>,
    pub other: u64,
    last: usize,
}

impl Default for Sources {
    fn default() -> Self {
        Sources {
            table: Vec::with_capacity(SOURCES),
            other: 0,
            last: 0,
        }
    }
}

impl Sources {
    #[inline]
    pub fn record(&mut self, a: Ipv4Addr) {
        if self.table.get(self.last).is_some_and(|e| e.0 == a) {
            self.table[self.last].1 += 1;
            return;
        }
        if let Some(i) = self.table.iter().position(|e| e.0 == a) {
            self.table[i].1 += 1;
            self.last = i;
        } else if self.table.len() < SOURCES {
            self.table.push((a, 1));
            self.last = self.table.len() - 1;
        } else {
            self.other += 1;
        }
    }

    fn merge(&mut self, o: &Sources) {
        for &(a, n) in &o.table {
            match self.table.iter().position(|e| e.0 == a) {
                Some(i) => self.table[i].1 += n,
                None if self.table.len() < SOURCES => self.table.push((a, n)),
                None => self.other += n,
            }
        }
        self.other += o.other;
    }
}

#[derive(Clone, Debug)]
pub struct SinkConfig {
    pub port: PortOptions,
    pub cores: Vec<usize>,
    /// Send every bench frame back (addresses, ports and MACs swapped).
    pub reflect: bool,
    /// Flow ids `0..max_flows` are tracked (per queue: `max_flows` x 16 bytes).
    pub max_flows: usize,
    pub duration: Option<Duration>,
    /// Stop after this many bench frames in total.
    pub count: Option<u64>,
    /// Stop once nothing arrived for this long, after something did.
    pub idle: Option<Duration>,
    pub progress: Option<Duration>,
    /// Spin on an empty ring instead of sleeping in poll(2) after a while.
    pub busy: bool,
    pub batch: usize,
}

#[derive(Default)]
pub struct SinkQueueReport {
    pub queue: u32,
    pub frames: u64,
    pub bench: u64,
    pub bytes: u64,
    pub reflected: u64,
    /// Reflections dropped because the TX ring was full.
    pub reflect_dropped: u64,
    pub xdp_stats: Option<XdpStatistics>,
    pub unexpected: Unexpected,
}

pub struct SinkReport {
    pub ifname: String,
    pub zero_copy: bool,
    pub xdp_mode: &'static str,
    pub elapsed_s: f64,
    /// Every frame the sockets received.
    pub frames: u64,
    /// Bench frames.
    pub packets: u64,
    /// Bytes of bench frames on the wire (FCS included).
    pub bytes: u64,
    pub reflected: u64,
    pub seq: SeqStats,
    pub latency: LatencySummary,
    pub unexpected: Unexpected,
    pub sources: Sources,
    pub queues: Vec<SinkQueueReport>,
    /// Time from the first to the last bench frame (the rate's denominator).
    pub active_s: f64,
}

impl SinkReport {
    pub fn pps(&self) -> f64 {
        if self.active_s > 0.0 {
            self.packets as f64 / self.active_s
        } else {
            0.0
        }
    }

    pub fn json(&self) -> Obj {
        let sources: Vec<Value> = self
            .sources
            .table
            .iter()
            .map(|(a, n)| Value::Obj(Obj::new().s("addr", a.to_string()).u("packets", *n)))
            .collect();
        let queues: Vec<Value> = self
            .queues
            .iter()
            .map(|q| {
                let mut o = Obj::new()
                    .u("queue", q.queue as u64)
                    .u("frames", q.frames)
                    .u("packets", q.bench)
                    .u("bytes", q.bytes)
                    .u("reflected", q.reflected)
                    .u("reflect_dropped", q.reflect_dropped);
                if let Some(x) = q.xdp_stats {
                    o = o.o("xdp_statistics", xdp_json(&x));
                }
                Value::Obj(o)
            })
            .collect();
        Obj::new()
            .s("tool", "natgw-bench sink")
            .s("interface", &self.ifname)
            .s("xsk_mode", if self.zero_copy { "zero-copy" } else { "copy" })
            .s("xdp_mode", self.xdp_mode)
            .f("elapsed_s", round3(self.elapsed_s))
            .f("active_s", round3(self.active_s))
            .u("frames", self.frames)
            .u("packets", self.packets)
            .u("bytes", self.bytes)
            .f("pps", self.pps().round())
            .u("reflected", self.reflected)
            .o("sequence", seq_json(&self.seq))
            .o("latency", self.latency.json())
            .s(
                "latency_clock",
                "CLOCK_MONOTONIC of the generator's stamp vs the sink's: one-way latency only with both on one machine",
            )
            .o("unexpected", self.unexpected.json())
            .v("sources", Value::Arr(sources))
            .u("other_sources", self.sources.other)
            .v("queues", Value::Arr(queues))
    }

    pub fn human(&self) -> String {
        format!(
            "sink {} ({}, xdp {}): {} bench packets ({} frames) in {:.3} s = {:.0} pps; \
             {} flows, {} lost by sequence, {} reordered, {} duplicates; {} unexpected; {} reflected\n  latency (one-way, same clock) {}",
            self.ifname,
            if self.zero_copy { "zero-copy" } else { "copy" },
            self.xdp_mode,
            self.packets,
            self.frames,
            self.active_s,
            self.pps(),
            self.seq.flows_seen,
            self.seq.lost,
            self.seq.reordered,
            self.seq.duplicates,
            self.unexpected.total(),
            self.reflected,
            self.latency.human()
        )
    }
}

fn invalid(m: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, m)
}

/// Runs the sink in the calling thread's network namespace until the duration, count or
/// idle limit is reached or `stop` is set ([`open`], then [`Sink::run`]).
pub fn run(cfg: &SinkConfig, stop: &AtomicBool) -> io::Result<SinkReport> {
    open(cfg)?.run(stop)
}

/// A sink whose sockets are bound and whose program is attached: frames arriving from now
/// on wait in its rings. A driver opens it (in the sink's namespace), starts the generator,
/// and runs it (from any thread).
pub struct Sink {
    cfg: SinkConfig,
    ports: port::Ports,
}

/// Checks `cfg` and opens the sink in the calling thread's network namespace.
pub fn open(cfg: &SinkConfig) -> io::Result<Sink> {
    if cfg.batch == 0 || cfg.batch > MAX_BATCH {
        return Err(invalid(format!("--batch {}: 1..={MAX_BATCH}", cfg.batch)));
    }
    if !cfg.cores.is_empty() && cfg.cores.len() != cfg.port.queues as usize {
        return Err(invalid(format!(
            "--cores lists {} cores for {} queues",
            cfg.cores.len(),
            cfg.port.queues
        )));
    }
    if cfg.port.frames < cfg.port.ring_size + cfg.batch as u32 {
        return Err(invalid(format!(
            "--frames {}: at least --ring-size + --batch",
            cfg.port.frames
        )));
    }
    Ok(Sink {
        cfg: cfg.clone(),
        ports: port::open(&cfg.port, true)?,
    })
}

impl Sink {
    /// Receives until the duration, count or idle limit or `stop`.
    pub fn run(self, stop: &AtomicBool) -> io::Result<SinkReport> {
        let Sink { cfg, mut ports } = self;
        collect(&cfg, &mut ports, stop)
    }
}

fn collect(cfg: &SinkConfig, ports: &mut port::Ports, stop: &AtomicBool) -> io::Result<SinkReport> {
    let nq = ports.queues.len();
    let live: Vec<Live> = (0..nq).map(|_| Live::default()).collect();
    let total = AtomicU64::new(0);
    let start = now_ns();
    let results = std::thread::scope(|s| {
        let mut hs = Vec::new();
        for (i, qp) in ports.queues.iter_mut().enumerate() {
            let live = &live[i];
            let total = &total;
            let core = cfg.cores.get(i).copied();
            hs.push(s.spawn(move || {
                let r = sink_thread(cfg, qp, core, start, stop, live, total);
                live.done.store(true, Ordering::Release);
                r
            }));
        }
        progress(cfg.progress, start, &live, stop, "sink");
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect::<Vec<_>>()
    });
    let elapsed = (now_ns() - start) as f64 / 1e9;
    let mut rep = SinkReport {
        ifname: cfg.port.ifname.clone(),
        zero_copy: ports.zero_copy,
        xdp_mode: attach_mode_name(ports.xdp.as_ref().map(|x| x.1)),
        elapsed_s: elapsed,
        frames: 0,
        packets: 0,
        bytes: 0,
        reflected: 0,
        seq: SeqStats::default(),
        latency: LatencySummary::default(),
        unexpected: Unexpected::default(),
        sources: Sources::default(),
        queues: Vec::new(),
        active_s: 0.0,
    };
    let mut lat = Latency::new();
    let (mut first, mut last) = (u64::MAX, 0u64);
    for r in results {
        let t = r?;
        rep.frames += t.q.frames;
        rep.packets += t.q.bench;
        rep.bytes += t.q.bytes;
        rep.reflected += t.q.reflected;
        rep.unexpected.add(&t.q.unexpected);
        Tracker::merge_stats(&mut rep.seq, &t.seq);
        lat.merge(&t.lat);
        rep.sources.merge(&t.sources);
        if t.q.bench > 0 {
            first = first.min(t.first);
            last = last.max(t.last);
        }
        rep.queues.push(t.q);
    }
    rep.latency = lat.summary();
    if last > first {
        rep.active_s = (last - first) as f64 / 1e9;
    }
    Ok(rep)
}

struct ThreadOut {
    q: SinkQueueReport,
    seq: SeqStats,
    lat: Latency,
    sources: Sources,
    first: u64,
    last: u64,
}

fn sink_thread(
    cfg: &SinkConfig,
    qp: &mut QueuePort,
    core: Option<usize>,
    start: u64,
    stop: &AtomicBool,
    live: &Live,
    total: &AtomicU64,
) -> io::Result<ThreadOut> {
    port::pin(core).map_err(invalid)?;
    let frames = qp.umem.frames();
    let mut free: Vec<u64> = (0..frames).map(|i| qp.umem.frame_addr(i)).collect();
    let k = qp.sock.fill(&free);
    free.drain(..k);
    qp.sock.wakeup_rx();
    let mut tracker = Tracker::new(cfg.max_flows);
    let mut lat = Latency::new();
    let mut sources = Sources::default();
    let mut q = SinkQueueReport {
        queue: qp.queue,
        ..Default::default()
    };
    let mut descs = [Desc { addr: 0, len: 0 }; MAX_BATCH];
    let mut tx = [Desc { addr: 0, len: 0 }; MAX_BATCH];
    let mut comp = [0u64; MAX_BATCH];
    let end = cfg.duration.map(|d| start + d.as_nanos() as u64);
    let idle_ns = cfg.idle.map(|d| d.as_nanos() as u64);
    let (mut first, mut last) = (0u64, 0u64);
    let mut empty_polls = 0u32;
    loop {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let n = qp.sock.recv(&mut descs[..cfg.batch]);
        let now = now_ns();
        if end.is_some_and(|e| now >= e)
            || cfg
                .count
                .is_some_and(|c| total.load(Ordering::Relaxed) >= c)
            || (q.bench > 0 && idle_ns.is_some_and(|i| now - last >= i))
        {
            // Frames just taken are still counted below only if we go on: give them back.
            free.extend(descs[..n].iter().map(|d| d.addr & !(frames_mask(qp))));
            break;
        }
        let mut ntx = 0;
        let bench_before = q.bench;
        for d in &descs[..n] {
            q.frames += 1;
            let (chunk, off, len) = match qp.umem.check_desc(*d) {
                Ok(v) => v,
                Err(BadDesc::Address) => {
                    q.unexpected.bad_desc += 1;
                    continue;
                }
                Err(BadDesc::Length { chunk }) => {
                    q.unexpected.bad_desc += 1;
                    free.push(chunk);
                    continue;
                }
            };
            let addr = chunk + off as u64;
            match frame::parse(qp.umem.frame(addr, len)) {
                Ok((b, l4)) => {
                    q.bench += 1;
                    q.bytes += (len + frame::FCS_LEN) as u64;
                    tracker.record(b.flow, b.seq);
                    lat.record(b.ts, now);
                    sources.record(b.src);
                    if first == 0 {
                        first = now;
                    }
                    last = now;
                    if cfg.reflect {
                        // SAFETY: the frame came from the rx ring: ours until it is
                        // queued for tx below; the shared slice above is gone.
                        frame::reflect(unsafe { qp.umem.frame_mut(addr, len) }, l4);
                        tx[ntx] = Desc {
                            addr,
                            len: len as u32,
                        };
                        ntx += 1;
                        continue;
                    }
                }
                Err(e) => q.unexpected.count(e),
            }
            free.push(chunk);
        }
        if n > 0 {
            total.fetch_add(q.bench - bench_before, Ordering::Relaxed);
            live.received.store(q.bench, Ordering::Relaxed);
        }
        if cfg.reflect {
            if ntx > 0 {
                let k = qp.sock.send(&tx[..ntx]);
                q.reflected += k as u64;
                q.reflect_dropped += (ntx - k) as u64;
                free.extend(tx[k..ntx].iter().map(|d| d.addr & !(frames_mask(qp))));
                live.sent.store(q.reflected, Ordering::Relaxed);
            }
            if qp.sock.tx_pending() > 0 {
                let _ = qp.sock.kick_tx();
            }
            let c = qp.sock.complete(&mut comp);
            free.extend(comp[..c].iter().map(|a| a & !(frames_mask(qp))));
        }
        if !free.is_empty() {
            let k = qp.sock.fill(&free);
            free.drain(..k);
            qp.sock.wakeup_rx();
        }
        if n == 0 {
            empty_polls += 1;
            if !cfg.busy && empty_polls > 256 {
                // Nothing for a while: sleep in poll(2); the rings hold what arrives.
                let _ = qp.sock.poll_rx(1);
            }
        } else {
            empty_polls = 0;
        }
    }
    q.xdp_stats = qp.sock.statistics().ok();
    Ok(ThreadOut {
        q,
        seq: tracker.stats,
        lat,
        sources,
        first,
        last,
    })
}

fn frames_mask(qp: &QueuePort) -> u64 {
    qp.umem.frame_size() as u64 - 1
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_table_is_bounded() {
        let mut s = Sources::default();
        for i in 0..100u32 {
            s.record(Ipv4Addr::from(i));
            s.record(Ipv4Addr::from(i));
        }
        assert_eq!(s.table.len(), SOURCES);
        assert_eq!(s.other, 2 * (100 - SOURCES as u64));
        assert!(s.table.iter().all(|e| e.1 == 2));
    }
}
