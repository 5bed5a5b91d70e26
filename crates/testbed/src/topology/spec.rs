//! What a topology is made of: its addressing, the spec to build (checked without touching
//! the system), its hosts, and the natgw configuration that fits it.

use std::fmt::Write as _;
use std::io;
use std::net::Ipv4Addr;

use super::{GW_INSIDE_IF, GW_OUTSIDE_IF};

/// The addresses of the standard topology. Inside addresses must lie in 10.0.0.0/8, outside
/// ones (gateway, router, server, pools) in 192.168.0.0/16: the bench never uses anything
/// that could be routed off the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Addressing {
    /// The inside prefix of every tenant (default 10.0.0.0/24).
    pub inside_net: Ipv4Addr,
    pub inside_len: u8,
    /// The hosts' default gateway, configured on the gateway's inside interface(s) (10.0.0.1).
    pub inside_gw: Ipv4Addr,
    /// The first inside host; host `i` of each tenant is `first_host + i` (10.0.0.2).
    pub first_host: Ipv4Addr,
    /// The outside link between gateway and router (192.168.1.0/24).
    pub outside_net: Ipv4Addr,
    pub outside_len: u8,
    /// The gateway's `eth-out` address (192.168.1.2), natgw's `[outside] address`.
    pub gw_outside: Ipv4Addr,
    /// The router on the outside link (192.168.1.1), natgw's `[outside] gateway`.
    pub router_outside: Ipv4Addr,
    /// The server link (192.168.2.0/24), the router's address on it (192.168.2.1) and the
    /// server (192.168.2.2).
    pub server_net: Ipv4Addr,
    pub server_len: u8,
    pub router_server: Ipv4Addr,
    pub server: Ipv4Addr,
    /// NAT pool of each tenant, inclusive ranges: tenant 0 is 192.168.1.10-192.168.1.13,
    /// tenant 1 (VLAN mode only) 192.168.1.20-192.168.1.23. The router routes them via
    /// `gw_outside`, so it only ever ARPs for the gateway's own address.
    pub pools: [(Ipv4Addr, Ipv4Addr); 2],
}

impl Default for Addressing {
    fn default() -> Self {
        Addressing {
            inside_net: Ipv4Addr::new(10, 0, 0, 0),
            inside_len: 24,
            inside_gw: Ipv4Addr::new(10, 0, 0, 1),
            first_host: Ipv4Addr::new(10, 0, 0, 2),
            outside_net: Ipv4Addr::new(192, 168, 1, 0),
            outside_len: 24,
            gw_outside: Ipv4Addr::new(192, 168, 1, 2),
            router_outside: Ipv4Addr::new(192, 168, 1, 1),
            server_net: Ipv4Addr::new(192, 168, 2, 0),
            server_len: 24,
            router_server: Ipv4Addr::new(192, 168, 2, 1),
            server: Ipv4Addr::new(192, 168, 2, 2),
            pools: [
                (
                    Ipv4Addr::new(192, 168, 1, 10),
                    Ipv4Addr::new(192, 168, 1, 13),
                ),
                (
                    Ipv4Addr::new(192, 168, 1, 20),
                    Ipv4Addr::new(192, 168, 1, 23),
                ),
            ],
        }
    }
}

/// What to build.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TopologySpec {
    /// 1-4 characters `a-z 0-9`; namespaces are `ngw-<tag>-...`. Topologies that exist at
    /// the same time need different tags.
    pub tag: String,
    /// Inside hosts per tenant, 1-50.
    pub inside_hosts: usize,
    /// rx and tx queues of both gateway veths and their peers, 1-64 (natgw binds one
    /// AF_XDP socket per queue; `natgw_config` has one worker per queue).
    pub queues: u32,
    /// Two tenants on VLANs `vlan_ids` of the one inside link instead of one untagged tenant.
    pub vlans: bool,
    pub vlan_ids: [u16; 2],
    pub addressing: Addressing,
}

impl TopologySpec {
    /// The defaults: one untagged tenant with one host, one queue.
    pub fn new(tag: &str) -> Self {
        TopologySpec {
            tag: tag.to_string(),
            inside_hosts: 1,
            queues: 1,
            vlans: false,
            vlan_ids: [100, 200],
            addressing: Addressing::default(),
        }
    }

    /// The natgw configuration of a topology built from this spec (see
    /// [`Topology::natgw_config`](super::Topology::natgw_config)).
    pub fn natgw_config(&self) -> String {
        natgw_config(self)
    }

    /// Number of tenants: 2 in VLAN mode, else 1.
    pub fn tenants(&self) -> usize {
        if self.vlans { 2 } else { 1 }
    }

