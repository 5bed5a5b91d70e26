//! The dataplane's kernel helpers (rtnetlink, ethtool ioctls) against real links and
//! neighbours in private network namespaces.
//!
//! Needs root and iproute2. Without them each test prints a skip notice and passes,
//! except under `CI=true`, where a missing prerequisite fails the test.

use std::net::{Ipv4Addr, UdpSocket};
use std::time::{Duration, Instant};

use natgw::dataplane::neigh::NeighTable;
use natgw_kernel::ethtool;
use natgw_kernel::netlink::{
    self, NUD_FAILED, NUD_INCOMPLETE, NUD_PERMANENT, NUD_REACHABLE, NeighEvent, NeighSocket,
};

/// The veth pair these tests run on, built with the test bench's namespace helpers.
mod pair {
    use natgw_testbed::netns::{ip, mac_str, run_in_netns};
    use std::io;
    use std::sync::atomic::{AtomicU32, Ordering};

    pub const MAC_A: [u8; 6] = [0x02, 0x4e, 0x4c, 0, 0, 0x01];
    pub const MAC_B: [u8; 6] = [0x02, 0x4e, 0x4c, 0, 0, 0x02];
    pub const IP_A: [u8; 4] = [10, 211, 0, 1];
    pub const IP_B: [u8; 4] = [10, 211, 0, 2];

    /// Two namespaces joined by a veth: `if_a` (IP_A/24, MAC_A) in `ns_a`, `if_b`
    /// (IP_B/24, MAC_B) in `ns_b`. Dropping it deletes both namespaces, and with them
    /// the veth.
    pub struct Pair {
        pub ns_a: String,
        pub ns_b: String,
        pub if_a: String,
        pub if_b: String,
        created: Vec<String>,
    }

    impl Pair {
        pub fn new(rx_queues: u32, tx_queues: u32, mtu: u32) -> io::Result<Pair> {
            static NEXT: AtomicU32 = AtomicU32::new(0);
            let id = format!(
                "{:x}{}",
                std::process::id() & 0xf_ffff,
                NEXT.fetch_add(1, Ordering::Relaxed)
            );
            let mut p = Pair {
                ns_a: format!("natgw-nl-{id}-a"),
                ns_b: format!("natgw-nl-{id}-b"),
                if_a: format!("nl{id}a"),
                if_b: format!("nl{id}b"),
                created: Vec::new(),
            };
            for ns in [p.ns_a.clone(), p.ns_b.clone()] {
                ip(&["netns", "add", &ns])?;
                p.created.push(ns);
            }
            let (rxq, txq, mtu) = (
                rx_queues.to_string(),
                tx_queues.to_string(),
                mtu.to_string(),
            );
            let (mac_a, mac_b) = (mac_str(MAC_A), mac_str(MAC_B));
            #[rustfmt::skip]
            ip(&[
                "link", "add", "name", &p.if_a, "netns", &p.ns_a, "address", &mac_a, "mtu", &mtu,
                "numrxqueues", &rxq, "numtxqueues", &txq, "type", "veth",
                "peer", "name", &p.if_b, "netns", &p.ns_b, "address", &mac_b, "mtu", &mtu,
            ])?;
            let ip_a = format!("{}/24", std::net::Ipv4Addr::from(IP_A));
            let ip_b = format!("{}/24", std::net::Ipv4Addr::from(IP_B));
            ip(&["-n", &p.ns_a, "addr", "add", &ip_a, "dev", &p.if_a])?;
            ip(&["-n", &p.ns_b, "addr", "add", &ip_b, "dev", &p.if_b])?;
            ip(&["-n", &p.ns_a, "link", "set", &p.if_a, "up"])?;
            ip(&["-n", &p.ns_b, "link", "set", &p.if_b, "up"])?;
            Ok(p)
        }

        /// Runs `f` on a fresh thread that joined `ns_a`: the test runner's threads never
        /// change namespace. A panic in `f` is re-raised here.
        pub fn in_a<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
            run_in_netns(&self.ns_a, f)
        }
    }

    impl Drop for Pair {
        fn drop(&mut self) {
            for ns in self.created.drain(..) {
                if let Err(e) = ip(&["netns", "del", &ns]) {
                    eprintln!("cleanup: {e}");
                }
            }
        }
    }
}

use natgw_testbed::netns::{self, prerequisites};
use pair::{IP_A, IP_B, MAC_A, MAC_B, Pair};

