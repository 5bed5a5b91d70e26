//! A full session listing while forwarding, through the real natgw binary (issue 11 part 3:
//! "a full listing of 1M sessions while forwarding at full rate adds no drops").
//!
//! One testbed topology (`ngw-llb-*`, the comparison's addressing: a /14 inside, 64 pool
//! addresses): the AF_XDP generator (crates/pktgen) in inside host `h1`, natgw (busy
//! polling, its worker on `--dut-core`, `sessions.capacity_per_core` sized for the flows)
//! in the gateway namespace, the AF_XDP sink in the server namespace.
//!
//! 1. Set-up: every flow (`--flows`, default 1,048,576: 65,536 hosts x 16 ports) sent once
//!    at `--setup-rate` (100,000/s), again until natgw holds a session for each.
//! 2. The rate: `--rate`, or a quick binary search up to `--max-rate` (100,000/s; 6 trials
//!    of 3 s, no listing) for the highest rate with less than 0.1 % loss and no drop counted
//!    by natgw or its sockets.
//! 3. `--rounds` rounds, each a *listing* phase and a *control* phase at that rate, their
//!    order alternating from round to round. In a listing phase a client (pinned to
//!    `--lister-core`, the generator's core by default: never the worker's) streams the
//!    whole `GET /sessions` over natgw's Unix socket, as the CLI does, reading it to the end,
//!    `--listings` times back to back, starting 0.5 s into the phase; the phase ends 0.5 s
//!    after the last listing, and lasts `--secs` at least. The control phase lasts as long
//!    as the listing phase before it (or `--secs`), without listing.
//!
//! Per phase: frames sent and received at the sink, loss, the sink's one-way latency (a
//! worker stalled by a listing step shows as a late frame), natgw's drop counters (`GET
//! /stats`, every `drop_*` and `xdp_drop_*`), its sockets' `XDP_STATISTICS` (`GET /metrics`:
//! receive ring full, fill ring empty, rx dropped), the slowest engine batch (the
//! `natgw_batch_seconds` histogram's highest bucket that grew; it times the engine, not the
//! listing steps between batches), natgw's CPU time (worker thread and the rest), and per
//! listing its time, bytes and sessions (which must equal the flows).
//!
//! `--pin-management CORE` pins natgw's threads other than the workers (the API's, the
//! listing's) to CORE after start (natgw leaves them unpinned).
//!
//! `cargo bench --bench listing -- [--flows N] [--rate PPS] [--max-rate PPS]
//! [--setup-rate PPS] [--pin-management CORE] [--rounds N]
//! [--secs S] [--listings N] [--gen-core N] [--sink-core N] [--dut-core N] [--lister-core N]`,
//! under the machine-wide namespace lock. See bench/README.md, "Session listing in bounded
//! steps".

use natgw_bench::compare::{flow_set, spec};
use natgw_bench::flows::FlowSet;
use natgw_bench::frame::Proto;
use natgw_bench::generator::{self, DstMac, GenConfig, GenReport};
use natgw_bench::port::PortOptions;
use natgw_bench::sink::{self, SinkConfig, SinkReport};
use natgw_testbed::lab::api_get;
use natgw_testbed::listing::{Listing, list_sessions};
use natgw_testbed::process::NatgwProcess;
use natgw_testbed::{HOST_IF, Topology, run_in_netns};
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const TAG: &str = "llb";
/// A rate search trial with less loss than this passes (compare.rs's zero-loss bound).
const MAX_LOSS: f64 = 0.001;

#[derive(Clone, Debug)]
struct Opts {
    flows: u64,
    rate: Option<u64>,
    max_rate: u64,
    setup_rate: u64,
    rounds: usize,
    secs: f64,
    listings: usize,
    gen_core: usize,
    sink_core: usize,
    dut_core: usize,
    lister_core: usize,
    /// Pins natgw's threads other than the workers to this core (None: as natgw leaves
    /// them, unpinned).
    pin_management: Option<usize>,
    natgw: PathBuf,
}

fn usage() -> ! {
    eprintln!(
        "usage: cargo bench --bench listing -- [--flows N] [--rate PPS] [--max-rate PPS]\n\
         \x20      [--setup-rate PPS] [--rounds N] [--secs S] [--listings N] [--gen-core N] [--sink-core N]\n\
         \x20      [--dut-core N] [--lister-core N] [--pin-management CORE] [--natgw PATH]"
    );
    std::process::exit(2)
}

