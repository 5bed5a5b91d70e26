//! `natgw-bench compare`: natgw beside the Linux kernel and a raw AF_XDP forwarder, in one
//! run, with the same generator and sink (bench/README.md, "The comparison").
//!
//! One testbed topology (crates/testbed): the generator in inside host `h1` (AF_XDP on its
//! `eth0`), the device under test in the gateway namespace (`eth-in` -> `eth-out`), the
//! router, and the sink in the server namespace (AF_XDP on its `eth0`). For each DUT and
//! each (flow count, frame size): a preliminary phase that sends every flow twice (sets up
//! the sessions or conntrack entries), then the measured phase: the generator flat out for
//! the duration, the sink counting. CPU time is read around the measured phase only:
//! - `/proc/stat`, every core: user, system, softirq, steal (ticks of USER_HZ);
//! - natgw: its process's utime+stime (`/proc/<pid>/stat`);
//! - raw forwarder: its thread's utime+stime (`/proc/self/task/<tid>/stat`);
//! - this process (generator + sink threads, forwarder excluded).
//!
//! A DUT's cost ("DUT CPU") is its own process/thread time plus the softirq time of the
//! other cores (the softirq on its own core runs in its context, in its stime already: this
//! kernel accounts by tick, charging such a tick to both); for the kernel DUTs (no process
//! of their own) the softirq time of all cores.
//! The softirq time also holds the kernel's work for the rest of the path (the switch's
//! bridge, the router's forwarding, the veth receive of the sink), the same for every DUT,
//! so differences between DUTs are the DUTs' own; the raw numbers are all in the JSON.

use std::fmt::Write as _;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use natgw_testbed::process::NatgwProcess;
use natgw_testbed::{
    GW_INSIDE_IF, GW_OUTSIDE_IF, HOST_IF, Topology, TopologySpec, run_in_netns, try_run_in_netns,
};

use crate::flows::FlowSet;
use crate::forwarder::{self, ForwarderConfig};
use crate::frame::Proto;
use crate::generator::{self, DstMac, GenConfig, GenReport};
use crate::json::{Obj, Value};
use crate::latency::LatencySummary;
use crate::port::{self, PortOptions, XskMode};
use crate::sink::{self, SinkConfig, SinkReport};

/// The devices under test, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dut {
    NatgwBusy,
    NatgwAdaptive,
    NatgwForward,
    RawForwarder,
    Kernel,
    KernelRps,
    KernelFlowtable,
    Testpmd,
}

pub const ALL_DUTS: [Dut; 8] = [
    Dut::NatgwBusy,
    Dut::NatgwAdaptive,
    Dut::NatgwForward,
    Dut::RawForwarder,
    Dut::Kernel,
    Dut::KernelRps,
    Dut::KernelFlowtable,
    Dut::Testpmd,
];

impl Dut {
    pub fn name(self) -> &'static str {
        match self {
            Dut::NatgwBusy => "natgw-busy",
            Dut::NatgwAdaptive => "natgw-adaptive",
            Dut::NatgwForward => "natgw-forward-only",
            Dut::RawForwarder => "raw-xdp-forwarder",
            Dut::Kernel => "kernel-masquerade",
            Dut::KernelRps => "kernel-masquerade-rps",
            Dut::KernelFlowtable => "kernel-flowtable",
            Dut::Testpmd => "dpdk-testpmd",
        }
    }
}

impl Dut {
    fn is_kernel(self) -> bool {
        matches!(self, Dut::Kernel | Dut::KernelRps | Dut::KernelFlowtable)
    }
}

impl std::str::FromStr for Dut {
    type Err = String;
    fn from_str(s: &str) -> Result<Dut, String> {
        ALL_DUTS
            .iter()
            .copied()
            .find(|d| d.name() == s)
            .ok_or_else(|| {
                let names: Vec<&str> = ALL_DUTS.iter().map(|d| d.name()).collect();
                format!("DUT {s:?}: one of {}", names.join(", "))
            })
    }
}

#[derive(Clone, Debug)]
pub struct CompareOptions {
    /// The natgw binary.
    pub natgw: PathBuf,
    /// Topology tag (namespaces `ngw-<tag>-...`).
    pub tag: String,
    pub duts: Vec<Dut>,
    pub flows: Vec<u64>,
    pub sizes: Vec<usize>,
    /// Length of each measured phase.
    pub duration: Duration,
    /// Core of the generator thread.
    pub gen_core: usize,
    /// Core of the sink thread.
    pub sink_core: usize,
    /// Core of natgw's worker, the raw forwarder and the kernel's RPS target.
    pub dut_core: usize,
    /// Where `<date>-<host>.json` and `.md` go (`None`: not written).
    pub out_dir: Option<PathBuf>,
    /// New-session test: this many flows, each sent once (0: not run).
    pub new_session_flows: u64,
    /// Zero-loss search at (this many flows, the first frame size) (`None`: not run).
    pub zero_loss_flows: Option<u64>,
    /// Length of each zero-loss trial.
    pub trial: Duration,
    /// natgw's `sessions.capacity_per_core` (`None`: room for every flow set of the run,
    /// 1.25 x their sum as a power of two, at least 2^18).
    pub capacity: Option<u64>,
    /// Extra `[dataplane]` lines (`key = value`) for the natgw DUTs (`--natgw-dataplane`).
    pub natgw_dataplane: Vec<String>,
    /// Every point measured this many times, the DUTs in turn within a round and their
    /// order rotated by one per round; the tables give medians (and min-max) over the
    /// rounds, ratios taken within each round and then medianed.
    pub rounds: usize,
    /// Base name of the result files (`None`: `<date>-<host>`).
    pub name: Option<String>,
}

impl CompareOptions {
    /// The full run: every DUT, 1, 1k, 100k and 1M flows, 64 and 1500 bytes, 3 s each.
    pub fn full(natgw: PathBuf) -> CompareOptions {
        let cores = nproc();
        CompareOptions {
            natgw,
            tag: "cm".into(),
            duts: ALL_DUTS.to_vec(),
            flows: vec![1, 256, 1024, 100_000, 1 << 20],
            sizes: vec![64, 1500],
            duration: Duration::from_secs(3),
            gen_core: 0,
            sink_core: 0,
            dut_core: if cores > 1 { 1 } else { 0 },
            out_dir: Some(PathBuf::from("bench/results")),
            new_session_flows: 200_000,
            zero_loss_flows: Some(1024),
            trial: Duration::from_secs(1),
            capacity: None,
            natgw_dataplane: Vec::new(),
            rounds: 1,
            name: None,
        }
    }

    /// `--smoke`: natgw busy, kernel masquerade and the raw forwarder; 1 and 1k flows,
    /// 64 bytes, 300 ms each; nothing written.
    pub fn smoke(natgw: PathBuf) -> CompareOptions {
        CompareOptions {
            duts: vec![Dut::NatgwBusy, Dut::Kernel, Dut::RawForwarder],
            flows: vec![1, 1024],
            sizes: vec![64],
            duration: Duration::from_millis(300),
            out_dir: None,
            new_session_flows: 0,
            zero_loss_flows: None,
            ..CompareOptions::full(natgw)
        }
    }
}

/// CPU time read around a measured phase, ns.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cpu {
    pub user: u64,
    pub system: u64,
    pub softirq: u64,
    pub irq: u64,
    pub steal: u64,
    pub idle: u64,
    /// Softirq time of the DUT's core (part of `softirq`).
    pub dut_core_softirq: u64,
    /// The DUT's own process or thread (utime+stime), 0 for the kernel DUTs.
    pub dut_process: u64,
    /// The user-space part of `dut_process` (utime): the DUT's own code; the rest (stime)
    /// is the kernel working for it (copy-mode AF_XDP transmit, the veth path, softirqs
    /// that ran in its context).
    pub dut_user: u64,
    /// This process (generator and sink threads; the forwarder's thread subtracted).
    pub bench_process: u64,
}

impl Cpu {
    /// What the module doc calls "DUT CPU". Without IRQ time accounting a softirq tick
    /// that lands in a task is charged both to the task's stime and to the core's softirq:
    /// for a DUT with a process of its own (which spins on its core, so the softirq there
    /// runs in its context) the DUT core's softirq is in its stime already.
    pub fn dut(&self) -> u64 {
        if self.dut_process > 0 {
            self.dut_process + self.softirq.saturating_sub(self.dut_core_softirq)
        } else {
            self.softirq
        }
    }

    fn json(&self) -> Obj {
        Obj::new()
            .u("user_ns", self.user)
            .u("system_ns", self.system)
            .u("softirq_ns", self.softirq)
            .u("irq_ns", self.irq)
            .u("steal_ns", self.steal)
            .u("dut_core_softirq_ns", self.dut_core_softirq)
            .u("idle_ns", self.idle)
            .u("dut_process_ns", self.dut_process)
            .u("dut_user_ns", self.dut_user)
            .u(
                "dut_system_ns",
                self.dut_process.saturating_sub(self.dut_user),
            )
            .u("bench_process_ns", self.bench_process)
            .u("dut_ns", self.dut())
    }
}

/// One (DUT, flows, size) measurement or the reason it was skipped.
#[derive(Clone, Debug)]
pub struct Row {
    pub dut: Dut,
    pub flows: u64,
    pub size: usize,
    /// The round (0-based) of `--rounds`.
    pub round: usize,
    pub result: Result<Measured, String>,
}

#[derive(Clone, Debug)]
pub struct Measured {
    pub sent: u64,
    pub gen_pps: f64,
    pub received: u64,
    pub sink_pps: f64,
    pub loss: f64,
    /// Frames the sink's sockets lost (rx_dropped + rx_ring_full + fill ring empty): loss
    /// at the sink, not at the DUT.
    pub sink_dropped: u64,
    pub cpu: Cpu,
    pub zero_copy: bool,
    /// Frames the DUT itself dropped during the point (its warm-up included): natgw's
    /// `drop_*` counters, the raw forwarder's tx-ring-full drops; `None` for the kernel.
    pub dut_drops: Option<u64>,
    /// natgw's `GET /stats` (or the forwarder's counters) at the end of the point.
    pub dut_stats: Option<String>,
}

