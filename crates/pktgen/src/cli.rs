//! The command line: `natgw-bench gen ...` and `natgw-bench sink ...`, each option turned
//! into [`GenConfig`] / [`SinkConfig`] with errors that name the option.

use std::io;
use std::net::Ipv4Addr;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::flows::{FlowSet, parse_prefix};
use crate::frame::{Proto, parse_mac};
use crate::generator::{DstMac, GenConfig};
use crate::port::{PortOptions, XskMode, parse_xdp_mode};
use crate::sink::SinkConfig;

#[derive(Parser, Debug)]
#[command(
    name = "natgw-bench",
    about = "AF_XDP packet generator and sink for benchmarking natgw (see bench/README.md)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Send UDP, TCP SYN or ICMP echo frames over many flows, flat out or at a rate.
    Gen(GenArgs),
    /// Count, check and time what arrives; optionally reflect it back.
    Sink(SinkArgs),
    /// natgw beside the kernel's NAT and a raw AF_XDP forwarder on a namespace topology:
    /// Mpps at the sink and CPU per packet, one run (bench/README.md, "The comparison").
    Compare(CompareArgs),
}

#[derive(Args, Debug, Clone)]
pub struct CompareArgs {
    /// The natgw binary.
    #[arg(long, default_value = "target/release/natgw")]
    pub natgw: std::path::PathBuf,
    /// A few hundred ms per DUT: natgw busy, kernel masquerade, raw forwarder; 1 and 1k
    /// flows; 64 bytes; nothing written unless --out is given.
    #[arg(long)]
    pub smoke: bool,
    /// DUTs, comma-separated (default: all; see `compare::ALL_DUTS` names).
    #[arg(long, value_delimiter = ',')]
    pub duts: Vec<String>,
    /// Flow counts, comma-separated (multiples of 16, or fewer than 16).
    #[arg(long, value_delimiter = ',')]
    pub flows: Vec<u64>,
    /// Frame sizes in bytes as the generator's --size, comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub sizes: Vec<usize>,
    /// Seconds of each measured phase (fractions allowed).
    #[arg(long)]
    pub duration: Option<f64>,
    /// Directory for <date>-<host>.json and .md.
    #[arg(long)]
    pub out: Option<std::path::PathBuf>,
    /// Topology tag (namespaces ngw-<tag>-...).
    #[arg(long, default_value = "cm")]
    pub tag: String,
    #[arg(long)]
    pub gen_core: Option<usize>,
    #[arg(long)]
    pub sink_core: Option<usize>,
    /// natgw's sessions.capacity_per_core (default: room for every flow set of the run).
    #[arg(long)]
    pub capacity: Option<u64>,
    /// Flows of the new-session test (0: not run).
    #[arg(long)]
    pub new_session_flows: Option<u64>,
    /// Flow count of the zero-loss search (0: not run).
    #[arg(long)]
    pub zero_loss_flows: Option<u64>,
    #[arg(long)]
    pub dut_core: Option<usize>,
    /// Measure every point this many times (1-100), the DUTs in turn and their order
    /// rotated per round; the tables give medians and min-max, ratios per round medianed.
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Base name of the result files (default: <date>-<host>).
    #[arg(long)]
    pub name: Option<String>,
    /// An extra `[dataplane]` key for the natgw DUTs, `KEY=VALUE` in TOML (repeatable;
    /// e.g. `batch_size=16`, `ring_size=4096`): one knob per run, for tuning.md.
    #[arg(long, value_name = "KEY=VALUE")]
    pub natgw_dataplane: Vec<String>,
}

