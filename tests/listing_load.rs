//! A full session listing during traffic costs the traffic nothing (issue 11 part 3): with
//! 100,000 sessions in natgw's table, a steady flow keeps running while a client streams the
//! whole `GET /sessions` (every session must be in it, once), and natgw counts no drop and
//! its sockets no receive ring overflow meanwhile; then a filtered `DELETE` removes one
//! host's sessions, and only those.
//!
//! A worker answers each listing step between two batches and a step is bounded
//! (src/nat/listing.rs), so its pause is far shorter than the time the steady flow needs to
//! fill the worker's receive ring. A listing done in one step (checked with `STEP_SLOTS` and
//! `STEP_LIVE` set to 2^26) stalls the worker for the whole table, seconds in a debug build:
//! the management plane gives up on the step (the listing is cut off), the steady flow
//! stops at the worker (about 20,000 of 270,000 frames reached the sink) and the test fails.
//!
//! Only counts are asserted, natgw's own: its drop counters and its sockets'
//! `XDP_STATISTICS`, not the kernel's paths outside it. Run under the machine-wide lock:
//! `flock /tmp/natgw-netns.lock cargo test --test listing_load`.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use natgw_bench::compare::spec;
use natgw_bench::flows::FlowSet;
use natgw_bench::frame::Proto;
use natgw_bench::generator::{self, DstMac, GenConfig, GenReport};
use natgw_bench::port::PortOptions;
use natgw_bench::sink::{self, SinkConfig};
use natgw_testbed::lab::{api_get, api_request, stat};
use natgw_testbed::listing::{Listing, list_sessions};
use natgw_testbed::netns::prerequisites;
use natgw_testbed::process::NatgwProcess;
use natgw_testbed::{HOST_IF, Topology, run_in_netns};

const NATGW: &str = env!("CARGO_BIN_EXE_natgw");
/// The table: 6,250 inside hosts with 16 ports each, 100,000 sessions.
const HOSTS: u32 = 6_250;
const PORTS: u32 = 16;
const SESSIONS: u64 = HOSTS as u64 * PORTS as u64;
/// The table's hosts start here (the topology's inside is 10.0.0.0/14).
const FIRST_HOST: Ipv4Addr = Ipv4Addr::new(10, 1, 0, 0);
/// The steady flow's host, apart from the others.
const STEADY_HOST: Ipv4Addr = Ipv4Addr::new(10, 2, 0, 1);
const STEADY_FLOWS: u32 = 16;
/// The steady flow's rate: modest (a debug build forwards it without loss on a loaded
/// 2-core VM), and still enough to fill a 2,048-frame receive ring in 100 ms, so that a
/// worker stalled for the whole table (a listing in one step: some 100 ms in a release
/// build, seconds in a debug one) overflows it, while a bounded step (about 0.2 ms in a
/// release build) leaves it all but empty.
const STEADY_PPS: u64 = 20_000;

fn sink_config(flows: usize) -> SinkConfig {
    SinkConfig {
        port: PortOptions::one_queue(HOST_IF),
        cores: Vec::new(),
        reflect: false,
        max_flows: flows,
        duration: Some(Duration::from_secs(120)),
        count: None,
        idle: Some(Duration::from_millis(1000)),
        progress: None,
        busy: false,
        batch: 64,
    }
}

fn udp(topo: &Topology, flows: FlowSet, rate: u64, count: Option<u64>) -> GenConfig {
    GenConfig {
        port: PortOptions::one_queue(HOST_IF),
        cores: Vec::new(),
        proto: Proto::Udp,
        wire_size: 64,
        src_mac: None,
        dst_mac: DstMac::Resolve(topo.spec().addressing.inside_gw),
        dst_ip: topo.server_addr(),
        dst_port: 7777,
        flows,
        rate,
        duration: Some(Duration::from_secs(90)),
        count,
        batch: 32,
        rtt: false,
        rtt_linger: Duration::ZERO,
        progress: None,
    }
}

/// Runs the generator with a sink open; `during` runs beside it and sets the stop flag
/// when the generator should end before its count or duration.
fn traffic<T: Send>(
    topo: &Topology,
    g: &GenConfig,
    during: impl FnOnce(&AtomicBool) -> T + Send,
) -> (GenReport, u64, T) {
    let gen_stop = AtomicBool::new(false);
    let sink_stop = AtomicBool::new(false);
    let sink_cfg = sink_config(g.flows.count() as usize);
    let opened = run_in_netns(topo.server_ns(), || sink::open(&sink_cfg)).expect("sink");
    std::thread::scope(|s| {
        let sink = s.spawn(|| opened.run(&sink_stop));
        let side = s.spawn(|| during(&gen_stop));
        let gr = run_in_netns(topo.host_ns(0), || generator::run(g, &gen_stop));
        gen_stop.store(true, Ordering::Release);
        if gr.is_err() {
            sink_stop.store(true, Ordering::Release);
        }
        let t = side.join().unwrap();
        let s = sink.join().unwrap().expect("sink");
        (gr.expect("generator"), s.packets, t)
    })
}

