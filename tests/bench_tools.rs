//! The bench generator and sink (crates/pktgen, library API) through natgw on a testbed
//! topology: a few hundred flows from many inside addresses leave translated to the pool.
//! Run under the machine-wide lock:
//! `flock /tmp/natgw-netns.lock cargo test --test bench_tools`.

use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use natgw_bench::flows::FlowSet;
use natgw_bench::frame::Proto;
use natgw_bench::generator::{self, DstMac, GenConfig};
use natgw_bench::port::PortOptions;
use natgw_bench::sink::{self, SinkConfig};
use natgw_testbed::netns::prerequisites;
use natgw_testbed::process::NatgwProcess;
use natgw_testbed::{HOST_IF, Topology, TopologySpec, run_in_netns};

/// A sink on the server's link that stops after `idle` without frames.
fn sink_config(idle: Duration) -> SinkConfig {
    SinkConfig {
        port: PortOptions::one_queue(HOST_IF),
        cores: Vec::new(),
        reflect: false,
        max_flows: 1024,
        duration: Some(Duration::from_secs(20)),
        count: None,
        idle: Some(idle),
        progress: None,
        busy: false,
        batch: 64,
    }
}

/// UDP from `flows` on host 0's link to the server, through natgw's inside address.
fn udp_to_server(topo: &Topology, spec: &TopologySpec, flows: FlowSet) -> GenConfig {
    GenConfig {
        port: PortOptions::one_queue(HOST_IF),
        cores: Vec::new(),
        proto: Proto::Udp,
        wire_size: 64,
        src_mac: None,
        dst_mac: DstMac::Resolve(spec.addressing.inside_gw),
        dst_ip: topo.server_addr(),
        dst_port: 7777,
        flows,
        rate: 0,
        duration: None,
        count: None,
        batch: 64,
        rtt: false,
        rtt_linger: Duration::ZERO,
        progress: None,
    }
}

#[test]
fn generator_flows_leave_natgw_from_the_pool() {
    if !prerequisites("generator_flows_leave_natgw_from_the_pool") {
        return;
    }
    let spec = TopologySpec::new("gnt");
    let topo = Topology::build(&spec).unwrap_or_else(|e| panic!("building {spec:?}: {e}"));
    let _natgw = NatgwProcess::start(
        env!("CARGO_BIN_EXE_natgw"),
        &topo,
        &topo.natgw_config(),
        "bench-tools",
    );
    let (pool_lo, pool_hi) = topo.pool(0);

    let stop = AtomicBool::new(false);
    let sink_cfg = sink_config(Duration::from_millis(1500));
    // 100 inside hosts (10.0.0.100-199, none of them a real namespace: natgw translates
    // by prefix) with 3 ports each, 5000 pps for 2 s.
    let flows = FlowSet::new(Ipv4Addr::new(10, 0, 0, 100), 24, 100, 20000, 3).unwrap();
    let gen_cfg = GenConfig {
        rate: 5000,
        duration: Some(Duration::from_secs(2)),
        batch: 32,
        ..udp_to_server(&topo, &spec, flows)
    };
    let (sink_rep, gen_rep) = std::thread::scope(|s| {
        // Opened (bound and attached) before the generator starts; run from any thread.
        let opened = run_in_netns(topo.server_ns(), || sink::open(&sink_cfg)).expect("sink");
        let sink = s.spawn(|| opened.run(&stop));
        let g = run_in_netns(topo.host_ns(0), || generator::run(&gen_cfg, &stop));
        if g.is_err() {
            stop.store(true, Ordering::Release);
        }
        (sink.join().unwrap(), g)
    });
    let g = gen_rep.expect("generator");
    let r = sink_rep.expect("sink");
    eprintln!("{}\n{}", g.human(), r.human());
    // 10 000 at 5000 pps for 2 s; a loaded machine descheduling the generator costs some.
    assert!(g.sent >= 7500, "5000 pps for 2 s: {}", g.sent);
    assert!(
        r.packets as f64 >= 0.95 * g.sent as f64,
        "sink saw {} of {}",
        r.packets,
        g.sent
    );
    assert_eq!(r.seq.duplicates, 0);
    assert_eq!(r.seq.flows_seen, 300, "every flow made it through");
    assert!(!r.sources.table.is_empty());
    for &(src, n) in &r.sources.table {
        assert!(
            (pool_lo..=pool_hi).contains(&src),
            "{n} packets from {src}, outside the pool {pool_lo}-{pool_hi}"
        );
    }
    assert_eq!(r.sources.other, 0);
    // A sanity bound on the measurement (one clock, stamps in ns), not a performance
    // claim: a loaded machine delays frames by milliseconds, never by seconds.
    assert!(
        r.latency.p99 > 0 && r.latency.p99 < 5_000_000_000,
        "{:?}",
        r.latency
    );
}

/// Busy polling: a burst larger than what one transmit kick sends in copy mode (the kernel
/// sends a bounded batch per kick) must all leave natgw without waiting for later traffic.
/// A lone frame 3 s after the burst shows the difference: frames left behind in natgw's
/// transmit ring would go out with it, 3 s late.
#[test]
fn busy_poll_sends_a_whole_burst_without_waiting_for_more_traffic() {
    if !prerequisites("busy_poll_sends_a_whole_burst_without_waiting_for_more_traffic") {
        return;
    }
    let spec = TopologySpec::new("gnb");
    let topo = Topology::build(&spec).unwrap_or_else(|e| panic!("building {spec:?}: {e}"));
    let cfg = topo
        .natgw_config()
        .replace("poll = \"adaptive\"", "poll = \"busy\"");
    assert!(cfg.contains("poll = \"busy\""), "{cfg}");
    let natgw = NatgwProcess::start(env!("CARGO_BIN_EXE_natgw"), &topo, &cfg, "busy-burst");
    let stop = AtomicBool::new(false);
    let sink_cfg = sink_config(Duration::from_millis(4000));
    let burst = |count: u64| GenConfig {
        count: Some(count),
        ..udp_to_server(
            &topo,
            &spec,
            FlowSet::new(Ipv4Addr::new(10, 0, 0, 100), 24, 16, 20000, 4).unwrap(),
        )
    };
    let (sink_rep, sent) = std::thread::scope(|s| {
        let opened = run_in_netns(topo.server_ns(), || sink::open(&sink_cfg)).expect("sink");
        let sink = s.spawn(|| opened.run(&stop));
        let g = run_in_netns(topo.host_ns(0), || generator::run(&burst(50_000), &stop));
        std::thread::sleep(Duration::from_secs(3));
        let g2 = run_in_netns(topo.host_ns(0), || generator::run(&burst(1), &stop));
        if g.is_err() || g2.is_err() {
            stop.store(true, Ordering::Release);
        }
        (sink.join().unwrap(), (g, g2))
    });
    let (g, _) = (sent.0.expect("generator"), sent.1.expect("generator"));
    let r = sink_rep.expect("sink");
    eprintln!("{}\n{}\n{}", g.human(), r.human(), natgw.stderr());
    assert!(
        r.packets > 1000,
        "the burst did not get through: {}",
        r.human()
    );
    assert!(
        r.latency.max < 2_500_000_000,
        "frames of the burst left natgw only with the frame 3 s later (max latency {} ns):\n{}",
        r.latency.max,
        r.human()
    );
}