/// Sets up a pair or skips (returns None) when the machine cannot.
fn pair(test: &str, rxq: u32, txq: u32, mtu: u32) -> Option<Pair> {
    if !prerequisites(test) {
        return None;
    }
    match Pair::new(rxq, txq, mtu) {
        Ok(p) => Some(p),
        Err(e) if std::env::var("CI").as_deref() == Ok("true") => panic!("{test}: {e}"),
        Err(e) => {
            eprintln!("skipping {test}: cannot create namespaces: {e}");
            None
        }
    }
}

/// Polls `f` until it yields a value or `timeout` passes.
fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A datagram from A to B's address: makes A's kernel ARP for B.
fn poke_b() {
    let s = UdpSocket::bind((Ipv4Addr::from(IP_A), 0)).expect("bind in ns A");
    s.send_to(b"natgw", (Ipv4Addr::from(IP_B), 9))
        .expect("send to B");
}

#[test]
fn link_by_name_and_addresses() {
    let Some(p) = pair("link_by_name_and_addresses", 3, 5, 1400) else {
        return;
    };
    let if_a = p.if_a.clone();
    p.in_a(move || {
        let link = netlink::link_by_name(&if_a).expect("link_by_name");
        assert_eq!(link.name, if_a);
        assert!(link.ifindex > 0);
        assert_eq!(link.mac, MAC_A);
        assert_eq!(link.mtu, 1400);
        assert_eq!((link.num_rx_queues, link.num_tx_queues), (3, 5));
        assert!(link.up);

        let addrs = netlink::addresses(link.ifindex).expect("addresses");
        assert_eq!(addrs, vec![(Ipv4Addr::from(IP_A), 24)]);
        let lo = netlink::link_by_name("lo").expect("lo");
        assert_eq!(
            netlink::addresses(lo.ifindex).expect("lo addresses"),
            vec![]
        );

        let e = netlink::link_by_name("natgwnosuch0").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV), "{e}");
    });
}

#[test]
fn neighbour_dump_events_and_table() {
    let Some(p) = pair("neighbour_dump_events_and_table", 1, 1, 1500) else {
        return;
    };
    let if_a = p.if_a.clone();
    let b = Ipv4Addr::from(IP_B);
    // The socket lives on the namespace thread; the main thread only runs `ip` commands,
    // so the thread is driven through channels.
    let (go_tx, go_rx) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<u32>();
    let ns_a = p.ns_a.clone();
    let worker = std::thread::spawn(move || {
        netns::run_in_netns(&ns_a, move || {
            let ifindex = netlink::link_by_name(&if_a).expect("link").ifindex;
            let mut sock = NeighSocket::open().expect("NeighSocket::open");
            assert!(sock.fd() >= 0);
            let before = sock.dump().expect("dump");
            assert!(
                !before.iter().any(|n| n.addr == b),
                "B known before any traffic: {before:?}"
            );

            poke_b();
            let mut events = Vec::new();
            let new = wait_for(Duration::from_secs(5), || {
                sock.poll_events(&mut events).expect("poll_events");
                events.iter().find_map(|ev| match ev {
                    NeighEvent::New(n) if n.addr == b && n.is_usable() => Some(*n),
                    _ => None,
                })
            })
            .unwrap_or_else(|| panic!("no usable New event for B; got {events:?}"));
            assert_eq!(new.ifindex, ifindex);
            assert_eq!(new.mac, Some(MAC_B));

            let dump = sock.dump().expect("dump");
            let n = dump
                .iter()
                .find(|n| n.addr == b)
                .unwrap_or_else(|| panic!("B missing from dump {dump:?}"));
            assert_eq!((n.ifindex, n.mac), (ifindex, Some(MAC_B)));
            assert!(n.is_usable(), "{n:?}");

            let table = NeighTable::new(64);
            table.sync(&dump).expect("sync");
            assert_eq!(table.lookup(ifindex, b), Some(MAC_B));
            assert_eq!(table.lookup(ifindex, Ipv4Addr::new(10, 211, 0, 3)), None);
            assert_eq!(table.lookup(ifindex + 1000, b), None);

            // Deletion by someone else arrives as a Del event and empties the table.
            ready_tx.send(ifindex).unwrap();
            go_rx.recv().unwrap();
            events.clear();
            wait_for(Duration::from_secs(5), || {
                sock.poll_events(&mut events).expect("poll_events");
                for ev in &events {
                    table.apply(ev).expect("apply");
                }
                events
                    .iter()
                    .any(|ev| matches!(ev, NeighEvent::Del(n) if n.addr == b))
                    .then_some(())
            })
            .unwrap_or_else(|| panic!("no Del event for B; got {events:?}"));
            assert_eq!(table.lookup(ifindex, b), None);
        })
    });
    if let Ok(_ifindex) = ready_rx.recv() {
        let del = netns::ip(&[
            "-n",
            &p.ns_a,
            "neigh",
            "del",
            &b.to_string(),
            "dev",
            &p.if_a,
        ]);
        let _ = go_tx.send(());
        del.expect("ip neigh del");
    }
    worker
        .join()
        .unwrap_or_else(|e| std::panic::resume_unwind(e));
}