impl Measured {
    /// DUT CPU per packet that reached the sink, ns.
    pub fn ns_per_packet(&self) -> f64 {
        if self.received == 0 {
            f64::NAN
        } else {
            self.cpu.dut() as f64 / self.received as f64
        }
    }
}

/// The new-session test: every packet of the run a new flow.
#[derive(Clone, Debug)]
pub struct NewSessions {
    pub dut: Dut,
    pub round: usize,
    pub flows: u64,
    pub sent: u64,
    pub gen_pps: f64,
    /// Distinct flows that reached the sink.
    pub sessions: u64,
    /// `sessions` / the generator's sending time.
    pub per_s: f64,
    pub cpu: Cpu,
}

/// The zero-loss search at one point: the highest rate of the binary search with loss
/// below 0.1 %, and every trial (rate, loss); then the one-way latency at half that rate,
/// and the kernel's masquerade's at the same rate.
#[derive(Clone, Debug)]
pub struct ZeroLoss {
    pub dut: Dut,
    pub round: usize,
    pub flows: u64,
    pub size: usize,
    pub rate: u64,
    pub trials: Vec<(u64, f64)>,
    /// The DUT at half its zero-loss rate (`None`: no zero-loss rate found).
    pub half_rate: Option<Result<LatencyRun, String>>,
    /// `kernel-masquerade` at this DUT's half rate, in the same round (`None`: the kernel
    /// is not among the DUTs, or this is the kernel).
    pub kernel_same_rate: Option<Result<LatencyRun, String>>,
}

/// The generator at a fixed rate, the sink's one-way latency (generator and sink on this
/// machine, both stamps CLOCK_MONOTONIC).
#[derive(Clone, Debug)]
pub struct LatencyRun {
    /// The rate asked of the generator, pps.
    pub rate: u64,
    /// The rate it sent at.
    pub offered_pps: f64,
    pub loss: f64,
    pub latency: LatencySummary,
}

impl LatencyRun {
    fn json(&self) -> Obj {
        Obj::new()
            .u("rate_pps", self.rate)
            .f("offered_pps", self.offered_pps)
            .f("loss", self.loss)
            .o("latency", self.latency.json())
    }
}

/// The median and the range of one quantity over the rounds.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Stat {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
}

impl Stat {
    /// Over the finite values of `v` (`None`: none). An even count's median is the mean of
    /// the middle two.
    pub fn of(v: impl IntoIterator<Item = f64>) -> Option<Stat> {
        let mut v: Vec<f64> = v.into_iter().filter(|x| x.is_finite()).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        let n = v.len();
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        Some(Stat {
            median,
            min: v[0],
            max: v[n - 1],
            n,
        })
    }

    fn json(&self) -> Obj {
        Obj::new()
            .f("median", self.median)
            .f("min", self.min)
            .f("max", self.max)
            .u("rounds", self.n as u64)
    }
}

/// One (DUT, flows, size) over the rounds: medians of the measurements, and the medians of
/// the ratios taken within each round (against the same round's kernel and raw forwarder).
#[derive(Clone, Debug)]
pub struct Summary {
    pub dut: Dut,
    pub flows: u64,
    pub size: usize,
    pub sink_pps: Stat,
    pub gen_pps: Stat,
    pub loss: Stat,
    pub sink_dropped: Stat,
    pub dut_drops: Option<Stat>,
    pub ns_per_packet: Option<Stat>,
    /// The DUT's own user-space time as a share of its DUT CPU (0 for the kernel DUTs).
    pub user_share: Option<Stat>,
    pub pps_vs_kernel: Option<Stat>,
    pub pps_vs_raw: Option<Stat>,
    pub ns_vs_kernel: Option<Stat>,
    pub ns_vs_raw: Option<Stat>,
}

/// Loss below this is "zero" (RFC 2544 asks for none; a loaded shared VM drops the odd frame).
pub const ZERO_LOSS: f64 = 0.001;

pub struct Report {
    pub new_sessions: Vec<Result<NewSessions, (Dut, String)>>,
    pub zero_loss: Vec<Result<ZeroLoss, (Dut, String)>>,
    pub machine: Vec<(&'static str, String)>,
    pub options: CompareOptions,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

fn nproc() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn clk_tck_ns() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    1_000_000_000 / if t > 0 { t as u64 } else { 100 }
}

/// The `cpu` line of /proc/stat (all cores, `core` None) or `cpu<core>`'s: user+nice,
/// system, idle+iowait, irq, softirq, steal, in ns.
fn proc_stat(core: Option<usize>) -> [u64; 6] {
    let s = read("/proc/stat");
    let want = match core {
        None => "cpu ".to_string(),
        Some(c) => format!("cpu{c} "),
    };
    let line = s.lines().find(|l| l.starts_with(&want)).unwrap_or("");
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let g = |i: usize| v.get(i).copied().unwrap_or(0);
    let t = clk_tck_ns();
    [
        (g(0) + g(1)) * t,
        g(2) * t,
        (g(3) + g(4)) * t,
        g(5) * t,
        g(6) * t,
        g(7) * t,
    ]
}

/// utime+stime of `/proc/<path>/stat` (a process or a task), ns.
fn task_cpu(path: &str) -> u64 {
    let (u, s) = task_cpu_split(path);
    u + s
}

/// (utime, stime) of `/proc/<path>/stat`, ns.
fn task_cpu_split(path: &str) -> (u64, u64) {
    let s = read(&format!("/proc/{path}/stat"));
    // Fields after the command (which may hold spaces) in parentheses: utime is the 12th.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<u64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0))
        .collect();
    let t = clk_tck_ns();
    (
        f.get(11).copied().unwrap_or(0) * t,
        f.get(12).copied().unwrap_or(0) * t,
    )
}

/// Where the DUT's own CPU time is read.
#[derive(Clone)]
enum DutTask {
    None,
    Process(u32),
    /// A thread of this process.
    Thread(u32),
}

#[derive(Clone, Copy)]
struct Snap {
    stat: [u64; 6],
    /// Softirq time of the DUT's core.
    dut_core_softirq: u64,
    dut: u64,
    dut_user: u64,
    me: u64,
}

fn snap(t: &DutTask, dut_core: usize) -> Snap {
    let (dut_user, dut_system) = match t {
        DutTask::None => (0, 0),
        DutTask::Process(p) => task_cpu_split(&p.to_string()),
        DutTask::Thread(tid) => task_cpu_split(&format!("self/task/{tid}")),
    };
    Snap {
        stat: proc_stat(None),
        dut_core_softirq: proc_stat(Some(dut_core))[4],
        dut: dut_user + dut_system,
        dut_user,
        me: task_cpu("self"),
    }
}

fn cpu_between(a: Snap, b: Snap, t: &DutTask) -> Cpu {
    let d = |i: usize| b.stat[i].saturating_sub(a.stat[i]);
    let dut = b.dut.saturating_sub(a.dut);
    let dut_core_softirq = b.dut_core_softirq.saturating_sub(a.dut_core_softirq);
    let me = b.me.saturating_sub(a.me);
    Cpu {
        user: d(0),
        system: d(1),
        idle: d(2),
        irq: d(3),
        softirq: d(4),
        steal: d(5),
        dut_core_softirq,
        dut_process: dut,
        dut_user: b.dut_user.saturating_sub(a.dut_user).min(dut),
        bench_process: if matches!(t, DutTask::Thread(_)) {
            me.saturating_sub(dut)
        } else {
            me
        },
    }
}

/// The topology of a comparison: a /14 inside (the flows' hosts are 10.1.0.0 onwards) and
/// a pool of 64 addresses, enough ports for 1M flows to one server port.
pub fn spec(tag: &str) -> TopologySpec {
    let mut s = TopologySpec::new(tag);
    s.addressing.inside_len = 14;
    s.addressing.pools[0] = (
        Ipv4Addr::new(192, 168, 1, 64),
        Ipv4Addr::new(192, 168, 1, 127),
    );
    s
}

/// `flows` flows as many inside hosts with 16 ports each (one host, one port for 1 flow;
/// fewer than 16 flows: one host with that many ports).
pub fn flow_set(flows: u64) -> Result<FlowSet, String> {
    let per = if flows >= 16 { 16 } else { flows.max(1) };
    if !flows.is_multiple_of(per) {
        return Err(format!(
            "{flows} flows: a multiple of 16 (or fewer than 16)"
        ));
    }
    FlowSet::new(
        Ipv4Addr::new(10, 1, 0, 0),
        14,
        (flows / per) as u32,
        10000,
        per as u32,
    )
}

struct Ctx<'a> {
    o: &'a CompareOptions,
    topo: &'a Topology,
    /// The gateway's `eth-in` MAC: the generator addresses it directly instead of through
    /// ARP, which a DUT that takes every frame (testpmd's XDP program) never answers.
    gw_mac: [u8; 6],
}

#[derive(Default)]
struct Results {
    rows: Vec<Row>,
    new_sessions: Vec<Result<NewSessions, (Dut, String)>>,
    zero_loss: Vec<Result<ZeroLoss, (Dut, String)>>,
}