    /// Checks the spec without touching the system.
    pub fn validate(&self) -> io::Result<()> {
        let bad = |m: String| Err(io::Error::new(io::ErrorKind::InvalidInput, m));
        let t = &self.tag;
        if t.is_empty()
            || t.len() > 4
            || !t
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        {
            return bad(format!("tag {t:?}: 1-4 characters a-z 0-9"));
        }
        if !(1..=50).contains(&self.inside_hosts) {
            return bad(format!("inside_hosts {}: 1-50", self.inside_hosts));
        }
        if !(1..=64).contains(&self.queues) {
            return bad(format!("queues {}: 1-64", self.queues));
        }
        if self.vlans
            && (self.vlan_ids[0] == self.vlan_ids[1]
                || self.vlan_ids.iter().any(|v| !(1..=4094).contains(v)))
        {
            return bad(format!(
                "vlan_ids {:?}: two different ids 1-4094",
                self.vlan_ids
            ));
        }
        let a = &self.addressing;
        let inside = (Ipv4Addr::new(10, 0, 0, 0), 8);
        let outside = (Ipv4Addr::new(192, 168, 0, 0), 16);
        let last_host = Ipv4Addr::from(u32::from(a.first_host) + self.inside_hosts as u32 - 1);
        let in_net = (a.inside_net, a.inside_len);
        for (name, ip, net) in [
            ("inside_gw", a.inside_gw, in_net),
            ("first_host", a.first_host, in_net),
            ("last host", last_host, in_net),
            ("inside_net", a.inside_net, inside),
            ("gw_outside", a.gw_outside, (a.outside_net, a.outside_len)),
            (
                "router_outside",
                a.router_outside,
                (a.outside_net, a.outside_len),
            ),
            ("outside_net", a.outside_net, outside),
            (
                "router_server",
                a.router_server,
                (a.server_net, a.server_len),
            ),
            ("server", a.server, (a.server_net, a.server_len)),
            ("server_net", a.server_net, outside),
        ] {
            if !(8..=30).contains(&net.1) || !in_prefix(ip, net.0, net.1) {
                return bad(format!("{name} {ip} is not in {}/{}", net.0, net.1));
            }
        }
        if (a.first_host..=last_host).contains(&a.inside_gw) {
            return bad(format!("inside_gw {} is one of the hosts", a.inside_gw));
        }
        for (i, &(first, last)) in a.pools.iter().take(self.tenants()).enumerate() {
            if first > last || !in_prefix(first, outside.0, 16) || !in_prefix(last, outside.0, 16) {
                return bad(format!(
                    "pools[{i}] {first}-{last}: a range in 192.168.0.0/16"
                ));
            }
            for r in [a.gw_outside, a.router_outside, a.router_server, a.server] {
                if (first..=last).contains(&r) {
                    return bad(format!("pools[{i}] {first}-{last} contains {r}"));
                }
            }
        }
        if self.vlans && ranges_overlap(a.pools[0], a.pools[1]) {
            return bad("pools[0] and pools[1] overlap".to_string());
        }
        Ok(())
    }
}

impl Default for TopologySpec {
    fn default() -> Self {
        TopologySpec::new("lab")
    }
}

/// One inside host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Host {
    /// Its namespace; its interface is [`HOST_IF`](super::HOST_IF).
    pub ns: String,
    pub addr: Ipv4Addr,
    /// 0, or 1 for the second VLAN tenant.
    pub tenant: usize,
    /// Its tenant's VLAN (VLAN mode only; the host itself sends untagged).
    pub vlan: Option<u16>,
}

fn in_prefix(a: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(a) & mask == u32::from(net) & mask
}

