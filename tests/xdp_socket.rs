//! AF_XDP integration tests on veth pairs in private network namespaces (run as root).

use std::mem::{size_of, zeroed};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use natgw::dataplane::xdp::XdpProgram;
use natgw_kernel::bpf::{AttachMode, Insn, R0, R2, Size, load_xdp_program};
use natgw_kernel::sys;
use natgw_kernel::xsk::{Desc, Umem, XskConfig, XskSocket};
use natgw_testbed::netns::{Netns, run_in_netns, unique_name, veth_pair};
use natgw_testbed::sockets::{PacketSocket, internet_checksum, udp_frame};

const MAC_A: [u8; 6] = [0x02, 0, 0, 0, 0, 0x01];
const MAC_B: [u8; 6] = [0x02, 0, 0, 0, 0, 0x02];
const MAC_A2: [u8; 6] = [0x02, 0, 0, 0, 0, 0x03];
const MAC_B2: [u8; 6] = [0x02, 0, 0, 0, 0, 0x04];
const IP_A: [u8; 4] = [10, 77, 0, 1];
const IP_B: [u8; 4] = [10, 77, 0, 2];
/// A destination no kernel owns: such frames can only be seen by the AF_XDP socket.
const IP_NAT: [u8; 4] = [10, 77, 0, 99];
const FRAMES: u32 = 64;
const FILL_FRAMES: u32 = 32;
const WAIT: Duration = Duration::from_secs(3);

/// Namespace `a` with `va` and namespace `b` with `vb`, a veth pair between them.
struct Pair {
    a: Netns,
    b: Netns,
}

fn pair(tag: &str) -> Pair {
    let a = Netns::new(&unique_name(&format!("{tag}a")));
    let b = Netns::new(&unique_name(&format!("{tag}b")));
    veth_pair(&a, "va", MAC_A, &b, "vb", MAC_B);
    Pair { a, b }
}

fn copy_cfg() -> XskConfig {
    XskConfig {
        ring_size: 64,
        copy: Some(true),
        need_wakeup: true,
    }
}

/// The redirect program on `ifname` and a socket on its queue 0 whose fill ring holds
/// frames `0..FILL_FRAMES`. Must run inside the interface's namespace.
struct Side {
    prog: XdpProgram,
    umem: Umem,
    sock: XskSocket,
}

fn xsk_on(ifname: &str, mode: AttachMode) -> Side {
    let idx = sys::if_nametoindex(ifname).unwrap();
    let mut prog = XdpProgram::load(1).unwrap_or_else(|e| panic!("load: {e}"));
    prog.attach(idx, mode).unwrap();
    let umem = Umem::new(FRAMES, 2048).unwrap();
    let mut sock = XskSocket::new(&umem, idx, 0, &copy_cfg()).unwrap();
    assert!(!sock.is_zero_copy(), "veth has no zero-copy");
    prog.register_socket(0, sock.fd()).unwrap();
    let addrs: Vec<u64> = (0..FILL_FRAMES).map(|i| umem.frame_addr(i)).collect();
    assert_eq!(sock.fill(&addrs), FILL_FRAMES as usize);
    sock.wakeup_rx();
    Side { prog, umem, sock }
}

/// Waits up to `timeout` for one received frame; returns its address and bytes and
/// gives the frame back to the fill ring.
fn recv_one(sock: &mut XskSocket, umem: &Umem, timeout: Duration) -> Option<(u64, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    let mut d = [Desc::default()];
    loop {
        if sock.recv(&mut d) == 1 {
            let bytes = umem.frame(d[0].addr, d[0].len as usize).to_vec();
            assert_eq!(
                bytes.len(),
                d[0].len as usize,
                "descriptor beyond its frame"
            );
            sock.fill(&[d[0].addr & !(umem.frame_size() as u64 - 1)]);
            sock.wakeup_rx();
            return Some((d[0].addr, bytes));
        }
        if Instant::now() >= deadline {
            return None;
        }
        sock.wakeup_rx();
        sock.poll_rx(20).unwrap();
    }
}

/// Every frame received during `window`.
fn recv_during(sock: &mut XskSocket, umem: &Umem, window: Duration) -> Vec<Vec<u8>> {
    let end = Instant::now() + window;
    let mut v = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        if let Some((_, f)) = recv_one(sock, umem, left) {
            v.push(f);
        }
    }
    v
}

