//! Blind TCP resets through the real binary (issue 10 part 3): an established connection
//! through natgw; another outside host (the router namespace) sends RSTs and a FIN spoofed
//! from the server's address and port, with sequence numbers provably outside the inside
//! host's window. natgw drops and counts them, the session stays established and the
//! connection keeps carrying data; a RST at the right sequence number still ends it. Before
//! the window check, the spoofed RSTs demoted the session to the transitory timeout.
//!
//! Needs root and the `ip` command; under `CI=true` a missing prerequisite is a failure.
//! Run under the shared lock: `CI=true flock /tmp/natgw-netns.lock cargo test --test tcp_rst`.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::Duration;

use natgw_testbed::lab::{api_get, stat};
use natgw_testbed::netns::prerequisites;
use natgw_testbed::process::NatgwProcess;
use natgw_testbed::sockets::{PacketSocket, RawSender, tcp_segment};
use natgw_testbed::{Topology, TopologySpec, run_in_netns};

const NATGW: &str = env!("CARGO_BIN_EXE_natgw");
const RST: u8 = 0x04;
const FIN: u8 = 0x01;
const ACK: u8 = 0x10;

/// The destination (the connection's external address and port) and the sequence number
/// after the payload of the server's next data segment, captured on the router's
/// server-side link.
fn server_segment(cap: &PacketSocket, server: Ipv4Addr, sport: u16) -> (Ipv4Addr, u16, u32) {
    let f = cap
        .recv_matching(Duration::from_secs(3), |f| {
            f.len() >= 54
                && f[12..14] == [0x08, 0x00]
                && f[23] == 6
                && f[26..30] == server.octets()
                && u16::from_be_bytes([f[34], f[35]]) == sport
                && {
                    let ihl = usize::from(f[14] & 0xf) * 4;
                    let tot = usize::from(u16::from_be_bytes([f[16], f[17]]));
                    let doff = usize::from(f.get(14 + ihl + 12).copied().unwrap_or(0) >> 4) * 4;
                    tot > ihl + doff
                }
        })
        .expect("the server's data segment on the router's link");
    let ihl = usize::from(f[14] & 0xf) * 4;
    let t = &f[14 + ihl..];
    let tot = usize::from(u16::from_be_bytes([f[16], f[17]]));
    let len = (tot - ihl - usize::from(t[12] >> 4) * 4) as u32;
    let seq = u32::from_be_bytes([t[4], t[5], t[6], t[7]]);
    let dst = Ipv4Addr::new(f[30], f[31], f[32], f[33]);
    (dst, u16::from_be_bytes([t[2], t[3]]), seq.wrapping_add(len))
}

/// The /sessions entry of the connection to `remote`, if any.
fn session_of(gw: &str, remote: &str) -> Option<String> {
    let all = api_get(gw, "/sessions").expect("GET /sessions");
    all.split("},{")
        .find(|s| s.contains(&format!("\"remote\":\"{remote}\"")))
        .map(str::to_string)
}

fn exchange(client: &mut TcpStream, server: &mut TcpStream, n: u32) -> std::io::Result<()> {
    let ask = format!("ping {n}\n");
    client.write_all(ask.as_bytes())?;
    let mut buf = [0u8; 64];
    let k = server.read(&mut buf)?;
    assert_eq!(&buf[..k], ask.as_bytes());
    let answer = format!("pong {n}\n");
    server.write_all(answer.as_bytes())?;
    let k = client.read(&mut buf)?;
    if &buf[..k] != answer.as_bytes() {
        return Err(std::io::Error::other(format!(
            "client read {:?}",
            &buf[..k]
        )));
    }
    Ok(())
}

