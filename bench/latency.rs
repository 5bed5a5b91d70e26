//! Request/response latency through the real natgw binary (issue 9 part 4).
//!
//! One UDP flow with 32-byte payloads from an inside host to an echo server behind the router
//! of a natgw-testbed topology, through each "device under test" in turn, several rounds,
//! alternating, in one run:
//!
//! - `kernel`: the gateway namespace's own kernel NAT (nftables, `enable_kernel_nat`);
//! - `<name>/adaptive`, `<name>/busy`: a natgw binary (`--natgw name=path`, default the one
//!   cargo built) with `dataplane.poll` set to that mode (`--natgw name=path,key=value,..`
//!   adds `[dataplane]` keys, e.g. `spin_max_us=4000`).
//!
//! For each DUT and round: natgw's idle CPU (no traffic, summed over its threads from
//! /proc/<pid>/task/*/schedstat, % of one core), then a closed loop (one request in flight,
//! back to back: round trips/s) and paced loads (`--rates`, requests/s), each with hdrhistogram
//! percentiles of the round-trip time. natgw's worker runs on core 0 (the topology's config);
//! the client and the echo server are pinned to `--load-core` (default: the last core), which
//! therefore also does the veth softirq work of their sends.
//!
//! `--scrape MS,MS..` (issue 12): every natgw DUT once per interval, 0 meaning no scrape: a
//! thread GETs natgw's `/metrics` every MS milliseconds during the loads, as Prometheus
//! would, and the summary gives each interval's ratios to the run without scraping.
//!
//! `--pause-ms MS`: natgw idle for MS before each paced load, which then starts on an idle
//! worker's spin window (not on the one the closed loop before it left at its maximum).
//!
//! `--quick`: one short round on a topology of its own, a smoke test for CI (no timing is
//! asserted; it fails only if traffic does not get through). See bench/README.md.

use hdrhistogram::Histogram;
use natgw_testbed::lab::api_get;
use natgw_testbed::{Topology, TopologySpec, run_in_netns};
use std::fmt::Write as _;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

const ECHO_PORT: u16 = 7777;
const PAYLOAD: usize = 32;
/// A request without an answer after this long counts as lost.
const LOST_AFTER: Duration = Duration::from_millis(100);

#[derive(Clone, Debug)]
struct Opts {
    quick: bool,
    rounds: usize,
    load_secs: f64,
    idle_secs: f64,
    rates: Vec<u32>,
    /// Name, binary and extra `[dataplane]` lines (`--natgw NAME=PATH,KEY=VALUE..`).
    natgw: Vec<(String, PathBuf, Vec<String>)>,
    modes: Vec<String>,
    kernel: bool,
    /// None: the client and the server are not pinned.
    load_core: Option<usize>,
    /// Scrape intervals (ms) natgw runs with; 0: not scraped.
    scrape: Vec<u64>,
    /// Idle time before each paced load (`--pause-ms`), so that it starts on an idle
    /// worker's spin window instead of the one the load before left behind.
    pause: Duration,
}

fn usage() -> ! {
    eprintln!(
        "usage: cargo bench --bench latency -- [--quick] [--rounds N] [--secs S] [--idle-secs S]\n\
         \x20      [--rates R,R..] [--natgw NAME=PATH[,KEY=VALUE..]].. [--modes adaptive,busy] [--no-kernel]\n\
         \x20      [--load-core N|any] [--scrape MS,MS..] [--pause-ms MS]"
    );
    std::process::exit(2)
}

