//! The generator: one thread per queue, each with its own UMEM, socket, flows (flow `f`
//! belongs to thread `f % queues`, so each flow's sequence numbers come from one thread in
//! order) and pacer (the rate split evenly). Every TX frame of the UMEM is initialised with
//! the template once; a packet then costs [`Template::write`]. With `rtt` the generator
//! also receives (the sink reflecting, or a gateway looping back) and keeps the round-trip
//! histogram and the sequence accounting of what came back.

use std::io;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use natgw_kernel::xsk::{BadDesc, Desc, XdpStatistics};

use crate::flows::FlowSet;
use crate::frame::{self, Proto, Template, TemplateSpec};
use crate::json::{Obj, Value};
use crate::latency::{Latency, LatencySummary};
use crate::pace::{Pacer, now_ns};
use crate::port::{self, PortOptions, QueuePort, attach_mode_name};
use crate::sink::Unexpected;
use crate::track::{SeqStats, Tracker};

/// Largest batch (descriptors on the stack).
pub const MAX_BATCH: usize = 256;

/// Where the destination MAC comes from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DstMac {
    Given([u8; 6]),
    /// The neighbour table's entry for this address (resolved if missing).
    Resolve(Ipv4Addr),
}

#[derive(Clone, Debug)]
pub struct GenConfig {
    pub port: PortOptions,
    /// One core per queue thread, in order (empty: not pinned).
    pub cores: Vec<usize>,
    pub proto: Proto,
    /// Frame size on the wire, FCS included (64 = 60 bytes in the buffer).
    pub wire_size: usize,
    /// `None`: the interface's.
    pub src_mac: Option<[u8; 6]>,
    pub dst_mac: DstMac,
    pub dst_ip: Ipv4Addr,
    pub dst_port: u16,
    pub flows: FlowSet,
    /// Total packets per second over all threads; 0 = flat out.
    pub rate: u64,
    /// Stop after this long...
    pub duration: Option<Duration>,
    /// ... or after this many packets in total (whichever comes first).
    pub count: Option<u64>,
    pub batch: usize,
    /// Receive the frames coming back and keep round-trip statistics.
    pub rtt: bool,
    /// After the last packet, how long to wait for replies (with `rtt`).
    pub rtt_linger: Duration,
    /// Progress line to stderr every this often (`None`: quiet).
    pub progress: Option<Duration>,
}

/// Live counters of one thread, for progress lines.
#[derive(Default)]
pub(crate) struct Live {
    pub(crate) sent: AtomicU64,
    pub(crate) received: AtomicU64,
    pub(crate) done: AtomicBool,
}

/// What one generator thread did.
#[derive(Default)]
pub struct GenQueueReport {
    pub queue: u32,
    pub sent: u64,
    pub bytes: u64,
    /// Batches cut short because the TX ring or the free frames ran out.
    pub tx_full: u64,
    /// Packets the pacer forgave after the thread fell behind schedule.
    pub pacing_forgiven: u64,
    pub kicks_failed: u64,
    pub xdp_stats: Option<XdpStatistics>,
    pub received: u64,
    pub unexpected: Unexpected,
}

/// The result of a run.
pub struct GenReport {
    pub ifname: String,
    pub zero_copy: bool,
    pub xdp_mode: &'static str,
    pub proto: Proto,
    pub wire_size: usize,
    pub flows: u64,
    pub rate: u64,
    pub elapsed_s: f64,
    pub sent: u64,
    pub bytes: u64,
    pub queues: Vec<GenQueueReport>,
    /// With `rtt`: sequence accounting and round trips of what came back.
    pub returned: Option<(SeqStats, LatencySummary)>,
}

impl GenReport {
    pub fn pps(&self) -> f64 {
        if self.elapsed_s > 0.0 {
            self.sent as f64 / self.elapsed_s
        } else {
            0.0
        }
    }

