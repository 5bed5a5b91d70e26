//! The namespace test bench (crates/testbed) checked with the gateway's KERNEL doing the NAT:
//! if these pass, a natgw test failing on the same topology points at natgw, not the bench.
//!
//! Needs root, the `ip` command and `nft`. Without them each test prints a skip notice and
//! passes, except under `CI=true` where a missing prerequisite is a failure.

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::process::Command;
use std::time::{Duration, Instant};

use std::os::fd::AsFd;

use natgw_kernel::{bpf, ethtool};
use natgw_testbed::{
    GW_INSIDE_IF, GW_OUTSIDE_IF, HOST_IF, ROUTER_GW_IF, RawIcmp, SWITCH_UPLINK_IF, Topology,
    TopologySpec, ipv4_payload, run_in_netns,
};

const TIMEOUT: Duration = Duration::from_secs(3);

fn prerequisites(test: &str) -> bool {
    natgw_testbed::netns::prerequisites_with(
        test,
        &[("nft", "--version", "the `nft` command (nftables)")],
    )
}

/// Builds `spec` after removing what a killed earlier run with the same tag left.
fn fresh(spec: &TopologySpec) -> Topology {
    Topology::cleanup_stale(&spec.tag).unwrap();
    Topology::build(spec).unwrap_or_else(|e| panic!("building {spec:?}: {e}"))
}

fn namespaces_of(tag: &str) -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    let want = format!("ngw-{tag}-");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&want))
        .map(str::to_string)
        .collect()
}

fn in_pool(a: Ipv4Addr, pool: (Ipv4Addr, Ipv4Addr)) -> bool {
    (pool.0..=pool.1).contains(&a)
}

/// Pings with a few attempts: the first packets of a fresh topology wait for ARP.
fn ping_ok(t: &Topology, ns: &str, dst: Ipv4Addr) {
    let mut last = None;
    for _ in 0..3 {
        match t.ping(ns, dst, Duration::from_secs(1)) {
            Ok(_) => return,
            Err(e) => last = Some(e),
        }
    }
    panic!("ping {dst} from {ns}: {last:?}");
}

fn ping_fails(t: &Topology, ns: &str, dst: Ipv4Addr) {
    let r = t.ping(ns, dst, Duration::from_millis(700));
    assert!(r.is_err(), "ping {dst} from {ns} unexpectedly answered");
}

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => panic!("IPv6 peer {a}"),
    }
}

/// One UDP exchange from `src` (bound in `ns`) to the server: returns the source the server
/// saw. The reply must come back to the client, from the server's address.
fn udp_roundtrip(ns: &str, src: SocketAddrV4, server: &UdpSocket) -> SocketAddrV4 {
    let client = run_in_netns(ns, || UdpSocket::bind(src)).unwrap();
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    server.set_read_timeout(Some(TIMEOUT)).unwrap();
    let to = server.local_addr().unwrap();
    let msg = format!("from {ns}");
    client.send_to(msg.as_bytes(), to).unwrap();
    let mut buf = [0u8; 256];
    let (n, seen) = server
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("server got nothing from {ns}: {e}"));
    assert_eq!(&buf[..n], msg.as_bytes());
    let reply = format!("reply to {ns}");
    server.send_to(reply.as_bytes(), seen).unwrap();
    let (n, from) = client
        .recv_from(&mut buf)
        .unwrap_or_else(|e| panic!("{ns} got no reply: {e}"));
    assert_eq!(&buf[..n], reply.as_bytes());
    assert_eq!(from, to);
    v4(seen)
}

/// One TCP connection from `ns` to the server with data both ways: returns the source the
/// server saw.
fn tcp_roundtrip(ns: &str, listener: &TcpListener) -> SocketAddrV4 {
    let to = listener.local_addr().unwrap();
    let mut client = run_in_netns(ns, || TcpStream::connect_timeout(&to, TIMEOUT))
        .unwrap_or_else(|e| panic!("TCP connect from {ns}: {e}"));
    client.set_read_timeout(Some(TIMEOUT)).unwrap();
    // The handshake is complete, so the connection is already in the accept queue.
    listener.set_nonblocking(true).unwrap();
    let (mut conn, seen) = listener.accept().unwrap();
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(TIMEOUT)).unwrap();
    client.write_all(b"ping over tcp").unwrap();
    let mut buf = [0u8; 13];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping over tcp");
    conn.write_all(b"pong").unwrap();
    let mut buf = [0u8; 4];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"pong");
    v4(seen)
}