fn parse_opts() -> Opts {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut o = Opts {
        flows: 1 << 20,
        rate: None,
        max_rate: 100_000,
        setup_rate: 100_000,
        rounds: 3,
        secs: 4.0,
        listings: 1,
        gen_core: 0,
        sink_core: 0,
        dut_core: if cores > 1 { 1 } else { 0 },
        lister_core: 0,
        pin_management: None,
        natgw: PathBuf::from(env!("CARGO_BIN_EXE_natgw")),
    };
    let mut lister_core = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        let mut num = || val().parse::<u64>().unwrap_or_else(|_| usage());
        match a.as_str() {
            "--flows" => o.flows = num(),
            "--rate" => o.rate = Some(num()),
            "--max-rate" => o.max_rate = num(),
            "--setup-rate" => o.setup_rate = num(),
            "--rounds" => o.rounds = num() as usize,
            "--listings" => o.listings = (num() as usize).max(1),
            "--gen-core" => o.gen_core = num() as usize,
            "--sink-core" => o.sink_core = num() as usize,
            "--dut-core" => o.dut_core = num() as usize,
            "--lister-core" => lister_core = Some(num() as usize),
            "--pin-management" => o.pin_management = Some(num() as usize),
            "--secs" => o.secs = val().parse().unwrap_or_else(|_| usage()),
            "--natgw" => o.natgw = PathBuf::from(val()),
            // cargo bench passes --bench to every harness=false target.
            "--bench" => {}
            _ => usage(),
        }
    }
    o.lister_core = lister_core.unwrap_or(o.gen_core);
    o
}

/// Pins thread `tid` (0: the calling thread) to `core`.
fn pin_thread(tid: libc::pid_t, core: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it; sched_setaffinity
    // changes only the affinity of thread `tid`.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(core, &mut set);
        libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
    }
}

fn pin(core: usize) {
    pin_thread(0, core);
}

/// Pins every thread of natgw but its workers (`natgw-w*`) to `core`; threads they start
/// later (tokio's blocking pool) inherit it. Returns the threads pinned.
fn pin_management(pid: u32, core: usize) -> Vec<String> {
    let mut done = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        let comm = comm.trim();
        let Some(tid) = t.file_name().to_str().and_then(|s| s.parse().ok()) else {
            continue;
        };
        if !comm.starts_with("natgw-w") && pin_thread(tid, core) {
            done.push(format!("{comm}/{tid}"));
        }
    }
    done
}

fn clk_tck_ns() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1_000_000_000 / if t > 0 { t as u64 } else { 100 }
}

/// natgw's CPU time, ns: (worker threads `natgw-w*`, every other thread).
fn natgw_cpu(pid: u32) -> (u64, u64) {
    let (mut w, mut rest) = (0, 0);
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return (0, 0);
    };
    for t in tasks.flatten() {
        let dir = t.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        // After the command (in parentheses, may hold spaces): utime is the 12th field.
        let f: Vec<u64> = stat
            .rsplit_once(')')
            .map_or("", |(_, r)| r)
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        let ns = (f.get(11).copied().unwrap_or(0) + f.get(12).copied().unwrap_or(0)) * clk_tck_ns();
        if comm.trim().starts_with("natgw-w") {
            w += ns;
        } else {
            rest += ns;
        }
    }
    (w, rest)
}

/// What natgw's API and /proc say at one moment.
struct Snap {
    stats: serde_json::Map<String, serde_json::Value>,
    metrics: String,
    cpu: (u64, u64),
}

fn snap(topo: &Topology, pid: u32) -> Result<Snap, String> {
    let stats = api_get(topo.gw_ns(), "/stats").map_err(|e| format!("GET /stats: {e}"))?;
    let stats = match serde_json::from_str::<serde_json::Value>(&stats) {
        Ok(serde_json::Value::Object(m)) => m,
        _ => return Err(format!("GET /stats: not a JSON object: {stats}")),
    };
    let metrics = api_get(topo.gw_ns(), "/metrics").map_err(|e| format!("GET /metrics: {e}"))?;
    Ok(Snap {
        stats,
        metrics,
        cpu: natgw_cpu(pid),
    })
}

impl Snap {
    fn stat(&self, k: &str) -> u64 {
        self.stats.get(k).and_then(|v| v.as_u64()).unwrap_or(0)
    }

