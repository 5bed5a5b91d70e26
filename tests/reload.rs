//! Reloads that keep sessions (issue 11 part 1), through the real binary with real kernel
//! traffic: an inbound-initiated TCP connection through a port forward and an idle UDP
//! mapping live through reloads (SIGHUP and `POST /reload`) that add a port forward, a pool
//! address, a 1:1 mapping and a management address and change timeouts; the additions work
//! at once; a broken file and a key that needs a restart change nothing and say which key.
//! Before reloads reconciled, the first reload cut both (every session was cleared).
//!
//! Needs root and the `ip` command; under `CI=true` a missing prerequisite is a failure.
//! Run under the shared lock: `CI=true flock /tmp/natgw-netns.lock cargo test --test reload`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

use natgw_testbed::lab::{api_get, api_request, stat};
use natgw_testbed::netns::prerequisites;
use natgw_testbed::process::NatgwProcess;
use natgw_testbed::sockets::tcp_echo_once;
use natgw_testbed::{Topology, TopologySpec, run_in_netns};

const NATGW: &str = env!("CARGO_BIN_EXE_natgw");

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => panic!("IPv6 address {a}"),
    }
}

fn udp(ns: &str, addr: SocketAddrV4) -> UdpSocket {
    let s = run_in_netns(ns, || UdpSocket::bind(addr))
        .unwrap_or_else(|e| panic!("UDP bind {addr} in {ns}: {e}"));
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    s
}

/// Whether `sock` receives `want` (from anyone) within `timeout`; returns the sender.
fn receives(sock: &UdpSocket, want: &[u8], timeout: Duration) -> Option<SocketAddrV4> {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 512];
    while Instant::now() < deadline {
        if let Ok((n, from)) = sock.recv_from(&mut buf)
            && &buf[..n] == want
        {
            return Some(v4(from));
        }
    }
    None
}

/// One line over the TCP connection and its echo back; false on a timeout or a cut.
fn echo(c: &mut TcpStream, n: u32) -> bool {
    let line = format!("line {n:06}\n");
    if c.write_all(line.as_bytes()).is_err() {
        return false;
    }
    let mut got = vec![0u8; line.len()];
    c.read_exact(&mut got).is_ok() && got == line.as_bytes()
}

