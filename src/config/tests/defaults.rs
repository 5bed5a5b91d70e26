//! Omitted keys take their defaults; explicit values are kept.

use super::util::*;
use crate::config::*;
use std::net::Ipv4Addr;

#[test]
fn defaults_are_filled() {
    let c = ok(&doc("", ""));
    assert_eq!(c.outside.name, "eth1");
    assert_eq!(c.outside.address, Ipv4Addr::new(192, 168, 1, 2));
    assert_eq!(c.outside.gateway, Ipv4Addr::new(192, 168, 1, 1));
    assert!(c.outside.management.is_empty());
    assert_eq!(c.inside.len(), 2);
    assert!(c.inside[0].management.is_empty());

    let d = &c.dataplane;
    assert_eq!(d.workers.len(), 1);
    assert_eq!(d.workers[0].queue, 0);
    let multi = std::thread::available_parallelism().map_or(1, |n| n.get()) > 1;
    assert_eq!(d.workers[0].core, usize::from(multi));
    assert_eq!(d.xdp_mode, XdpMode::Auto);
    assert_eq!(d.poll, PollMode::Adaptive);
    assert_eq!(d.spin_max_us, 16_000);
    assert_eq!(d.batch_size, 64);
    assert_eq!(d.ring_size, 2048);
    assert_eq!(d.umem_frames, 8192);
    assert_eq!(d.handoff_queue, 4096);
    assert!(!d.forward_only);
    assert_eq!(c.sessions.capacity_per_core, 262_144);
    assert_eq!(
        c.fragments,
        Fragments {
            max_datagrams: 4096,
            max_held: 1024,
            timeout: 2
        }
    );
    assert_eq!(c.control.listen, "127.0.0.1:9180".parse().unwrap());

    let r = &c.realms[0];
    assert_eq!(r.name, "a");
    assert_eq!(r.vlan, None);
    assert_eq!(r.gateway, None);
    assert!(r.routes.is_empty() && r.static_mappings.is_empty() && r.one_to_one.is_empty());
    assert_eq!(r.mapping, Mapping::EndpointIndependent);
    assert_eq!(r.filtering, Filtering::AddressDependent);
    assert!(!r.inbound_refresh);
    assert!(r.hairpinning);
    assert_eq!(r.ports.policy, PortPolicy::PreserveThenRandom);
    assert_eq!(
        r.ports.range,
        PortRange {
            first: 1024,
            last: 65535
        }
    );
    assert_eq!(r.ports.per_host_limit, 4096);
    assert_eq!(
        r.timeouts,
        Timeouts {
            udp: 300,
            tcp_established: 7440,
            tcp_transitory: 240,
            icmp: 60
        }
    );
}

#[test]
fn explicit_values_are_kept() {
    let c = ok(&doc(
        r#"vlan = 7
gateway = "10.0.0.1"
routes = [{ prefix = "10.1.0.0/16", via = "10.0.0.254" }]
static = [{ protocol = "udp", external = "192.168.1.21:53", internal = "10.1.2.3:5353" }]
one_to_one = [{ external = "192.168.1.50", internal = "10.0.0.50" }]
mapping = "address-dependent"
filtering = "endpoint-independent"
inbound_refresh = true
hairpinning = false
[realm.ports]
policy = "random"
range = "2000-3000"
per_host_limit = 10
[realm.timeouts]
udp = 120
tcp_established = 86400
tcp_transitory = 300
icmp = 90"#,
        r#"[dataplane]
workers = [{ core = 2, queue = 1 }, { core = 3, queue = 0 }]
xdp_mode = "native"
poll = "busy"
spin_max_us = 2500
batch_size = 1024
ring_size = 4096
umem_frames = 16384
handoff_queue = 64
forward_only = true
[sessions]
capacity_per_core = 1024
[fragments]
max_datagrams = 1
max_held = 0
timeout = 60
[control]
listen = "[::1]:9000""#,
    )
    .replace(
        "pool = [\"192.168.1.10\"]",
        "pool = [\"192.168.1.10\", \"192.168.1.20-192.168.1.29\", \"198.51.100.0/30\"]",
    ));
    let r = &c.realms[0];
    assert_eq!(r.vlan, Some(7));
    assert_eq!(r.gateway, Some(Ipv4Addr::new(10, 0, 0, 1)));
    assert_eq!(r.pool.len(), 3);
    assert_eq!(r.pool[1].len(), 10);
    assert_eq!(r.pool[2].first, Ipv4Addr::new(198, 51, 100, 0));
    assert_eq!(r.pool[2].last, Ipv4Addr::new(198, 51, 100, 3));
    assert_eq!(r.routes[0].via, Ipv4Addr::new(10, 0, 0, 254));
    assert_eq!(r.static_mappings[0].protocol, Protocol::UDP);
    assert_eq!(
        r.static_mappings[0].internal,
        "10.1.2.3:5353".parse().unwrap()
    );
    assert_eq!(r.one_to_one[0].internal, Ipv4Addr::new(10, 0, 0, 50));
    assert_eq!(r.mapping, Mapping::AddressDependent);
    assert_eq!(r.filtering, Filtering::EndpointIndependent);
    assert!(r.inbound_refresh && !r.hairpinning);
    assert_eq!(r.ports.policy, PortPolicy::Random);
    assert_eq!(
        r.ports.range,
        PortRange {
            first: 2000,
            last: 3000
        }
    );
    assert_eq!(r.ports.per_host_limit, 10);
    assert_eq!(r.timeouts.udp, 120);
    assert_eq!(r.timeouts.tcp_established, 86400);
    let d = &c.dataplane;
    assert_eq!(d.workers[1], Worker { core: 3, queue: 0 });
    assert_eq!((d.xdp_mode, d.poll), (XdpMode::Native, PollMode::Busy));
    assert_eq!(
        (d.batch_size, d.ring_size, d.umem_frames),
        (1024, 4096, 16384)
    );
    assert_eq!((d.handoff_queue, d.forward_only), (64, true));
    assert_eq!(d.spin_max_us, 2500);
    assert_eq!(c.sessions.capacity_per_core, 1024);
    assert_eq!(c.fragments.max_held, 0);
    assert_eq!(c.control.listen, "[::1]:9000".parse().unwrap());
    assert_eq!(parse(&c.to_toml()), Ok(c));
}

#[test]
fn umem_default_follows_ring_size() {
    let c = ok(&doc("", "[dataplane]\nring_size = 8192"));
    assert_eq!(c.dataplane.umem_frames, 16384);
}