    /// Every `drop_*` and `xdp_drop_*` counter.
    fn drops(&self) -> BTreeMap<String, u64> {
        self.stats
            .iter()
            .filter(|(k, _)| k.starts_with("drop_") || k.starts_with("xdp_drop_"))
            .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
            .collect()
    }

    /// The sum of every sample of the metric family `name` (all label sets).
    fn metric(&self, name: &str) -> f64 {
        self.metrics
            .lines()
            .filter(|l| {
                l.strip_prefix(name)
                    .is_some_and(|r| r.starts_with('{') || r.starts_with(' '))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// `natgw_batch_seconds` cumulative bucket counts by upper bound (seconds), summed over
    /// workers.
    fn batch_buckets(&self) -> Vec<(f64, f64)> {
        let mut b: BTreeMap<u64, f64> = BTreeMap::new();
        for l in self.metrics.lines() {
            let Some(r) = l.strip_prefix("natgw_batch_seconds_bucket{") else {
                continue;
            };
            let Some(le) = r.split("le=\"").nth(1).and_then(|x| x.split('"').next()) else {
                continue;
            };
            let v: f64 = l
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            let key = if le == "+Inf" {
                u64::MAX
            } else {
                (le.parse::<f64>().unwrap_or(0.0) * 1e9) as u64
            };
            *b.entry(key).or_default() += v;
        }
        b.into_iter()
            .map(|(k, v)| {
                (
                    if k == u64::MAX {
                        f64::INFINITY
                    } else {
                        k as f64 / 1e9
                    },
                    v,
                )
            })
            .collect()
    }
}

/// Socket counters of `XDP_STATISTICS` that mean a frame was lost on natgw's receive side.
const XSK_LOSS: [&str; 3] = [
    "natgw_xsk_rx_ring_full_total",
    "natgw_xsk_rx_fill_ring_empty_descs_total",
    "natgw_xsk_rx_dropped_total",
];

#[derive(Clone, Debug)]
struct Phase {
    listing: bool,
    secs: f64,
    sent: u64,
    gen_pps: f64,
    received: u64,
    loss: f64,
    sink_ring_drops: u64,
    lat_p50: u64,
    lat_p99: u64,
    lat_p999: u64,
    lat_max: u64,
    /// natgw's drop counters that grew, and by how much.
    drops: BTreeMap<String, u64>,
    /// [`XSK_LOSS`]'s growth, in that order.
    xsk: [u64; 3],
    /// The upper bound of the highest batch time bucket that grew, seconds.
    slowest_batch: Option<f64>,
    worker_cpu_s: f64,
    other_cpu_s: f64,
    listings: Vec<Result<Listing, String>>,
}

impl Phase {
    fn natgw_drops(&self) -> u64 {
        self.drops.values().sum()
    }

    fn xsk_drops(&self) -> u64 {
        self.xsk.iter().sum()
    }
}

struct Bench<'a> {
    o: &'a Opts,
    topo: &'a Topology,
    pid: u32,
    flows: FlowSet,
}

impl Bench<'_> {
    fn natgw_config(o: &Opts, topo: &Topology) -> String {
        let cap = (o.flows + o.flows / 4)
            .next_power_of_two()
            .clamp(1 << 18, 1 << 26);
        let mut c = topo
            .natgw_config()
            .replace(
                "{ core = 0, queue = 0 }",
                &format!("{{ core = {}, queue = 0 }}", o.dut_core),
            )
            .replace("poll = \"adaptive\"", "poll = \"busy\"")
            // A listing of a million sessions is some 300 MB: more than the default
            // 10 s deadline of a request allows on a slow machine.
            .replacen("[control]\n", "[control]\nrequest_timeout = 300\n", 1);
        let _ = write!(c, "\n[sessions]\ncapacity_per_core = {cap}\n");
        c
    }

    fn gen_cfg(&self, rate: u64, count: Option<u64>) -> GenConfig {
        GenConfig {
            port: PortOptions::one_queue(HOST_IF),
            cores: vec![self.o.gen_core],
            proto: Proto::Udp,
            wire_size: 64,
            src_mac: None,
            dst_mac: DstMac::Resolve(self.topo.spec().addressing.inside_gw),
            dst_ip: self.topo.server_addr(),
            dst_port: 7777,
            flows: self.flows,
            rate,
            // Until `count` or the phase's stop.
            duration: Some(Duration::from_secs(600)),
            count,
            batch: 64,
            rtt: false,
            rtt_linger: Duration::ZERO,
            progress: None,
        }
    }

    fn sink_cfg(&self) -> SinkConfig {
        SinkConfig {
            port: PortOptions::one_queue(HOST_IF),
            cores: vec![self.o.sink_core],
            reflect: false,
            max_flows: self.flows.count() as usize,
            duration: Some(Duration::from_secs(900)),
            count: None,
            idle: Some(Duration::from_millis(500)),
            progress: None,
            busy: false,
            batch: 64,
        }
    }

    /// Runs the generator (`count` frames, or until `during` returns) with the sink open;
    /// `during` runs on a thread of its own meanwhile and sets `stop` when the phase is over.
    fn traffic<T: Send>(
        &self,
        rate: u64,
        count: Option<u64>,
        during: impl FnOnce(&AtomicBool) -> T + Send,
    ) -> Result<(GenReport, SinkReport, T), String> {
        let gen_stop = AtomicBool::new(false);
        let sink_stop = AtomicBool::new(false);
        let sink_cfg = self.sink_cfg();
        let opened = run_in_netns(self.topo.server_ns(), || sink::open(&sink_cfg))
            .map_err(|e| format!("sink: {e}"))?;
        let g = self.gen_cfg(rate, count);
        let (s, gr, t) = std::thread::scope(|sc| {
            let sink = sc.spawn(|| opened.run(&sink_stop));
            let side = sc.spawn(|| during(&gen_stop));
            let gr = run_in_netns(self.topo.host_ns(0), || generator::run(&g, &gen_stop));
            // The generator failed or sent its count: the side thread's wait ends too.
            gen_stop.store(true, Ordering::Release);
            if gr.is_err() {
                sink_stop.store(true, Ordering::Release);
            }
            let t = side.join();
            (sink.join(), gr, t)
        });
        let g = gr.map_err(|e| format!("generator: {e}"))?;
        let s = s
            .map_err(|_| "sink thread panicked".to_string())?
            .map_err(|e| format!("sink: {e}"))?;
        let t = t.map_err(|_| "phase thread panicked".to_string())?;
        Ok((g, s, t))
    }

    /// Sends every flow once at `--setup-rate` until natgw has a session for each (five
    /// passes at most: flat out, this machine loses most first packets in the rings).
    fn set_up_sessions(&self) -> Result<u64, String> {
        let want = self.flows.count();
        let mut have = 0;
        for pass in 1..=5 {
            let t = Instant::now();
            let before = snap(self.topo, self.pid)?;
            let (g, s, ()) = self.traffic(self.o.setup_rate, Some(want), |_| ())?;
            let after = snap(self.topo, self.pid)?;
            have = after.stat("sessions_active");
            let drops: BTreeMap<String, u64> = after
                .drops()
                .into_iter()
                .map(|(k, v)| (k.clone(), v - before.drops().get(&k).copied().unwrap_or(0)))
                .filter(|(_, v)| *v > 0)
                .collect();
            let xsk = XSK_LOSS.map(|m| (after.metric(m) - before.metric(m)).max(0.0) as u64);
            eprintln!(
                "listing: set-up pass {pass}: sent {} in {:.1} s, {} at the sink; natgw holds {have} sessions; \
                 natgw drops {drops:?}, socket ring full/fill empty/rx dropped {xsk:?}",
                g.sent,
                t.elapsed().as_secs_f64(),
                s.packets
            );
            if have >= want {
                return Ok(have);
            }
        }
        Err(format!(
            "natgw holds {have} sessions after five passes over {want} flows"
        ))
    }

    fn phase(&self, rate: u64, listing: bool, secs: f64) -> Result<Phase, String> {
        let before = snap(self.topo, self.pid)?;
        let gw = self.topo.gw_ns().to_string();
        let (listings_wanted, lister_core) = (self.o.listings, self.o.lister_core);
        let t0 = Instant::now();
        let (g, s, listings) = self.traffic(rate, None, |stop| {
            let wait_until = |t: f64| {
                while t0.elapsed().as_secs_f64() < t && !stop.load(Ordering::Acquire) {
                    std::thread::sleep(Duration::from_millis(10));
                }
            };
            let mut done = Vec::new();
            if listing {
                pin(lister_core);
                wait_until(0.5);
                for _ in 0..listings_wanted {
                    if stop.load(Ordering::Acquire) {
                        break;
                    }
                    done.push(list_sessions(&gw, "", None).map_err(|e| e.to_string()));
                }
                let end = t0.elapsed().as_secs_f64() + 0.5;
                wait_until(end.max(secs));
            } else {
                wait_until(secs);
            }
            stop.store(true, Ordering::Release);
            done
        })?;
        let elapsed = t0.elapsed().as_secs_f64();
        let after = snap(self.topo, self.pid)?;
        let d0 = before.drops();
        let drops = after
            .drops()
            .into_iter()
            .map(|(k, v)| {
                let b = d0.get(&k).copied().unwrap_or(0);
                (k, v.saturating_sub(b))
            })
            .filter(|(_, v)| *v > 0)
            .collect();
        let xsk = XSK_LOSS.map(|m| (after.metric(m) - before.metric(m)).max(0.0) as u64);
        let (b0, b1) = (before.batch_buckets(), after.batch_buckets());
        // The highest bucket holding batches of this phase: its count above the next
        // lower bound grew.
        let mut slowest = None;
        for i in 0..b1.len() {
            let above = |v: &[(f64, f64)]| {
                let at = v.get(i).map_or(0.0, |x| x.1);
                let below = if i == 0 {
                    0.0
                } else {
                    v.get(i - 1).map_or(0.0, |x| x.1)
                };
                at - below
            };
            if above(&b1) > above(&b0) {
                slowest = Some(b1[i].0);
            }
        }
        let loss = if g.sent > 0 {
            1.0 - s.packets.min(g.sent) as f64 / g.sent as f64
        } else {
            1.0
        };
        Ok(Phase {
            listing,
            secs: elapsed,
            sent: g.sent,
            gen_pps: g.pps(),
            received: s.packets,
            loss,
            sink_ring_drops: s
                .queues
                .iter()
                .filter_map(|q| q.xdp_stats)
                .map(|x| x.rx_dropped + x.rx_ring_full + x.rx_fill_ring_empty_descs)
                .sum(),
            lat_p50: s.latency.p50,
            lat_p99: s.latency.p99,
            lat_p999: s.latency.p999,
            lat_max: s.latency.max,
            drops,
            xsk,
            slowest_batch: slowest,
            worker_cpu_s: after.cpu.0.saturating_sub(before.cpu.0) as f64 / 1e9,
            other_cpu_s: after.cpu.1.saturating_sub(before.cpu.1) as f64 / 1e9,
            listings,
        })
    }

    /// Binary search for the highest rate with less than `MAX_LOSS` loss and no drop in
    /// natgw or its sockets, 6 trials of 3 s.
    fn find_rate(&self) -> Result<u64, String> {
        let (mut lo, mut hi) = (0u64, self.o.max_rate);
        let mut best = 0;
        for _ in 0..6 {
            let rate = (lo + hi) / 2;
            let p = self.phase(rate, false, 3.0)?;
            let ok = p.loss < MAX_LOSS && p.natgw_drops() == 0 && p.xsk_drops() == 0;
            eprintln!(
                "listing: rate trial {:.3} Mpps offered ({:.3} asked): loss {:.3} %, natgw drops {}, socket drops {} -> {}",
                p.gen_pps / 1e6,
                rate as f64 / 1e6,
                p.loss * 100.0,
                p.natgw_drops(),
                p.xsk_drops(),
                if ok { "pass" } else { "fail" }
            );
            if ok {
                best = best.max(rate);
                lo = rate;
            } else {
                hi = rate;
            }
        }
        if best == 0 {
            return Err("no rate without loss found".into());
        }
        Ok(best)
    }
}

fn us(ns: u64) -> String {
    format!("{:.0}", ns as f64 / 1e3)
}

fn log_phase(round: usize, p: &Phase) {
    let mut l = String::new();
    for x in &p.listings {
        match x {
            Ok(x) => {
                let _ = write!(
                    l,
                    " listing: {} sessions (total {:?}), {:.1} MB in {:.2} s (first byte {:.0} ms), status {};",
                    x.sessions,
                    x.total,
                    x.bytes as f64 / 1e6,
                    x.elapsed.as_secs_f64(),
                    x.first_byte.as_secs_f64() * 1e3,
                    x.status
                );
            }
            Err(e) => {
                let _ = write!(l, " listing failed: {e};");
            }
        }
    }
    eprintln!(
        "listing: round {round} {}: {:.1} s, sent {} ({:.3} Mpps), at the sink {}, loss {:.3} %, \
         sink ring drops {}, natgw drops {:?}, natgw socket ring full/fill empty/rx dropped {:?}, \
         one-way latency p50/p99/p99.9/max {}/{}/{}/{} us, slowest batch bucket {:?} s, \
         natgw CPU worker {:.2} s other {:.2} s;{l}",
        if p.listing { "listing" } else { "control" },
        p.secs,
        p.sent,
        p.gen_pps / 1e6,
        p.received,
        p.loss * 100.0,
        p.sink_ring_drops,
        p.drops,
        p.xsk,
        us(p.lat_p50),
        us(p.lat_p99),
        us(p.lat_p999),
        us(p.lat_max),
        p.slowest_batch,
        p.worker_cpu_s,
        p.other_cpu_s,
    );
}

fn markdown(o: &Opts, rate: u64, sessions: u64, rounds: &[(usize, Phase)]) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} flows ({sessions} sessions), {:.3} Mpps asked, 64-byte UDP; generator core {}, sink core {}, \
         natgw worker core {} (busy polling), lister core {}, natgw's other threads {}; {} listing(s) per listing phase\n",
        o.flows,
        rate as f64 / 1e6,
        o.gen_core,
        o.sink_core,
        o.dut_core,
        o.lister_core,
        o.pin_management
            .map_or("unpinned".to_string(), |c| format!("on core {c}")),
        o.listings
    );
    let _ = writeln!(
        s,
        "| round | phase | s | sent | at sink | loss % | natgw drops | socket ring full / fill empty / rx dropped | latency p99 / max µs | slowest batch ≤ | natgw CPU worker / other s | listing: sessions, MB, s |"
    );
    let _ = writeln!(s, "|---|---|---:|---:|---:|---:|---:|---|---|---|---|---|");
    for (r, p) in rounds {
        let l: Vec<String> = p
            .listings
            .iter()
            .map(|x| match x {
                Ok(x) => format!(
                    "{}, {:.0}, {:.2}",
                    x.sessions,
                    x.bytes as f64 / 1e6,
                    x.elapsed.as_secs_f64()
                ),
                Err(e) => format!("failed: {e}"),
            })
            .collect();
        let _ = writeln!(
            s,
            "| {r} | {} | {:.1} | {} | {} | {:.3} | {} | {} / {} / {} | {} / {} | {} | {:.2} / {:.2} | {} |",
            if p.listing { "listing" } else { "control" },
            p.secs,
            p.sent,
            p.received,
            p.loss * 100.0,
            p.natgw_drops(),
            p.xsk[0],
            p.xsk[1],
            p.xsk[2],
            us(p.lat_p99),
            us(p.lat_max),
            p.slowest_batch
                .map_or("-".into(), |b| format!("{:.0} µs", b * 1e6)),
            p.worker_cpu_s,
            p.other_cpu_s,
            if l.is_empty() {
                "-".into()
            } else {
                l.join("; ")
            }
        );
    }
    let sum = |listing: bool, f: &dyn Fn(&Phase) -> f64| -> f64 {
        rounds
            .iter()
            .filter(|(_, p)| p.listing == listing)
            .map(|(_, p)| f(p))
            .sum()
    };
    let n = |listing: bool| rounds.iter().filter(|(_, p)| p.listing == listing).count() as f64;
    let ratio = |a: f64, b: f64| {
        if b > 0.0 {
            format!("{:.2}", a / b)
        } else if a == 0.0 {
            "= (both 0)".into()
        } else {
            "inf (control 0)".into()
        }
    };
    let loss = |l| {
        let sent = sum(l, &|p| p.sent as f64);
        let got = sum(l, &|p| p.received.min(p.sent) as f64);
        if sent > 0.0 { 1.0 - got / sent } else { 0.0 }
    };
    let lost = |l| sum(l, &|p| p.sent.saturating_sub(p.received) as f64);
    let _ = writeln!(
        s,
        "\nAll rounds: listing phases / control phases: frames lost {:.0} / {:.0} (loss {:.4} % / {:.4} %, ratio {}); \
         natgw drops {:.0} / {:.0}; natgw socket losses {:.0} / {:.0}; mean p99 latency {:.0} / {:.0} µs (ratio {}); \
         worst max latency {:.0} / {:.0} µs",
        lost(true),
        lost(false),
        loss(true) * 100.0,
        loss(false) * 100.0,
        ratio(loss(true), loss(false)),
        sum(true, &|p| p.natgw_drops() as f64),
        sum(false, &|p| p.natgw_drops() as f64),
        sum(true, &|p| p.xsk_drops() as f64),
        sum(false, &|p| p.xsk_drops() as f64),
        sum(true, &|p| p.lat_p99 as f64) / n(true).max(1.0) / 1e3,
        sum(false, &|p| p.lat_p99 as f64) / n(false).max(1.0) / 1e3,
        ratio(
            sum(true, &|p| p.lat_p99 as f64) / n(true).max(1.0),
            sum(false, &|p| p.lat_p99 as f64) / n(false).max(1.0)
        ),
        rounds
            .iter()
            .filter(|(_, p)| p.listing)
            .map(|(_, p)| p.lat_max)
            .max()
            .unwrap_or(0) as f64
            / 1e3,
        rounds
            .iter()
            .filter(|(_, p)| !p.listing)
            .map(|(_, p)| p.lat_max)
            .max()
            .unwrap_or(0) as f64
            / 1e3,
    );
    s
}