fn parse_opts() -> Opts {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut o = Opts {
        quick: false,
        rounds: 4,
        load_secs: 3.0,
        idle_secs: 3.0,
        rates: vec![200, 2000],
        natgw: Vec::new(),
        modes: vec!["adaptive".into(), "busy".into()],
        kernel: true,
        load_core: Some(cores.saturating_sub(1)),
        scrape: vec![0],
        pause: Duration::ZERO,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = || args.next().unwrap_or_else(|| usage());
        match a.as_str() {
            "--quick" => o.quick = true,
            "--rounds" => o.rounds = val().parse().unwrap_or_else(|_| usage()),
            "--secs" => o.load_secs = val().parse().unwrap_or_else(|_| usage()),
            "--idle-secs" => o.idle_secs = val().parse().unwrap_or_else(|_| usage()),
            "--rates" => {
                o.rates = val()
                    .split(',')
                    .filter(|s| !s.is_empty())
                    .map(|s| s.parse().unwrap_or_else(|_| usage()))
                    .collect()
            }
            "--natgw" => {
                let v = val();
                let (name, rest) = v.split_once('=').unwrap_or_else(|| usage());
                let mut parts = rest.split(',');
                let path = PathBuf::from(parts.next().unwrap_or_default());
                let extra: Vec<String> = parts
                    .map(|kv| match kv.split_once('=') {
                        Some((k, v)) => format!("{} = {}", k.trim(), v.trim()),
                        None => usage(),
                    })
                    .collect();
                o.natgw.push((name.to_string(), path, extra));
            }
            "--modes" => o.modes = val().split(',').map(str::to_string).collect(),
            "--no-kernel" => o.kernel = false,
            "--pause-ms" => {
                o.pause = Duration::from_millis(val().parse().unwrap_or_else(|_| usage()))
            }
            "--scrape" => {
                o.scrape = val()
                    .split(',')
                    .map(|s| s.parse().unwrap_or_else(|_| usage()))
                    .collect()
            }
            "--load-core" => {
                o.load_core = match val().as_str() {
                    "any" => None,
                    v => Some(v.parse().unwrap_or_else(|_| usage())),
                }
            }
            // cargo bench passes --bench to every harness=false target.
            "--bench" => {}
            _ => usage(),
        }
    }
    if o.quick {
        o.rounds = 1;
        o.load_secs = 0.4;
        o.idle_secs = 0.5;
        o.rates = vec![1000];
    }
    if o.natgw.is_empty() {
        o.natgw.push((
            "natgw".into(),
            PathBuf::from(env!("CARGO_BIN_EXE_natgw")),
            Vec::new(),
        ));
    }
    o
}

#[derive(Clone, Debug)]
enum Dut {
    Kernel,
    Natgw {
        name: String,
        path: PathBuf,
        mode: String,
        /// Extra `[dataplane]` lines.
        extra: Vec<String>,
        /// GET /metrics this often during the loads (ms); 0: never.
        scrape_ms: u64,
    },
}

impl Dut {
    fn label(&self) -> String {
        match self {
            Dut::Kernel => "kernel".into(),
            Dut::Natgw {
                name,
                mode,
                scrape_ms: 0,
                ..
            } => format!("{name}/{mode}"),
            Dut::Natgw {
                name,
                mode,
                scrape_ms,
                ..
            } => format!("{name}/{mode} scrape {scrape_ms}ms"),
        }
    }
}

/// One load's result.
struct Load {
    /// Round trips per second actually achieved.
    rate: f64,
    hist: Histogram<u64>,
    lost: u64,
    /// The share of all vCPU time the hypervisor stole during the load (%; None where
    /// /proc/stat has no steal column). A vCPU waiting for the host is a wake-up that
    /// takes milliseconds, for every DUT alike: the tails are read beside it.
    steal: Option<f64>,
    /// natgw's CPU time during the load, % of one core (None for the kernel).
    cpu: Option<f64>,
    /// natgw's worker during the load: times it slept, housekeeping ticks that found its
    /// core shared (`natgw_idle_sleeps_total`, `natgw_core_shared_total`).
    sleeps: Option<(u64, u64)>,
}