impl Ctx<'_> {
    fn natgw_config(&self, dut: Dut, flows: u64) -> String {
        // natgw starts afresh for each point: room for its flows.
        let cap = self.o.capacity.unwrap_or_else(|| {
            (flows + flows / 4)
                .next_power_of_two()
                .clamp(1 << 18, 1 << 26)
        });
        let poll = if dut == Dut::NatgwAdaptive {
            "adaptive"
        } else {
            "busy"
        };
        let mut c = self
            .topo
            .natgw_config()
            .replace(
                "{ core = 0, queue = 0 }",
                &format!("{{ core = {}, queue = 0 }}", self.o.dut_core),
            )
            .replace("poll = \"adaptive\"", &format!("poll = \"{poll}\""));
        if dut == Dut::NatgwForward {
            c = c.replace(
                &format!("poll = \"{poll}\""),
                &format!("poll = \"{poll}\"\nforward_only = true"),
            );
        }
        if !self.o.natgw_dataplane.is_empty() {
            c = c.replace(
                &format!("poll = \"{poll}\""),
                &format!("poll = \"{poll}\"\n{}", self.o.natgw_dataplane.join("\n")),
            );
        }
        let _ = write!(c, "\n[sessions]\ncapacity_per_core = {cap}\n");
        c
    }

    fn gen_cfg(
        &self,
        flows: FlowSet,
        rate: u64,
        size: usize,
        duration: Option<Duration>,
        count: Option<u64>,
    ) -> GenConfig {
        GenConfig {
            port: PortOptions::one_queue(HOST_IF),
            cores: vec![self.o.gen_core],
            proto: Proto::Udp,
            wire_size: size,
            src_mac: None,
            dst_mac: DstMac::Given(self.gw_mac),
            dst_ip: self.topo.server_addr(),
            dst_port: 7777,
            flows,
            rate,
            duration,
            count,
            batch: 64,
            rtt: false,
            rtt_linger: Duration::ZERO,
            progress: None,
        }
    }

    fn sink(&self, flows: u64, limit: Duration) -> SinkConfig {
        SinkConfig {
            port: PortOptions::one_queue(HOST_IF),
            cores: vec![self.o.sink_core],
            reflect: false,
            max_flows: flows as usize,
            duration: Some(limit),
            count: None,
            idle: Some(Duration::from_millis(400)),
            progress: None,
            busy: false,
            batch: 64,
        }
    }

    /// One phase: sink opened, generator run, sink drained. `at_end` runs right after the
    /// generator returns (the CPU snapshot).
    fn phase<S: Send>(
        &self,
        g: &GenConfig,
        s: &SinkConfig,
        at_end: impl FnOnce() -> S + Send,
    ) -> Result<(GenReport, SinkReport, S), String> {
        let stop = AtomicBool::new(false);
        let opened = run_in_netns(self.topo.server_ns(), || sink::open(s))
            .map_err(|e| format!("sink: {e}"))?;
        let (sink_rep, gen_rep, snap) = std::thread::scope(|sc| {
            let sink = sc.spawn(|| opened.run(&stop));
            let r = run_in_netns(self.topo.host_ns(0), || generator::run(g, &stop));
            let snap = at_end();
            if r.is_err() {
                stop.store(true, Ordering::Release);
            }
            (sink.join(), r, snap)
        });
        let g = gen_rep.map_err(|e| format!("generator: {e}"))?;
        let s = sink_rep
            .map_err(|_| "sink thread panicked".to_string())?
            .map_err(|e| format!("sink: {e}"))?;
        Ok((g, s, snap))
    }

    /// Preliminary phase: every flow twice, flat out (sessions / conntrack entries set up
    /// before the measured phase, RFC 9693).
    fn warm(&self, flows: u64, size: usize) -> Result<(), String> {
        let set = flow_set(flows)?;
        let warm = self.gen_cfg(
            set,
            0,
            size,
            Some(Duration::from_secs(20)),
            Some(2 * flows.max(5000)),
        );
        self.phase(&warm, &self.sink(flows, Duration::from_secs(30)), || ())?;
        Ok(())
    }

    /// The generator at `rate` pps for the measured phase's duration, the sink's one-way
    /// latency histogram (the flows' sessions exist already).
    fn latency_at(&self, flows: u64, size: usize, rate: u64) -> Result<LatencyRun, String> {
        let set = flow_set(flows)?;
        let g = self.gen_cfg(set, rate.max(1), size, Some(self.o.duration), None);
        let (g, s, ()) = self.phase(
            &g,
            &self.sink(flows, self.o.duration * 3 + Duration::from_secs(5)),
            || (),
        )?;
        let loss = if g.sent > 0 {
            1.0 - s.packets.min(g.sent) as f64 / g.sent as f64
        } else {
            1.0
        };
        Ok(LatencyRun {
            rate,
            offered_pps: g.pps(),
            loss,
            latency: s.latency,
        })
    }

    fn measure(&self, task: &DutTask, flows: u64, size: usize) -> Result<Measured, String> {
        self.warm(flows, size)?;
        let set = flow_set(flows)?;
        let g = self.gen_cfg(set, 0, size, Some(self.o.duration), None);
        let before = snap(task, self.o.dut_core);
        let (g, s, after) = self.phase(
            &g,
            &self.sink(flows, self.o.duration * 3 + Duration::from_secs(5)),
            || snap(task, self.o.dut_core),
        )?;
        let cpu = cpu_between(before, after, task);
        let loss = if g.sent > 0 {
            1.0 - s.packets.min(g.sent) as f64 / g.sent as f64
        } else {
            0.0
        };
        Ok(Measured {
            sent: g.sent,
            gen_pps: g.pps(),
            received: s.packets,
            sink_pps: if g.elapsed_s > 0.0 {
                s.packets as f64 / g.elapsed_s
            } else {
                0.0
            },
            loss,
            sink_dropped: s
                .queues
                .iter()
                .filter_map(|q| q.xdp_stats)
                .map(|x| x.rx_dropped + x.rx_ring_full + x.rx_fill_ring_empty_descs)
                .sum(),
            cpu,
            zero_copy: g.zero_copy && s.zero_copy,
            dut_drops: None,
            dut_stats: None,
        })
    }

    /// Every packet a new flow (sources from 10.2.0.0, used by nothing else), once each,
    /// flat out, before the DUT has seen any of them.
    fn new_sessions(&self, dut: Dut, round: usize, task: &DutTask) -> Result<NewSessions, String> {
        let n = self.o.new_session_flows;
        let set = FlowSet::new(Ipv4Addr::new(10, 2, 0, 0), 14, (n / 16) as u32, 10000, 16)?;
        if dut.is_kernel() {
            self.wait_conntrack_empty();
        }
        let size = self.o.sizes.first().copied().unwrap_or(64);
        let g = self.gen_cfg(
            set,
            0,
            size,
            Some(Duration::from_secs(30)),
            Some(set.count()),
        );
        let before = snap(task, self.o.dut_core);
        let (g, s, after) =
            self.phase(&g, &self.sink(set.count(), Duration::from_secs(40)), || {
                snap(task, self.o.dut_core)
            })?;
        let cpu = cpu_between(before, after, task);
        let per_s = if g.elapsed_s > 0.0 {
            s.seq.flows_seen as f64 / g.elapsed_s
        } else {
            0.0
        };
        eprintln!(
            "compare: {:<22} new sessions: {} of {} flows through, {:.0} sessions/s (offered {:.0}/s)",
            dut.name(),
            s.seq.flows_seen,
            set.count(),
            per_s,
            g.pps()
        );
        Ok(NewSessions {
            dut,
            round,
            flows: set.count(),
            sent: g.sent,
            gen_pps: g.pps(),
            sessions: s.seq.flows_seen,
            per_s,
            cpu,
        })
    }

    /// Earlier kernel DUTs' conntrack entries (unreplied UDP: 30 s) must be gone before the
    /// new-session test; up to 40 s.
    fn wait_conntrack_empty(&self) {
        let deadline = Instant::now() + Duration::from_secs(40);
        while Instant::now() < deadline {
            let n = self
                .topo
                .exec(
                    self.topo.gw_ns(),
                    &["cat", "/proc/sys/net/netfilter/nf_conntrack_count"],
                )
                .ok()
                .and_then(|o| {
                    String::from_utf8_lossy(&o.stdout)
                        .trim()
                        .parse::<u64>()
                        .ok()
                });
            if n.is_none_or(|n| n < 100) {
                return;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Binary search on the rate between 0 and `hi` pps (the flat-out rate), 7 trials;
    /// the flows' sessions exist already (the throughput point before it).
    fn zero_loss(
        &self,
        dut: Dut,
        round: usize,
        flows: u64,
        size: usize,
        hi: u64,
    ) -> Result<ZeroLoss, String> {
        let set = flow_set(flows)?;
        let (mut lo, mut hi) = (0u64, hi);
        let mut best = 0;
        let mut trials = Vec::new();
        for _ in 0..7 {
            let rate = (lo + hi) / 2;
            if rate < 1000 || natgw_kernel::signal::signalled() {
                break;
            }
            let g = self.gen_cfg(set, rate, size, Some(self.o.trial), None);
            let (g, s, ()) = self.phase(
                &g,
                &self.sink(flows, self.o.trial * 3 + Duration::from_secs(5)),
                || (),
            )?;
            let loss = if g.sent > 0 {
                1.0 - s.packets.min(g.sent) as f64 / g.sent as f64
            } else {
                1.0
            };
            // The rate actually offered: a descheduled generator sends less than asked.
            trials.push((g.pps() as u64, loss));
            if loss < ZERO_LOSS {
                best = best.max(g.pps() as u64);
                lo = rate;
            } else {
                hi = rate;
            }
        }
        eprintln!(
            "compare: {:<22} zero-loss rate at {flows} flows {size} B: {:.3} Mpps ({} trials)",
            dut.name(),
            best as f64 / 1e6,
            trials.len()
        );
        // Latency at half the zero-loss rate, on the same DUT instance.
        let half_rate = (best >= 2000).then(|| {
            let r = self.latency_at(flows, size, best / 2);
            log_latency(dut, best / 2, &r);
            r
        });
        Ok(ZeroLoss {
            dut,
            round,
            flows,
            size,
            rate: best,
            trials,
            half_rate,
            kernel_same_rate: None,
        })
    }

    /// Sets up `dut` for a point of `flows` flows, runs `f` with where its CPU time is read,
    /// and tears it down again: every point starts from a fresh DUT (natgw restarted, the
    /// forwarder reopened, the kernel's rules reloaded), and the DUTs take turns point by
    /// point, so that a machine whose load changes over the run (other work on a shared
    /// box) hits every DUT alike instead of whichever ran during the busy minutes.
    fn with_dut<T>(
        &self,
        dut: Dut,
        flows: u64,
        f: &mut dyn FnMut(&DutTask) -> Result<T, String>,
    ) -> Result<(T, Option<String>), String> {
        if natgw_kernel::signal::signalled() {
            return Err("interrupted".into());
        }
        match dut {
            Dut::NatgwBusy | Dut::NatgwAdaptive | Dut::NatgwForward => {
                let exe = self.o.natgw.to_string_lossy().into_owned();
                let p = NatgwProcess::start(
                    &exe,
                    self.topo,
                    &self.natgw_config(dut, flows),
                    dut.name(),
                );
                let r = f(&DutTask::Process(p.pid()))?;
                let stats = natgw_testbed::lab::api_get(self.topo.gw_ns(), "/stats")
                    .map_err(|e| format!("GET /stats: {e}"))?;
                Ok((r, Some(stats)))
            }
            Dut::RawForwarder => self.with_forwarder(f),
            Dut::Kernel | Dut::KernelRps | Dut::KernelFlowtable => {
                let t = self.topo;
                let set_up = || -> io::Result<()> {
                    t.enable_kernel_nat()?;
                    if dut == Dut::KernelRps {
                        t.set_gateway_rps(&format!("{:x}", 1u64 << self.o.dut_core))?;
                    }
                    if dut == Dut::KernelFlowtable {
                        t.enable_kernel_flowtable()?;
                    }
                    Ok(())
                };
                let r = match set_up() {
                    Ok(()) => f(&DutTask::None),
                    Err(e) => {
                        let e = e.to_string();
                        let first = e.lines().next().unwrap_or("");
                        Err(
                            if dut == Dut::KernelFlowtable && e.contains("No such file") {
                                format!(
                                    "this kernel has no nftables flowtables (nf_flow_table): {first}"
                                )
                            } else {
                                format!("setting up: {first}")
                            },
                        )
                    }
                };
                let _ = t.set_gateway_rps("0");
                if let Err(e) = t.disable_kernel_nat() {
                    eprintln!("compare: disabling the kernel NAT: {e}");
                }
                r.map(|r| (r, None))
            }
            Dut::Testpmd => self.with_testpmd(f),
        }
    }

    /// The router's MAC on the gateway's outside link (the raw forwarder's and testpmd's
    /// next hop).
    fn router_mac(&self) -> Result<[u8; 6], String> {
        let router = self.topo.spec().addressing.router_outside;
        try_run_in_netns(self.topo.gw_ns(), || -> io::Result<[u8; 6]> {
            let l = natgw_kernel::netlink::link_by_name(GW_OUTSIDE_IF)?.ifindex;
            port::resolve_mac(l, router, Duration::from_secs(3))
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("router's MAC: {e}"))
    }

    /// dpdk-testpmd (Debian's dpdk-dev package) with two net_af_xdp ports on the gateway's
    /// `eth-in` (port 0) and `eth-out` (port 1), forwarding between them in `mac` mode: each
    /// frame's source MAC becomes the transmitting port's, its destination the `--eth-peer`
    /// of that port (the router for port 1), so the router accepts what it forwards (`io`
    /// mode sends the frames out unchanged, still addressed to `eth-in`'s MAC, and the
    /// router's veth would drop them as not for it). No translation: the DPDK-class
    /// forwarding reference beside the raw forwarder. The main lcore (stats, signals) is on
    /// the generator's core and sleeps; the one forwarding lcore polls on the DUT's core.
    /// `--no-huge`: anonymous memory, no hugepages to reserve on a shared machine.
    fn with_testpmd<T>(
        &self,
        f: &mut dyn FnMut(&DutTask) -> Result<T, String>,
    ) -> Result<(T, Option<String>), String> {
        if !on_path("dpdk-testpmd") {
            return Err(
                "dpdk-testpmd is not installed (Debian's dpdk-dev package; not installed in CI)"
                    .into(),
            );
        }
        let router = self.router_mac()?;
        let h1 = try_run_in_netns(self.topo.host_ns(0), || {
            natgw_kernel::netlink::link_by_name(HOST_IF).map(|l| l.mac)
        })
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("h1's MAC: {e}"))?;
        let mac = |m: [u8; 6]| {
            m.iter()
                .map(|b| format!("{b:02x}"))
                .collect::<Vec<_>>()
                .join(":")
        };
        let main = if self.o.gen_core != self.o.dut_core {
            self.o.gen_core
        } else {
            (self.o.dut_core + 1) % nproc().max(2)
        };
        let log = std::env::temp_dir().join(format!(
            "natgw-compare-testpmd-{}-{}.log",
            self.o.tag,
            std::process::id()
        ));
        let out = std::fs::File::create(&log).map_err(|e| format!("{}: {e}", log.display()))?;
        let err = out
            .try_clone()
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let prefix = format!("natgw-{}", self.o.tag);
        let args: Vec<String> = vec![
            "netns".into(),
            "exec".into(),
            self.topo.gw_ns().into(),
            "dpdk-testpmd".into(),
            "-l".into(),
            format!("{main},{}", self.o.dut_core),
            "--main-lcore".into(),
            main.to_string(),
            "--no-huge".into(),
            "-m".into(),
            "512".into(),
            "--no-pci".into(),
            "--file-prefix".into(),
            prefix,
            "--vdev".into(),
            format!("net_af_xdp0,iface={GW_INSIDE_IF},start_queue=0,queue_count=1"),
            "--vdev".into(),
            format!("net_af_xdp1,iface={GW_OUTSIDE_IF},start_queue=0,queue_count=1"),
            "--".into(),
            "--forward-mode=mac".into(),
            format!("--eth-peer=0,{}", mac(h1)),
            format!("--eth-peer=1,{}", mac(router)),
            "--nb-cores=1".into(),
            "--rxq=1".into(),
            "--txq=1".into(),
            "--burst=64".into(),
            // testpmd's default pool (sized for the largest rings on every lcore) does not
            // fit in 512 MB of --no-huge memory; 16k mbufs (36 MB) hold both ports' rings.
            "--total-num-mbufs=16384".into(),
            "--auto-start".into(),
            "--stats-period=1".into(),
        ];
        let mut child = std::process::Command::new("ip")
            .args(&args)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting dpdk-testpmd: {e}"))?;
        // SIGINT: testpmd stops forwarding, prints its totals and exits.
        let stop = |c: &mut std::process::Child| {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGINT) };
            let t = Instant::now();
            while t.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        };
        let text = || read(&log.to_string_lossy());
        // Forwarding has started when the first periodic stats appear.
        let deadline = Instant::now() + Duration::from_secs(20);
        let ready = loop {
            if text().contains("NIC statistics for port") {
                break Ok(());
            }
            if let Ok(Some(st)) = child.try_wait() {
                break Err(format!(
                    "dpdk-testpmd exited ({st}) before forwarding: {}",
                    last_lines(&text(), 6)
                ));
            }
            if Instant::now() >= deadline {
                break Err(format!(
                    "dpdk-testpmd did not start forwarding within 20 s: {}",
                    last_lines(&text(), 6)
                ));
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        let r = ready.and_then(|()| f(&DutTask::Process(child.id())));
        stop(&mut child);
        let t = text();
        let stats = testpmd_stats(&t);
        let _ = std::fs::remove_file(&log);
        r.map(|r| (r, Some(stats)))
    }

    fn with_forwarder<T>(
        &self,
        f: &mut dyn FnMut(&DutTask) -> Result<T, String>,
    ) -> Result<(T, Option<String>), String> {
        let gw = self.topo.gw_ns().to_string();
        let mac = self.router_mac()?;
        let cfg = ForwarderConfig {
            rx_if: GW_INSIDE_IF.into(),
            tx_if: GW_OUTSIDE_IF.into(),
            next_hop_mac: mac,
            xsk_mode: XskMode::Auto,
            xdp_mode: None,
            ring_size: 2048,
            frames: 8192,
            batch: 64,
            core: Some(self.o.dut_core),
        };
        let stop = Arc::new(AtomicBool::new(false));
        let tid = Arc::new(AtomicU32::new(0));
        let (stop2, tid2) = (stop.clone(), tid.clone());
        let h = std::thread::spawn(move || {
            try_run_in_netns(&gw, move || -> io::Result<forwarder::ForwarderReport> {
                let f = forwarder::open(&cfg)?;
                // SAFETY: gettid has no preconditions.
                tid2.store(unsafe { libc::gettid() } as u32, Ordering::Release);
                f.run(&stop2)
            })
        });
        let deadline = Instant::now() + Duration::from_secs(5);
        while tid.load(Ordering::Acquire) == 0 && !h.is_finished() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        let t = tid.load(Ordering::Acquire);
        let r = if t != 0 {
            Some(f(&DutTask::Thread(t)))
        } else {
            None
        };
        stop.store(true, Ordering::Release);
        let rep = h
            .join()
            .map_err(|_| "forwarder thread panicked".to_string())?
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("raw forwarder: {e}"))?;
        let stats = format!(
            "{{\"received\":{},\"forwarded\":{},\"drop_tx_full\":{},\"drop_bad_desc\":{},\"zero_copy\":{},\"xdp_mode\":\"{}\"}}",
            rep.received, rep.forwarded, rep.tx_full, rep.bad_desc, rep.zero_copy, rep.xdp_mode
        );
        match r {
            Some(r) => Ok((r?, Some(stats))),
            None => Err("the forwarder did not start within 5 s".into()),
        }
    }

    fn log_point(&self, dut: Dut, flows: u64, size: usize, r: &Result<Measured, String>) {
        match r {
            Ok(m) => eprintln!(
                "compare: {:<22} {flows:>8} flows {size:>4} B: {:.3} Mpps at the sink (sent {:.3} Mpps, loss {:.2} %, {} lost in the sink's rings, DUT drops {}), DUT CPU {:.0} ns/packet",
                dut.name(),
                m.sink_pps / 1e6,
                m.gen_pps / 1e6,
                m.loss * 100.0,
                m.sink_dropped,
                m.dut_drops.map_or("-".into(), |d| d.to_string()),
                m.ns_per_packet()
            ),
            Err(e) => eprintln!("compare: {} {flows} flows {size} B: {e}", dut.name()),
        }
    }

    /// The DUTs in round `round`'s order: rotated by one per round, so that no DUT always
    /// runs first (after the topology's set-up) or right after the same neighbour.
    fn order(&self, round: usize) -> Vec<Dut> {
        round_order(&self.o.duts, round)
    }

    /// Every point, each DUT in turn, `rounds` times: the new-session test, then every
    /// (flows, size), the zero-loss search and the latency at half its rate right after
    /// its throughput point (on the same DUT instance, whose sessions are then set up).
    /// The rounds of a point follow each other, so that a round's DUTs (and the ratios
    /// between them) are measured minutes apart at most.
    fn run_all(&self, res: &mut Results) {
        let rounds = self.o.rounds.max(1);
        if self.o.new_session_flows > 0 {
            for round in 0..rounds {
                for dut in self.order(round) {
                    let r = self
                        .with_dut(dut, self.o.new_session_flows, &mut |t| {
                            self.new_sessions(dut, round, t)
                        })
                        .map(|(n, _)| n)
                        .map_err(|e| (dut, e));
                    if let Err((_, e)) = &r {
                        eprintln!("compare: {} new sessions: {e}", dut.name());
                    }
                    res.new_sessions.push(r);
                }
            }
        }
        for &flows in &self.o.flows {
            for &size in &self.o.sizes {
                let zl =
                    self.o.zero_loss_flows == Some(flows) && self.o.sizes.first() == Some(&size);
                for round in 0..rounds {
                    if rounds > 1 {
                        eprintln!(
                            "compare: {flows} flows {size} B, round {}/{rounds}",
                            round + 1
                        );
                    }
                    let mut zs = Vec::new();
                    for dut in self.order(round) {
                        let mut z = None;
                        let r = self
                            .with_dut(dut, flows, &mut |t| {
                                let m = self.measure(t, flows, size)?;
                                if zl {
                                    z = Some(
                                        self.zero_loss(dut, round, flows, size, m.gen_pps as u64)
                                            .map_err(|e| (dut, e)),
                                    );
                                }
                                Ok(m)
                            })
                            .map(|(mut m, stats)| {
                                m.dut_drops = stats.as_deref().map(sum_drops);
                                m.dut_stats = stats;
                                m
                            });
                        self.log_point(dut, flows, size, &r);
                        if zl {
                            zs.push(z.unwrap_or_else(|| {
                                Err((dut, r.as_ref().err().cloned().unwrap_or_default()))
                            }));
                        }
                        res.rows.push(Row {
                            dut,
                            flows,
                            size,
                            round,
                            result: r,
                        });
                    }
                    if zl && self.o.duts.contains(&Dut::Kernel) {
                        self.kernel_at_others_rates(flows, size, &mut zs);
                    }
                    res.zero_loss.append(&mut zs);
                }
            }
        }
    }

    /// `kernel-masquerade` at every other DUT's half zero-loss rate of this round (one
    /// fresh kernel set-up, the flows' conntrack entries made first): the issue compares
    /// p99 latencies at the same rate.
    fn kernel_at_others_rates(
        &self,
        flows: u64,
        size: usize,
        zs: &mut [Result<ZeroLoss, (Dut, String)>],
    ) {
        let want: Vec<u64> = zs
            .iter()
            .filter_map(|z| z.as_ref().ok())
            .filter(|z| z.dut != Dut::Kernel)
            .filter_map(|z| match &z.half_rate {
                Some(Ok(h)) => Some(h.rate),
                _ => None,
            })
            .collect();
        if want.is_empty() {
            return;
        }
        let r = self.with_dut(Dut::Kernel, flows, &mut |_| {
            self.warm(flows, size)?;
            Ok(want
                .iter()
                .map(|&rate| {
                    let r = self.latency_at(flows, size, rate);
                    log_latency(Dut::Kernel, rate, &r);
                    (rate, r)
                })
                .collect::<Vec<_>>())
        });
        for z in zs.iter_mut().filter_map(|z| z.as_mut().ok()) {
            let Some(Ok(h)) = &z.half_rate else { continue };
            if z.dut == Dut::Kernel {
                continue;
            }
            let rate = h.rate;
            z.kernel_same_rate = Some(match &r {
                Ok((v, _)) => v
                    .iter()
                    .find(|(x, _)| *x == rate)
                    .map(|(_, r)| r.clone())
                    .unwrap_or_else(|| Err("not run".into())),
                Err(e) => Err(e.clone()),
            });
        }
    }
}

fn round_order(duts: &[Dut], round: usize) -> Vec<Dut> {
    let mut d = duts.to_vec();
    if !d.is_empty() {
        let n = d.len();
        d.rotate_left(round % n);
    }
    d
}

fn log_latency(dut: Dut, rate: u64, r: &Result<LatencyRun, String>) {
    match r {
        Ok(l) => eprintln!(
            "compare: {:<22} at {:.3} Mpps (sent {:.3}, loss {:.2} %): one-way latency p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us",
            dut.name(),
            rate as f64 / 1e6,
            l.offered_pps / 1e6,
            l.loss * 100.0,
            l.latency.p50 as f64 / 1e3,
            l.latency.p99 as f64 / 1e3,
            l.latency.p999 as f64 / 1e3,
            l.latency.max as f64 / 1e3,
        ),
        Err(e) => eprintln!("compare: {} latency at {rate} pps: {e}", dut.name()),
    }
}

/// The sum of every top-level `"drop_*": N` of a stats JSON (natgw's /stats, the
/// forwarder's counters): frames the DUT itself dropped, by any reason.
fn sum_drops(stats: &str) -> u64 {
    let mut total = 0;
    let mut rest = stats;
    while let Some(i) = rest.find("\"drop_") {
        rest = &rest[i + 1..];
        let Some(colon) = rest.find(':') else { break };
        let num: String = rest[colon + 1..]
            .trim_start()
            .chars()
            .take_while(|c| c.is_ascii_digit())
            .collect();
        total += num.parse::<u64>().unwrap_or(0);
        rest = &rest[colon + 1..];
    }
    total
}

/// The last `n` non-empty lines of `s`, joined with " | ".
fn last_lines(s: &str, n: usize) -> String {
    let l: Vec<&str> = s.lines().filter(|l| !l.trim().is_empty()).collect();
    l[l.len().saturating_sub(n)..].join(" | ")
}

/// testpmd's last "Accumulated forward statistics for all ports" block (printed when it
/// stops) as a stats JSON: `RX-packets`, `RX-dropped` (`drop_rx`), `TX-packets`,
/// `TX-dropped` (`drop_tx`: the transmit ring full).
fn testpmd_stats(log: &str) -> String {
    let block = log
        .rfind("Accumulated forward statistics for all ports")
        .map_or("", |i| &log[i..]);
    let num = |key: &str| -> u64 {
        block
            .find(key)
            .map(|i| &block[i + key.len()..])
            .and_then(|r| {
                r.trim_start()
                    .split(|c: char| !c.is_ascii_digit())
                    .next()
                    .and_then(|n| n.parse().ok())
            })
            .unwrap_or(0)
    };
    format!(
        "{{\"rx_packets\":{},\"drop_rx\":{},\"tx_packets\":{},\"drop_tx\":{},\"found\":{}}}",
        num("RX-packets:"),
        num("RX-dropped:"),
        num("TX-packets:"),
        num("TX-dropped:"),
        !block.is_empty()
    )
}

fn on_path(cmd: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(cmd).is_file()))
}