fn run(o: &Opts) -> Result<(), String> {
    natgw_kernel::signal::install_signal_handlers();
    let flows = flow_set(o.flows)?;
    let spec = spec(TAG);
    let _ = Topology::cleanup_stale(TAG);
    let topo = Topology::build(&spec).map_err(|e| format!("building the topology: {e}"))?;
    let exe = o.natgw.to_string_lossy().into_owned();
    let natgw = NatgwProcess::start(&exe, &topo, &Bench::natgw_config(o, &topo), "listing-bench");
    if let Some(core) = o.pin_management {
        eprintln!(
            "listing: natgw's threads but the workers pinned to core {core}: {:?}",
            pin_management(natgw.pid(), core)
        );
    }
    let b = Bench {
        o,
        topo: &topo,
        pid: natgw.pid(),
        flows,
    };
    let sessions = b.set_up_sessions()?;
    // For reference: how long a listing takes with the machine otherwise quiet.
    let cpu0 = natgw_cpu(natgw.pid());
    let idle = list_sessions(topo.gw_ns(), "", None).map_err(|e| format!("listing: {e}"))?;
    let cpu1 = natgw_cpu(natgw.pid());
    eprintln!(
        "listing: without traffic: {} sessions (total {:?}), {:.1} MB in {:.2} s; natgw CPU: worker {:.2} s, other threads {:.2} s",
        idle.sessions,
        idle.total,
        idle.bytes as f64 / 1e6,
        idle.elapsed.as_secs_f64(),
        cpu1.0.saturating_sub(cpu0.0) as f64 / 1e9,
        cpu1.1.saturating_sub(cpu0.1) as f64 / 1e9,
    );
    let rate = match o.rate {
        Some(r) => r,
        None => b.find_rate()?,
    };
    eprintln!("listing: measuring at {:.3} Mpps", rate as f64 / 1e6);
    let mut rounds = Vec::new();
    let mut failures = Vec::new();
    // A control phase lasts as long as the last listing phase (`--secs` before the first).
    let mut control_secs = o.secs;
    for r in 1..=o.rounds {
        if natgw_kernel::signal::signalled() {
            return Err("interrupted".into());
        }
        // Alternating: the listing phase first in odd rounds, the control first in even ones.
        let order = if r % 2 == 1 {
            [true, false]
        } else {
            [false, true]
        };
        for listing in order {
            let p = b.phase(rate, listing, if listing { o.secs } else { control_secs })?;
            log_phase(r, &p);
            if listing {
                control_secs = p.secs;
            }
            for x in &p.listings {
                match x {
                    Ok(x)
                        if x.status == 200
                            && x.sessions == sessions
                            && x.total == Some(sessions) => {}
                    Ok(x) => failures.push(format!(
                        "round {r}: listed {} sessions (total {:?}, status {}) of {sessions}",
                        x.sessions, x.total, x.status
                    )),
                    Err(e) => failures.push(format!("round {r}: listing failed: {e}")),
                }
            }
            rounds.push((r, p));
        }
    }
    let md = markdown(o, rate, sessions, &rounds);
    println!("{md}");
    drop(natgw);
    drop(topo);
    if failures.is_empty() {
        Ok(())
    } else {
        Err(failures.join("\n"))
    }
}

fn main() {
    let o = parse_opts();
    if let Err(e) = run(&o) {
        eprintln!("listing: {e}");
        std::process::exit(1);
    }
}