impl CompareArgs {
    pub fn options(&self) -> Result<crate::compare::CompareOptions, String> {
        use crate::compare::CompareOptions;
        let mut o = if self.smoke {
            CompareOptions::smoke(self.natgw.clone())
        } else {
            CompareOptions::full(self.natgw.clone())
        };
        if !self.duts.is_empty() {
            o.duts = self
                .duts
                .iter()
                .map(|d| d.parse().map_err(|e| format!("--duts: {e}")))
                .collect::<Result<_, String>>()?;
        }
        if !self.flows.is_empty() {
            o.flows = self.flows.clone();
        }
        if !self.sizes.is_empty() {
            o.sizes = self.sizes.clone();
        }
        if let Some(d) = self.duration {
            if !(d > 0.0 && d <= 600.0) {
                return Err(format!("--duration {d}: 0-600 s"));
            }
            o.duration = Duration::from_secs_f64(d);
        }
        if self.out.is_some() {
            o.out_dir = self.out.clone();
        }
        o.tag = self.tag.clone();
        if let Some(c) = self.gen_core {
            o.gen_core = c;
        }
        if self.capacity.is_some() {
            o.capacity = self.capacity;
        }
        for kv in &self.natgw_dataplane {
            let Some((k, v)) = kv.split_once('=') else {
                return Err(format!("--natgw-dataplane {kv:?}: KEY=VALUE"));
            };
            let (k, v) = (k.trim(), v.trim());
            if k.is_empty() || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_') {
                return Err(format!("--natgw-dataplane {kv:?}: {k:?} is not a key"));
            }
            if v.is_empty() || v.contains('\n') {
                return Err(format!("--natgw-dataplane {kv:?}: no value"));
            }
            o.natgw_dataplane.push(format!("{k} = {v}"));
        }
        if let Some(n) = self.new_session_flows {
            if !n.is_multiple_of(16) || n > 1 << 20 {
                return Err(format!(
                    "--new-session-flows {n}: a multiple of 16, at most 2^20"
                ));
            }
            o.new_session_flows = n;
        }
        if let Some(n) = self.zero_loss_flows {
            o.zero_loss_flows = (n > 0).then_some(n);
        }
        if let Some(c) = self.sink_core {
            o.sink_core = c;
        }
        if let Some(c) = self.dut_core {
            o.dut_core = c;
        }
        if let Some(n) = self.rounds {
            if !(1..=100).contains(&n) {
                return Err(format!("--rounds {n}: 1-100"));
            }
            o.rounds = n;
        }
        if let Some(n) = &self.name {
            if n.is_empty() || n.contains('/') {
                return Err(format!("--name {n:?}: a file name without '/'"));
            }
            o.name = Some(n.clone());
        }
        Ok(o)
    }
}

#[derive(Args, Debug, Clone)]
pub struct PortArgs {
    /// Interface to bind to.
    #[arg(short = 'i', long = "iface")]
    pub iface: String,
    /// Queues (one socket and one thread each), starting at --first-queue.
    #[arg(long, default_value_t = 1)]
    pub queues: u32,
    #[arg(long, default_value_t = 0)]
    pub first_queue: u32,
    /// Cores to pin the queue threads to, one per queue: "2,3".
    #[arg(long, value_delimiter = ',')]
    pub cores: Vec<usize>,
    /// AF_XDP mode: auto (zero-copy where the driver can, else copy), copy, zero-copy.
    #[arg(long, default_value = "auto")]
    pub xsk_mode: XskMode,
    /// XDP attach mode for receiving: auto (native, else generic), native, generic.
    #[arg(long, default_value = "auto")]
    pub xdp_mode: String,
    /// Entries per AF_XDP ring (power of two).
    #[arg(long, default_value_t = 2048)]
    pub ring_size: u32,
    /// UMEM frames (2048 bytes each) per queue.
    #[arg(long, default_value_t = 4096)]
    pub frames: u32,
    /// Frames per batch (1-256).
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// Write the report as JSON to this file ("-": stdout).
    #[arg(long)]
    pub json: Option<String>,
    /// Seconds between progress lines on stderr (0: none).
    #[arg(long, default_value_t = 1.0)]
    pub progress: f64,
}

#[derive(Args, Debug, Clone)]
pub struct GenArgs {
    #[command(flatten)]
    pub port: PortArgs,
    /// udp, tcp-syn or icmp (echo request).
    #[arg(long, default_value = "udp")]
    pub proto: Proto,
    /// Frame size on the wire, FCS included (64 = the minimum Ethernet frame; TCP needs 76).
    #[arg(long, default_value_t = 64)]
    pub size: usize,
    /// First source address and the prefix the hosts must stay in: 10.0.0.100/24.
    #[arg(long)]
    pub src: String,
    /// Inside hosts (source addresses from --src on).
    #[arg(long, default_value_t = 1)]
    pub hosts: u32,
    /// Source ports per host (from --src-port on); flows = hosts x ports.
    #[arg(long, default_value_t = 1)]
    pub ports_per_host: u32,
    /// First source port (ICMP: echo identifier).
    #[arg(long, default_value_t = 1024)]
    pub src_port: u16,
    #[arg(long)]
    pub dst: Ipv4Addr,
    #[arg(long, default_value_t = 9)]
    pub dst_port: u16,
    /// Destination MAC; without it, the neighbour table's entry for --next-hop.
    #[arg(long)]
    pub dst_mac: Option<String>,
    /// The address whose MAC to resolve (default: --dst; on a routed path the gateway).
    #[arg(long)]
    pub next_hop: Option<Ipv4Addr>,
    /// Source MAC (default: the interface's).
    #[arg(long)]
    pub src_mac: Option<String>,
    /// Packets per second over all queues, "250k", "1.5M"; 0 = flat out.
    #[arg(long, default_value = "0")]
    pub rate: String,
    /// Seconds to send.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Packets to send in total.
    #[arg(long)]
    pub count: Option<u64>,
    /// Receive what comes back (a reflecting sink, a loop) and measure round trips.
    #[arg(long)]
    pub rtt: bool,
    /// With --rtt: seconds to wait for replies after the last packet.
    #[arg(long, default_value_t = 0.5)]
    pub rtt_linger: f64,
}