/// nproc, the CPU model, the kernel and what else bounds the numbers.
pub fn machine() -> Vec<(&'static str, String)> {
    let model = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map_or("unknown".into(), |(_, v)| v.trim().to_string());
    vec![
        ("host", host()),
        ("nproc", nproc().to_string()),
        ("model_name", model),
        (
            "kernel",
            read("/proc/sys/kernel/osrelease").trim().to_string(),
        ),
        (
            "nf_conntrack_max",
            read("/proc/sys/net/netfilter/nf_conntrack_max")
                .trim()
                .to_string(),
        ),
        ("loadavg_at_start", read("/proc/loadavg").trim().to_string()),
    ]
}

fn host() -> String {
    let h = read("/proc/sys/kernel/hostname").trim().to_string();
    if h.is_empty() { "unknown".into() } else { h }
}

/// Builds the topology, measures every DUT and returns the report (written to `out_dir`
/// when given).
pub fn run(o: &CompareOptions) -> Result<Report, String> {
    // SIGINT/SIGTERM end the generator's phase and skip the remaining points, so that the
    // topology and natgw are cleaned up.
    natgw_kernel::signal::install_signal_handlers();
    for &f in &o.flows {
        flow_set(f)?;
    }
    for &s in &o.sizes {
        if !(64..=1514).contains(&s) {
            return Err(format!("frame size {s}: 64-1514 (the veth MTU)"));
        }
    }
    let machine = machine();
    let spec = spec(&o.tag);
    // A killed earlier run (release builds abort on panic) leaves its namespaces.
    let _ = Topology::cleanup_stale(&o.tag);
    let topo = Topology::build(&spec).map_err(|e| format!("building the topology: {e}"))?;
    // Replies never flow, but the router's reverse-path check must accept the untranslated
    // sources of the forward-only DUTs.
    let _ = topo.exec(
        topo.router_ns(),
        &[
            "ip",
            "route",
            "replace",
            "10.0.0.0/14",
            "via",
            &spec.addressing.gw_outside.to_string(),
        ],
    );
    let gw_mac = try_run_in_netns(topo.gw_ns(), || {
        natgw_kernel::netlink::link_by_name(GW_INSIDE_IF).map(|l| l.mac)
    })
    .map_err(|e| e.to_string())
    .and_then(|r| r.map_err(|e| format!("the gateway's {GW_INSIDE_IF} MAC: {e}")))?;
    let ctx = Ctx {
        o,
        topo: &topo,
        gw_mac,
    };
    let mut res = Results::default();
    ctx.run_all(&mut res);
    let notes = vec![
        format!(
            "cores: generator thread on core {}, sink thread on core {}, natgw's worker / the raw forwarder / the kernel's RPS target on core {}; \
             the kernel without RPS forwards in the softirq of the core that sent (the generator's)",
            o.gen_core, o.sink_core, o.dut_core
        ),
        "DUT CPU = the DUT's process (natgw, dpdk-testpmd) or thread (raw forwarder) utime+stime + softirq time of the other cores from /proc/stat \
         (softirq on the DUT's core runs in its context and is in its stime already); kernel DUTs: softirq time of all cores. Softirq time includes the bridge, router and sink-side veth work, the same for every DUT. \
         Tick-sampled (no IRQ time accounting): +-10 ms per core and phase."
            .to_string(),
        "throughput at the sink = bench frames at the sink / the generator's sending time, the generator flat out".to_string(),
        "DUT user % = the DUT process's (thread's) utime / its DUT CPU: the DUT's own code; the rest is the kernel working for it \
         (its stime: copy-mode AF_XDP transmit and the veth path; softirq of the other cores). 0 for the kernel DUTs."
            .to_string(),
    ];
    let mut machine = machine;
    machine.push(("loadavg_at_end", read("/proc/loadavg").trim().to_string()));
    let report = Report {
        machine,
        options: o.clone(),
        rows: res.rows,
        new_sessions: res.new_sessions,
        zero_loss: res.zero_loss,
        notes,
    };
    drop(topo);
    if let Some(dir) = &o.out_dir {
        let w = report
            .write(dir)
            .map_err(|e| format!("writing results to {}: {e}", dir.display()))?;
        eprintln!(
            "compare: wrote {}, {} and {}",
            w.json.display(),
            w.md.display(),
            w.png.display()
        );
    }
    Ok(report)
}

