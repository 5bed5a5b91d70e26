//! Namespace tests of issue 9 part 3 (egress MTU and fragmentation): the real `natgw` binary
//! on a testbed topology whose outside or inside link has a smaller MTU (1400, both ends of
//! the veth), and real kernel traffic: a DF sender's kernel must learn the path MTU from
//! natgw's "fragmentation needed" (`ip route get` shows it, and its socket then refuses
//! larger datagrams with EMSGSIZE), a datagram without DF must arrive whole (natgw
//! fragments it, the receiver's kernel reassembles), and TCP must work over the smaller
//! outside link with and without `mss_clamp`.
//!
//! Each test has its own topology tag (`m?`). Needs root and `ip`; under `CI=true` a missing
//! prerequisite is a failure.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use natgw_testbed::lab::{api_get, stat};
use natgw_testbed::netns::prerequisites;
use natgw_testbed::process::NatgwProcess;
use natgw_testbed::{
    GW_INSIDE_IF, GW_OUTSIDE_IF, ROUTER_GW_IF, SWITCH_UPLINK_IF, Topology, TopologySpec,
    run_in_netns,
};

const NATGW: &str = env!("CARGO_BIN_EXE_natgw");
const SMALL: u32 = 1400;
/// A UDP payload that makes a 1500-byte datagram.
const FULL: usize = 1472;

/// A topology whose links `small` (namespace, interface) have MTU 1400. None without the
/// prerequisites (outside CI). Dropping it removes the namespaces.
fn topology(test: &str, tag: &str, small: &[(Side, &str)]) -> Option<Topology> {
    if !prerequisites(test) {
        return None;
    }
    Topology::cleanup_stale(tag).unwrap();
    let t = Topology::build(&TopologySpec::new(tag)).unwrap_or_else(|e| panic!("{tag}: {e}"));
    for (side, dev) in small {
        let ns = match side {
            Side::Gw => t.gw_ns().to_string(),
            Side::Switch => t.switch_ns().to_string(),
            Side::Router => t.router_ns().to_string(),
        };
        let mtu = SMALL.to_string();
        run(&t, &ns, &["ip", "link", "set", dev, "mtu", &mtu]);
    }
    Some(t)
}

#[derive(Clone, Copy)]
enum Side {
    Gw,
    Switch,
    Router,
}

fn run(t: &Topology, ns: &str, args: &[&str]) -> String {
    let out = t.exec(ns, args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    assert!(
        out.status.success(),
        "{args:?} in {ns}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The path MTU the kernel of `ns` has learned towards `dst` (`ip route get`), if any.
fn learned_mtu(t: &Topology, ns: &str, dst: Ipv4Addr) -> Option<u32> {
    let out = run(t, ns, &["ip", "route", "get", &dst.to_string()]);
    let mut words = out.split_whitespace();
    while let Some(w) = words.next() {
        if w == "mtu" {
            return words.next()?.parse().ok();
        }
    }
    None
}

/// A UDP socket in `ns` bound to `addr`, with DF (`IP_PMTUDISC_DO`) or without
/// (`IP_PMTUDISC_DONT`).
fn udp(ns: &str, addr: SocketAddrV4, df: bool) -> UdpSocket {
    let s = run_in_netns(ns, || UdpSocket::bind(addr)).unwrap_or_else(|e| panic!("bind: {e}"));
    let v: libc::c_int = if df {
        libc::IP_PMTUDISC_DO
    } else {
        libc::IP_PMTUDISC_DONT
    };
    // SAFETY: setsockopt on a socket we own, with a c_int of the size given.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_MTU_DISCOVER,
            &v as *const libc::c_int as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(
        rc,
        0,
        "IP_MTU_DISCOVER: {}",
        std::io::Error::last_os_error()
    );
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    s
}

/// A payload whose every byte depends on its position.
fn pattern(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(31) ^ seed ^ (i >> 8) as u8)
        .collect()
}

/// Sends `data` from `s` to `to` until the receiver `r` gets a datagram (bounded); returns
/// what it got.
fn deliver(s: &UdpSocket, to: SocketAddrV4, r: &UdpSocket, data: &[u8]) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; 65536];
    for _ in 0..10 {
        s.send_to(data, to).ok()?;
        if let Ok((n, _)) = r.recv_from(&mut buf) {
            return Some(buf[..n].to_vec());
        }
    }
    None
}