#[test]
fn spoofed_out_of_window_rsts_leave_the_connection_established() {
    let name = "spoofed_out_of_window_rsts_leave_the_connection_established";
    if !prerequisites(name) {
        return;
    }
    let spec = TopologySpec::new("rsb");
    Topology::cleanup_stale(&spec.tag).unwrap();
    let topo = Topology::build(&spec).unwrap_or_else(|e| panic!("building {spec:?}: {e}"));
    let host = topo.hosts()[0].clone();
    let server = topo.server_addr();
    let (pool_first, pool_last) = topo.pool(0);
    let natgw = NatgwProcess::start(NATGW, &topo, &topo.natgw_config(), "tcp-rst-rsb");

    let listener = run_in_netns(topo.server_ns(), || TcpListener::bind((server, 0))).unwrap();
    let sport = listener.local_addr().unwrap().port();
    let cap = run_in_netns(topo.router_ns(), || PacketSocket::bind("rt-srv")).unwrap();
    let mut client = run_in_netns(&host.ns, || {
        TcpStream::connect_timeout(&SocketAddr::from((server, sport)), Duration::from_secs(3))
    })
    .unwrap_or_else(|e| panic!("connect through natgw: {e}\n{}", natgw.stderr()));
    let (mut srv, _) = listener.accept().unwrap();
    for s in [&client, &srv] {
        s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    }
    exchange(&mut client, &mut srv, 1).unwrap();
    let (pool, ext_port, snd_nxt) = server_segment(&cap, server, sport);
    assert!(
        (pool_first..=pool_last).contains(&pool),
        "{pool}: not a pool address"
    );
    // Let the inside host's ACK of that data pass natgw: it acknowledges snd_nxt now.
    std::thread::sleep(Duration::from_millis(200));
    let remote = format!("{server}:{sport}");
    let s = session_of(topo.gw_ns(), &remote).expect("the connection's session");
    assert!(s.contains("\"tcp_established\":true"), "{s}");
    assert!(
        s.contains(&format!("\"external\":\"{pool}:{ext_port}\"")),
        "{s}"
    );

    // The spoofer: the router namespace, another outside host. Offsets from the inside host's
    // receive point are between 2^30 and 2^32 - 2^29: outside any window it can advertise
    // (at most 65535 << 14 < 2^30), whatever window scale it uses.
    let spoofer = RawSender::open(topo.router_ns()).unwrap_or_else(|e| panic!("raw socket: {e}"));
    let offsets = [
        1u32 << 31,
        3 << 30,
        (1 << 31) + (1 << 29),
        (1 << 30) + (1 << 29),
        7 << 29,
    ];
    let mut sent = 0u64;
    for (i, d) in offsets.iter().enumerate() {
        let seq = snd_nxt.wrapping_add(*d);
        let flags = if i % 2 == 0 { RST } else { RST | ACK };
        let p = tcp_segment(server, sport, pool, ext_port, seq, 0x1234_5678, flags);
        spoofer
            .send(&p, pool)
            .unwrap_or_else(|e| panic!("sendto: {e}"));
        sent += 1;
    }
    let fin = tcp_segment(
        server,
        sport,
        pool,
        ext_port,
        snd_nxt.wrapping_add(1 << 31),
        1,
        FIN | ACK,
    );
    spoofer
        .send(&fin, pool)
        .unwrap_or_else(|e| panic!("sendto: {e}"));
    sent += 1;
    std::thread::sleep(Duration::from_millis(300));

    let stats = api_get(topo.gw_ns(), "/stats").unwrap();
    let s = session_of(topo.gw_ns(), &remote).expect("the session after the spoofed RSTs");
    assert!(
        s.contains("\"tcp_established\":true"),
        "spoofed out-of-window RSTs demoted the session: {s}\n/stats: {stats}"
    );
    assert_eq!(
        stat(&stats, "drop_tcp_out_of_window"),
        sent,
        "/stats: {stats}"
    );
    // The connection still carries data both ways, and is still established.
    exchange(&mut client, &mut srv, 2).unwrap();
    let (_, _, snd_nxt) = server_segment(&cap, server, sport);
    std::thread::sleep(Duration::from_millis(200));
    let s = session_of(topo.gw_ns(), &remote).unwrap();
    assert!(s.contains("\"tcp_established\":true"), "{s}");

    // A RST at exactly the receive point is the real thing: natgw lets it through and the
    // inside host's connection is reset.
    let rst = tcp_segment(server, sport, pool, ext_port, snd_nxt, 0, RST);
    spoofer
        .send(&rst, pool)
        .unwrap_or_else(|e| panic!("sendto: {e}"));
    std::thread::sleep(Duration::from_millis(300));
    let s = session_of(topo.gw_ns(), &remote).unwrap();
    assert!(
        s.contains("\"tcp_established\":false"),
        "an in-window RST: {s}"
    );
    let mut buf = [0u8; 8];
    let r = client.read(&mut buf);
    assert!(
        matches!(&r, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
        "the inside host's connection after the RST: {r:?}"
    );
    let stats = api_get(topo.gw_ns(), "/stats").unwrap();
    assert_eq!(
        stat(&stats, "drop_tcp_out_of_window"),
        sent,
        "/stats: {stats}"
    );
    drop(natgw);
    drop(topo);
}