/// Sends a UDP datagram with TTL 2 from `ns` (host address `host`) to the server; the router
/// is the second hop and must answer with an ICMP Time Exceeded whose quoted header is the
/// host's original one (the gateway's NAT undoes the translation inside the ICMP error too).
fn ttl_probe(t: &Topology, ns: &str, host: Ipv4Addr) {
    let router = t.spec().addressing.router_outside;
    let server = t.server_addr();
    let (icmp, udp) = run_in_netns(ns, || -> io::Result<(RawIcmp, UdpSocket)> {
        Ok((RawIcmp::open()?, UdpSocket::bind((host, 0))?))
    })
    .unwrap();
    udp.set_ttl(2).unwrap();
    let port = udp.local_addr().unwrap().port();
    let deadline = Instant::now() + TIMEOUT;
    let mut attempt = 0;
    while Instant::now() < deadline {
        attempt += 1;
        udp.send_to(b"traceroute-ish", (server, 33434 + attempt))
            .unwrap();
        let until = Instant::now() + Duration::from_millis(700);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            let Some((src, pkt)) = icmp.recv(left).unwrap() else {
                break;
            };
            let Some(m) = ipv4_payload(&pkt, 1) else {
                continue;
            };
            if m.len() < 8 + 28 || m[0] != 11 {
                continue;
            }
            assert_eq!(m[1], 0, "code: TTL exceeded in transit");
            let inner = &m[8..];
            let inner_src = Ipv4Addr::new(inner[12], inner[13], inner[14], inner[15]);
            let inner_dst = Ipv4Addr::new(inner[16], inner[17], inner[18], inner[19]);
            let inner_sport = u16::from_be_bytes([inner[20], inner[21]]);
            assert_eq!(src, router, "Time Exceeded must come from the router");
            assert_eq!(inner[9], 17, "quoted packet is UDP");
            assert_eq!(inner_src, host, "quoted source translated back");
            assert_eq!(inner_dst, server);
            assert_eq!(inner_sport, port, "quoted source port translated back");
            return;
        }
    }
    panic!("no ICMP Time Exceeded from {router} for a TTL 2 probe from {ns}");
}

#[test]
fn kernel_nat_single_tenant() {
    if !prerequisites("kernel_nat_single_tenant") {
        return;
    }
    let mut spec = TopologySpec::new("tbs");
    spec.inside_hosts = 2;
    let t = fresh(&spec);
    let server = t.server_addr();
    let pool = t.pool(0);
    let (h1, h2) = (t.hosts()[0].clone(), t.hosts()[1].clone());
    assert_eq!(h1.addr, Ipv4Addr::new(10, 0, 0, 2));
    assert_eq!(h2.addr, Ipv4Addr::new(10, 0, 0, 3));

    // On-link paths work without any NAT; the way out does not (natgw's job).
    ping_ok(&t, &h1.ns, Ipv4Addr::new(10, 0, 0, 1));
    ping_ok(&t, &h1.ns, h2.addr);
    ping_ok(&t, t.router_ns(), server);
    ping_ok(&t, t.gw_ns(), server);
    ping_fails(&t, &h1.ns, server);

    t.enable_kernel_nat().unwrap();
    ping_ok(&t, &h1.ns, server);
    ping_ok(&t, &h2.ns, server);

    let udp_server = run_in_netns(t.server_ns(), || UdpSocket::bind((server, 0))).unwrap();
    for h in [&h1, &h2] {
        let seen = udp_roundtrip(&h.ns, SocketAddrV4::new(h.addr, 0), &udp_server);
        assert!(
            in_pool(*seen.ip(), pool),
            "UDP source {seen} not in {pool:?}"
        );
    }
    let listener = run_in_netns(t.server_ns(), || TcpListener::bind((server, 0))).unwrap();
    for h in [&h1, &h2] {
        let seen = tcp_roundtrip(&h.ns, &listener);
        assert!(
            in_pool(*seen.ip(), pool),
            "TCP source {seen} not in {pool:?}"
        );
    }
    ttl_probe(&t, &h1.ns, h1.addr);

    // Enabling again replaces the ruleset rather than stacking a second one.
    t.enable_kernel_nat().unwrap();
    ping_ok(&t, &h2.ns, server);
    t.disable_kernel_nat().unwrap();
    ping_fails(&t, &h1.ns, server);

    drop(t);
    assert_eq!(namespaces_of("tbs"), Vec::<String>::new());
}