/// natgw's `natgw_idle_sleeps_total` and `natgw_core_shared_total`, summed over workers.
fn poll_counts(gw_ns: &str) -> Option<(u64, u64)> {
    let text = api_get(gw_ns, "/metrics").ok()?;
    let sum = |name: &str| -> u64 {
        text.lines()
            .filter(|l| l.starts_with(name) && l[name.len()..].starts_with('{'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    Some((
        sum("natgw_idle_sleeps_total"),
        sum("natgw_core_shared_total"),
    ))
}

/// The machine's total and stolen CPU time so far (clock ticks, all CPUs), from the
/// `cpu` line of /proc/stat.
fn cpu_ticks() -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is inside user).
    let steal = *v.get(7)?;
    Some((v.iter().take(8).sum(), steal))
}

/// Steal between two `cpu_ticks` readings, % of all CPU time.
fn steal_pct(before: Option<(u64, u64)>, after: Option<(u64, u64)>) -> Option<f64> {
    let ((t0, s0), (t1, s1)) = (before?, after?);
    (t1 > t0).then(|| 100.0 * s1.saturating_sub(s0) as f64 / (t1 - t0) as f64)
}

struct RunResult {
    idle_cpu: Option<f64>,
    /// Each thread's share of `idle_cpu`.
    idle_threads: Vec<(String, f64)>,
    /// The closed loop first, then one per `--rates` entry.
    loads: Vec<Load>,
}

/// Pins the calling thread to `core` (None: leaves it), with precise sleeps for pacing.
fn pin_to(core: Option<usize>) {
    // SAFETY: a zeroed cpu_set_t is valid; CPU_SET writes inside it; sched_setaffinity(0, ..)
    // and PR_SET_TIMERSLACK change only the calling thread.
    unsafe {
        if let Some(core) = core {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(core, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
        libc::prctl(libc::PR_SET_TIMERSLACK, 1, 0, 0, 0);
    }
}

/// The echo server: a socket in the server namespace, answered by a thread pinned to
/// `core` until `stop`.
fn start_echo(ns: &str, core: Option<usize>, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
    let sock = run_in_netns(ns, || UdpSocket::bind(("0.0.0.0", ECHO_PORT)))
        .unwrap_or_else(|e| panic!("binding the echo server: {e}"));
    sock.set_read_timeout(Some(Duration::from_millis(50)))
        .unwrap();
    std::thread::spawn(move || {
        pin_to(core);
        let mut buf = [0u8; 2048];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((n, from)) = sock.recv_from(&mut buf) {
                let _ = sock.send_to(&buf[..n], from);
            }
        }
    })
}

/// A client socket in `ns`, connected to the echo server.
fn client(ns: &str, server: Ipv4Addr) -> UdpSocket {
    let s = run_in_netns(ns, || -> std::io::Result<UdpSocket> {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.connect(SocketAddrV4::new(server, ECHO_PORT))?;
        Ok(s)
    })
    .unwrap_or_else(|e| panic!("client socket: {e}"));
    s.set_read_timeout(Some(LOST_AFTER)).unwrap();
    s
}

/// One request and its answer; the round trip in ns, None if lost. Stale answers (of an
/// earlier, lost request) are skipped.
fn round_trip(s: &UdpSocket, seq: u64) -> Option<u64> {
    let mut req = [0u8; PAYLOAD];
    req[..8].copy_from_slice(&seq.to_be_bytes());
    let t0 = Instant::now();
    s.send(&req).ok()?;
    let mut buf = [0u8; 2048];
    loop {
        let n = s.recv(&mut buf).ok()?;
        if n >= 8 && buf[..8] == req[..8] {
            return Some(t0.elapsed().as_nanos() as u64);
        }
        if t0.elapsed() > LOST_AFTER {
            return None;
        }
    }
}

/// `rate` 0: closed loop. Otherwise one request every 1/rate s (no catch-up bursts when an
/// answer is late).
fn drive(s: &UdpSocket, seq: &mut u64, secs: f64, rate: u32, stop: &dyn Fn() -> bool) -> Load {
    let mut hist = round_trips();
    let mut lost = 0;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(secs);
    let period = if rate == 0 {
        Duration::ZERO
    } else {
        Duration::from_secs_f64(1.0 / rate as f64)
    };
    let mut next = start;
    let mut n = 0u64;
    while Instant::now() < end && !stop() {
        if rate != 0 {
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            next = (next + period).max(Instant::now());
        }
        *seq += 1;
        match round_trip(s, *seq) {
            Some(ns) => {
                let _ = hist.record(ns.max(1_000));
                n += 1;
            }
            None => lost += 1,
        }
    }
    Load {
        rate: n as f64 / start.elapsed().as_secs_f64(),
        hist,
        lost,
        steal: None,
        cpu: None,
        sleeps: None,
    }
}

/// CPU time of each thread of `pid` (name, ns), from schedstat: exact, unlike the clock
/// ticks of /proc/<pid>/stat.
fn thread_cpu_ns(pid: u32) -> Option<Vec<(String, u64)>> {
    let mut v = Vec::new();
    for e in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let dir = e.ok()?.path();
        let s = std::fs::read_to_string(dir.join("schedstat")).ok()?;
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let ns = s.split_whitespace().next()?.parse::<u64>().ok()?;
        v.push((name.trim().to_string(), ns));
    }
    v.sort();
    Some(v)
}

/// A histogram of round trips (ns): 1 µs to 10 s, 3 significant digits.
fn round_trips() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1_000, 10_000_000_000, 3).unwrap()
}