#[derive(Args, Debug, Clone)]
pub struct SinkArgs {
    #[command(flatten)]
    pub port: PortArgs,
    /// Send every bench frame back (MACs, addresses and ports swapped).
    #[arg(long)]
    pub reflect: bool,
    /// Flow ids tracked for loss and reordering (16 bytes each per queue).
    #[arg(long, default_value_t = 1 << 20)]
    pub max_flows: usize,
    /// Seconds to run.
    #[arg(long)]
    pub duration: Option<f64>,
    /// Stop after this many bench frames.
    #[arg(long)]
    pub count: Option<u64>,
    /// Stop once nothing arrived for this many seconds (after the first frame).
    #[arg(long)]
    pub idle: Option<f64>,
    /// Spin on an empty ring instead of sleeping in poll(2).
    #[arg(long)]
    pub busy: bool,
}

fn invalid(m: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, m)
}

/// `1000`, `250k`, `1.5M`, `2G` as packets per second.
pub fn parse_rate(s: &str) -> Result<u64, String> {
    let (num, mul) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1e3),
        Some((i, 'm' | 'M')) => (&s[..i], 1e6),
        Some((i, 'g' | 'G')) => (&s[..i], 1e9),
        _ => (s, 1.0),
    };
    let v: f64 = num
        .parse()
        .map_err(|_| format!("--rate {s:?}: a number of packets per second, e.g. 250k or 1.5M"))?;
    if v.is_nan() || v < 0.0 || !(v * mul).is_finite() || v * mul > 1e12 {
        return Err(format!("--rate {s:?}: must be 0 (flat out) up to 1e12"));
    }
    Ok((v * mul).round() as u64)
}

fn secs(name: &str, v: Option<f64>) -> Result<Option<Duration>, String> {
    match v {
        None => Ok(None),
        Some(s) if s.is_finite() && s > 0.0 && s < 1e9 => Ok(Some(Duration::from_secs_f64(s))),
        Some(s) => Err(format!("{name} {s}: a positive number of seconds")),
    }
}

fn port_options(p: &PortArgs) -> Result<PortOptions, String> {
    if !p.ring_size.is_power_of_two() {
        return Err(format!("--ring-size {}: a power of two", p.ring_size));
    }
    Ok(PortOptions {
        ifname: p.iface.clone(),
        first_queue: p.first_queue,
        queues: p.queues,
        xsk_mode: p.xsk_mode,
        xdp_mode: parse_xdp_mode(&p.xdp_mode).map_err(|e| format!("--xdp-mode {e}"))?,
        ring_size: p.ring_size,
        frames: p.frames,
    })
}

fn progress(p: &PortArgs) -> Result<Option<Duration>, String> {
    if p.progress == 0.0 {
        Ok(None)
    } else {
        secs("--progress", Some(p.progress))
    }
}