#[test]
fn resolve_triggers_arp_without_bogus_entries() {
    let Some(p) = pair("resolve_triggers_arp_without_bogus_entries", 1, 1, 1500) else {
        return;
    };
    let b = Ipv4Addr::from(IP_B);
    let nobody = Ipv4Addr::new(10, 211, 0, 77);
    let fixed = Ipv4Addr::new(10, 211, 0, 50);
    let fixed_mac = [0x02, 0x4e, 0x4c, 0, 0, 0x50];
    netns::ip(&[
        "-n",
        &p.ns_a,
        "neigh",
        "add",
        &fixed.to_string(),
        "lladdr",
        &netns::mac_str(fixed_mac),
        "dev",
        &p.if_a,
        "nud",
        "permanent",
    ])
    .expect("add permanent neighbour");
    let if_a = p.if_a.clone();
    p.in_a(move || {
        let ifindex = netlink::link_by_name(&if_a).expect("link").ifindex;
        assert_eq!(netlink::neighbour(ifindex, b).expect("neighbour"), None);

        netlink::resolve(ifindex, b).expect("resolve B");
        let n = wait_for(Duration::from_secs(5), || {
            netlink::neighbour(ifindex, b)
                .expect("neighbour")
                .filter(|n| n.state & NUD_REACHABLE != 0)
        })
        .expect("B never became REACHABLE after resolve");
        assert_eq!(n.mac, Some(MAC_B));
        // Resolving a reachable neighbour again is harmless.
        netlink::resolve(ifindex, b).expect("resolve B again");
        let again = netlink::neighbour(ifindex, b)
            .expect("neighbour")
            .expect("B");
        assert!(again.is_usable() && again.mac == Some(MAC_B), "{again:?}");

        // An address nobody answers for gets an entry that is being resolved, never one
        // with a MAC we made up.
        netlink::resolve(ifindex, nobody).expect("resolve nobody");
        let n = netlink::neighbour(ifindex, nobody)
            .expect("neighbour")
            .expect("resolve created no entry");
        assert!(n.state & (NUD_INCOMPLETE | NUD_FAILED) != 0, "{n:?}");
        assert_eq!(n.mac, None);
        assert!(!n.is_usable());

        // Static entries are left static (the kernel's NTF_USE path would demote them).
        netlink::resolve(ifindex, fixed).expect("resolve static");
        let n = netlink::neighbour(ifindex, fixed)
            .expect("neighbour")
            .expect("static");
        assert_eq!((n.state, n.mac), (NUD_PERMANENT, Some(fixed_mac)));

        let e = netlink::resolve(ifindex + 1000, b).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV), "{e}");
    });
}

#[test]
fn ethtool_on_veth() {
    let Some(p) = pair("ethtool_on_veth", 3, 5, 1500) else {
        return;
    };
    let if_a = p.if_a.clone();
    p.in_a(move || {
        assert_eq!(ethtool::rss_config(&if_a).expect("rss_config"), None);
        for flow in [ethtool::TCP_V4_FLOW, ethtool::UDP_V4_FLOW] {
            assert_eq!(
                ethtool::rx_flow_hash_fields(&if_a, flow).expect("rx_flow_hash_fields"),
                None
            );
        }
        assert_eq!(ethtool::channels(&if_a).expect("channels"), Some((3, 5)));

        assert!(
            ethtool::tx_checksum(&if_a).expect("tx_checksum"),
            "veth default"
        );
        ethtool::set_tx_checksum(&if_a, false).expect("tx off");
        assert!(!ethtool::tx_checksum(&if_a).expect("tx_checksum"));
        ethtool::set_tx_checksum(&if_a, true).expect("tx on");
        assert!(ethtool::tx_checksum(&if_a).expect("tx_checksum"));

        // A missing interface is an error, not "unsupported".
        let e = ethtool::rss_config("natgwnosuch0").unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::ENODEV), "{e}");
    });
}