/// `drive`, with the host's steal, natgw's CPU use (all its threads) and its worker's
/// sleeps and shared ticks during the load.
fn drive_measured(
    s: &UdpSocket,
    seq: &mut u64,
    secs: f64,
    rate: u32,
    stop: &dyn Fn() -> bool,
    pid: Option<u32>,
    gw_ns: Option<&str>,
) -> Load {
    let total = |pid| thread_cpu_ns(pid).map(|v| v.iter().map(|x| x.1).sum::<u64>());
    let counts = gw_ns.and_then(poll_counts);
    let before = pid.and_then(total);
    let ticks = cpu_ticks();
    let t0 = Instant::now();
    let mut l = drive(s, seq, secs, rate, stop);
    let wall = t0.elapsed().as_nanos() as f64;
    l.steal = steal_pct(ticks, cpu_ticks());
    if let (Some(a), Some(b)) = (before, pid.and_then(total)) {
        l.cpu = Some(b.saturating_sub(a) as f64 / wall * 100.0);
    }
    if let (Some(a), Some(b)) = (counts, gw_ns.and_then(poll_counts)) {
        l.sleeps = Some((b.0.saturating_sub(a.0), b.1.saturating_sub(a.1)));
    }
    l
}

/// natgw's idle CPU over `secs`: the total and each thread's, % of one core.
fn idle_cpu_of(pid: u32, secs: f64) -> Option<(f64, Vec<(String, f64)>)> {
    let t0 = Instant::now();
    let a = thread_cpu_ns(pid)?;
    std::thread::sleep(Duration::from_secs_f64(secs));
    let b = thread_cpu_ns(pid)?;
    let wall = t0.elapsed().as_nanos() as f64;
    let per: Vec<(String, f64)> = b
        .iter()
        .map(|(n, t)| {
            let before = a.iter().find(|(m, _)| m == n).map_or(0, |x| x.1);
            (n.clone(), t.saturating_sub(before) as f64 / wall * 100.0)
        })
        .collect();
    Some((per.iter().map(|x| x.1).sum(), per))
}

struct NatgwProc {
    child: Child,
    stderr: PathBuf,
}