/// Sends DF datagrams of `FULL` bytes from `s` to `to` until the kernel of `ns` has learned
/// a path MTU towards `to` and the socket refuses them with EMSGSIZE. Returns the MTU learned.
fn learn(t: &Topology, ns: &str, s: &UdpSocket, to: SocketAddrV4) -> Option<u32> {
    let data = pattern(FULL, 1);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match s.send_to(&data, to) {
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                return learned_mtu(t, ns, *to.ip());
            }
            Err(e) => panic!("send: {e}"),
            Ok(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
    None
}

fn stats(t: &Topology) -> String {
    api_get(t.gw_ns(), "/stats").unwrap_or_else(|e| panic!("/stats: {e}"))
}

/// Outside link at 1400 (`eth-out` and the router's end): an inside host's DF datagram of
/// 1500 bytes comes back as "fragmentation needed, MTU 1400" from its gateway, its kernel
/// learns the path MTU and refuses the next one (EMSGSIZE), one of 1400 bytes gets through;
/// without DF the 1500-byte datagram is fragmented and reaches the server whole.
#[test]
fn outside_link_smaller_df_learns_the_mtu_and_non_df_arrives_whole() {
    let name = "outside_link_smaller_df_learns_the_mtu_and_non_df_arrives_whole";
    let Some(t) = topology(
        name,
        "mo",
        &[(Side::Gw, GW_OUTSIDE_IF), (Side::Router, ROUTER_GW_IF)],
    ) else {
        return;
    };
    let natgw = NatgwProcess::start(NATGW, &t, &t.natgw_config(), "mtu-mo");
    let host = t.hosts()[0].clone();
    let server = SocketAddrV4::new(t.server_addr(), 7000);
    let srv = run_in_netns(t.server_ns(), || UdpSocket::bind(server)).unwrap();
    srv.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    assert_eq!(learned_mtu(&t, &host.ns, *server.ip()), None);

    // Without DF first: once the host knows the path MTU, its own kernel would fragment.
    let plain = udp(&host.ns, SocketAddrV4::new(host.addr, 6001), false);
    // A first small datagram resolves the neighbours.
    assert!(
        deliver(&plain, server, &srv, b"hi").is_some(),
        "{}",
        natgw.stderr()
    );
    let whole = pattern(FULL, 3);
    let got = deliver(&plain, server, &srv, &whole);
    assert_eq!(
        got.as_deref().map(<[u8]>::len),
        Some(FULL),
        "/stats {}",
        stats(&t)
    );
    assert_eq!(got.unwrap(), whole);
    assert_eq!(learned_mtu(&t, &host.ns, *server.ip()), None);

    let df = udp(&host.ns, SocketAddrV4::new(host.addr, 6000), true);
    let mtu = learn(&t, &host.ns, &df, server);
    assert_eq!(
        mtu,
        Some(SMALL),
        "the DF sender did not learn the outside link's MTU; /stats {}",
        stats(&t)
    );
    let fits = pattern(SMALL as usize - 28, 2);
    assert_eq!(deliver(&df, server, &srv, &fits), Some(fits));
    let s = stats(&t);
    assert!(stat(&s, "drop_frag_needed") >= 1, "{s}");
    assert!(stat(&s, "fragmented") >= 1, "{s}");
    drop(natgw);
}

/// Inside link at 1400 (`eth-in` and the switch's end), a UDP port forward to the inside
/// host: the server's DF datagram of 1500 bytes to the external address comes back as
/// "fragmentation needed, MTU 1400" from natgw's outside address about that external
/// address, which the server's kernel learns; without DF the datagram reaches the inside
/// host whole.
#[test]
fn inside_link_smaller_through_a_port_forward() {
    let name = "inside_link_smaller_through_a_port_forward";
    let Some(t) = topology(
        name,
        "mi",
        &[(Side::Gw, GW_INSIDE_IF), (Side::Switch, SWITCH_UPLINK_IF)],
    ) else {
        return;
    };
    let host = t.hosts()[0].clone();
    let ext = SocketAddrV4::new(t.pool(0).0, 5300);
    let int = SocketAddrV4::new(host.addr, 5300);
    let pool = t.pool(0);
    let pool_line = format!("pool = [\"{}-{}\"]\n", pool.0, pool.1);
    let cfg = t.natgw_config().replacen(
        &pool_line,
        &format!(
            "{pool_line}static = [{{ protocol = \"udp\", external = \"{ext}\", internal = \"{int}\" }}]\n"
        ),
        1,
    );
    let natgw = NatgwProcess::start(NATGW, &t, &cfg, "mtu-mi");
    let inside = run_in_netns(&host.ns, || UdpSocket::bind(int)).unwrap();
    inside
        .set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    // Without DF first: once the server knows the path MTU, its own kernel would fragment.
    let plain = udp(
        t.server_ns(),
        SocketAddrV4::new(t.server_addr(), 7002),
        false,
    );
    assert!(
        deliver(&plain, ext, &inside, b"hi").is_some(),
        "{}",
        natgw.stderr()
    );
    let whole = pattern(FULL, 4);
    let got = deliver(&plain, ext, &inside, &whole);
    assert_eq!(
        got.as_deref().map(<[u8]>::len),
        Some(FULL),
        "/stats {}",
        stats(&t)
    );
    assert_eq!(got.unwrap(), whole);
    let df = udp(
        t.server_ns(),
        SocketAddrV4::new(t.server_addr(), 7001),
        true,
    );
    assert_eq!(
        learn(&t, t.server_ns(), &df, ext),
        Some(SMALL),
        "the outside sender did not learn the inside link's MTU; /stats {}",
        stats(&t)
    );
    let s = stats(&t);
    assert!(stat(&s, "drop_frag_needed") >= 1, "{s}");
    assert!(stat(&s, "fragmented") >= 1, "{s}");
    drop(natgw);
}

/// Bytes sent each way in the TCP test.
const TRANSFER: usize = 2 << 20;

/// One TCP connection from the inside host to the server: `TRANSFER` bytes up, the same
/// back, each side checking what it got. Returns the time it took.
fn tcp_transfer(t: &Topology, port: u16) -> Duration {
    let host = t.hosts()[0].clone();
    let addr = SocketAddrV4::new(t.server_addr(), port);
    let listener = run_in_netns(t.server_ns(), || TcpListener::bind(addr)).unwrap();
    let server = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut got = vec![0u8; TRANSFER];
        c.read_exact(&mut got).unwrap();
        assert!(got == pattern(TRANSFER, 5), "upload corrupted");
        c.write_all(&pattern(TRANSFER, 6)).unwrap();
    });
    let start = Instant::now();
    let mut c = run_in_netns(&host.ns, || {
        TcpStream::connect_timeout(&addr.into(), Duration::from_secs(5))
    })
    .unwrap();
    c.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    c.set_write_timeout(Some(Duration::from_secs(20))).unwrap();
    c.write_all(&pattern(TRANSFER, 5)).expect("upload stalled");
    let mut back = vec![0u8; TRANSFER];
    c.read_exact(&mut back).expect("download stalled");
    assert!(back == pattern(TRANSFER, 6), "download corrupted");
    server.join().expect("server side");
    start.elapsed()
}