impl GenArgs {
    pub fn config(&self) -> Result<GenConfig, String> {
        let (first, len) = parse_prefix(&self.src).map_err(|e| format!("--src {e}"))?;
        let flows = FlowSet::new(first, len, self.hosts, self.src_port, self.ports_per_host)?;
        let dst_mac = match &self.dst_mac {
            Some(m) => DstMac::Given(parse_mac(m).map_err(|e| format!("--dst-mac {e}"))?),
            None => DstMac::Resolve(self.next_hop.unwrap_or(self.dst)),
        };
        let src_mac = match &self.src_mac {
            Some(m) => Some(parse_mac(m).map_err(|e| format!("--src-mac {e}"))?),
            None => None,
        };
        let min = self.proto.min_wire_size();
        if self.size < min {
            return Err(format!(
                "--size {}: {} needs at least {min} bytes",
                self.size, self.proto
            ));
        }
        let cfg = GenConfig {
            port: port_options(&self.port)?,
            cores: self.port.cores.clone(),
            proto: self.proto,
            wire_size: self.size,
            src_mac,
            dst_mac,
            dst_ip: self.dst,
            dst_port: self.dst_port,
            flows,
            rate: parse_rate(&self.rate)?,
            duration: secs("--duration", self.duration)?,
            count: self.count,
            batch: self.port.batch,
            rtt: self.rtt,
            rtt_linger: secs("--rtt-linger", Some(self.rtt_linger))?.unwrap_or_default(),
            progress: progress(&self.port)?,
        };
        if cfg.duration.is_none() && cfg.count.is_none() {
            return Err("give --duration SECONDS or --count PACKETS".into());
        }
        Ok(cfg)
    }
}

impl SinkArgs {
    pub fn config(&self) -> Result<SinkConfig, String> {
        if self.max_flows == 0 || self.max_flows as u64 > crate::flows::MAX_FLOWS {
            return Err(format!(
                "--max-flows {}: 1..={}",
                self.max_flows,
                crate::flows::MAX_FLOWS
            ));
        }
        Ok(SinkConfig {
            port: port_options(&self.port)?,
            cores: self.port.cores.clone(),
            reflect: self.reflect,
            max_flows: self.max_flows,
            duration: secs("--duration", self.duration)?,
            count: self.count,
            idle: secs("--idle", self.idle)?,
            progress: progress(&self.port)?,
            busy: self.busy,
            batch: self.port.batch,
        })
    }
}

fn write_json(path: &Option<String>, text: &str) -> io::Result<()> {
    match path.as_deref() {
        None => Ok(()),
        Some("-") => {
            print!("{text}");
            Ok(())
        }
        Some(p) => std::fs::write(p, text)
            .map_err(|e| io::Error::new(e.kind(), format!("--json {p}: {e}"))),
    }
}