impl NatgwProc {
    fn start(topo: &Topology, path: &Path, config: &str, tag: &str) -> Result<NatgwProc, String> {
        let dir = std::env::temp_dir();
        let pid = std::process::id();
        let cfg_path = dir.join(format!("natgw-bench-lat-{tag}-{pid}.toml"));
        let stderr = dir.join(format!("natgw-bench-lat-{tag}-{pid}.stderr"));
        std::fs::write(&cfg_path, config).map_err(|e| format!("{}: {e}", cfg_path.display()))?;
        let err = std::fs::File::create(&stderr).map_err(|e| e.to_string())?;
        // `ip netns exec` execs natgw in place: the child's pid is natgw's.
        let child = Command::new("ip")
            .args(["netns", "exec", topo.gw_ns()])
            .arg(path)
            .args(["run", "--config"])
            .arg(&cfg_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", path.display()))?;
        let mut p = NatgwProc { child, stderr };
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(s)) = p.child.try_wait() {
                return Err(format!("natgw exited ({s}):\n{}", p.stderr_text()));
            }
            if api_get(topo.gw_ns(), "/stats").is_ok() {
                return Ok(p);
            }
            if Instant::now() > deadline {
                return Err(format!("natgw's API did not answer:\n{}", p.stderr_text()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stderr_text(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

impl Drop for NatgwProc {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child, not yet reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                let _ = std::fs::remove_file(&self.stderr);
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run_dut(topo: &Topology, dut: &Dut, o: &Opts, seq: &mut u64) -> Result<RunResult, String> {
    let stop = natgw_kernel::signal::signalled;
    let mut natgw = None;
    let mut idle_cpu = None;
    let mut idle_threads = Vec::new();
    match dut {
        Dut::Kernel => topo
            .enable_kernel_nat()
            .map_err(|e| format!("kernel NAT: {e}"))?,
        Dut::Natgw {
            path, mode, extra, ..
        } => {
            let mut lines = format!("poll = \"{mode}\"");
            for e in extra {
                lines.push('\n');
                lines.push_str(e);
            }
            let base = topo.natgw_config();
            // The extra keys go after the `poll` line: without it they would vanish unseen.
            if !base.contains("poll = \"adaptive\"") {
                return Err("the topology's natgw config has no `poll = \"adaptive\"` line".into());
            }
            let cfg = base.replace("poll = \"adaptive\"", &lines);
            let p = NatgwProc::start(topo, path, &cfg, "q")?;
            // Start-up work (neighbour dumps, first ARP) out of the way.
            std::thread::sleep(Duration::from_millis(500));
            if let Some((total, per)) = idle_cpu_of(p.child.id(), o.idle_secs) {
                idle_cpu = Some(total);
                idle_threads = per;
            }
            natgw = Some(p);
        }
    }
    let pid = natgw.as_ref().map(|p: &NatgwProc| p.child.id());
    let c = client(&topo.hosts()[0].ns, topo.server_addr());
    let scraping = Arc::new(AtomicBool::new(true));
    let scrapes = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let scraper = match dut {
        Dut::Natgw { scrape_ms, .. } if *scrape_ms > 0 => {
            let (every, gw) = (Duration::from_millis(*scrape_ms), topo.gw_ns().to_string());
            let (on, n) = (Arc::clone(&scraping), Arc::clone(&scrapes));
            Some(std::thread::spawn(move || {
                while on.load(Ordering::Relaxed) {
                    let t = Instant::now();
                    if api_get(&gw, "/metrics").is_ok_and(|m| m.contains("natgw_rx_packets_total"))
                    {
                        n.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(every.saturating_sub(t.elapsed()));
                }
            }))
        }
        _ => None,
    };
    // The client runs pinned on a thread of its own: natgw, started from this thread,
    // must not inherit the pinning.
    let loads = std::thread::scope(|sc| {
        sc.spawn(|| {
            pin_to(o.load_core);
            // Warm-up: ARP, the session, caches.
            let warm = drive(&c, seq, if o.quick { 0.1 } else { 0.3 }, 0, &stop);
            if warm.hist.is_empty() {
                return None;
            }
            let gw = pid.map(|_| topo.gw_ns());
            let mut loads = vec![drive_measured(&c, seq, o.load_secs, 0, &stop, pid, gw)];
            for &r in &o.rates {
                std::thread::sleep(o.pause);
                loads.push(drive_measured(&c, seq, o.load_secs, r, &stop, pid, gw));
            }
            Some(loads)
        })
        .join()
        .expect("client thread")
    });
    scraping.store(false, Ordering::Relaxed);
    if let Some(t) = scraper {
        let _ = t.join();
        if scrapes.load(Ordering::Relaxed) == 0 {
            return Err(format!("{}: no scrape succeeded", dut.label()));
        }
    }
    let result = if let Some(loads) = loads {
        Ok(RunResult {
            idle_cpu,
            idle_threads,
            loads,
        })
    } else {
        Err(format!(
            "{}: no answer at all{}",
            dut.label(),
            natgw.as_ref().map_or(String::new(), |p| format!(
                "\nnatgw stderr:\n{}",
                p.stderr_text()
            ))
        ))
    };
    drop(natgw);
    if matches!(dut, Dut::Kernel) {
        topo.disable_kernel_nat()
            .map_err(|e| format!("kernel NAT: {e}"))?;
    }
    result
}

fn us(ns: u64) -> f64 {
    ns as f64 / 1000.0
}

fn range(v: &[f64]) -> (f64, f64) {
    let lo = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let hi = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    (lo, hi)
}

fn fmt_range(v: &[f64], digits: usize) -> String {
    let (lo, hi) = range(v);
    if v.len() == 1 || (hi - lo).abs() < f64::EPSILON {
        format!("{lo:.digits$}")
    } else {
        format!("{lo:.digits$}–{hi:.digits$}")
    }
}

fn load_name(o: &Opts, i: usize) -> String {
    if i == 0 {
        "closed loop".into()
    } else {
        format!("{}/s", o.rates[i - 1])
    }
}

fn main() {
    let o = parse_opts();
    natgw_kernel::signal::install_signal_handlers();
    let nft: &[(&str, &str, &str)] = if o.kernel {
        &[("nft", "--version", "the `nft` command (nftables)")]
    } else {
        &[]
    };
    if !natgw_testbed::netns::prerequisites_with("bench latency", nft) {
        // Outside CI without root or ip: nothing to measure.
        return;
    }
    let tag = if o.quick { "latq" } else { "lat" };
    let _ = Topology::cleanup_stale(tag);
    let topo = Topology::build(&TopologySpec::new(tag))
        .unwrap_or_else(|e| panic!("building the topology: {e}"));
    let stop = Arc::new(AtomicBool::new(false));
    let echo = start_echo(topo.server_ns(), o.load_core, Arc::clone(&stop));

    let mut duts = Vec::new();
    for (name, path, extra) in &o.natgw {
        for m in &o.modes {
            for &scrape_ms in &o.scrape {
                duts.push(Dut::Natgw {
                    name: name.clone(),
                    path: path.clone(),
                    mode: m.clone(),
                    extra: extra.clone(),
                    scrape_ms,
                });
            }
        }
    }
    if o.kernel {
        duts.push(Dut::Kernel);
    }
    println!(
        "latency bench: {} round(s), {} s per load, loads: closed loop{}; client and server on \
         core {}, natgw's worker on core 0",
        o.rounds,
        o.load_secs,
        o.rates.iter().fold(String::new(), |mut s, r| {
            let _ = write!(s, ", {r}/s");
            s
        }),
        o.load_core.map_or("any".to_string(), |c| c.to_string())
    );
    println!("load average at start: {}", loadavg());
    // results[dut][round]
    let mut results: Vec<Vec<RunResult>> = duts.iter().map(|_| Vec::new()).collect();
    let mut seq = 0u64;
    let mut failed = None;
    'rounds: for round in 0..o.rounds {
        // Rotate the order each round, so no DUT always runs first or after the same one.
        for k in 0..duts.len() {
            let d = (k + round) % duts.len();
            if natgw_kernel::signal::signalled() {
                failed = Some("interrupted".to_string());
                break 'rounds;
            }
            match run_dut(&topo, &duts[d], &o, &mut seq) {
                Ok(r) => {
                    let mut line = format!("round {} {:<18}", round + 1, duts[d].label());
                    if let Some(c) = r.idle_cpu {
                        let _ = write!(line, " idle {c:5.2}% (");
                        for (n, t) in &r.idle_threads {
                            let _ = write!(line, "{n} {t:.2} ");
                        }
                        line.pop();
                        line.push_str(") |");
                    }
                    for (i, l) in r.loads.iter().enumerate() {
                        let _ = write!(
                            line,
                            " {}: {:.0} rt/s p50 {:.0} p99 {:.0} p99.9 {:.0} max {:.0} µs{}{} |",
                            load_name(&o, i),
                            l.rate,
                            us(l.hist.value_at_quantile(0.5)),
                            us(l.hist.value_at_quantile(0.99)),
                            us(l.hist.value_at_quantile(0.999)),
                            us(l.hist.max()),
                            if l.lost > 0 {
                                format!(" lost {}", l.lost)
                            } else {
                                String::new()
                            },
                            l.steal.map_or(String::new(), |s| format!(" steal {s:.1}%"))
                                + &l.cpu
                                    .map_or(String::new(), |c| format!(" natgw cpu {c:.0}%"))
                                + &l.sleeps.map_or(String::new(), |(s, sh)| {
                                    format!(" sleeps {s} shared ticks {sh}")
                                })
                        );
                    }
                    println!("{line}");
                    results[d].push(r);
                }
                Err(e) => {
                    failed = Some(e);
                    break 'rounds;
                }
            }
        }
    }
    stop.store(true, Ordering::Relaxed);
    let _ = echo.join();
    drop(topo);
    if let Some(e) = failed {
        eprintln!("latency bench failed: {e}");
        std::process::exit(1);
    }
    println!("load average at the end: {}", loadavg());
    report(&o, &duts, &results);
}

/// /proc/loadavg's first three fields: how busy the machine was around the measurement.
fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The summary: per DUT and load the range over the rounds, then the ratios that issue 9
/// asks about, per round (adaptive vs busy of the same binary, each vs the kernel).
fn report(o: &Opts, duts: &[Dut], results: &[Vec<RunResult>]) {
    println!(
        "\nranges over {} round(s) (µs; rt/s = round trips per second)",
        o.rounds
    );
    println!(
        "| DUT | load | rt/s | p50 | p99 | p99.9 | max | steal % | natgw CPU % | idle CPU % |\n|---|---|---|---|---|---|---|---|---|---|"
    );
    let mut json = String::from("{");
    for (d, dut) in duts.iter().enumerate() {
        let rs = &results[d];
        let idle: Vec<f64> = rs.iter().filter_map(|r| r.idle_cpu).collect();
        for i in 0..=o.rates.len() {
            let col = |f: &dyn Fn(&Load) -> f64| -> Vec<f64> {
                rs.iter().map(|r| f(&r.loads[i])).collect()
            };
            let rate = col(&|l| l.rate);
            let q = |p: f64| col(&|l| us(l.hist.value_at_quantile(p)));
            let max = col(&|l| us(l.hist.max()));
            let steal: Vec<f64> = rs.iter().filter_map(|r| r.loads[i].steal).collect();
            let cpu: Vec<f64> = rs.iter().filter_map(|r| r.loads[i].cpu).collect();
            let opt = |v: &[f64], d| {
                if v.is_empty() {
                    String::new()
                } else {
                    fmt_range(v, d)
                }
            };
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                dut.label(),
                load_name(o, i),
                fmt_range(&rate, 0),
                fmt_range(&q(0.5), 0),
                fmt_range(&q(0.99), 0),
                fmt_range(&q(0.999), 0),
                fmt_range(&max, 0),
                opt(&steal, 1),
                opt(&cpu, 0),
                if i == 0 && !idle.is_empty() {
                    fmt_range(&idle, 2)
                } else {
                    String::new()
                }
            );
            let _ = write!(
                json,
                "\"{} {}\":{{\"rt_s\":{:?},\"p50_us\":{:?},\"p99_us\":{:?},\"p999_us\":{:?},\"max_us\":{:?},\"steal_pct\":{:?},\"natgw_cpu_pct\":{:?},\"sleeps\":{:?},\"shared_ticks\":{:?}{}}},",
                dut.label(),
                load_name(o, i),
                rate,
                q(0.5),
                q(0.99),
                q(0.999),
                max,
                steal,
                cpu,
                rs.iter()
                    .filter_map(|r| r.loads[i].sleeps.map(|s| s.0))
                    .collect::<Vec<_>>(),
                rs.iter()
                    .filter_map(|r| r.loads[i].sleeps.map(|s| s.1))
                    .collect::<Vec<_>>(),
                if i == 0 && !idle.is_empty() {
                    format!(",\"idle_cpu_pct\":{idle:?}")
                } else {
                    String::new()
                }
            );
        }
    }
    // Ratios, per round, then their range.
    let find = |label: &str| duts.iter().position(|d| d.label() == label);
    let kernel = find("kernel");
    println!("\nratios per round, as ranges over the rounds");
    for (name, a, b) in mode_pairs(o, duts) {
        let n = results[a].len().min(results[b].len());
        for i in 0..=o.rates.len() {
            let ratio = |f: &dyn Fn(&Load) -> f64, x: usize, y: usize| -> Vec<f64> {
                (0..n)
                    .map(|r| f(&results[x][r].loads[i]) / f(&results[y][r].loads[i]))
                    .collect()
            };
            let p50 = |l: &Load| l.hist.value_at_quantile(0.5) as f64;
            let p99 = |l: &Load| l.hist.value_at_quantile(0.99) as f64;
            let rate = |l: &Load| l.rate;
            let mut line = format!(
                "{name} {}: adaptive/busy p50 {} p99 {} rt/s {}",
                load_name(o, i),
                fmt_range(&ratio(&p50, a, b), 2),
                fmt_range(&ratio(&p99, a, b), 2),
                fmt_range(&ratio(&rate, a, b), 2),
            );
            if let Some(k) = kernel {
                let n = n.min(results[k].len());
                let vs_k: Vec<f64> = (0..n)
                    .map(|r| results[a][r].loads[i].rate / results[k][r].loads[i].rate)
                    .collect();
                let _ = write!(line, "; adaptive/kernel rt/s {}", fmt_range(&vs_k, 2));
            }
            println!("{line}");
        }
    }
    pooled(o, duts, results);
    scrape_ratios(o, duts, results);
    json.pop();
    json.push('}');
    println!("\nJSON: {json}");
}

/// Each natgw binary measured in both modes: its name and the adaptive and busy DUTs' indexes.
fn mode_pairs(o: &Opts, duts: &[Dut]) -> Vec<(String, usize, usize)> {
    let find = |label: &str| duts.iter().position(|d| d.label() == label);
    o.natgw
        .iter()
        .filter_map(|(name, ..)| {
            Some((
                name.clone(),
                find(&format!("{name}/adaptive"))?,
                find(&format!("{name}/busy"))?,
            ))
        })
        .collect()
}

/// Every round's requests of a DUT and load in one histogram. A round's p99 rests on its
/// slowest 1 %: 20-40 requests at 500/s, few enough that one burst of host steal moves it
/// by milliseconds (both poll modes alike); pooled, the rounds' bursts weigh by their share
/// of the requests, and the ratio of two DUTs measured in the same rounds is steadier.
fn pooled(o: &Opts, duts: &[Dut], results: &[Vec<RunResult>]) {
    if o.rounds < 2 {
        return;
    }
    // merged[dut][load]
    let merged: Vec<Vec<Histogram<u64>>> = results
        .iter()
        .map(|rs| {
            (0..=o.rates.len())
                .map(|i| {
                    let mut h = round_trips();
                    for r in rs {
                        let _ = h.add(&r.loads[i].hist);
                    }
                    h
                })
                .collect()
        })
        .collect();
    println!(
        "\npooled over the rounds (µs)\n| DUT | load | requests | p50 | p99 | p99.9 |\n|---|---|---|---|---|---|"
    );
    for (d, dut) in duts.iter().enumerate() {
        for (i, h) in merged[d].iter().enumerate() {
            println!(
                "| {} | {} | {} | {:.0} | {:.0} | {:.0} |",
                dut.label(),
                load_name(o, i),
                h.len(),
                us(h.value_at_quantile(0.5)),
                us(h.value_at_quantile(0.99)),
                us(h.value_at_quantile(0.999)),
            );
        }
    }
    for (name, a, b) in mode_pairs(o, duts) {
        for (i, (ha, hb)) in merged[a].iter().zip(&merged[b]).enumerate() {
            let r = |q: f64| ha.value_at_quantile(q) as f64 / hb.value_at_quantile(q) as f64;
            println!(
                "{name} {} pooled: adaptive/busy p50 {:.2} p99 {:.2} p99.9 {:.2}",
                load_name(o, i),
                r(0.5),
                r(0.99),
                r(0.999)
            );
        }
    }
}

/// With `--scrape`: per natgw DUT scraped at an interval, its round trips/s, p50 and p99
/// over the same binary and mode without scraping, per round, as ranges over the rounds.
fn scrape_ratios(o: &Opts, duts: &[Dut], results: &[Vec<RunResult>]) {
    if o.scrape.iter().all(|&s| s == 0) {
        return;
    }
    println!("\nscraped / not scraped, per round, as ranges over the rounds");
    for (a, dut) in duts.iter().enumerate() {
        let Dut::Natgw {
            name,
            mode,
            scrape_ms,
            ..
        } = dut
        else {
            continue;
        };
        if *scrape_ms == 0 {
            continue;
        }
        let Some(b) = duts
            .iter()
            .position(|d| d.label() == format!("{name}/{mode}"))
        else {
            continue;
        };
        let n = results[a].len().min(results[b].len());
        for i in 0..=o.rates.len() {
            let ratio = |f: &dyn Fn(&Load) -> f64| -> Vec<f64> {
                (0..n)
                    .map(|r| f(&results[a][r].loads[i]) / f(&results[b][r].loads[i]))
                    .collect()
            };
            println!(
                "{} {}: rt/s {} p50 {} p99 {}",
                dut.label(),
                load_name(o, i),
                fmt_range(&ratio(&|l| l.rate), 3),
                fmt_range(&ratio(&|l| l.hist.value_at_quantile(0.5) as f64), 3),
                fmt_range(&ratio(&|l| l.hist.value_at_quantile(0.99) as f64), 3),
            );
        }
    }
}