    pub fn json(&self) -> Obj {
        let q: Vec<Value> = self
            .queues
            .iter()
            .map(|q| {
                let mut o = Obj::new()
                    .u("queue", q.queue as u64)
                    .u("sent", q.sent)
                    .u("bytes", q.bytes)
                    .u("tx_full", q.tx_full)
                    .u("pacing_forgiven", q.pacing_forgiven)
                    .u("kicks_failed", q.kicks_failed)
                    .u("received", q.received)
                    .o("unexpected", q.unexpected.json());
                if let Some(x) = q.xdp_stats {
                    o = o.o("xdp_statistics", xdp_json(&x));
                }
                Value::Obj(o)
            })
            .collect();
        let mut o = Obj::new()
            .s("tool", "natgw-bench gen")
            .s("interface", &self.ifname)
            .s(
                "xsk_mode",
                if self.zero_copy { "zero-copy" } else { "copy" },
            )
            .s("xdp_mode", self.xdp_mode)
            .s("proto", self.proto.name())
            .u("frame_size", self.wire_size as u64)
            .u("flows", self.flows)
            .u("rate_pps", self.rate)
            .f("elapsed_s", round3(self.elapsed_s))
            .u("sent", self.sent)
            .u("bytes", self.bytes)
            .f("pps", self.pps().round())
            .f(
                "gbps",
                round3(self.bytes as f64 * 8.0 / self.elapsed_s.max(1e-9) / 1e9),
            );
        if let Some((s, l)) = &self.returned {
            o = o.o("returned", seq_json(s)).o("rtt", l.json());
        }
        o.v("queues", Value::Arr(q))
    }

    pub fn human(&self) -> String {
        let mut s = format!(
            "gen {} ({}, xdp {}): {} {}-byte {} packets over {} flows in {:.3} s = {:.0} pps ({:.3} Gbit/s)",
            self.ifname,
            if self.zero_copy { "zero-copy" } else { "copy" },
            self.xdp_mode,
            self.sent,
            self.wire_size,
            self.proto,
            self.flows,
            self.elapsed_s,
            self.pps(),
            self.bytes as f64 * 8.0 / self.elapsed_s.max(1e-9) / 1e9
        );
        let full: u64 = self.queues.iter().map(|q| q.tx_full).sum();
        let forgiven: u64 = self.queues.iter().map(|q| q.pacing_forgiven).sum();
        if full > 0 || forgiven > 0 {
            s += &format!(
                "\n  tx ring full {full} times, {forgiven} packets behind schedule forgiven"
            );
        }
        if let Some((st, l)) = &self.returned {
            s += &format!(
                "\n  returned {} ({} lost by sequence, {} reordered, {} duplicates)\n  rtt {}",
                st.received,
                st.lost,
                st.reordered,
                st.duplicates,
                l.human()
            );
        }
        s
    }
}

pub(crate) fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

pub(crate) fn seq_json(s: &SeqStats) -> Obj {
    Obj::new()
        .u("received", s.received)
        .u("unique", s.unique)
        .u("lost", s.lost)
        .u("reordered", s.reordered)
        .u("duplicates", s.duplicates)
        .u("too_late", s.too_late)
        .u("flow_out_of_range", s.out_of_range)
        .u("flows_seen", s.flows_seen)
}

pub(crate) fn xdp_json(x: &XdpStatistics) -> Obj {
    Obj::new()
        .u("rx_dropped", x.rx_dropped)
        .u("rx_invalid_descs", x.rx_invalid_descs)
        .u("tx_invalid_descs", x.tx_invalid_descs)
        .u("rx_ring_full", x.rx_ring_full)
        .u("rx_fill_ring_empty_descs", x.rx_fill_ring_empty_descs)
        .u("tx_ring_empty_descs", x.tx_ring_empty_descs)
}

fn invalid(m: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, m)
}

impl GenConfig {
    fn check(&self) -> io::Result<()> {
        if self.batch == 0 || self.batch > MAX_BATCH {
            return Err(invalid(format!("--batch {}: 1..={MAX_BATCH}", self.batch)));
        }
        if self.wire_size.saturating_sub(frame::FCS_LEN) > port::FRAME_SIZE as usize {
            return Err(invalid(format!(
                "--size {}: at most {} (UMEM frame)",
                self.wire_size,
                port::FRAME_SIZE as usize + frame::FCS_LEN
            )));
        }
        if !self.cores.is_empty() && self.cores.len() != self.port.queues as usize {
            return Err(invalid(format!(
                "--cores lists {} cores for {} queues",
                self.cores.len(),
                self.port.queues
            )));
        }
        if self.duration.is_none() && self.count.is_none() {
            return Err(invalid("give --duration or --count".into()));
        }
        if self.port.frames < 2 * self.batch as u32 {
            return Err(invalid(format!(
                "--frames {}: at least twice --batch",
                self.port.frames
            )));
        }
        Ok(())
    }
}