/// Runs a parsed command line: the tool, then the human summary on stderr and the JSON.
pub fn run(cli: Cli) -> io::Result<()> {
    natgw_kernel::signal::install_signal_handlers();
    let stop = AtomicBool::new(false);
    match cli.cmd {
        Cmd::Gen(a) => {
            let cfg = a.config().map_err(invalid)?;
            let r = crate::generator::run(&cfg, &stop)?;
            eprintln!("{}", r.human());
            write_json(&a.port.json, &r.json().render())
        }
        Cmd::Sink(a) => {
            let cfg = a.config().map_err(invalid)?;
            let r = crate::sink::run(&cfg, &stop)?;
            eprintln!("{}", r.human());
            write_json(&a.port.json, &r.json().render())
        }
        Cmd::Compare(a) => {
            let o = a.options().map_err(invalid)?;
            let r = crate::compare::run(&o).map_err(io::Error::other)?;
            println!("{}", r.markdown());
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_gen(args: &str) -> Result<GenConfig, String> {
        let v: Vec<&str> = ["natgw-bench", "gen"]
            .into_iter()
            .chain(args.split_whitespace())
            .collect();
        match Cli::try_parse_from(v).map_err(|e| e.to_string())?.cmd {
            Cmd::Gen(g) => g.config(),
            _ => unreachable!(),
        }
    }

    fn parse_compare(args: &str) -> Result<crate::compare::CompareOptions, String> {
        let v: Vec<&str> = ["natgw-bench", "compare"]
            .into_iter()
            .chain(args.split_whitespace())
            .collect();
        match Cli::try_parse_from(v).map_err(|e| e.to_string())?.cmd {
            Cmd::Compare(c) => c.options(),
            _ => unreachable!(),
        }
    }

    #[test]
    fn compare_options() {
        use crate::compare::Dut;
        let o = parse_compare("--smoke").unwrap();
        assert_eq!(o.duts, vec![Dut::NatgwBusy, Dut::Kernel, Dut::RawForwarder]);
        assert_eq!(
            (o.flows.clone(), o.sizes.clone()),
            (vec![1, 1024], vec![64])
        );
        assert!(o.out_dir.is_none() && o.new_session_flows == 0 && o.zero_loss_flows.is_none());
        let o = parse_compare(
            "--duts natgw-adaptive,kernel-masquerade-rps --flows 1,16 --sizes 1500 \
             --duration 0.5 --out /tmp/x --zero-loss-flows 0 --capacity 4096 --rounds 3 --name r",
        )
        .unwrap();
        assert_eq!(o.duts, vec![Dut::NatgwAdaptive, Dut::KernelRps]);
        assert_eq!(o.duration, Duration::from_millis(500));
        assert_eq!(o.zero_loss_flows, None);
        assert_eq!(o.capacity, Some(4096));
        let spaced =
            parse_compare("--natgw-dataplane batch_size=16 --natgw-dataplane ring_size = 4096");
        assert!(spaced.is_err(), "a value with spaces is two arguments");
        let two = parse_compare("--natgw-dataplane batch_size=16 --natgw-dataplane ring_size=4096")
            .unwrap();
        assert_eq!(two.natgw_dataplane, ["batch_size = 16", "ring_size = 4096"]);
        assert!(parse_compare("--natgw-dataplane batch_size").is_err());
        assert!(parse_compare("--natgw-dataplane a.b=1").is_err());
        assert!(parse_compare("--natgw-dataplane x=").is_err());
        assert_eq!((o.rounds, o.name.as_deref()), (3, Some("r")));
        assert_eq!(parse_compare("").unwrap().rounds, 1, "one round by default");
        assert_eq!(o.new_session_flows, 200_000, "the full run's default");
        for (args, want) in [
            ("--duts natgw", "--duts"),
            ("--duration 0", "--duration"),
            ("--new-session-flows 1000", "--new-session-flows"),
            ("--rounds 0", "--rounds"),
            ("--name a/b", "--name"),
        ] {
            let e = parse_compare(args).unwrap_err();
            assert!(e.contains(want), "{args}: {e}");
        }
    }

    #[test]
    fn rates_with_suffixes() {
        assert_eq!(parse_rate("0"), Ok(0));
        assert_eq!(parse_rate("250k"), Ok(250_000));
        assert_eq!(parse_rate("1.5M"), Ok(1_500_000));
        assert_eq!(parse_rate("2G"), Ok(2_000_000_000));
        assert!(parse_rate("fast").unwrap_err().contains("--rate"));
        assert!(parse_rate("-1").is_err());
    }

    #[test]
    fn gen_options_become_a_config() {
        let c = parse_gen(
            "-i eth0 --src 10.0.0.100/24 --hosts 100 --ports-per-host 4 --dst 192.168.2.2 \
                     --rate 10k --duration 2 --queues 2 --cores 0,1",
        )
        .unwrap();
        assert_eq!(c.flows.count(), 400);
        assert_eq!(c.rate, 10_000);
        assert_eq!(c.duration, Some(Duration::from_secs(2)));
        assert_eq!(c.dst_mac, DstMac::Resolve("192.168.2.2".parse().unwrap()));
        assert_eq!(c.cores, vec![0, 1]);
        let c = parse_gen(
            "-i e --src 10.0.0.1 --dst 10.0.0.2 --count 5 --dst-mac 02:00:00:00:00:01 --proto icmp",
        )
        .unwrap();
        assert_eq!(c.dst_mac, DstMac::Given([2, 0, 0, 0, 0, 1]));
        assert_eq!(c.proto, Proto::Icmp);
    }

    #[test]
    fn bad_gen_options_name_the_option() {
        let base = "-i e --dst 10.0.0.2 --count 1";
        for (extra, want) in [
            ("--src 10.0.0.250/24 --hosts 10", "--hosts"),
            ("--src 10.0.0.1/40", "--src"),
            ("--src 10.0.0.1 --dst-mac 02:00", "--dst-mac"),
            ("--src 10.0.0.1 --rate lots", "--rate"),
            ("--src 10.0.0.1 --proto tcp --size 64", "--size"),
            ("--src 10.0.0.1 --ring-size 1000", "--ring-size"),
            ("--src 10.0.0.1 --xdp-mode fast", "--xdp-mode"),
        ] {
            let e = parse_gen(&format!("{base} {extra}")).unwrap_err();
            assert!(e.contains(want), "{extra}: {e}");
        }
        assert!(
            parse_gen("-i e --dst 10.0.0.2 --src 10.0.0.1")
                .unwrap_err()
                .contains("--duration")
        );
    }
}