/// Waits until natgw's stderr contains `what`; panics after 5 s.
fn logged(natgw: &NatgwProcess, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !natgw.stderr().contains(what) {
        assert!(
            Instant::now() < deadline,
            "natgw did not log {what:?}:\n{}",
            natgw.stderr()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The topology's configuration with `extra` realm keys (before its pool), `pool` as the
/// realm's pool and `tail` appended (tables after the realm's keys).
fn config(topo: &Topology, extra: &str, pool: &str, tail: &str) -> String {
    let base = topo.natgw_config();
    let (first, last) = topo.pool(0);
    let c = base.replacen(
        &format!("pool = [\"{first}-{last}\"]"),
        &format!("{extra}pool = [{pool}]"),
        1,
    );
    assert_ne!(c, base, "the topology's pool line moved");
    c + tail
}

#[test]
fn reloads_keep_sessions_and_apply_additions_at_once() {
    let name = "reloads_keep_sessions_and_apply_additions_at_once";
    if !prerequisites(name) {
        return;
    }
    let mut spec = TopologySpec::new("rl");
    spec.inside_hosts = 2;
    Topology::cleanup_stale(&spec.tag).unwrap();
    let topo = Topology::build(&spec).unwrap_or_else(|e| panic!("building {spec:?}: {e}"));
    let (a, b) = (topo.hosts()[0].clone(), topo.hosts()[1].clone());
    let server = topo.server_addr();
    let pool = topo.pool(0);
    let (p0, p1) = (pool.0, pool.1);
    let added_pool = Ipv4Addr::from(u32::from(p1) + 1);
    let one_ext = Ipv4Addr::new(192, 168, 1, 30);
    let mgmt = Ipv4Addr::new(192, 168, 1, 40);
    // The router sends the new external addresses to natgw (the old pool is routed so
    // already); the management address is the gateway kernel's own, on its outside link.
    for a in [added_pool, one_ext] {
        topo.exec(
            topo.router_ns(),
            &[
                "ip",
                "route",
                "add",
                &format!("{a}/32"),
                "via",
                "192.168.1.2",
            ],
        )
        .unwrap();
    }
    topo.exec(
        topo.gw_ns(),
        &["ip", "addr", "add", &format!("{mgmt}/32"), "dev", "eth-out"],
    )
    .unwrap();
    topo.exec(
        topo.router_ns(),
        &[
            "ip",
            "route",
            "add",
            &format!("{mgmt}/32"),
            "via",
            "192.168.1.2",
        ],
    )
    .unwrap();

    let fwd_tcp = format!(
        "{{ protocol = \"tcp\", external = \"{p0}:8080\", internal = \"{}:8000\" }}",
        a.addr
    );
    let fwd_udp = format!(
        "{{ protocol = \"udp\", external = \"{p0}:5353\", internal = \"{}:5353\" }}",
        a.addr
    );
    let old_pool = format!("\"{p0}-{p1}\"");
    let new_pool = format!("\"{p0}-{added_pool}\"");
    let first = config(&topo, &format!("static = [{fwd_tcp}]\n"), &old_pool, "");
    let added = config(
        &topo,
        &format!(
            "static = [{fwd_tcp}, {fwd_udp}]\none_to_one = [{{ external = \"{one_ext}\", internal = \"{}\" }}]\n",
            b.addr
        ),
        &new_pool,
        "[realm.timeouts]\nudp = 600\ntcp_established = 8000\n",
    )
    .replacen(
        "gateway = \"192.168.1.1\"",
        &format!("gateway = \"192.168.1.1\"\nmanagement = [\"{mgmt}\"]"),
        1,
    );
    let natgw = NatgwProcess::start(NATGW, &topo, &first, "reload-rl");
    let path = natgw.config_path().to_path_buf();
    let stats = || api_get(topo.gw_ns(), "/stats").unwrap();
    assert_eq!(stat(&stats(), "generation"), 1, "generation at start");

    // Host A serves TCP echo on 8000, reached from the server through the port forward.
    let echo_server = tcp_echo_once(&a.ns, SocketAddrV4::new(a.addr, 8000)).unwrap();
    let mut conn = run_in_netns(topo.server_ns(), || {
        TcpStream::connect_timeout(&SocketAddr::from((p0, 8080)), Duration::from_secs(5))
    })
    .unwrap_or_else(|e| panic!("connecting through the port forward: {e}"));
    conn.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut n = 0;
    let mut echoes = |conn: &mut TcpStream, k: u32, when: &str| {
        for _ in 0..k {
            n += 1;
            assert!(echo(conn, n), "TCP echo {n} failed {when}");
        }
    };
    echoes(&mut conn, 5, "before any reload");

    // An idle UDP mapping: host A to the server, which learns the external endpoint.
    let srv = udp(topo.server_ns(), SocketAddrV4::new(server, 7001));
    let host = udp(&a.ns, SocketAddrV4::new(a.addr, 40000));
    host.send_to(b"hello", SocketAddrV4::new(server, 7001))
        .unwrap();
    let ext = receives(&srv, b"hello", Duration::from_secs(3)).expect("the first datagram");
    assert!((p0..=p1).contains(ext.ip()), "{ext}");
    // Nothing answers at the management address yet: natgw takes its traffic.
    assert!(
        topo.ping(topo.router_ns(), mgmt, Duration::from_millis(500))
            .is_err(),
        "the management address answers before it is configured"
    );

    // Reload 1, by SIGHUP: a port forward, a pool address, a 1:1 mapping, a management
    // address, other timeouts.
    std::fs::write(&path, &added).unwrap();
    natgw.signal(libc::SIGHUP);
    logged(&natgw, "configuration generation 2");
    echoes(&mut conn, 5, "after the SIGHUP reload");
    srv.send_to(b"later", ext).unwrap();
    assert!(
        receives(&host, b"later", Duration::from_secs(3)).is_some(),
        "the server's later datagram did not reach the inside host after the reload"
    );
    // The new forward works at once, both ways.
    let fwd = udp(&a.ns, SocketAddrV4::new(a.addr, 5353));
    srv.send_to(b"query", SocketAddrV4::new(p0, 5353)).unwrap();
    let from = receives(&fwd, b"query", Duration::from_secs(2)).expect("the new port forward");
    fwd.send_to(b"answer", from).unwrap();
    assert_eq!(
        receives(&srv, b"answer", Duration::from_secs(2)),
        Some(SocketAddrV4::new(p0, 5353)),
        "the forward's answer"
    );
    // The 1:1 mapping too, and the management address reaches the gateway's kernel.
    let one = udp(&b.ns, SocketAddrV4::new(b.addr, 6000));
    srv.send_to(b"one", SocketAddrV4::new(one_ext, 6000))
        .unwrap();
    assert!(
        receives(&one, b"one", Duration::from_secs(2)).is_some(),
        "the new 1:1 mapping"
    );
    topo.ping(topo.router_ns(), mgmt, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("the new management address: {e}"));
    let s = stats();
    assert_eq!(stat(&s, "generation"), 2);
    assert_eq!(stat(&s, "sessions_removed_by_reload"), 0, "{s}");

    // Reload 2, by POST /reload: answered once applied, with the generation.
    std::fs::write(&path, added.replace("udp = 600", "udp = 900")).unwrap();
    let (status, _, body) = api_request(topo.gw_ns(), "POST", "/reload").unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(
        body.contains("\"ok\":true") && body.contains("\"generation\":3"),
        "{body}"
    );
    echoes(&mut conn, 5, "after POST /reload");
    srv.send_to(b"later2", ext).unwrap();
    assert!(
        receives(&host, b"later2", Duration::from_secs(3)).is_some(),
        "the server's datagram after POST /reload"
    );

    // A broken file and a key that needs a restart: refused with the key, nothing changed.
    let bad = added.replace(&format!("{p0}:5353"), "192.168.1.77:5353");
    std::fs::write(&path, &bad).unwrap();
    let (status, _, body) = api_request(topo.gw_ns(), "POST", "/reload").unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("\"ok\":false") && body.contains("realm[0].static[1].external"),
        "{body}"
    );
    let restart = added.clone() + "[sessions]\ncapacity_per_core = 4096\n";
    std::fs::write(&path, &restart).unwrap();
    let (status, _, body) = api_request(topo.gw_ns(), "POST", "/reload").unwrap();
    assert_eq!(status, 400, "{body}");
    assert!(
        body.contains("sessions.capacity_per_core") && body.contains("needs a restart"),
        "{body}"
    );
    natgw.signal(libc::SIGHUP);
    logged(
        &natgw,
        "reload refused, the running configuration stays: sessions.capacity_per_core",
    );
    assert_eq!(
        stat(&stats(), "generation"),
        3,
        "a refused reload changed it"
    );
    echoes(&mut conn, 5, "after the refused reloads");
    srv.send_to(b"query2", SocketAddrV4::new(p0, 5353)).unwrap();
    assert!(
        receives(&fwd, b"query2", Duration::from_secs(2)).is_some(),
        "the forward is gone after a refused reload"
    );
    assert_eq!(stat(&stats(), "sessions_removed_by_reload"), 0);
    let metrics = api_get(topo.gw_ns(), "/metrics").unwrap();
    assert!(
        metrics.lines().any(|l| l == "natgw_config_generation 3"),
        "the generation in the metrics"
    );

    drop(conn);
    echo_server.join().unwrap();
    assert!(!natgw.stderr().contains("panicked"), "{}", natgw.stderr());
}