/// Runs the generator in the calling thread's network namespace until the duration or
/// count is reached or `stop` is set.
pub fn run(cfg: &GenConfig, stop: &AtomicBool) -> io::Result<GenReport> {
    cfg.check()?;
    let mut ports = port::open(&cfg.port, cfg.rtt)?;
    let dst_mac = match &cfg.dst_mac {
        DstMac::Given(m) => *m,
        DstMac::Resolve(a) => port::resolve_mac(ports.ifindex, *a, Duration::from_secs(3))?,
    };
    let tpl = Template::new(&TemplateSpec {
        proto: cfg.proto,
        wire_size: cfg.wire_size,
        src_mac: cfg.src_mac.unwrap_or(ports.mac),
        dst_mac,
        dst_ip: cfg.dst_ip,
        dst_port: cfg.dst_port,
        ttl: 64,
    })
    .map_err(invalid)?;
    let nq = ports.queues.len() as u32;
    let live: Vec<Live> = (0..nq).map(|_| Live::default()).collect();
    let start = now_ns();
    let end = cfg.duration.map(|d| start + d.as_nanos() as u64);
    let results = std::thread::scope(|s| {
        let mut handles = Vec::new();
        for (i, qp) in ports.queues.iter_mut().enumerate() {
            let t = Thread {
                cfg,
                tpl: &tpl,
                index: i as u32,
                threads: nq,
                start,
                end,
                stop,
                live: &live[i],
                core: cfg.cores.get(i).copied(),
            };
            handles.push(s.spawn(move || t.run(qp)));
        }
        progress(cfg.progress, start, &live, stop, "gen");
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect::<Vec<_>>()
    });
    let elapsed_ns = results
        .iter()
        .filter_map(|r| r.as_ref().ok().map(|r| r.3))
        .max()
        .unwrap_or(0);
    let mut report = GenReport {
        ifname: cfg.port.ifname.clone(),
        zero_copy: ports.zero_copy,
        xdp_mode: attach_mode_name(ports.xdp.as_ref().map(|x| x.1)),
        proto: cfg.proto,
        wire_size: cfg.wire_size,
        flows: cfg.flows.count(),
        rate: cfg.rate,
        elapsed_s: elapsed_ns as f64 / 1e9,
        sent: 0,
        bytes: 0,
        queues: Vec::new(),
        returned: None,
    };
    let mut seq = SeqStats::default();
    let mut lat = Latency::new();
    for r in results {
        let (q, st, l, _) = r?;
        report.sent += q.sent;
        report.bytes += q.bytes;
        report.queues.push(q);
        if let Some(st) = st {
            Tracker::merge_stats(&mut seq, &st);
        }
        if let Some(l) = l {
            lat.merge(&l);
        }
    }
    if cfg.rtt {
        report.returned = Some((seq, lat.summary()));
    }
    Ok(report)
}

/// Prints a line per interval until every thread is done (the caller's thread).
pub(crate) fn progress(
    every: Option<Duration>,
    start: u64,
    live: &[Live],
    stop: &AtomicBool,
    what: &str,
) {
    let mut last = (start, 0u64, 0u64);
    let mut next = start + every.map_or(u64::MAX / 2, |d| d.as_nanos() as u64);
    while !live.iter().all(|l| l.done.load(Ordering::Acquire)) {
        std::thread::sleep(Duration::from_millis(20));
        if natgw_kernel::signal::signalled() {
            stop.store(true, Ordering::Release);
        }
        let now = now_ns();
        if let Some(d) = every
            && now >= next
        {
            next += d.as_nanos() as u64;
            let sent: u64 = live.iter().map(|l| l.sent.load(Ordering::Relaxed)).sum();
            let recv: u64 = live
                .iter()
                .map(|l| l.received.load(Ordering::Relaxed))
                .sum();
            let dt = (now - last.0) as f64 / 1e9;
            eprintln!(
                "{what}: {:7.1} s  sent {:>12} ({:>10.0} pps)  received {:>12} ({:>10.0} pps)",
                (now - start) as f64 / 1e9,
                sent,
                (sent - last.1) as f64 / dt,
                recv,
                (recv - last.2) as f64 / dt
            );
            last = (now, sent, recv);
        }
    }
}

struct Thread<'a> {
    cfg: &'a GenConfig,
    tpl: &'a Template,
    index: u32,
    threads: u32,
    start: u64,
    end: Option<u64>,
    stop: &'a AtomicBool,
    live: &'a Live,
    core: Option<usize>,
}