fn date() -> String {
    let out = std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%d"])
        .output()
        .ok();
    out.map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "undated".into())
}

/// `x` as "median" or, over more than one round, "median (min-max)".
fn fmt_stat(x: Option<Stat>, scale: f64, prec: usize) -> String {
    match x {
        None => "-".into(),
        Some(s) if s.n <= 1 => format!("{:.prec$}", s.median * scale),
        Some(s) => format!(
            "{:.prec$} ({:.prec$}-{:.prec$})",
            s.median * scale,
            s.min * scale,
            s.max * scale
        ),
    }
}

/// The median only.
fn fmt_med(x: Option<Stat>, scale: f64, prec: usize) -> String {
    x.map_or("-".into(), |s| format!("{:.prec$}", s.median * scale))
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

/// One DUT's new-session test over the rounds.
#[derive(Clone, Debug)]
pub struct NewSessionsSummary {
    pub dut: Dut,
    pub flows: u64,
    pub gen_pps: Stat,
    pub sessions: Stat,
    pub per_s: Stat,
    pub vs_kernel: Option<Stat>,
    pub ns_per_session: Option<Stat>,
}

/// One DUT's zero-loss search and latency at half its rate over the rounds (latencies ns).
#[derive(Clone, Debug)]
pub struct ZeroLossSummary {
    pub dut: Dut,
    pub flows: u64,
    pub size: usize,
    pub rate: Stat,
    pub vs_kernel: Option<Stat>,
    pub half_loss: Option<Stat>,
    pub p50: Option<Stat>,
    pub p99: Option<Stat>,
    pub p999: Option<Stat>,
    pub max: Option<Stat>,
    /// The kernel's p99 at this DUT's half rate (the kernel itself: its own).
    pub kernel_p99: Option<Stat>,
    /// p99 / the kernel's p99 at the same rate, per round.
    pub p99_vs_kernel: Option<Stat>,
}

impl Report {
    /// Only measured rows, nothing else (the tests' summaries and plots).
    #[cfg(test)]
    pub(crate) fn of_rows(options: CompareOptions, rows: Vec<Row>) -> Report {
        Report {
            new_sessions: vec![],
            zero_loss: vec![],
            machine: vec![],
            options,
            rows,
            notes: vec![],
        }
    }

    fn measured(&self, dut: Dut, flows: u64, size: usize, round: usize) -> Option<&Measured> {
        self.rows
            .iter()
            .find(|r| r.dut == dut && r.flows == flows && r.size == size && r.round == round)
            .and_then(|r| r.result.as_ref().ok())
    }

    /// Per (flows, size, DUT) in the run's order: medians over the rounds.
    pub fn summary(&self) -> Vec<Summary> {
        let mut out = Vec::new();
        for &flows in &self.options.flows {
            for &size in &self.options.sizes {
                for &dut in &self.options.duts {
                    let ms: Vec<(usize, &Measured)> = self
                        .rows
                        .iter()
                        .filter(|r| r.dut == dut && r.flows == flows && r.size == size)
                        .filter_map(|r| r.result.as_ref().ok().map(|m| (r.round, m)))
                        .collect();
                    let Some(sink_pps) = Stat::of(ms.iter().map(|(_, m)| m.sink_pps)) else {
                        continue;
                    };
                    let vs = |other: Dut, f: fn(&Measured) -> f64| {
                        Stat::of(ms.iter().filter_map(|&(round, m)| {
                            self.measured(other, flows, size, round)
                                .map(|o| ratio(f(m), f(o)))
                        }))
                    };
                    out.push(Summary {
                        dut,
                        flows,
                        size,
                        sink_pps,
                        gen_pps: Stat::of(ms.iter().map(|(_, m)| m.gen_pps)).unwrap_or(sink_pps),
                        loss: Stat::of(ms.iter().map(|(_, m)| m.loss)).unwrap_or(sink_pps),
                        sink_dropped: Stat::of(ms.iter().map(|(_, m)| m.sink_dropped as f64))
                            .unwrap_or(sink_pps),
                        dut_drops: Stat::of(
                            ms.iter().filter_map(|(_, m)| m.dut_drops.map(|d| d as f64)),
                        ),
                        ns_per_packet: Stat::of(ms.iter().map(|(_, m)| m.ns_per_packet())),
                        user_share: Stat::of(
                            ms.iter()
                                .map(|(_, m)| ratio(m.cpu.dut_user as f64, m.cpu.dut() as f64)),
                        ),
                        pps_vs_kernel: vs(Dut::Kernel, |m| m.sink_pps),
                        pps_vs_raw: vs(Dut::RawForwarder, |m| m.sink_pps),
                        ns_vs_kernel: vs(Dut::Kernel, Measured::ns_per_packet),
                        ns_vs_raw: vs(Dut::RawForwarder, Measured::ns_per_packet),
                    });
                }
            }
        }
        out
    }

    pub fn new_sessions_summary(&self) -> Vec<NewSessionsSummary> {
        let ok: Vec<&NewSessions> = self
            .new_sessions
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .collect();
        let kernel = |round: usize| {
            ok.iter()
                .find(|n| n.dut == Dut::Kernel && n.round == round)
                .map(|n| n.per_s)
        };
        let mut out = Vec::new();
        for &dut in &self.options.duts {
            let v: Vec<&&NewSessions> = ok.iter().filter(|n| n.dut == dut).collect();
            let Some(per_s) = Stat::of(v.iter().map(|n| n.per_s)) else {
                continue;
            };
            out.push(NewSessionsSummary {
                dut,
                flows: v[0].flows,
                gen_pps: Stat::of(v.iter().map(|n| n.gen_pps)).unwrap_or(per_s),
                sessions: Stat::of(v.iter().map(|n| n.sessions as f64)).unwrap_or(per_s),
                per_s,
                vs_kernel: Stat::of(
                    v.iter()
                        .filter_map(|n| kernel(n.round).map(|k| ratio(n.per_s, k))),
                ),
                ns_per_session: Stat::of(
                    v.iter()
                        .map(|n| ratio(n.cpu.dut() as f64, n.sessions as f64)),
                ),
            });
        }
        out
    }

    pub fn zero_loss_summary(&self) -> Vec<ZeroLossSummary> {
        let ok: Vec<&ZeroLoss> = self
            .zero_loss
            .iter()
            .filter_map(|r| r.as_ref().ok())
            .collect();
        let kernel = |round: usize| {
            ok.iter()
                .find(|z| z.dut == Dut::Kernel && z.round == round)
                .copied()
        };
        let half = |z: &ZeroLoss| z.half_rate.as_ref().and_then(|h| h.as_ref().ok()).cloned();
        // The kernel's p99 at `z`'s half rate: its own run for the kernel, its run at the
        // other DUT's rate for the others.
        let kernel_p99 = |z: &ZeroLoss| -> Option<f64> {
            let l = if z.dut == Dut::Kernel {
                half(z)
            } else {
                z.kernel_same_rate
                    .as_ref()
                    .and_then(|h| h.as_ref().ok())
                    .cloned()
            }?;
            (l.latency.count > 0).then_some(l.latency.p99 as f64)
        };
        let mut out = Vec::new();
        for &dut in &self.options.duts {
            let v: Vec<&&ZeroLoss> = ok.iter().filter(|z| z.dut == dut).collect();
            let Some(rate) = Stat::of(v.iter().map(|z| z.rate as f64)) else {
                continue;
            };
            let lat = |f: fn(&LatencySummary) -> u64| {
                Stat::of(v.iter().filter_map(|z| {
                    half(z)
                        .filter(|h| h.latency.count > 0)
                        .map(|h| f(&h.latency) as f64)
                }))
            };
            out.push(ZeroLossSummary {
                dut,
                flows: v[0].flows,
                size: v[0].size,
                rate,
                vs_kernel: Stat::of(
                    v.iter().filter_map(|z| {
                        kernel(z.round).map(|k| ratio(z.rate as f64, k.rate as f64))
                    }),
                ),
                half_loss: Stat::of(v.iter().filter_map(|z| half(z).map(|h| h.loss))),
                p50: lat(|l| l.p50),
                p99: lat(|l| l.p99),
                p999: lat(|l| l.p999),
                max: lat(|l| l.max),
                kernel_p99: Stat::of(v.iter().filter_map(|z| kernel_p99(z))),
                p99_vs_kernel: Stat::of(v.iter().filter_map(|z| {
                    let own = half(z).filter(|h| h.latency.count > 0)?.latency.p99 as f64;
                    Some(ratio(own, kernel_p99(z)?))
                })),
            });
        }
        out
    }

    pub fn json(&self) -> Obj {
        let mut m = Obj::new();
        for (k, v) in &self.machine {
            m = m.s(k, v.clone());
        }
        let opt = |s: Option<Stat>| s.map_or(Value::Null, |s| Value::Obj(s.json()));
        let rows = self
            .rows
            .iter()
            .map(|r| {
                let o = Obj::new()
                    .s("dut", r.dut.name())
                    .u("flows", r.flows)
                    .u("frame_size", r.size as u64)
                    .u("round", r.round as u64);
                Value::Obj(match &r.result {
                    Ok(x) => o
                        .u("sent", x.sent)
                        .f("generator_pps", x.gen_pps)
                        .u("received", x.received)
                        .f("sink_pps", x.sink_pps)
                        .f("loss", x.loss)
                        .u("sink_dropped", x.sink_dropped)
                        .b("zero_copy", x.zero_copy)
                        .f("dut_ns_per_packet", x.ns_per_packet())
                        .v("dut_drops", x.dut_drops.map_or(Value::Null, Value::U))
                        .s("dut_stats", x.dut_stats.clone().unwrap_or_default())
                        .o("cpu", x.cpu.json()),
                    Err(e) => o.s("skipped", e.clone()),
                })
            })
            .collect();
        let summary = self
            .summary()
            .iter()
            .map(|x| {
                Value::Obj(
                    Obj::new()
                        .s("dut", x.dut.name())
                        .u("flows", x.flows)
                        .u("frame_size", x.size as u64)
                        .o("sink_pps", x.sink_pps.json())
                        .o("generator_pps", x.gen_pps.json())
                        .o("loss", x.loss.json())
                        .o("sink_dropped", x.sink_dropped.json())
                        .v("dut_drops", opt(x.dut_drops))
                        .v("dut_ns_per_packet", opt(x.ns_per_packet))
                        .v("dut_user_share", opt(x.user_share))
                        .v("sink_pps_vs_kernel", opt(x.pps_vs_kernel))
                        .v("sink_pps_vs_raw", opt(x.pps_vs_raw))
                        .v("ns_per_packet_vs_kernel", opt(x.ns_vs_kernel))
                        .v("ns_per_packet_vs_raw", opt(x.ns_vs_raw)),
                )
            })
            .collect();
        let ns = self
            .new_sessions
            .iter()
            .map(|r| {
                Value::Obj(match r {
                    Ok(n) => Obj::new()
                        .s("dut", n.dut.name())
                        .u("round", n.round as u64)
                        .u("flows", n.flows)
                        .u("sent", n.sent)
                        .f("generator_pps", n.gen_pps)
                        .u("sessions", n.sessions)
                        .f("sessions_per_s", n.per_s)
                        .o("cpu", n.cpu.json()),
                    Err((d, e)) => Obj::new().s("dut", d.name()).s("skipped", e.clone()),
                })
            })
            .collect();
        let lat = |l: &Option<Result<LatencyRun, String>>| match l {
            None => Value::Null,
            Some(Ok(l)) => Value::Obj(l.json()),
            Some(Err(e)) => Value::Obj(Obj::new().s("skipped", e.clone())),
        };
        let zl = self
            .zero_loss
            .iter()
            .map(|r| {
                Value::Obj(match r {
                    Ok(z) => Obj::new()
                        .s("dut", z.dut.name())
                        .u("round", z.round as u64)
                        .u("flows", z.flows)
                        .u("frame_size", z.size as u64)
                        .u("zero_loss_pps", z.rate)
                        .v(
                            "trials",
                            Value::Arr(
                                z.trials
                                    .iter()
                                    .map(|(r, l)| {
                                        Value::Obj(Obj::new().u("offered_pps", *r).f("loss", *l))
                                    })
                                    .collect(),
                            ),
                        )
                        .v("half_rate_latency", lat(&z.half_rate))
                        .v("kernel_at_same_rate_latency", lat(&z.kernel_same_rate)),
                    Err((d, e)) => Obj::new().s("dut", d.name()).s("skipped", e.clone()),
                })
            })
            .collect();
        Obj::new()
            .o("machine", m)
            .u("rounds", self.options.rounds.max(1) as u64)
            .v("new_sessions", Value::Arr(ns))
            .f("zero_loss_max_loss", ZERO_LOSS)
            .v("zero_loss", Value::Arr(zl))
            .f("duration_s", self.options.duration.as_secs_f64())
            .f("zero_loss_trial_s", self.options.trial.as_secs_f64())
            .u("generator_core", self.options.gen_core as u64)
            .u("sink_core", self.options.sink_core as u64)
            .u("dut_core", self.options.dut_core as u64)
            .v(
                "natgw_dataplane",
                Value::Arr(
                    self.options
                        .natgw_dataplane
                        .iter()
                        .map(|l| Value::S(l.clone()))
                        .collect(),
                ),
            )
            .v(
                "notes",
                Value::Arr(self.notes.iter().map(|n| Value::S(n.clone())).collect()),
            )
            .v("summary", Value::Arr(summary))
            .v("results", Value::Arr(rows))
    }

    /// The markdown tables: per point and DUT, Mpps at the sink and DUT CPU per packet, with
    /// ratios against the kernel's masquerade and the raw forwarder; medians over the
    /// rounds (min-max in parentheses), ratios taken per round and medianed.
    pub fn markdown(&self) -> String {
        let rounds = self.options.rounds.max(1);
        let mut s = String::new();
        let _ = writeln!(s, "Machine:");
        for (k, v) in &self.machine {
            let _ = writeln!(s, "- {k}: {v}");
        }
        if !self.options.natgw_dataplane.is_empty() {
            let _ = writeln!(
                s,
                "- natgw's [dataplane] besides the defaults: {}",
                self.options.natgw_dataplane.join(", ")
            );
        }
        let _ = writeln!(
            s,
            "- measured phase {:.1} s per point, {rounds} round{} (the DUTs in turn within a round, their order rotated per round)\n",
            self.options.duration.as_secs_f64(),
            if rounds == 1 { "" } else { "s" }
        );
        if rounds > 1 {
            let _ = writeln!(
                s,
                "Medians over the {rounds} rounds, (min-max) after them; ratios taken within each round, then medianed.\n"
            );
        }
        let _ = writeln!(
            s,
            "| flows | bytes | DUT | Mpps at sink | offered Mpps | loss % | sink ring drops | DUT drops | DUT CPU ns/pkt | DUT user % | Mpps / kernel | Mpps / raw | ns/pkt / kernel | ns/pkt / raw |"
        );
        let _ = writeln!(
            s,
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
        );
        for x in self.summary() {
            let _ = writeln!(
                s,
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                x.flows,
                x.size,
                x.dut.name(),
                fmt_stat(Some(x.sink_pps), 1e-6, 3),
                fmt_med(Some(x.gen_pps), 1e-6, 3),
                fmt_med(Some(x.loss), 100.0, 2),
                fmt_med(Some(x.sink_dropped), 1.0, 0),
                fmt_med(x.dut_drops, 1.0, 0),
                fmt_stat(x.ns_per_packet, 1.0, 0),
                fmt_med(x.user_share, 100.0, 0),
                fmt_stat(x.pps_vs_kernel, 1.0, 2),
                fmt_stat(x.pps_vs_raw, 1.0, 2),
                fmt_med(x.ns_vs_kernel, 1.0, 2),
                fmt_med(x.ns_vs_raw, 1.0, 2),
            );
        }
        let mut skipped: Vec<String> = Vec::new();
        for r in &self.rows {
            if let Err(e) = &r.result {
                let line = format!("{}: {e}", r.dut.name());
                if !skipped.contains(&line) {
                    skipped.push(line);
                }
            }
        }
        let errs = |v: Vec<(Dut, &String)>| -> Vec<String> {
            let mut out: Vec<String> = Vec::new();
            for (d, e) in v {
                let l = format!("| {} | not measured: {e} |", d.name());
                if !out.contains(&l) {
                    out.push(l);
                }
            }
            out
        };
        if !self.new_sessions.is_empty() {
            let _ = writeln!(
                s,
                "\nNew sessions (every packet a new flow, each flow once, flat out):\n\n\
                 | DUT | flows | offered /s | sessions through | sessions/s | / kernel | DUT CPU ns/session |\n\
                 |---|---|---|---|---|---|---|"
            );
            for n in self.new_sessions_summary() {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} |",
                    n.dut.name(),
                    n.flows,
                    fmt_med(Some(n.gen_pps), 1.0, 0),
                    fmt_med(Some(n.sessions), 1.0, 0),
                    fmt_stat(Some(n.per_s), 1.0, 0),
                    fmt_stat(n.vs_kernel, 1.0, 2),
                    fmt_med(n.ns_per_session, 1.0, 0),
                );
            }
            for l in errs(
                self.new_sessions
                    .iter()
                    .filter_map(|r| r.as_ref().err().map(|(d, e)| (*d, e)))
                    .collect(),
            ) {
                let _ = writeln!(s, "{l}");
            }
        }
        if !self.zero_loss.is_empty() {
            let _ = writeln!(
                s,
                "\nZero-loss rate (binary search, 7 trials of {:.1} s, loss < {} %) and one-way latency at half of it \
                 ({:.1} s at the generator's fixed rate; generator and sink on this machine, CLOCK_MONOTONIC stamps, hdrhistogram; \
                 the kernel's p99: `kernel-masquerade` at the same rate in the same round):\n\n\
                 | DUT | flows | bytes | zero-loss Mpps | / kernel | loss % at half | p50 us | p99 us | p99.9 us | max us | kernel p99 us, same rate | p99 / kernel |{}\n\
                 |---|---|---|---|---|---|---|---|---|---|---|---|{}",
                self.options.trial.as_secs_f64(),
                ZERO_LOSS * 100.0,
                self.options.duration.as_secs_f64(),
                if rounds == 1 {
                    " trials (offered Mpps: loss %) |"
                } else {
                    ""
                },
                if rounds == 1 { "---|" } else { "" },
            );
            for z in self.zero_loss_summary() {
                let trials = if rounds == 1 {
                    let t: Vec<String> = self
                        .zero_loss
                        .iter()
                        .filter_map(|r| r.as_ref().ok())
                        .filter(|x| x.dut == z.dut)
                        .flat_map(|x| x.trials.iter())
                        .map(|(r, l)| format!("{:.3}: {:.2}", *r as f64 / 1e6, l * 100.0))
                        .collect();
                    format!(" {} |", t.join(", "))
                } else {
                    String::new()
                };
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |{trials}",
                    z.dut.name(),
                    z.flows,
                    z.size,
                    fmt_stat(Some(z.rate), 1e-6, 3),
                    fmt_stat(z.vs_kernel, 1.0, 2),
                    fmt_med(z.half_loss, 100.0, 2),
                    fmt_med(z.p50, 1e-3, 1),
                    fmt_stat(z.p99, 1e-3, 1),
                    fmt_med(z.p999, 1e-3, 1),
                    fmt_med(z.max, 1e-3, 1),
                    fmt_med(z.kernel_p99, 1e-3, 1),
                    fmt_stat(z.p99_vs_kernel, 1.0, 2),
                );
            }
            for l in errs(
                self.zero_loss
                    .iter()
                    .filter_map(|r| r.as_ref().err().map(|(d, e)| (*d, e)))
                    .collect(),
            ) {
                let _ = writeln!(s, "{l}");
            }
        }
        if !skipped.is_empty() {
            let _ = writeln!(s, "\nNot measured:");
            for l in skipped {
                let _ = writeln!(s, "- {l}");
            }
        }
        let _ = writeln!(s, "\nNotes:");
        for n in &self.notes {
            let _ = writeln!(s, "- {n}");
        }
        s
    }

    /// The files' base name: `--name`, else `<date>-<host>`.
    fn base_name(&self) -> String {
        self.options
            .name
            .clone()
            .unwrap_or_else(|| format!("{}-{}", date(), host()))
    }

    /// Writes `<dir>/<base>.json`, `.md` and `.png` (the plot; its legend and axes are text
    /// only where a font was found, see `plot`).
    pub fn write(&self, dir: &Path) -> io::Result<Written> {
        std::fs::create_dir_all(dir)?;
        let base = self.base_name();
        let json = dir.join(format!("{base}.json"));
        let md = dir.join(format!("{base}.md"));
        let png = dir.join(format!("{base}.png"));
        let plotted = crate::plot::write_png(self, &png).map_err(io::Error::other)?;
        let mut text = self.markdown();
        let _ = writeln!(text, "\nPlot: `{base}.png` ({}).", plotted.describe());
        std::fs::write(&json, self.json().render() + "\n")?;
        std::fs::write(&md, text)?;
        Ok(Written { json, md, png })
    }
}