/// Every `drop_*` and `xdp_drop_*` counter of /stats that differs between `a` and `b`.
fn grown_drops(a: &str, b: &str) -> Vec<(String, u64)> {
    let (a, b): (serde_json::Value, serde_json::Value) = (
        serde_json::from_str(a).unwrap(),
        serde_json::from_str(b).unwrap(),
    );
    b.as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("drop_") || k.starts_with("xdp_drop_"))
        .filter_map(|(k, v)| {
            let d = v.as_u64().unwrap_or(0) - a[k].as_u64().unwrap_or(0);
            (d > 0).then(|| (k.clone(), d))
        })
        .collect()
}

/// The sum over natgw's sockets of the receive-side losses of `XDP_STATISTICS`.
fn socket_losses(metrics: &str) -> u64 {
    [
        "natgw_xsk_rx_ring_full_total{",
        "natgw_xsk_rx_fill_ring_empty_descs_total{",
        "natgw_xsk_rx_dropped_total{",
    ]
    .iter()
    .flat_map(|name| metrics.lines().filter(move |l| l.starts_with(name)))
    .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
    .sum::<f64>() as u64
}

/// The `"inside"` of every session of a listing's body.
fn insides(body: &[u8]) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(body).expect("the listing is JSON");
    v["sessions"]
        .as_array()
        .expect("sessions")
        .iter()
        .map(|s| s["inside"].as_str().expect("inside").to_string())
        .collect()
}

/// What happened while the steady flow ran.
struct Window {
    /// /stats and /metrics before and after the listing (a natgw whose worker stalls may
    /// not answer the later ones in time).
    before: (String, String),
    after: (String, Result<String, String>),
    listing: Listing,
    body: Vec<u8>,
    /// From `before` to `after`.
    window: Duration,
    deletion: Result<Deletion, String>,
}

/// The DELETE's answer (status, status line, body), the listing of the deleted host after
/// it, and /stats then.
type Deletion = ((u16, String, String), Listing, String);

fn during_steady_flow(ns: &str, gone: Ipv4Addr) -> Result<Window, String> {
    let get = |p: &str| api_get(ns, p).map_err(|e| format!("GET {p}: {e}"));
    // The steady flow's sessions exist and its rate has settled.
    std::thread::sleep(Duration::from_millis(1000));
    let before = (get("/stats")?, get("/metrics")?);
    let w0 = Instant::now();
    let mut body = Vec::new();
    let listing =
        list_sessions(ns, "", Some(&mut body)).map_err(|e| format!("GET /sessions: {e}"))?;
    // Whatever the listing left in the receive rings has been through the worker.
    std::thread::sleep(Duration::from_millis(300));
    let after = (get("/stats")?, get("/metrics"));
    let window = w0.elapsed();
    let deletion = (|| {
        let path = format!("/sessions?inside={gone}");
        let d = api_request(ns, "DELETE", &path).map_err(|e| format!("DELETE {path}: {e}"))?;
        let q = format!("inside={gone}");
        let l = list_sessions(ns, &q, None).map_err(|e| format!("GET /sessions?{q}: {e}"))?;
        Ok((d, l, get("/stats")?))
    })();
    Ok(Window {
        before,
        after,
        listing,
        body,
        window,
        deletion,
    })
}