type ThreadResult = io::Result<(GenQueueReport, Option<SeqStats>, Option<Latency>, u64)>;

/// The RX half of a generator thread (with `rtt`).
struct Rx {
    tracker: Tracker,
    lat: Latency,
    refill: Vec<u64>,
    unexpected: Unexpected,
    received: u64,
}

impl Rx {
    fn poll(&mut self, qp: &mut QueuePort, descs: &mut [Desc]) -> usize {
        let n = qp.sock.recv(descs);
        if n > 0 {
            let now = now_ns();
            for d in &descs[..n] {
                match qp.umem.check_desc(*d) {
                    Err(BadDesc::Address) => self.unexpected.bad_desc += 1,
                    Err(BadDesc::Length { chunk }) => {
                        self.unexpected.bad_desc += 1;
                        self.refill.push(chunk);
                    }
                    Ok((chunk, off, len)) => {
                        match frame::parse(qp.umem.frame(chunk + off as u64, len)) {
                            Ok((b, _)) => {
                                self.received += 1;
                                self.tracker.record(b.flow, b.seq);
                                self.lat.record(b.ts, now);
                            }
                            Err(e) => self.unexpected.count(e),
                        }
                        self.refill.push(chunk);
                    }
                }
            }
        }
        if !self.refill.is_empty() {
            let k = qp.sock.fill(&self.refill);
            self.refill.drain(..k);
            qp.sock.wakeup_rx();
        }
        n
    }
}