/// The files `Report::write` wrote.
#[derive(Clone, Debug)]
pub struct Written {
    pub json: PathBuf,
    pub md: PathBuf,
    pub png: PathBuf,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flow_sets_have_the_asked_count() {
        for n in [1u64, 4, 1024, 100_000, 1 << 20] {
            assert_eq!(flow_set(n).unwrap().count(), n, "{n}");
        }
        assert!(flow_set(1000).is_err(), "not a multiple of 16");
        assert!(flow_set(1 << 22).is_err(), "hosts leave the /14");
        assert!(spec("cmu").validate().is_ok());
    }

    #[test]
    fn drops_are_summed_from_stats() {
        let s = r#"{"rx_frames":10,"drop_tx_full":37102,"drop_no_route": 5,"workers":[{"x":1}]}"#;
        assert_eq!(sum_drops(s), 37107);
        assert_eq!(sum_drops("{}"), 0);
    }

    #[test]
    fn stat_is_the_median_and_range_of_the_finite_values() {
        let s = Stat::of([3.0, 1.0, 2.0, f64::NAN]).unwrap();
        assert_eq!((s.median, s.min, s.max, s.n), (2.0, 1.0, 3.0, 3));
        assert_eq!(Stat::of([4.0, 1.0]).unwrap().median, 2.5);
        assert!(Stat::of([f64::INFINITY]).is_none());
        assert_eq!(fmt_stat(Stat::of([1.0]), 1.0, 1), "1.0");
        assert_eq!(fmt_stat(Stat::of([1.0, 3.0, 2.0]), 1.0, 1), "2.0 (1.0-3.0)");
    }

