//! natgw's own addresses: what the kernel's sockets receive instead of the engine. The
//! dataplane writes these lists into each interface's XDP maps, which pass the frames to
//! the kernel before any NAT processing (see `dataplane::xdp`).

use super::{ExtAddr, Rules};
use crate::config::Config;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;

/// The limited broadcast (DHCP DISCOVER and REQUEST, ...).
pub const LIMITED_BROADCAST: Ipv4Addr = Ipv4Addr::BROADCAST;

/// What one interface passes to the kernel, by destination address.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct KernelAddrs {
    /// Passed whatever the frame's VLAN: the box's management addresses, the outside
    /// `address`, the limited broadcast.
    pub any: BTreeSet<Ipv4Addr>,
    /// Passed only when the frame arrives on that VLAN (None: untagged): each realm's
    /// `gateway` and the broadcast address of the realm prefix holding it.
    pub on_vlan: BTreeSet<(Ipv4Addr, Option<u16>)>,
}

impl Rules {
    /// Per interface, outside first and then the inside interfaces in configuration order
    /// (the engine's `Inside(i)` numbering): the destinations that are the kernel's.
    ///
    /// - outside: the outside `address`, `outside.management`, the limited broadcast;
    /// - inside `i`: the gateway of every realm on it and the broadcast address of the
    ///   realm prefix that holds that gateway (on the realm's VLAN only), `inside[i].management`,
    ///   the outside `address` and `outside.management` (the box's public addresses), the
    ///   limited broadcast.
    ///
    /// Nothing else: another inside link's addresses stay out of reach of a realm's hosts
    /// (tenants do not reach each other's links), and an address that is one of the NAT's
    /// external addresses (pool, static, 1:1) is never the kernel's.
    pub fn kernel_addrs(&self, cfg: &Config) -> Vec<KernelAddrs> {
        let nat = |a: &Ipv4Addr| {
            self.ext_addr(u32::from(*a))
                .is_some_and(|e| e != ExtAddr::Own)
        };
        let public: Vec<Ipv4Addr> = std::iter::once(cfg.outside.address)
            .chain(cfg.outside.management.iter().copied())
            .chain([LIMITED_BROADCAST])
            .collect();
        let mut out = vec![KernelAddrs {
            any: public.iter().copied().filter(|a| !nat(a)).collect(),
            on_vlan: BTreeSet::new(),
        }];
        for (i, inside) in cfg.inside.iter().enumerate() {
            let mut k = KernelAddrs {
                any: inside
                    .management
                    .iter()
                    .chain(&public)
                    .copied()
                    .filter(|a| !nat(a))
                    .collect(),
                on_vlan: BTreeSet::new(),
            };
            for r in self
                .realms
                .iter()
                .filter(|r| !r.retired && r.iface as usize == i)
            {
                let Some(gw) = r.gateway.map(Ipv4Addr::from) else {
                    continue;
                };
                let bcast = r
                    .prefixes
                    .iter()
                    .filter(|p| p.len <= 30 && p.contains(gw))
                    .map(|p| Ipv4Addr::from(p.last()));
                for a in std::iter::once(gw).chain(bcast).filter(|a| !nat(a)) {
                    k.on_vlan.insert((a, r.vlan));
                }
            }
            out.push(k);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::parse;
    use crate::nat::ports::BlockPartition;
    use std::sync::Arc;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn kernel_addrs_per_interface() {
        let cfg = parse(
            r#"
[outside]
interface = "eth1"
address = "203.0.113.2"
gateway = "203.0.113.1"
management = ["203.0.113.3"]

[[inside]]
interface = "eth0"
management = ["10.9.9.9"]

[[inside]]
interface = "eth2"

[dataplane]
workers = [{ core = 0, queue = 0 }]

[[realm]]
name = "a"
interface = "eth0"
vlan = 100
prefixes = ["10.0.0.0/24", "10.0.5.0/24"]
gateway = "10.0.0.1"
pool = ["203.0.113.10"]

[[realm]]
name = "b"
interface = "eth0"
vlan = 200
prefixes = ["10.0.0.0/24"]
gateway = "10.0.0.1"
pool = ["203.0.113.11"]

[[realm]]
name = "c"
interface = "eth2"
prefixes = ["10.2.0.0/31", "10.3.0.0/16"]
gateway = "10.2.0.1"
pool = ["203.0.113.12"]
"#,
        )
        .unwrap();
        let rules = Rules::new(&cfg, Arc::new(BlockPartition::new(1)));
        let k = rules.kernel_addrs(&cfg);
        assert_eq!(k.len(), 3);
        let set = |v: &[&str]| v.iter().map(|s| ip(s)).collect::<BTreeSet<_>>();
        assert_eq!(
            k[0].any,
            set(&["203.0.113.2", "203.0.113.3", "255.255.255.255"])
        );
        assert!(k[0].on_vlan.is_empty(), "no inside address from outside");
        assert_eq!(
            k[1].any,
            set(&["10.9.9.9", "203.0.113.2", "203.0.113.3", "255.255.255.255"])
        );
        // Overlapping gateways: each on its own VLAN; 10.0.5.0/24 holds no gateway.
        let on = |a: &str, v: Option<u16>| (ip(a), v);
        assert_eq!(
            k[1].on_vlan,
            [
                on("10.0.0.1", Some(100)),
                on("10.0.0.255", Some(100)),
                on("10.0.0.1", Some(200)),
                on("10.0.0.255", Some(200)),
            ]
            .into_iter()
            .collect()
        );
        // A /31 has no broadcast address; realm c's gateway is not passed on eth0 and
        // eth0's management address not on eth2.
        assert_eq!(
            k[2].any,
            set(&["203.0.113.2", "203.0.113.3", "255.255.255.255"])
        );
        assert_eq!(k[2].on_vlan, [on("10.2.0.1", None)].into_iter().collect());
    }
}