#[test]
fn full_listing_during_traffic_drops_nothing() {
    if !prerequisites("full_listing_during_traffic_drops_nothing") {
        return;
    }
    let spec = spec("llt");
    Topology::cleanup_stale("llt").unwrap();
    let topo = Topology::build(&spec).unwrap_or_else(|e| panic!("building {spec:?}: {e}"));
    let natgw = NatgwProcess::start(NATGW, &topo, &topo.natgw_config(), "listing-load");
    let ns = topo.gw_ns().to_string();
    let table = FlowSet::new(FIRST_HOST, 14, HOSTS, 10000, PORTS).unwrap();
    let steady = FlowSet::new(STEADY_HOST, 14, 1, 20000, STEADY_FLOWS).unwrap();

    // The table: every flow once, paced so that a debug build on a loaded machine keeps up,
    // again for whatever was lost on the way.
    let mut active = 0;
    for _ in 0..4 {
        let (g, _, ()) = traffic(&topo, &udp(&topo, table, 50_000, Some(SESSIONS)), |_| {});
        active = stat(&api_get(&ns, "/stats").unwrap(), "sessions_active");
        eprintln!("set-up: sent {}, natgw holds {active} sessions", g.sent);
        if active >= SESSIONS {
            break;
        }
    }
    assert_eq!(active, SESSIONS, "the table's sessions were not all set up");

    // The steady flow, and meanwhile: a full listing (natgw's counters read before and
    // after it), then a filtered DELETE of one host's sessions and a listing of that host.
    // Nothing in here panics: the generator must stop whatever happens.
    let gone = Ipv4Addr::from(u32::from(FIRST_HOST) + 7);
    let t0 = Instant::now();
    let (g, at_sink, w) = traffic(&topo, &udp(&topo, steady, STEADY_PPS, None), |stop| {
        let w = during_steady_flow(&ns, gone);
        stop.store(true, Ordering::Release);
        w
    });
    let w = w.unwrap_or_else(|e| panic!("{e}\n{}", natgw.stderr()));
    let (before, after, listing) = (&w.before, &w.after, &w.listing);
    eprintln!(
        "steady flow: sent {} in {:.1} s ({:.0} pps), {at_sink} at the sink; listing: {} sessions, \
         {:.1} MB in {:.2} s; counters compared over {:.2} s",
        g.sent,
        t0.elapsed().as_secs_f64(),
        g.pps(),
        listing.sessions,
        listing.bytes as f64 / 1e6,
        listing.elapsed.as_secs_f64(),
        w.window.as_secs_f64()
    );

    // The steady flow ran throughout (the generator was not starved), and natgw lost none
    // of it.
    let phase = t0.elapsed().as_secs_f64();
    assert!(
        g.sent as f64 >= 0.25 * STEADY_PPS as f64 * phase,
        "the generator sent {} frames in {phase:.1} s: the steady flow did not run",
        g.sent
    );
    let drops = grown_drops(&before.0, &after.0);
    let socket = match &after.1 {
        Ok(m) => Ok(socket_losses(m) - socket_losses(&before.1)),
        Err(e) => Err(e),
    };
    assert!(
        drops.is_empty() && socket == Ok(0),
        "natgw dropped frames of the steady flow while listing: drop counters {drops:?}, \
         lost in its sockets' receive rings: {socket:?}\n{}",
        natgw.stderr()
    );

    // The listing: every session, each once.
    assert_eq!(listing.status, 200, "{listing:?}");
    assert!(
        listing.total.is_some(),
        "the listing was cut off (natgw gave up waiting for a worker?): {listing:?}\n{}",
        natgw.stderr()
    );
    let all = insides(&w.body);
    let expected = SESSIONS + u64::from(STEADY_FLOWS);
    assert_eq!(all.len() as u64, listing.sessions);
    assert_eq!(listing.total, Some(expected), "{listing:?}");
    let distinct: HashSet<&String> = all.iter().collect();
    assert_eq!(distinct.len(), all.len(), "a session was listed twice");
    for h in 0..HOSTS {
        let a = Ipv4Addr::from(u32::from(FIRST_HOST) + h);
        for p in 0..PORTS {
            let k = format!("{a}:{}", 10000 + p);
            assert!(distinct.contains(&k), "{k} was not listed");
        }
    }
    for p in 0..STEADY_FLOWS {
        let k = format!("{STEADY_HOST}:{}", 20000 + p);
        assert!(
            distinct.contains(&k),
            "the steady flow's {k} was not listed"
        );
    }

    // The filtered DELETE removed that host's sessions and only those.
    let (deleted, gone_listing, stats) = w
        .deletion
        .unwrap_or_else(|e| panic!("{e}\n{}", natgw.stderr()));
    assert_eq!(deleted.0, 200, "{deleted:?}");
    assert!(
        deleted.2.contains(&format!("\"removed\":{PORTS}")),
        "{deleted:?}"
    );
    assert_eq!(gone_listing.sessions, 0, "{gone_listing:?}");
    assert_eq!(gone_listing.total, Some(0), "{gone_listing:?}");
    assert_eq!(
        stat(&stats, "sessions_active"),
        expected - u64::from(PORTS),
        "{stats}"
    );
    drop(natgw);
}