    fn measured(sink_pps: f64, dut_ns: u64, received: u64) -> Measured {
        Measured {
            sent: received,
            gen_pps: sink_pps,
            received,
            sink_pps,
            loss: 0.0,
            sink_dropped: 0,
            cpu: Cpu {
                softirq: dut_ns,
                ..Cpu::default()
            },
            zero_copy: false,
            dut_drops: None,
            dut_stats: None,
        }
    }

    #[test]
    fn ratios_are_taken_per_round_then_medianed() {
        let mut o = CompareOptions::full("natgw".into());
        o.duts = vec![Dut::NatgwBusy, Dut::Kernel];
        o.flows = vec![16];
        o.sizes = vec![64];
        o.rounds = 3;
        // The machine's speed changes between rounds; within a round natgw is 2x the kernel.
        let mut rows = Vec::new();
        for (round, speed) in [1.0, 10.0, 0.5].into_iter().enumerate() {
            for (dut, pps) in [(Dut::NatgwBusy, 2e6 * speed), (Dut::Kernel, 1e6 * speed)] {
                rows.push(Row {
                    dut,
                    flows: 16,
                    size: 64,
                    round,
                    result: Ok(measured(pps, 1000, 10)),
                });
            }
        }
        let r = Report::of_rows(o, rows);
        let s = r.summary();
        let n = s.iter().find(|x| x.dut == Dut::NatgwBusy).unwrap();
        assert_eq!(n.sink_pps.median, 2e6, "median of 2, 20, 1 Mpps");
        let v = n.pps_vs_kernel.unwrap();
        assert_eq!((v.median, v.min, v.max), (2.0, 2.0, 2.0), "{v:?}");
        assert_eq!(n.ns_per_packet.unwrap().median, 100.0);
        assert!(
            r.markdown()
                .contains("| 16 | 64 | natgw-busy | 2.000 (1.000-20.000) |")
        );
        assert!(r.json().render().contains("\"sink_pps_vs_kernel\""));
    }

