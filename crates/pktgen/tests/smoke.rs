//! natgw-bench's binary between two namespaces joined by a veth pair: the generator at a
//! fixed rate for ~2 s into the sink (one-way: counts, loss, duplicates, latency), then the
//! same with the sink reflecting and the generator measuring round trips. Run under the
//! machine-wide lock: `flock /tmp/natgw-netns.lock cargo test -p natgw-bench --test smoke`.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use natgw_testbed::netns::{Netns, prerequisites, unique_name, veth_pair};

const BIN: &str = env!("CARGO_BIN_EXE_natgw-bench");

/// The number after `"k": ` for each key of `path` in turn (keys searched from where the
/// previous one was found: the reports' layout is fixed).
fn num(json: &str, path: &[&str]) -> f64 {
    let mut at = 0;
    for k in path {
        let pat = format!("\"{k}\": ");
        at += json[at..]
            .find(&pat)
            .unwrap_or_else(|| panic!("{path:?}: no {k} in\n{json}"))
            + pat.len();
    }
    let v: String = json[at..]
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == '.')
        .collect();
    v.parse()
        .unwrap_or_else(|_| panic!("{path:?}: {v:?} in\n{json}"))
}

fn string(json: &str, key: &str) -> String {
    let pat = format!("\"{key}\": \"");
    let i = json.find(&pat).unwrap_or_else(|| panic!("no {key}")) + pat.len();
    json[i..].split('"').next().unwrap().to_string()
}

fn xdp_attached(ns: &Netns, ifname: &str) -> bool {
    ns.ip(&["link", "show", ifname]).contains("xdp")
}

struct Run {
    gen_json: String,
    sink_json: String,
}

fn run(g: &Netns, s: &Netns, reflect: bool, tag: &str) -> Run {
    let dir = std::env::temp_dir();
    let pid = std::process::id();
    let sink_path = dir.join(format!("natgw-bench-{tag}-{pid}-sink.json"));
    let gen_path = dir.join(format!("natgw-bench-{tag}-{pid}-gen.json"));
    let mut sink_args = vec![
        "netns",
        "exec",
        s.name(),
        BIN,
        "sink",
        "-i",
        "sink0",
        "--duration",
        "15",
        "--idle",
        "1.5",
        "--progress",
        "0",
        "--json",
    ];
    let sp = sink_path.to_str().unwrap();
    sink_args.push(sp);
    if reflect {
        sink_args.push("--reflect");
    }
    let mut sink = Command::new("ip")
        .args(&sink_args)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !xdp_attached(s, "sink0") {
        assert!(Instant::now() < deadline, "sink never attached its program");
        if let Ok(Some(st)) = sink.try_wait() {
            panic!("sink exited early: {st}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let gp = gen_path.to_str().unwrap();
    let mut gen_args = vec![
        "netns",
        "exec",
        g.name(),
        BIN,
        "gen",
        "-i",
        "gen0",
        "--src",
        "10.77.0.100/24",
        "--hosts",
        "50",
        "--ports-per-host",
        "4",
        "--dst",
        "10.77.0.2",
        "--dst-port",
        "7777",
        "--rate",
        "20k",
        "--duration",
        "2",
        "--progress",
        "0",
        "--json",
        gp,
    ];
    if reflect {
        gen_args.extend(["--rtt", "--proto", "tcp-syn", "--size", "128"]);
    }
    let out = Command::new("ip").args(&gen_args).output().unwrap();
    let gen_err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "gen failed:\n{gen_err}");
    eprintln!("{gen_err}");
    let st = sink.wait().unwrap();
    assert!(st.success(), "sink failed: {st}");
    let r = Run {
        gen_json: std::fs::read_to_string(&gen_path).unwrap(),
        sink_json: std::fs::read_to_string(&sink_path).unwrap(),
    };
    let _ = std::fs::remove_file(gen_path);
    let _ = std::fs::remove_file(sink_path);
    r
}

#[test]
fn gen_to_sink_over_a_veth_pair_one_way_and_reflected() {
    if !prerequisites("gen_to_sink_over_a_veth_pair_one_way_and_reflected") {
        return;
    }
    let g = Netns::new(&unique_name("gng"));
    let s = Netns::new(&unique_name("gns"));
    veth_pair(
        &g,
        "gen0",
        [2, 0, 0, 0x67, 0, 1],
        &s,
        "sink0",
        [2, 0, 0, 0x67, 0, 2],
    );
    g.add_addr("gen0", "10.77.0.1/24");
    s.add_addr("sink0", "10.77.0.2/24");

    // One way: the destination MAC from the neighbour table (ARP through the sink's
    // program, which passes everything but IPv4).
    let r = run(&g, &s, false, "oneway");
    let sent = num(&r.gen_json, &["sent"]);
    let got = num(&r.sink_json, &["packets"]);
    assert_eq!(
        string(&r.gen_json, "xsk_mode"),
        "copy",
        "veth has no zero-copy"
    );
    assert!(
        (30_000.0..=41_000.0).contains(&sent),
        "20k pps for 2 s: {sent}\n{}",
        r.gen_json
    );
    assert!(got >= 0.95 * sent, "sink {got} of {sent}\n{}", r.sink_json);
    assert_eq!(num(&r.sink_json, &["sequence", "duplicates"]), 0.0);
    assert_eq!(num(&r.sink_json, &["sequence", "flows_seen"]), 200.0);
    assert_eq!(num(&r.sink_json, &["unexpected", "no_magic"]), 0.0);
    let p50 = num(&r.sink_json, &["latency", "p50_ns"]);
    let p99 = num(&r.sink_json, &["latency", "p99_ns"]);
    assert!(
        p50 > 0.0 && p99 >= p50 && p99 < 50e6,
        "one-way latency p50 {p50} ns p99 {p99} ns"
    );
    assert_eq!(num(&r.sink_json, &["latency", "from_the_future"]), 0.0);
    // The sources are the 50 hosts from 10.77.0.100.
    assert!(r.sink_json.contains("\"addr\": \"10.77.0.149\""));

    // Reflected TCP SYNs: the generator counts what came back and times the round trips.
    let r = run(&g, &s, true, "rtt");
    let sent = num(&r.gen_json, &["sent"]);
    let back = num(&r.gen_json, &["returned", "received"]);
    let reflected = num(&r.sink_json, &["reflected"]);
    assert!(reflected >= 0.95 * sent, "reflected {reflected} of {sent}");
    assert!(
        back >= 0.95 * sent,
        "returned {back} of {sent}\n{}",
        r.gen_json
    );
    assert_eq!(num(&r.gen_json, &["returned", "duplicates"]), 0.0);
    let rtt99 = num(&r.gen_json, &["rtt", "p99_ns"]);
    assert!(rtt99 > 0.0 && rtt99 < 50e6, "rtt p99 {rtt99} ns");
}