impl Thread<'_> {
    fn run(self, qp: &mut QueuePort) -> ThreadResult {
        let r = self.run_inner(qp);
        self.live.done.store(true, Ordering::Release);
        r
    }

    fn run_inner(&self, qp: &mut QueuePort) -> ThreadResult {
        port::pin(self.core).map_err(invalid)?;
        let cfg = self.cfg;
        let frames = qp.umem.frames();
        // With rtt, the upper half of the UMEM receives.
        let tx_frames = if cfg.rtt { frames / 2 } else { frames };
        let len = self.tpl.len();
        let mut free: Vec<u64> = Vec::with_capacity(tx_frames as usize);
        for i in 0..tx_frames {
            let a = qp.umem.frame_addr(i);
            // SAFETY: no frame has been given to the kernel yet; one slice at a time.
            unsafe { qp.umem.frame_mut(a, len) }.copy_from_slice(self.tpl.bytes());
            free.push(a);
        }
        let mut rx = cfg.rtt.then(|| Rx {
            tracker: Tracker::new(cfg.flows.count() as usize),
            lat: Latency::new(),
            refill: (tx_frames..frames).map(|i| qp.umem.frame_addr(i)).collect(),
            unexpected: Unexpected::default(),
            received: 0,
        });
        if let Some(rx) = &mut rx {
            rx.refill.reserve(frames as usize);
        }

        // This thread's flows: index, index + threads, ...
        let total = cfg.flows.count();
        let my_flows = (total.saturating_sub(self.index as u64)).div_ceil(self.threads as u64);
        if my_flows == 0 {
            return Err(invalid(format!(
                "{} flows for {} queues: every queue needs a flow",
                total, self.threads
            )));
        }
        let mut seqs = vec![0u32; my_flows as usize];
        let mut cursor = 0usize;
        let my_count = cfg.count.map(|c| {
            c / self.threads as u64 + u64::from((self.index as u64) < c % self.threads as u64)
        });
        let my_rate = if cfg.rate == 0 {
            0
        } else {
            (cfg.rate / self.threads as u64).max(1)
        };
        // At most ~10 ms or 4 batches of backlog is caught up after a stall (a descheduled
        // thread on a busy machine), so a stall costs a short burst, not the rate.
        let max_debt = (my_rate / 100).max(4 * cfg.batch as u64);
        let mut pacer = Pacer::new(my_rate, self.start, max_debt);

        let ring = cfg.port.ring_size;
        let mut descs = [Desc { addr: 0, len: 0 }; MAX_BATCH];
        let mut comp = [0u64; MAX_BATCH];
        let mut rdescs = [Desc { addr: 0, len: 0 }; MAX_BATCH];
        let mut rep = GenQueueReport {
            queue: qp.queue,
            ..Default::default()
        };
        let mut last_tx = self.start;
        loop {
            let now = now_ns();
            let finished = self.stop.load(Ordering::Relaxed)
                || self.end.is_some_and(|e| now >= e)
                || my_count.is_some_and(|c| rep.sent >= c);
            if finished {
                break;
            }
            let n = qp.sock.complete(&mut comp);
            free.extend_from_slice(&comp[..n]);

            let room = ring.saturating_sub(qp.sock.tx_pending()) as usize;
            let left = my_count.map_or(u64::MAX, |c| c - rep.sent);
            let due = pacer.due(now).min(cfg.batch as u64).min(left) as usize;
            let want = due.min(free.len()).min(room);
            if want < due {
                rep.tx_full += 1;
            }
            for d in descs.iter_mut().take(want) {
                let addr = free.pop().expect("bounded by free.len()");
                let f = self.index as u64 + cursor as u64 * self.threads as u64;
                let (src, sport) = cfg.flows.flow(f as u32);
                let seq = seqs[cursor];
                seqs[cursor] = seq.wrapping_add(1);
                cursor += 1;
                if cursor == seqs.len() {
                    cursor = 0;
                }
                // SAFETY: `addr` came from the free list: not in any ring, no other slice.
                let buf = unsafe { qp.umem.frame_mut(addr, len) };
                self.tpl.write(buf, src, sport, f as u32, seq, now_ns());
                *d = Desc {
                    addr,
                    len: len as u32,
                };
            }
            let k = qp.sock.send(&descs[..want]);
            if k < want {
                // Not queued after all: give the sequence numbers back, newest first.
                rep.tx_full += 1;
                for d in descs[k..want].iter().rev() {
                    cursor = if cursor == 0 {
                        seqs.len() - 1
                    } else {
                        cursor - 1
                    };
                    seqs[cursor] = seqs[cursor].wrapping_sub(1);
                    free.push(d.addr);
                }
            }
            pacer.sent(k as u64);
            rep.sent += k as u64;
            rep.bytes += (k * (len + frame::FCS_LEN)) as u64;
            if k > 0 {
                last_tx = now;
                self.live.sent.store(rep.sent, Ordering::Relaxed);
            }
            if qp.sock.tx_pending() > 0 && qp.sock.kick_tx().is_err() {
                rep.kicks_failed += 1;
            }
            if let Some(rx) = &mut rx
                && rx.poll(qp, &mut rdescs) > 0
            {
                self.live.received.store(rx.received, Ordering::Relaxed);
            }
            if want == 0 && my_rate > 0 {
                idle_wait(pacer.wait_ns(now_ns()));
            }
        }
        let elapsed = last_tx.max(now_ns().min(self.end.unwrap_or(u64::MAX))) - self.start;
        // Let the kernel finish what is queued (bounded), then linger for replies.
        let drain_end = now_ns() + 1_000_000_000;
        while qp.sock.tx_pending() > 0 && now_ns() < drain_end {
            let _ = qp.sock.kick_tx();
            let n = qp.sock.complete(&mut comp);
            free.extend_from_slice(&comp[..n]);
        }
        if let Some(rx) = &mut rx {
            let linger_end = now_ns() + cfg.rtt_linger.as_nanos() as u64;
            while now_ns() < linger_end && !self.stop.load(Ordering::Relaxed) {
                if rx.poll(qp, &mut rdescs) == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
            self.live.received.store(rx.received, Ordering::Relaxed);
        }
        rep.pacing_forgiven = pacer.forgiven;
        rep.xdp_stats = qp.sock.statistics().ok();
        Ok(match rx {
            Some(rx) => {
                rep.received = rx.received;
                rep.unexpected = rx.unexpected;
                (rep, Some(rx.tracker.stats), Some(rx.lat), elapsed)
            }
            None => (rep, None, None, elapsed),
        })
    }
}

/// Waits `ns` without burning the core for long waits: sleeps for all but the last 50 us,
/// and yields the core for the rest, so that a sink (or DUT) thread sharing it runs as
/// soon as it has work instead of when the scheduler preempts a spinning generator (that
/// showed as milliseconds of one-way latency at low rates with generator and sink on one
/// core); `yield` returns at once when nothing else wants the core.
fn idle_wait(ns: u64) {
    if ns > 100_000 {
        std::thread::sleep(Duration::from_nanos(ns - 50_000));
    } else if ns > 0 {
        std::thread::yield_now();
    }
}