    #[test]
    fn the_dut_order_rotates_per_round() {
        let d = [Dut::NatgwBusy, Dut::Kernel, Dut::RawForwarder];
        assert_eq!(round_order(&d, 0), d);
        assert_eq!(
            round_order(&d, 1),
            vec![Dut::Kernel, Dut::RawForwarder, Dut::NatgwBusy]
        );
        assert_eq!(round_order(&d, 3), d);
        assert!(round_order(&[], 2).is_empty());
    }

    #[test]
    fn testpmd_totals_are_read_from_its_last_block() {
        let log = "  ---------------------- Forward statistics for port 0  ----------------------\n\
             RX-packets: 5 RX-dropped: 1 RX-total: 6\n\
             +++++++++++++++ Accumulated forward statistics for all ports+++++++++++++++\n\
             RX-packets: 415996         RX-dropped: 175131        RX-total: 591127\n\
             TX-packets: 415990         TX-dropped: 6             TX-total: 415996\n";
        let s = testpmd_stats(log);
        assert_eq!(
            s,
            "{\"rx_packets\":415996,\"drop_rx\":175131,\"tx_packets\":415990,\"drop_tx\":6,\"found\":true}"
        );
        assert_eq!(sum_drops(&s), 175137);
        assert!(testpmd_stats("EAL: error").contains("\"found\":false"));
    }

    #[test]
    fn dut_names_round_trip() {
        for d in ALL_DUTS {
            assert_eq!(d.name().parse::<Dut>().unwrap(), d);
        }
        assert!("kernel".parse::<Dut>().is_err());
    }

    #[test]
    fn task_cpu_reads_this_process() {
        // Burn a little CPU so that at least one tick is accounted.
        let t = Instant::now();
        let mut x = 0u64;
        while t.elapsed() < Duration::from_millis(50) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        assert!(x > 0);
        assert!(task_cpu("self") > 0);
        let s = proc_stat(None);
        assert!(s.iter().sum::<u64>() > 0);
    }
}