#[test]
fn kernel_nat_two_vlan_tenants_with_the_same_addresses() {
    if !prerequisites("kernel_nat_two_vlan_tenants_with_the_same_addresses") {
        return;
    }
    let mut spec = TopologySpec::new("tbv");
    spec.vlans = true;
    let t = fresh(&spec);
    let server = t.server_addr();
    let a = t.tenant_host(0, 0).clone();
    let b = t.tenant_host(1, 0).clone();
    assert_eq!(a.addr, b.addr, "the tenants share 10.0.0.0/24");
    assert_eq!((a.vlan, b.vlan), (Some(100), Some(200)));
    assert_ne!(a.ns, b.ns);

    // Each tenant reaches its own gateway address through its VLAN.
    ping_ok(&t, &a.ns, Ipv4Addr::new(10, 0, 0, 1));
    ping_ok(&t, &b.ns, Ipv4Addr::new(10, 0, 0, 1));
    ping_fails(&t, &a.ns, server);

    t.enable_kernel_nat().unwrap();
    ping_ok(&t, &a.ns, server);
    ping_ok(&t, &b.ns, server);

    // Identical inside source address AND port in both tenants: only the tenant tells the
    // two flows apart, and the server must see each in its tenant's pool.
    let udp_server = run_in_netns(t.server_ns(), || UdpSocket::bind((server, 0))).unwrap();
    let src = SocketAddrV4::new(a.addr, 40000);
    let seen_a = udp_roundtrip(&a.ns, src, &udp_server);
    let seen_b = udp_roundtrip(&b.ns, src, &udp_server);
    assert!(
        in_pool(*seen_a.ip(), t.pool(0)),
        "tenant a seen as {seen_a}"
    );
    assert!(
        in_pool(*seen_b.ip(), t.pool(1)),
        "tenant b seen as {seen_b}"
    );

    let listener = run_in_netns(t.server_ns(), || TcpListener::bind((server, 0))).unwrap();
    assert!(in_pool(*tcp_roundtrip(&a.ns, &listener).ip(), t.pool(0)));
    assert!(in_pool(*tcp_roundtrip(&b.ns, &listener).ip(), t.pool(1)));

    ttl_probe(&t, &a.ns, a.addr);
    ttl_probe(&t, &b.ns, b.addr);

    // natgw's XDP program on eth-in must see the tag in the frame data, not only in skb
    // metadata: with a native XDP program on eth-in that drops every frame whose EtherType
    // field is not 802.1Q, both tenants still reach their gateway.
    let link = run_in_netns(t.gw_ns(), || -> io::Result<_> {
        let prog = bpf::load_xdp_program(&tagged_only_program(), "tagged_only")?;
        let idx = natgw_kernel::sys::if_nametoindex(GW_INSIDE_IF)?;
        bpf::attach_xdp(prog.as_fd(), idx, bpf::AttachMode::Native)
    })
    .unwrap();
    ping_ok(&t, &a.ns, Ipv4Addr::new(10, 0, 0, 1));
    ping_ok(&t, &b.ns, Ipv4Addr::new(10, 0, 0, 1));
    drop(link);

    drop(t);
    assert_eq!(namespaces_of("tbv"), Vec::<String>::new());
}

/// XDP: pass frames with EtherType 0x8100 at offset 12, drop everything else.
fn tagged_only_program() -> Vec<bpf::Insn> {
    use bpf::{BPF_JGT, BPF_JNE, Insn, R0, R1, R2, R3, Size};
    let mut p = bpf::ProgramBuilder::new();
    let drop = p.label();
    p.push(Insn::ldx(Size::W, R2, R1, 0))
        .push(Insn::ldx(Size::W, R3, R1, 4))
        .push(Insn::mov64_reg(R1, R2))
        .push(Insn::add64_imm(R1, 14))
        .jmp_reg_to(BPF_JGT, R1, R3, drop)
        .push(Insn::ldx(Size::H, R1, R2, 12))
        .jmp_imm_to(
            BPF_JNE,
            R1,
            i32::from(u16::from_ne_bytes([0x81, 0x00])),
            drop,
        )
        .push(Insn::mov64_imm(R0, bpf::XDP_PASS))
        .push(Insn::exit())
        .bind(drop)
        .push(Insn::mov64_imm(R0, bpf::XDP_DROP))
        .push(Insn::exit());
    p.finish().unwrap()
}