/// Sends `descs` and waits until all of them completed; returns the completed addresses.
fn send_and_complete(sock: &mut XskSocket, descs: &[Desc]) -> Vec<u64> {
    assert_eq!(sock.send(descs), descs.len());
    let deadline = Instant::now() + WAIT;
    let mut done = Vec::new();
    let mut buf = [0u64; 16];
    while done.len() < descs.len() {
        assert!(Instant::now() < deadline, "tx did not complete: {done:?}");
        sock.kick_tx().unwrap();
        let n = sock.complete(&mut buf);
        done.extend_from_slice(&buf[..n]);
        if n == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    done
}

fn ethertype(f: &[u8]) -> u16 {
    u16::from_be_bytes([f[12], f[13]])
}

fn ipv4_dst(f: &[u8]) -> Option<[u8; 4]> {
    (f.len() >= 34 && ethertype(f) == 0x0800).then(|| f[30..34].try_into().unwrap())
}

/// One ICMP echo exchange from the calling thread's namespace; true if `dst` answered.
fn ping(dst: [u8; 4], timeout: Duration) -> bool {
    // SAFETY: plain socket(2).
    let fd = unsafe {
        libc::socket(
            libc::AF_INET,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMP,
        )
    };
    assert!(
        fd >= 0,
        "raw ICMP socket: {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fresh fd.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let id = (std::process::id() as u16) ^ 0x5a5a;
    // SAFETY: all-zero sockaddr_in is valid.
    let mut sa: libc::sockaddr_in = unsafe { zeroed() };
    sa.sin_family = libc::AF_INET as u16;
    sa.sin_addr.s_addr = u32::from_ne_bytes(dst);
    let deadline = Instant::now() + timeout;
    let mut seq = 0u16;
    let mut next_send = Instant::now();
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        if Instant::now() >= next_send {
            seq += 1;
            let mut icmp = vec![8u8, 0, 0, 0];
            icmp.extend_from_slice(&id.to_be_bytes());
            icmp.extend_from_slice(&seq.to_be_bytes());
            icmp.extend_from_slice(b"natgw-xdp-test!!");
            let c = internet_checksum(&icmp);
            icmp[2..4].copy_from_slice(&c.to_be_bytes());
            // SAFETY: valid buffer and address.
            unsafe {
                libc::sendto(
                    fd.as_raw_fd(),
                    icmp.as_ptr().cast(),
                    icmp.len(),
                    0,
                    (&sa as *const libc::sockaddr_in).cast(),
                    size_of::<libc::sockaddr_in>() as u32,
                )
            };
            next_send = Instant::now() + Duration::from_millis(300);
        }
        let mut p = libc::pollfd {
            fd: fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        if unsafe { libc::poll(&mut p, 1, 50) } <= 0 {
            continue;
        }
        // SAFETY: valid buffer.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 28 {
            continue;
        }
        let ip = &buf[..n as usize];
        let ihl = (ip[0] & 0x0f) as usize * 4;
        let Some(icmp) = ip.get(ihl..) else { continue };
        if ip[12..16] == dst && icmp.len() >= 8 && icmp[0] == 0 && icmp[4..6] == id.to_be_bytes() {
            return true;
        }
    }
    false
}

fn xdp_state(ns: &Netns, ifname: &str) -> String {
    ns.ip(&["-d", "link", "show", "dev", ifname])
}

#[test]
fn program_passes_verifier_and_detaches_on_drop() {
    if !natgw_testbed::netns::prerequisites("program_passes_verifier_and_detaches_on_drop") {
        return;
    }
    let p = pair("v");
    for (mode, marker) in [
        (AttachMode::Native, " xdp "),
        (AttachMode::Generic, " xdpgeneric "),
    ] {
        let prog = run_in_netns(p.a.name(), || {
            let idx = sys::if_nametoindex("va").unwrap();
            let mut prog = XdpProgram::load(4).unwrap_or_else(|e| panic!("load: {e}"));
            prog.attach(idx, mode)
                .unwrap_or_else(|e| panic!("attach {mode:?}: {e}"));
            let again = prog.attach(idx, mode).unwrap_err();
            assert_eq!(again.kind(), std::io::ErrorKind::AlreadyExists);
            prog
        });
        assert_eq!(prog.attached().map(|(_, m)| m), Some(mode));
        // The first line names the mode: "... mtu 1500 xdp qdisc ..." / "... xdpgeneric ...".
        let state = xdp_state(&p.a, "va");
        let first = state.lines().next().unwrap_or("");
        assert!(first.contains(marker), "{mode:?} not attached:\n{state}");
        assert!(state.contains("natgw_xsk"), "{state}");
        drop(prog);
        let deadline = Instant::now() + WAIT;
        loop {
            let state = xdp_state(&p.a, "va");
            if !state.contains("xdp") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "still attached after drop:\n{state}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    // A rejected program reports the verifier's reasoning.
    let bad = [Insn::ldx(Size::W, R0, R2, 0), Insn::exit()];
    let err = load_xdp_program(&bad, "bad").unwrap_err();
    assert_eq!(sys::errno(&err), Some(libc::EACCES), "{err}");
    assert!(err.to_string().contains("verifier log:\n"), "{err}");
    assert!(err.to_string().contains("R2"), "{err}");

    let (mode, prog) = run_in_netns(p.a.name(), || {
        let mut prog = XdpProgram::load(1).unwrap();
        let mode = prog
            .attach_auto(sys::if_nametoindex("va").unwrap())
            .unwrap();
        (mode, prog)
    });
    assert_eq!(mode, AttachMode::Native, "veth supports native XDP");
    drop(prog);
    // The trivial pass program loads and attaches too.
    run_in_netns(p.b.name(), || {
        let pass = natgw_kernel::bpf::load_pass_program().unwrap();
        let idx = sys::if_nametoindex("vb").unwrap();
        let link =
            natgw_kernel::bpf::attach_xdp(std::os::fd::AsFd::as_fd(&pass), idx, AttachMode::Native)
                .unwrap();
        assert!(xdp_state(&p.b, "vb").contains("natgw_pass"));
        drop(link);
    });
}

#[test]
fn frame_arrives_intact_in_rx_ring() {
    if !natgw_testbed::netns::prerequisites("frame_arrives_intact_in_rx_ring") {
        return;
    }
    for mode in [AttachMode::Native, AttachMode::Generic] {
        let p = pair("r");
        let mut s = run_in_netns(p.a.name(), || xsk_on("va", mode));
        let plain = udp_frame(
            MAC_A,
            MAC_B,
            None,
            IP_B,
            IP_NAT,
            b"plain frame to a NAT address",
        );
        let tagged = udp_frame(MAC_A, MAC_B, Some(42), IP_B, IP_NAT, b"one 802.1Q tag");
        run_in_netns(p.b.name(), || {
            let ps = PacketSocket::bind("vb").unwrap();
            ps.send(&plain).unwrap();
            ps.send(&tagged).unwrap();
        });
        let (addr, got) = recv_one(&mut s.sock, &s.umem, WAIT).expect("no frame in rx ring");
        assert!(
            addr < s.umem.frame_addr(FILL_FRAMES),
            "frame {addr:#x} was not in the fill ring"
        );
        assert_eq!(got, plain, "{mode:?}");
        let (_, got) = recv_one(&mut s.sock, &s.umem, WAIT).expect("tagged frame missing");
        assert_eq!(got, tagged, "{mode:?}");
        let st = s.sock.statistics().unwrap();
        assert_eq!(st.rx_dropped, 0, "{st:?}");
        assert_eq!(st.rx_invalid_descs, 0, "{st:?}");
    }
}

#[test]
fn arp_and_pass_addresses_reach_the_kernel() {
    if !natgw_testbed::netns::prerequisites("arp_and_pass_addresses_reach_the_kernel") {
        return;
    }
    let p = pair("p");
    p.a.add_addr("va", "10.77.0.1/24");
    p.b.add_addr("vb", "10.77.0.2/24");
    let mut s = run_in_netns(p.a.name(), || xsk_on("va", AttachMode::Native));
    s.prog.add_pass_addr(Ipv4Addr::from(IP_A)).unwrap();

    // ARP resolution and the echo both need the kernel of namespace a.
    assert!(
        run_in_netns(p.b.name(), || ping(IP_A, WAIT)),
        "kernel did not answer through XDP_PASS"
    );
    // A tagged frame to the pass address must also be passed; a frame to a NAT address
    // proves the socket is live.
    let tagged_pass = udp_frame(
        MAC_A,
        MAC_B,
        Some(7),
        IP_B,
        IP_A,
        b"tagged to a pass address",
    );
    let marker = udp_frame(MAC_A, MAC_B, None, IP_B, IP_NAT, b"marker");
    run_in_netns(p.b.name(), || {
        let ps = PacketSocket::bind("vb").unwrap();
        ps.send(&tagged_pass).unwrap();
        ps.send(&marker).unwrap();
    });
    let seen = recv_during(&mut s.sock, &s.umem, Duration::from_millis(500));
    assert!(seen.contains(&marker), "socket saw nothing: {seen:?}");
    for f in &seen {
        assert_ne!(ethertype(f), 0x0806, "ARP reached the socket");
        assert_ne!(
            ipv4_dst(f),
            Some(IP_A),
            "frame to a pass address reached the socket"
        );
        assert_ne!(
            f, &tagged_pass,
            "tagged frame to a pass address reached the socket"
        );
    }

    // Without the pass entry, the echo request goes to the socket instead of the kernel.
    s.prog.remove_pass_addr(Ipv4Addr::from(IP_A)).unwrap();
    assert!(
        !run_in_netns(p.b.name(), || ping(IP_A, Duration::from_millis(700))),
        "kernel still answers"
    );
    let seen = recv_during(&mut s.sock, &s.umem, Duration::from_millis(200));
    assert!(
        seen.iter().any(|f| ipv4_dst(f) == Some(IP_A) && f[23] == 1),
        "echo request not redirected: {seen:?}"
    );
}

#[test]
fn frame_sent_through_tx_ring_arrives_at_peer() {
    if !natgw_testbed::netns::prerequisites("frame_sent_through_tx_ring_arrives_at_peer") {
        return;
    }
    let p = pair("t");
    let mut s = run_in_netns(p.a.name(), || xsk_on("va", AttachMode::Native));
    let cap = run_in_netns(p.b.name(), || PacketSocket::bind("vb").unwrap());
    let frames: Vec<Vec<u8>> = (0..3u8)
        .map(|i| udp_frame(MAC_B, MAC_A, None, IP_NAT, IP_B, &[i; 40]))
        .collect();
    // Frames above FILL_FRAMES belong to userspace.
    let descs: Vec<Desc> = frames
        .iter()
        .enumerate()
        .map(|(i, f)| {
            let addr = s.umem.frame_addr(FILL_FRAMES + i as u32);
            // SAFETY: this frame is in no ring and no other slice of it exists.
            unsafe { s.umem.frame_mut(addr, f.len()) }.copy_from_slice(f);
            Desc {
                addr,
                len: f.len() as u32,
            }
        })
        .collect();
    let mut done = send_and_complete(&mut s.sock, &descs);
    done.sort_unstable();
    assert_eq!(done, descs.iter().map(|d| d.addr).collect::<Vec<_>>());
    for f in &frames {
        let got = cap.recv_matching(WAIT, |g| g == f.as_slice());
        assert!(
            got.is_some(),
            "frame {:?} not captured on the peer",
            &f[42..44]
        );
    }
    assert_eq!(s.sock.statistics().unwrap().tx_invalid_descs, 0);

    // The queue can be bound again right after its socket closed (bind retries EBUSY).
    let Side { prog, umem, sock } = s;
    drop(sock);
    drop(umem);
    run_in_netns(p.a.name(), || {
        let umem = Umem::new(FRAMES, 2048).unwrap();
        let idx = sys::if_nametoindex("va").unwrap();
        let sock = XskSocket::new(&umem, idx, 0, &copy_cfg()).unwrap();
        prog.register_socket(0, sock.fd()).unwrap();
    });
}

#[test]
fn shared_umem_forwards_between_interfaces_by_descriptor() {
    if !natgw_testbed::netns::prerequisites("shared_umem_forwards_between_interfaces_by_descriptor")
    {
        return;
    }
    let a = Netns::new(&unique_name("sa"));
    let b = Netns::new(&unique_name("sb"));
    veth_pair(&a, "va1", MAC_A, &b, "vb1", MAC_B);
    veth_pair(&a, "va2", MAC_A2, &b, "vb2", MAC_B2);

    let (progs, umem, mut s1, mut s2) = run_in_netns(a.name(), || {
        let i1 = sys::if_nametoindex("va1").unwrap();
        let i2 = sys::if_nametoindex("va2").unwrap();
        let mut p1 = XdpProgram::load(1).unwrap();
        let mut p2 = XdpProgram::load(1).unwrap();
        p1.attach(i1, AttachMode::Native).unwrap();
        p2.attach(i2, AttachMode::Native).unwrap();
        let umem = Umem::new(FRAMES, 2048).unwrap();
        let mut s1 = XskSocket::new(&umem, i1, 0, &copy_cfg()).unwrap();
        let again = XskSocket::new(&umem, i2, 0, &copy_cfg());
        assert!(again.is_err(), "a UMEM must be registered once");
        let mut s2 = XskSocket::new_shared(&umem, &s1, i2, 0, &copy_cfg())
            .unwrap_or_else(|e| panic!("shared socket: {e}"));
        assert!(s2.is_shared() && !s1.is_shared());
        p1.register_socket(0, s1.fd()).unwrap();
        p2.register_socket(0, s2.fd()).unwrap();
        // Each socket's own fill ring gets its own half of the fill frames.
        let half = FILL_FRAMES / 2;
        let f1: Vec<u64> = (0..half).map(|i| umem.frame_addr(i)).collect();
        let f2: Vec<u64> = (half..FILL_FRAMES).map(|i| umem.frame_addr(i)).collect();
        assert_eq!(s1.fill(&f1), f1.len());
        assert_eq!(s2.fill(&f2), f2.len());
        s1.wakeup_rx();
        s2.wakeup_rx();
        ((p1, p2), umem, s1, s2)
    });
    let (cap2, ps1) = run_in_netns(b.name(), || {
        (
            PacketSocket::bind("vb2").unwrap(),
            PacketSocket::bind("vb1").unwrap(),
        )
    });

    let inbound = udp_frame(MAC_A, MAC_B, None, IP_B, IP_NAT, b"in on 1, out on 2");
    ps1.send(&inbound).unwrap();
    let mut d = [Desc::default()];
    let deadline = Instant::now() + WAIT;
    while s1.recv(&mut d) == 0 {
        assert!(Instant::now() < deadline, "nothing received on interface 1");
        s1.wakeup_rx();
        s1.poll_rx(20).unwrap();
    }
    assert!(
        d[0].addr < umem.frame_addr(FILL_FRAMES / 2),
        "not from socket 1's fill ring"
    );
    assert_eq!(umem.frame(d[0].addr, d[0].len as usize), &inbound[..]);
    // Rewrite the Ethernet header in place and hand the same frame to socket 2.
    {
        // SAFETY: the frame came out of the rx ring and is in no other ring.
        let f = unsafe { umem.frame_mut(d[0].addr, 12) };
        f[..6].copy_from_slice(&MAC_B2);
        f[6..12].copy_from_slice(&MAC_A2);
    }
    let mut expected = inbound.clone();
    expected[..6].copy_from_slice(&MAC_B2);
    expected[6..12].copy_from_slice(&MAC_A2);
    let done = send_and_complete(
        &mut s2,
        &[Desc {
            addr: d[0].addr,
            len: d[0].len,
        }],
    );
    assert_eq!(
        done,
        vec![d[0].addr],
        "completion must return the same frame"
    );
    assert!(
        cap2.recv_matching(WAIT, |g| g == expected.as_slice())
            .is_some(),
        "forwarded frame not seen on the peer of interface 2"
    );

    // The shared socket receives too, through its own fill ring.
    let back = udp_frame(MAC_A2, MAC_B2, None, IP_B, IP_NAT, b"in on 2");
    run_in_netns(b.name(), || {
        PacketSocket::bind("vb2").unwrap().send(&back).unwrap()
    });
    let (addr, got) = recv_one(&mut s2, &umem, WAIT).expect("nothing received on interface 2");
    assert_eq!(got, back);
    let half = umem.frame_addr(FILL_FRAMES / 2);
    assert!(
        (half..umem.frame_addr(FILL_FRAMES)).contains(&addr),
        "frame {addr:#x} not from socket 2's fill ring"
    );
    drop(progs);
}

/// Issue 10, fail closed: on a two-queue veth with a socket on queue 0 only, IPv4 frames
/// that land on queue 1 are dropped by natgw's program and counted in its per-CPU drop
/// map, never passed to the kernel (whose UDP socket here must receive nothing).
#[test]
fn unserved_queue_is_dropped_and_counted_not_passed() {
    use natgw::dataplane::xdp::DROP_UNSERVED_QUEUE;
    use std::net::UdpSocket;
    if !natgw_testbed::netns::prerequisites("unserved_queue_is_dropped_and_counted_not_passed") {
        return;
    }
    const N: u16 = 200;
    let a = Netns::new(&unique_name("qa"));
    let b = Netns::new(&unique_name("qb"));
    a.ip(&[
        "link",
        "add",
        "va",
        "numrxqueues",
        "2",
        "numtxqueues",
        "2",
        "type",
        "veth",
        "peer",
        "name",
        "vb",
        "netns",
        b.name(),
        "numrxqueues",
        "2",
        "numtxqueues",
        "2",
    ]);
    a.ip(&["link", "set", "va", "up"]);
    b.ip(&["link", "set", "vb", "up"]);
    a.add_addr("va", "10.77.0.1/24");
    // GRO-eligible skbs (no TSO: checksum offload off) take veth's per-queue NAPI path,
    // where native XDP runs.
    run_in_netns(b.name(), || {
        natgw_kernel::ethtool::set_tx_checksum("vb", false)
    })
    .unwrap();
    let (mut s, kernel) = run_in_netns(a.name(), || {
        let s = xsk_on_queues("va", 2);
        let k = UdpSocket::bind(("0.0.0.0", 9)).unwrap();
        k.set_nonblocking(true).unwrap();
        (s, k)
    });
    let mac_a: [u8; 6] = {
        let l = run_in_netns(a.name(), || natgw_kernel::netlink::link_by_name("va")).unwrap();
        l.mac
    };
    // Sent while the socket is read, paced so that its few fill-ring frames suffice.
    let bns = b.name().to_string();
    let sender = std::thread::spawn(move || {
        run_in_netns(&bns, || {
            let ps = PacketSocket::bind("vb").unwrap();
            for i in 0..N {
                // Another source port per frame (UDP checksum 0: none): spread over the
                // sender's transmit queues, which are the receiver's queues on veth.
                let mut f = udp_frame(mac_a, MAC_B, None, IP_B, IP_A, b"to a local address");
                f[34..36].copy_from_slice(&(10000 + i).to_be_bytes());
                ps.send(&f).unwrap();
                if i % 8 == 7 {
                    std::thread::sleep(Duration::from_millis(5));
                }
            }
        })
    });
    let got = recv_during(&mut s.sock, &s.umem, Duration::from_millis(1500))
        .iter()
        .filter(|f| ipv4_dst(f) == Some(IP_A))
        .count() as u64;
    sender.join().unwrap();
    let mut buf = [0u8; 64];
    let mut passed = 0;
    while kernel.recv_from(&mut buf).is_ok() {
        passed += 1;
    }
    let dropped = s.prog.drops().get(DROP_UNSERVED_QUEUE).unwrap();
    assert_eq!(
        passed, 0,
        "{passed} of {N} frames reached the kernel (socket: {got}, dropped: {dropped})"
    );
    assert!(
        got > 0 && dropped > 0,
        "frames did not spread over both queues: socket {got}, dropped {dropped}"
    );
    assert_eq!(
        got + dropped,
        u64::from(N),
        "socket {got} + dropped {dropped} != {N}"
    );
}

/// The redirect program (native) on `ifname` with `queues` map slots, a socket on queue 0
/// only, its fill ring filled. Must run inside the interface's namespace.
fn xsk_on_queues(ifname: &str, queues: u32) -> Side {
    let idx = sys::if_nametoindex(ifname).unwrap();
    let mut prog = XdpProgram::load(queues).unwrap_or_else(|e| panic!("load: {e}"));
    let umem = Umem::new(FRAMES, 2048).unwrap();
    let mut sock = XskSocket::new(&umem, idx, 0, &copy_cfg()).unwrap();
    prog.register_socket(0, sock.fd()).unwrap();
    prog.attach(idx, AttachMode::Native).unwrap();
    let addrs: Vec<u64> = (0..FILL_FRAMES).map(|i| umem.frame_addr(i)).collect();
    assert_eq!(sock.fill(&addrs), FILL_FRAMES as usize);
    sock.wakeup_rx();
    Side { prog, umem, sock }
}
