//! State floods through the real binary (issue 10 part 2): a small session table, one inside
//! host opening sessions to thousands of remote ports, a spoofed SYN flood from outside at a
//! port forward, and meanwhile every new TCP connection of a second inside host must
//! succeed. Before the per-host limit and early-drop eviction, the table filled and every
//! one of those connections failed.
//!
//! Needs root and the `ip` command; under `CI=true` a missing prerequisite is a failure.
//! Run under the shared lock: `CI=true flock /tmp/natgw-netns.lock cargo test --test floods`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use natgw_testbed::lab::api_get;
use natgw_testbed::netns::prerequisites;
use natgw_testbed::process::NatgwProcess;
use natgw_testbed::sockets::{RawSender, tcp_segment};

const SYN: u8 = 0x02;
use natgw_testbed::{Topology, TopologySpec, run_in_netns};

const NATGW: &str = env!("CARGO_BIN_EXE_natgw");

/// Sends spoofed SYNs from `net.x` (x random, 10..250) to `dst` until `stop`; counts them.
fn syn_flood(
    ns: &str,
    net: Ipv4Addr,
    dst: SocketAddrV4,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
) -> std::thread::JoinHandle<()> {
    let raw = RawSender::open(ns).unwrap_or_else(|e| panic!("raw socket: {e}"));
    std::thread::spawn(move || {
        let mut x: u32 = 0x9e37_79b9;
        let base = net.octets();
        while !stop.load(Ordering::Relaxed) {
            for _ in 0..50 {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                let src = Ipv4Addr::new(base[0], base[1], base[2], 10 + (x % 240) as u8);
                let sport = 1024 + (x >> 16) as u16 % 60000;
                let p = tcp_segment(src, sport, *dst.ip(), dst.port(), x, 0, SYN);
                // A flood: a send the kernel refuses is not worth stopping for.
                let _ = raw.send(&p, *dst.ip());
                sent.fetch_add(1, Ordering::Relaxed);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    })
}

/// The number after `"key":` in a JSON text.
fn json_u64(json: &str, key: &str) -> u64 {
    let pat = format!("\"{key}\":");
    json.find(&pat)
        .map(|i| {
            json[i + pat.len()..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect::<String>()
        })
        .and_then(|d| d.parse().ok())
        .unwrap_or(0)
}

#[test]
fn new_connections_survive_a_udp_spray_and_a_syn_flood() {
    let name = "new_connections_survive_a_udp_spray_and_a_syn_flood";
    if !prerequisites(name) {
        return;
    }
    let mut spec = TopologySpec::new("hdfl");
    spec.inside_hosts = 2;
    Topology::cleanup_stale(&spec.tag).unwrap();
    let topo = Topology::build(&spec).unwrap_or_else(|e| panic!("building {spec:?}: {e}"));
    let a = topo.hosts()[0].clone();
    let b = topo.hosts()[1].clone();
    let pool = topo.pool(0).0;
    let server = topo.server_addr();
    // A port forward to host A, and a table of 1024 sessions (the smallest allowed).
    let config = topo.natgw_config().replacen(
        "pool = [",
        &format!(
            "static = [{{ protocol = \"tcp\", external = \"{pool}:8080\", internal = \"{}:80\" }}]\npool = [",
            a.addr
        ),
        1,
    ) + "[sessions]\ncapacity_per_core = 1024\n";
    let natgw = NatgwProcess::start(NATGW, &topo, &config, &format!("floods-{}", spec.tag));

    // The server: a TCP echo of one line per connection.
    let listener = run_in_netns(topo.server_ns(), || TcpListener::bind((server, 0))).unwrap();
    let to = match listener.local_addr().unwrap() {
        SocketAddr::V4(v) => v,
        _ => unreachable!(),
    };
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let stop = Arc::clone(&stop);
        listener.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut c, _)) => {
                        c.set_nonblocking(false).unwrap();
                        c.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
                        let mut buf = [0u8; 64];
                        if let Ok(n) = c.read(&mut buf) {
                            let _ = c.write_all(&buf[..n]);
                        }
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        })
    };

    // The flood: spoofed SYNs from the server's network at the port forward.
    let sent = Arc::new(AtomicU64::new(0));
    let flood = syn_flood(
        topo.server_ns(),
        Ipv4Addr::new(192, 168, 2, 0),
        SocketAddrV4::new(pool, 8080),
        Arc::clone(&stop),
        Arc::clone(&sent),
    );
    // The spray: host A, one socket, one datagram to each of 3000 ports of the server,
    // three times over while B connects.
    let spray = {
        let stop = Arc::clone(&stop);
        let sock = run_in_netns(&a.ns, || UdpSocket::bind((a.addr, 0))).unwrap();
        std::thread::spawn(move || {
            let mut n = 0u64;
            for round in 0..3 {
                for p in 0..3000u16 {
                    if stop.load(Ordering::Relaxed) {
                        return n;
                    }
                    let _ = sock.send_to(b"spray", (server, 20000 + p));
                    n += 1;
                    if p % 100 == 0 {
                        std::thread::sleep(Duration::from_millis(5 + round));
                    }
                }
            }
            n
        })
    };
    std::thread::sleep(Duration::from_millis(500));

    let mut failed = Vec::new();
    for i in 0..20 {
        let r = run_in_netns(&b.ns, || {
            TcpStream::connect_timeout(&SocketAddr::V4(to), Duration::from_secs(3))
        })
        .and_then(|mut c| {
            c.set_read_timeout(Some(Duration::from_secs(3)))?;
            c.write_all(format!("hello {i}").as_bytes())?;
            let mut buf = [0u8; 64];
            let n = c.read(&mut buf)?;
            if &buf[..n] != format!("hello {i}").as_bytes() {
                return Err(std::io::Error::other("wrong echo"));
            }
            Ok(())
        });
        if let Err(e) = r {
            failed.push(format!("connection {i}: {e}"));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, Ordering::Relaxed);
    let sprayed = spray.join().unwrap();
    flood.join().unwrap();
    echo.join().unwrap();
    let stats = api_get(topo.gw_ns(), "/stats").unwrap_or_default();
    let report = format!(
        "sprayed {sprayed} datagrams, flooded {} SYNs; created {} sessions, evicted {} \
         transitory and {} idle; /stats: {stats}",
        sent.load(Ordering::Relaxed),
        json_u64(&stats, "sessions_created"),
        json_u64(&stats, "sessions_evicted_transitory"),
        json_u64(&stats, "sessions_evicted_idle"),
    );
    eprintln!("{report}");
    assert!(
        failed.is_empty(),
        "{} of 20 new TCP connections failed: {failed:?}\n{report}\n{}",
        failed.len(),
        natgw.stderr()
    );
    assert!(
        sprayed >= 3000 && sent.load(Ordering::Relaxed) > 1000,
        "{report}"
    );
    drop(natgw);
    drop(topo);
}