fn sysctl(ns: &str, key: &str) -> String {
    run_in_netns(ns, || std::fs::read_to_string(format!("/proc/sys/{key}")))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn queues_offloads_xdp_and_sysctls() {
    if !prerequisites("queues_offloads_xdp_and_sysctls") {
        return;
    }
    let mut spec = TopologySpec::new("tbq");
    spec.queues = 4;
    let t = fresh(&spec);

    for (ns, dev) in [
        (t.gw_ns(), GW_INSIDE_IF),
        (t.gw_ns(), GW_OUTSIDE_IF),
        (t.switch_ns(), SWITCH_UPLINK_IF),
        (t.router_ns(), ROUTER_GW_IF),
    ] {
        let out = t.exec(ns, &["ip", "-d", "link", "show", dev]).unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("numtxqueues 4 numrxqueues 4"),
            "{ns} {dev}: {text}"
        );
        assert!(
            !run_in_netns(ns, || ethtool::tx_checksum(dev)).unwrap(),
            "{ns} {dev}"
        );
        // XDP_PASS on the peers natgw transmits into, nothing on natgw's own interfaces.
        let want_xdp = dev == SWITCH_UPLINK_IF || dev == ROUTER_GW_IF;
        assert_eq!(text.contains("prog/xdp"), want_xdp, "{ns} {dev}: {text}");
    }
    for ns in [t.host_ns(0), t.server_ns()] {
        assert!(
            !run_in_netns(ns, || ethtool::tx_checksum(HOST_IF)).unwrap(),
            "{ns}"
        );
    }
    assert_eq!(sysctl(t.gw_ns(), "net/ipv4/ip_forward"), "0");
    assert_eq!(sysctl(t.router_ns(), "net/ipv4/ip_forward"), "1");

    let out = t.exec(t.gw_ns(), &["ip", "-4", "-o", "addr"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("10.0.0.1/24") && text.contains("192.168.1.2/24"),
        "{text}"
    );
    let out = t.exec(t.router_ns(), &["ip", "route"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("192.168.1.10/31 via 192.168.1.2"), "{text}");
    assert!(text.contains("192.168.1.12/31 via 192.168.1.2"), "{text}");

    t.enable_kernel_nat().unwrap();
    ping_ok(&t, t.host_ns(0), t.server_addr());

    let config = natgw::config::parse(&t.natgw_config()).unwrap();
    assert_eq!(config.dataplane.workers.len(), 4);
}

#[test]
fn cleanup_on_drop_panic_and_after_a_killed_run() {
    if !prerequisites("cleanup_on_drop_panic_and_after_a_killed_run") {
        return;
    }
    let spec = TopologySpec::new("tbc");
    let t = fresh(&spec);
    let names = t.namespaces().to_vec();
    assert_eq!(names.len(), 5, "{names:?}");
    assert_eq!(namespaces_of("tbc").len(), 5);

    // A process left running in a namespace is killed on drop.
    let mut child = t.spawn(t.gw_ns(), &["sleep", "60"]).unwrap();
    // Simulate a killed run: nothing is cleaned up.
    std::mem::forget(t);
    assert_eq!(namespaces_of("tbc").len(), 5);
    let err = Topology::build(&spec).unwrap_err();
    assert_eq!(err.kind(), io::ErrorKind::AlreadyExists, "{err}");
    let mut removed = Topology::cleanup_stale("tbc").unwrap();
    removed.sort();
    let mut names = names;
    names.sort();
    assert_eq!(removed, names);
    assert_eq!(namespaces_of("tbc"), Vec::<String>::new());
    let status = child.wait().unwrap();
    assert!(!status.success(), "sleep was killed: {status:?}");

    // Unwinding through a topology removes it too.
    let r = std::panic::catch_unwind(|| {
        let _t = Topology::build(&spec).unwrap();
        assert_eq!(namespaces_of("tbc").len(), 5);
        panic!("test failure inside a topology");
    });
    assert!(r.is_err());
    assert_eq!(namespaces_of("tbc"), Vec::<String>::new());

    // A spec that fails validation creates nothing.
    let mut bad = TopologySpec::new("tbc");
    bad.addressing.server = Ipv4Addr::new(8, 8, 8, 8);
    assert_eq!(
        Topology::build(&bad).unwrap_err().kind(),
        io::ErrorKind::InvalidInput
    );
    assert_eq!(namespaces_of("tbc"), Vec::<String>::new());
}

/// The configuration the bench generates is one natgw accepts (no system access needed).
#[test]
fn natgw_config_is_valid() {
    let mut s = TopologySpec::new("t");
    let c = natgw::config::parse(&s.natgw_config()).unwrap();
    assert_eq!(c.realms.len(), 1);
    s.vlans = true;
    s.queues = 2;
    let text = s.natgw_config();
    let c = natgw::config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(c.realms.len(), 2);
    assert_eq!(c.dataplane.workers.len(), 2);
    assert!(text.contains("vlan = 100") && text.contains("vlan = 200"));
    assert!(text.contains("192.168.1.20-192.168.1.23"));
}