fn ranges_overlap(a: (Ipv4Addr, Ipv4Addr), b: (Ipv4Addr, Ipv4Addr)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

/// The fewest prefixes that cover `first..=last` exactly.
pub(super) fn range_to_prefixes(first: Ipv4Addr, last: Ipv4Addr) -> Vec<(Ipv4Addr, u8)> {
    let (mut lo, hi) = (u64::from(u32::from(first)), u64::from(u32::from(last)));
    let mut out = Vec::new();
    while lo <= hi {
        let mut size = if lo == 0 {
            1u64 << 32
        } else {
            1u64 << lo.trailing_zeros().min(32)
        };
        while lo + size - 1 > hi {
            size >>= 1;
        }
        out.push((Ipv4Addr::from(lo as u32), 32 - size.trailing_zeros() as u8));
        lo += size;
    }
    out
}

fn natgw_config(spec: &TopologySpec) -> String {
    let a = &spec.addressing;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "# natgw in the gateway namespace of testbed topology ngw-{}.",
        spec.tag
    );
    let _ = writeln!(s, "[outside]\ninterface = \"{GW_OUTSIDE_IF}\"");
    let _ = writeln!(
        s,
        "address = \"{}\"\ngateway = \"{}\"\n",
        a.gw_outside, a.router_outside
    );
    let _ = writeln!(s, "[[inside]]\ninterface = \"{GW_INSIDE_IF}\"\n");
    let workers: Vec<String> = (0..spec.queues)
        .map(|q| format!("{{ core = {q}, queue = {q} }}"))
        .collect();
    let _ = writeln!(s, "[dataplane]\nworkers = [{}]", workers.join(", "));
    let _ = writeln!(s, "xdp_mode = \"auto\"\npoll = \"adaptive\"\n");
    // natgw's default socket is one for the whole machine; tests run at once.
    let socket = crate::lab::control_socket(&format!("{}-gw", super::prefix(&spec.tag)));
    let _ = writeln!(s, "[control]\nsocket = \"{}\"\n", socket.display());
    for t in 0..spec.tenants() {
        let name = match (spec.vlans, t) {
            (false, _) => "lab",
            (true, 0) => "tenant-a",
            (true, _) => "tenant-b",
        };
        let _ = writeln!(
            s,
            "[[realm]]\nname = \"{name}\"\ninterface = \"{GW_INSIDE_IF}\""
        );
        if spec.vlans {
            let _ = writeln!(s, "vlan = {}", spec.vlan_ids[t]);
        }
        let _ = writeln!(s, "prefixes = [\"{}/{}\"]", a.inside_net, a.inside_len);
        let _ = writeln!(s, "gateway = \"{}\"", a.inside_gw);
        let _ = writeln!(s, "pool = [\"{}-{}\"]\n", a.pools[t].0, a.pools[t].1);
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip4(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn range_to_prefixes_covers_exactly() {
        assert_eq!(
            range_to_prefixes(ip4("192.168.1.10"), ip4("192.168.1.13")),
            vec![(ip4("192.168.1.10"), 31), (ip4("192.168.1.12"), 31)]
        );
        assert_eq!(
            range_to_prefixes(ip4("192.168.1.8"), ip4("192.168.1.15")),
            vec![(ip4("192.168.1.8"), 29)]
        );
        assert_eq!(
            range_to_prefixes(ip4("192.168.1.7"), ip4("192.168.1.7")),
            vec![(ip4("192.168.1.7"), 32)]
        );
        assert_eq!(
            range_to_prefixes(ip4("0.0.0.0"), ip4("255.255.255.255")),
            vec![(ip4("0.0.0.0"), 0)]
        );
        // Exhaustive over a small window: the prefixes tile the range with no gap or overlap.
        for first in 0u32..40 {
            for last in first..40 {
                let mut next = first;
                for (net, len) in range_to_prefixes(Ipv4Addr::from(first), Ipv4Addr::from(last)) {
                    assert_eq!(u32::from(net), next);
                    next += 1 << (32 - len);
                }
                assert_eq!(next, last + 1);
            }
        }
    }

    #[test]
    fn validate_rejects_bad_specs() {
        assert!(TopologySpec::new("ab1").validate().is_ok());
        for tag in ["", "abcde", "A", "a-b", "a b"] {
            assert!(TopologySpec::new(tag).validate().is_err(), "{tag:?}");
        }
        let mut s = TopologySpec::new("t");
        s.addressing.server = ip4("8.8.8.8");
        assert!(s.validate().is_err());
        let mut s = TopologySpec::new("t");
        s.addressing.first_host = ip4("10.0.0.1");
        assert!(s.validate().is_err(), "gateway among the hosts");
        let mut s = TopologySpec::new("t");
        s.inside_hosts = 300;
        assert!(s.validate().is_err());
        let mut s = TopologySpec::new("t");
        s.queues = 0;
        assert!(s.validate().is_err());
        let mut s = TopologySpec::new("t");
        s.addressing.pools[0] = (ip4("192.168.1.1"), ip4("192.168.1.4"));
        assert!(s.validate().is_err(), "pool holds the router");
        let mut s = TopologySpec::new("t");
        s.vlans = true;
        s.addressing.pools[1] = (ip4("192.168.1.12"), ip4("192.168.1.20"));
        assert!(s.validate().is_err(), "overlapping pools");
        s.vlans = false;
        assert!(s.validate().is_ok(), "pool 1 unused without VLANs");
        let mut s = TopologySpec::new("t");
        s.addressing.inside_net = ip4("172.16.0.0");
        s.addressing.inside_gw = ip4("172.16.0.1");
        s.addressing.first_host = ip4("172.16.0.2");
        assert!(s.validate().is_err(), "inside must be 10/8");
    }
}