/// TCP over a 1400-byte outside link: with `mss_clamp = "auto"` the SYNs carry MSS 1360 and
/// no segment is too large; without clamping the hosts' 1460-byte segments are answered
/// with "fragmentation needed" and path MTU discovery carries the transfer.
#[test]
fn tcp_over_a_smaller_outside_link_with_and_without_mss_clamp() {
    let name = "tcp_over_a_smaller_outside_link_with_and_without_mss_clamp";
    let Some(t) = topology(
        name,
        "mt",
        &[(Side::Gw, GW_OUTSIDE_IF), (Side::Router, ROUTER_GW_IF)],
    ) else {
        return;
    };
    // Clamped first, while neither end knows the path MTU: no segment may be too large.
    let cfg = t
        .natgw_config()
        .replacen("[[realm]]\n", "[[realm]]\nmss_clamp = \"auto\"\n", 1);
    {
        let _natgw = NatgwProcess::start(NATGW, &t, &cfg, "mtu-mt");
        tcp_transfer(&t, 8000);
        let s = stats(&t);
        assert!(stat(&s, "mss_clamped") >= 2, "SYN and SYN-ACK: {s}");
        assert_eq!(stat(&s, "drop_frag_needed"), 0, "{s}");
        assert_eq!(stat(&s, "fragmented"), 0, "{s}");
    }
    assert_eq!(learned_mtu(&t, &t.hosts()[0].ns, t.server_addr()), None);
    // Unclamped: the host's 1500-byte segments get "fragmentation needed" and path MTU
    // discovery carries the transfer.
    let _natgw = NatgwProcess::start(NATGW, &t, &t.natgw_config(), "mtu-mt");
    tcp_transfer(&t, 8001);
    let s = stats(&t);
    assert!(stat(&s, "drop_frag_needed") >= 1, "PMTUD did the work: {s}");
    assert_eq!(stat(&s, "mss_clamped"), 0, "{s}");
    assert_eq!(
        learned_mtu(&t, &t.hosts()[0].ns, t.server_addr()),
        Some(SMALL)
    );
}
