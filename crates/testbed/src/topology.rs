//! A network-namespace test bench for natgw: inside hosts, the gateway, a router and a server,
//! built with the `ip` command (iproute2) and torn down on drop.
//!
//! ```text
//!  inside hosts  <p>-h1, <p>-h2 ...   10.0.0.2, 10.0.0.3 ... /24, default via 10.0.0.1
//!      | eth0 -- sw-h1, sw-h2 ...
//!  switch  <p>-sw     Linux bridge br0 joining the host ports and sw-gw
//!      | sw-gw -- eth-in                      (XDP_PASS on sw-gw)
//!  gateway <p>-gw     eth-in 10.0.0.1/24, eth-out 192.168.1.2/24, default via 192.168.1.1
//!      | eth-out -- rt-gw                     (XDP_PASS on rt-gw)
//!  router  <p>-rt     rt-gw 192.168.1.1/24, rt-srv 192.168.2.1/24, ip_forward=1,
//!      |              natgw's pools routed via 192.168.1.2
//!      | rt-srv -- eth0
//!  server  <p>-srv    192.168.2.2/24, default via 192.168.2.1
//! ```
//!
//! `<p>` is `ngw-<tag>`. Interface names are fixed: every veth is created directly inside its
//! namespaces, so names only have to be unique within one topology and parallel topologies
//! (different tags) never collide. The gateway namespace has no forwarding and no kernel NAT
//! until [`Topology::enable_kernel_nat`]: natgw, bound to `eth-in` and `eth-out`, is the only
//! way through.
//!
//! VLAN mode: two tenants that both use 10.0.0.0/24 share the single `eth-in` link as VLANs
//! 100 and 200 (`vlan_ids`), with hosts `<p>-v100-h1`.. and `<p>-v200-h1`... The kernels
//! this runs on have no 802.1Q support (no CONFIG_VLAN_8021Q: no VLAN devices, no bridge VLAN
//! filtering), so a trunk is emulated with tc (tcx) BPF programs on `sw-gw` and `eth-in`:
//! for each VLAN an "access device" named like the VLAN device would be (`sw-gw.100`,
//! `eth-in.100`; a veth whose peer `<name>p` only provides carrier). Frames the kernel sends
//! out of an access device get the tag written into the frame data and leave by the trunk;
//! tagged frames arriving on the trunk are untagged and received by the access device, with
//! the VLAN id as packet mark. The switch bridges `sw-gw.<vid>` with its tenant's host ports
//! (`br100`: `sw-a1`..; `br200`: `sw-b1`..). The gateway has 10.0.0.1/24 on both `eth-in.100`
//! and `eth-in.200`, so its kernel answers ARP for the gateway in each VLAN (for frames
//! natgw's XDP program passes); policy routing (`fwmark <vid> lookup 1000+<vid>`) plus
//! `fwmark_reflect` send the kernel's own replies back into the right VLAN. natgw on
//! `eth-in` sees the tagged frames unchanged, before the tc programs run.
//!
//! Every veth end has transmit checksum offload off: kernel-sent UDP/TCP on veth otherwise
//! carries a partial checksum that natgw would see (and rewrite) as broken. IPv6 is disabled
//! in every namespace so that no router solicitations or MLD reports reach natgw.
//!
//! A process killed before `Drop` runs leaves its namespaces behind; the next run with the
//! same tag removes them with [`Topology::cleanup_stale`] ([`Topology::build`] refuses to
//! build over leftovers).

use std::fmt::Write as _;
use std::io::{self, Write as _};
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, OwnedFd};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use crate::netns::{annotate, ip, try_run_in_netns};
use crate::sockets::{RawIcmp, ipv4_payload};
use natgw_kernel::bpf::{self, AttachMode};
use natgw_kernel::{ethtool, sys};

/// The gateway's inside interface (natgw's `[[inside]]`).
pub const GW_INSIDE_IF: &str = "eth-in";
/// The gateway's outside interface (natgw's `[outside]`).
pub const GW_OUTSIDE_IF: &str = "eth-out";
/// The switch's end of the `eth-in` veth.
pub const SWITCH_UPLINK_IF: &str = "sw-gw";
/// The router's end of the `eth-out` veth.
pub const ROUTER_GW_IF: &str = "rt-gw";
/// The router's interface towards the server.
pub const ROUTER_SERVER_IF: &str = "rt-srv";
/// The interface of every inside host and of the server.
pub const HOST_IF: &str = "eth0";

const NFT_TABLE: &str = "natgw_lab";
/// Policy routing in VLAN mode: packets marked with VLAN id `v` use table (and rule
/// preference) `ROUTE_TABLE_BASE + v`, holding that VLAN's inside route.
const ROUTE_TABLE_BASE: u32 = 1000;

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
    /// [`Topology::natgw_config`]).
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
    /// Its namespace; its interface is [`HOST_IF`].
    pub ns: String,
    pub addr: Ipv4Addr,
    /// 0, or 1 for the second VLAN tenant.
    pub tenant: usize,
    /// Its tenant's VLAN (VLAN mode only; the host itself sends untagged).
    pub vlan: Option<u16>,
}

/// A built topology. Dropping it kills the processes still running in its namespaces and
/// deletes the namespaces (which destroys their interfaces), also when unwinding.
#[derive(Debug)]
pub struct Topology {
    spec: TopologySpec,
    /// Namespaces created so far, in creation order.
    created: Vec<String>,
    gw: String,
    sw: String,
    rt: String,
    srv: String,
    hosts: Vec<Host>,
    /// bpf links of the XDP_PASS programs on `sw-gw` and `rt-gw`; closing them detaches.
    bpf_links: Vec<OwnedFd>,
}

impl Topology {
    /// Builds the topology described by `spec`. Fails with `AlreadyExists` if namespaces
    /// with this tag exist (see [`Topology::cleanup_stale`]). On any error everything
    /// created so far is removed again.
    pub fn build(spec: &TopologySpec) -> io::Result<Topology> {
        spec.validate()?;
        let p = prefix(&spec.tag);
        let stale = namespaces_with_prefix(&p)?;
        if !stale.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!(
                    "namespaces {} exist (a running or killed earlier topology with tag {:?}); \
                     Topology::cleanup_stale removes them",
                    stale.join(", "),
                    spec.tag
                ),
            ));
        }
        let a = &spec.addressing;
        let mut hosts = Vec::new();
        for t in 0..spec.tenants() {
            for i in 0..spec.inside_hosts {
                let vlan = spec.vlans.then_some(spec.vlan_ids[t]);
                let ns = match vlan {
                    Some(v) => format!("{p}-v{v}-h{}", i + 1),
                    None => format!("{p}-h{}", i + 1),
                };
                let addr = Ipv4Addr::from(u32::from(a.first_host) + i as u32);
                hosts.push(Host {
                    ns,
                    addr,
                    tenant: t,
                    vlan,
                });
            }
        }
        let mut topo = Topology {
            spec: spec.clone(),
            created: Vec::new(),
            gw: format!("{p}-gw"),
            sw: format!("{p}-sw"),
            rt: format!("{p}-rt"),
            srv: format!("{p}-srv"),
            hosts,
            bpf_links: Vec::new(),
        };
        // An error from here on drops `topo`, which removes what was created.
        topo.create()?;
        Ok(topo)
    }

    fn create(&mut self) -> io::Result<()> {
        let spec = self.spec.clone();
        let a = &spec.addressing;
        let mut all = vec![
            self.gw.clone(),
            self.sw.clone(),
            self.rt.clone(),
            self.srv.clone(),
        ];
        all.extend(self.hosts.iter().map(|h| h.ns.clone()));
        for ns in &all {
            ip(&["netns", "add", ns])?;
            self.created.push(ns.clone());
            // Before any interface exists, so that `default` applies to all of them.
            try_run_in_netns(ns, || -> io::Result<()> {
                for k in ["all", "default"] {
                    write_sysctl_if_present(&format!("net/ipv6/conf/{k}/disable_ipv6"), "1")?;
                    // Kernel NAT in VLAN mode routes replies by mark; no reverse-path checks.
                    write_sysctl(&format!("net/ipv4/conf/{k}/rp_filter"), "0")?;
                }
                Ok(())
            })??;
        }

        let q = spec.queues.to_string();
        let in_len = a.inside_len;
        let mut gw = vec!["link set lo up".to_string()];
        for (dev, peer, peer_ns) in [
            (GW_INSIDE_IF, SWITCH_UPLINK_IF, &self.sw),
            (GW_OUTSIDE_IF, ROUTER_GW_IF, &self.rt),
        ] {
            gw.push(format!(
                "link add {dev} numrxqueues {q} numtxqueues {q} type veth peer name {peer} \
                 netns {peer_ns} numrxqueues {q} numtxqueues {q}"
            ));
            gw.push(format!("link set {dev} up"));
        }
        let mut gw_veths = vec![GW_INSIDE_IF.to_string(), GW_OUTSIDE_IF.to_string()];
        let mut gw_access = Vec::new();
        if spec.vlans {
            for v in spec.vlan_ids {
                let sub = vlan_access_dev(GW_INSIDE_IF, v);
                gw.extend(access_veth(&sub));
                gw.push(format!("addr add {}/{in_len} dev {sub}", a.inside_gw));
                let table = ROUTE_TABLE_BASE + u32::from(v);
                gw.push(format!(
                    "route add {}/{in_len} dev {sub} table {table}",
                    a.inside_net
                ));
                gw.push(format!("rule add pref {table} fwmark {v} lookup {table}"));
                gw_veths.push(sub.clone());
                gw_access.push((v, sub));
            }
        } else {
            gw.push(format!(
                "addr add {}/{in_len} dev {GW_INSIDE_IF}",
                a.inside_gw
            ));
        }
        gw.push(format!(
            "addr add {}/{} dev {GW_OUTSIDE_IF}",
            a.gw_outside, a.outside_len
        ));
        gw.push(format!("route add default via {}", a.router_outside));
        ip_batch(&self.gw, &gw)?;

        let mut sw = vec![
            "link set lo up".to_string(),
            format!("link set {SWITCH_UPLINK_IF} up"),
        ];
        let mut sw_veths = vec![SWITCH_UPLINK_IF.to_string()];
        let mut sw_access = Vec::new();
        let bridge = |t: usize| {
            if spec.vlans {
                format!("br{}", spec.vlan_ids[t])
            } else {
                "br0".to_string()
            }
        };
        for t in 0..spec.tenants() {
            let br = bridge(t);
            sw.push(format!("link add {br} type bridge"));
            sw.push(format!("link set {br} up"));
            let uplink = if spec.vlans {
                let v = spec.vlan_ids[t];
                let sub = vlan_access_dev(SWITCH_UPLINK_IF, v);
                sw.extend(access_veth(&sub));
                sw_veths.push(sub.clone());
                sw_access.push((v, sub.clone()));
                sub
            } else {
                SWITCH_UPLINK_IF.to_string()
            };
            sw.push(format!("link set {uplink} master {br}"));
            sw.push(format!("link set {uplink} up"));
        }
        for (k, h) in self.hosts.iter().enumerate() {
            let port = switch_port(&spec, k);
            sw.push(format!(
                "link add {port} type veth peer name {HOST_IF} netns {}",
                h.ns
            ));
            sw.push(format!("link set {port} master {}", bridge(h.tenant)));
            sw.push(format!("link set {port} up"));
            sw_veths.push(port);
        }
        ip_batch(&self.sw, &sw)?;

        let mut rt = vec![
            "link set lo up".to_string(),
            format!(
                "link add {ROUTER_SERVER_IF} type veth peer name {HOST_IF} netns {}",
                self.srv
            ),
            format!(
                "addr add {}/{} dev {ROUTER_GW_IF}",
                a.router_outside, a.outside_len
            ),
            format!(
                "addr add {}/{} dev {ROUTER_SERVER_IF}",
                a.router_server, a.server_len
            ),
            format!("link set {ROUTER_GW_IF} up"),
            format!("link set {ROUTER_SERVER_IF} up"),
        ];
        for &(first, last) in a.pools.iter().take(spec.tenants()) {
            for (net, len) in range_to_prefixes(first, last) {
                rt.push(format!("route add {net}/{len} via {}", a.gw_outside));
            }
        }
        ip_batch(&self.rt, &rt)?;

        for h in &self.hosts {
            ip_batch(
                &h.ns,
                &[
                    "link set lo up".to_string(),
                    format!("link set {HOST_IF} up"),
                    format!("addr add {}/{in_len} dev {HOST_IF}", h.addr),
                    format!("route add default via {}", a.inside_gw),
                ],
            )?;
        }
        ip_batch(
            &self.srv,
            &[
                "link set lo up".to_string(),
                format!("link set {HOST_IF} up"),
                format!("addr add {}/{} dev {HOST_IF}", a.server, a.server_len),
                format!("route add default via {}", a.router_server),
            ],
        )?;

        // Checksum offload off on every veth end (see the module docs), forwarding on in the
        // router, XDP_PASS on the peers natgw redirects into.
        let prog = bpf::load_pass_program()?;
        let no_csum = |ifs: &[String]| -> io::Result<()> {
            for i in ifs {
                ethtool::set_tx_checksum(i, false)
                    .map_err(|e| annotate(e, &format!("tx checksum off on {i}")))?;
            }
            Ok(())
        };
        let attach = |ifname: &str| -> io::Result<OwnedFd> {
            let idx = sys::if_nametoindex(ifname)?;
            bpf::attach_xdp(prog.as_fd(), idx, AttachMode::Native)
                .map_err(|e| annotate(e, &format!("XDP_PASS on {ifname}")))
        };
        let trunk = |dev: &str, access: &[(u16, String)]| -> io::Result<Vec<OwnedFd>> {
            if access.is_empty() {
                return Ok(Vec::new());
            }
            attach_vlan_trunk(dev, access).map_err(|e| annotate(e, &format!("VLAN trunk on {dev}")))
        };
        let links = try_run_in_netns(&self.gw, || {
            no_csum(&gw_veths)?;
            if spec.vlans {
                // Replies the kernel itself sends (ICMP echo replies, errors) carry the
                // request's mark, which the trunk set to the VLAN id: routed back to the
                // right tenant although both have the same addresses.
                write_sysctl("net/ipv4/fwmark_reflect", "1")?;
            }
            trunk(GW_INSIDE_IF, &gw_access)
        })??;
        self.bpf_links.extend(links);
        let links = try_run_in_netns(&self.sw, || {
            no_csum(&sw_veths)?;
            let mut links = trunk(SWITCH_UPLINK_IF, &sw_access)?;
            links.push(attach(SWITCH_UPLINK_IF)?);
            Ok::<_, io::Error>(links)
        })??;
        self.bpf_links.extend(links);
        let rt_ifs = [ROUTER_GW_IF.to_string(), ROUTER_SERVER_IF.to_string()];
        let link = try_run_in_netns(&self.rt, || {
            no_csum(&rt_ifs)?;
            write_sysctl("net/ipv4/ip_forward", "1")?;
            attach(ROUTER_GW_IF)
        })??;
        self.bpf_links.push(link);
        let host_if = [HOST_IF.to_string()];
        for ns in self.hosts.iter().map(|h| &h.ns).chain([&self.srv]) {
            try_run_in_netns(ns, || no_csum(&host_if))??;
        }
        Ok(())
    }

    /// Removes every namespace `ngw-<tag>-*` (leftovers of a killed run), first killing the
    /// processes still in them. Returns the names removed.
    pub fn cleanup_stale(tag: &str) -> io::Result<Vec<String>> {
        let spec = TopologySpec::new(tag);
        spec.validate()?;
        let names = namespaces_with_prefix(&prefix(tag))?;
        for ns in &names {
            kill_netns_pids(ns);
            ip(&["netns", "del", ns])?;
        }
        Ok(names)
    }

    pub fn spec(&self) -> &TopologySpec {
        &self.spec
    }

    /// `ngw-<tag>`, the prefix of every namespace of this topology.
    pub fn prefix(&self) -> String {
        prefix(&self.spec.tag)
    }

    /// All namespaces of this topology.
    pub fn namespaces(&self) -> &[String] {
        &self.created
    }

    /// The gateway namespace, where natgw runs.
    pub fn gw_ns(&self) -> &str {
        &self.gw
    }

    /// The switch namespace joining the inside hosts to `eth-in`.
    pub fn switch_ns(&self) -> &str {
        &self.sw
    }

    pub fn router_ns(&self) -> &str {
        &self.rt
    }

    pub fn server_ns(&self) -> &str {
        &self.srv
    }

    pub fn server_addr(&self) -> Ipv4Addr {
        self.spec.addressing.server
    }

    /// All inside hosts: tenant 0's in order, then (VLAN mode) tenant 1's.
    pub fn hosts(&self) -> &[Host] {
        &self.hosts
    }

    /// Namespace of `hosts()[i]`. Panics if `i` is out of range.
    pub fn host_ns(&self, i: usize) -> &str {
        &self.hosts[i].ns
    }

    /// Host `i` of `tenant`. Panics if either is out of range.
    pub fn tenant_host(&self, tenant: usize, i: usize) -> &Host {
        assert!(tenant < self.spec.tenants() && i < self.spec.inside_hosts);
        &self.hosts[tenant * self.spec.inside_hosts + i]
    }

    /// Tenant `t`'s NAT pool (inclusive).
    pub fn pool(&self, tenant: usize) -> (Ipv4Addr, Ipv4Addr) {
        self.spec.addressing.pools[tenant]
    }

    /// A command that runs `args[0]` with `args[1..]` inside `ns` (`ip netns exec`).
    pub fn command(&self, ns: &str, args: &[&str]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns]).args(args);
        c
    }

    /// Runs `args` inside `ns` to completion and returns its output, whatever its exit status.
    pub fn exec(&self, ns: &str, args: &[&str]) -> io::Result<Output> {
        if args.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
        }
        self.command(ns, args).output()
    }

    /// Starts `args` inside `ns` (stdin null, stdout and stderr inherited). If it is still
    /// running when the topology is dropped, it is killed.
    pub fn spawn(&self, ns: &str, args: &[&str]) -> io::Result<Child> {
        if args.is_empty() {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "empty command"));
        }
        self.command(ns, args).stdin(Stdio::null()).spawn()
    }

    /// Makes the gateway's kernel do the NAT instead of natgw: ip_forward=1 and an nftables
    /// table `natgw_lab` that source-NATs each tenant to its pool (the same addresses natgw
    /// would use, which also checks the router's pool routes). In VLAN mode the two tenants'
    /// identical addresses are kept apart by conntrack zones (zone = VLAN id) and a
    /// connection mark (= VLAN id) that picks the pool and, copied back to the packet mark,
    /// the tenant's reply route (see [`Topology::build`]'s policy routing). Needs the `nft` command. Call it while natgw is not running.
    pub fn enable_kernel_nat(&self) -> io::Result<()> {
        run_with_stdin(
            Command::new("ip").args(["netns", "exec", &self.gw, "nft", "-f", "-"]),
            &nft_ruleset(&self.spec),
        )?;
        try_run_in_netns(&self.gw, || write_sysctl("net/ipv4/ip_forward", "1"))?
    }

    /// Undoes [`Topology::enable_kernel_nat`]: the gateway neither forwards nor translates.
    pub fn disable_kernel_nat(&self) -> io::Result<()> {
        try_run_in_netns(&self.gw, || write_sysctl("net/ipv4/ip_forward", "0"))??;
        let _ = run_with_stdin(
            Command::new("ip").args(["netns", "exec", &self.gw, "nft", "-f", "-"]),
            &format!("add table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n"),
        );
        Ok(())
    }

    /// A natgw configuration (TOML, see docs/config.md) for this topology: `eth-out` outside
    /// with the router as gateway, `eth-in` inside, one realm per tenant with its pool (VLAN
    /// mode: realms `tenant-a` / `tenant-b` on the two VLANs), one worker per queue (worker
    /// `q` on core `q`), generic XDP is not forced (`xdp_mode = "auto"`), adaptive polling.
    pub fn natgw_config(&self) -> String {
        self.spec.natgw_config()
    }

    /// Sends one ICMP echo request from `ns` to `dst` and waits up to `timeout` for the reply;
    /// returns the round-trip time. `TimedOut` if no reply came.
    pub fn ping(&self, ns: &str, dst: Ipv4Addr, timeout: Duration) -> io::Result<Duration> {
        static SEQ: AtomicU16 = AtomicU16::new(1);
        let sock = try_run_in_netns(ns, RawIcmp::open)??;
        let id = std::process::id() as u16;
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let start = Instant::now();
        sock.send_echo(dst, id, seq, None, b"natgw-testbed")?;
        let deadline = start + timeout;
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let Some((src, pkt)) = sock.recv(left)? else {
                break;
            };
            if let Some(icmp) = ipv4_payload(&pkt, libc::IPPROTO_ICMP as u8)
                && src == dst
                && icmp.len() >= 8
                && icmp[0] == 0
                && icmp[4..6] == id.to_be_bytes()
                && icmp[6..8] == seq.to_be_bytes()
            {
                return Ok(start.elapsed());
            }
        }
        Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no echo reply from {dst} in {ns} within {timeout:?}"),
        ))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.bpf_links.clear();
        for ns in self.created.iter().rev() {
            kill_netns_pids(ns);
            // Deleting the namespace destroys its interfaces (once sockets opened in it are
            // closed); the names are gone at once.
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("testbed cleanup: {e}");
            }
        }
    }
}

fn prefix(tag: &str) -> String {
    format!("ngw-{tag}")
}

fn switch_port(spec: &TopologySpec, k: usize) -> String {
    let (t, i) = (k / spec.inside_hosts, k % spec.inside_hosts + 1);
    match (spec.vlans, t) {
        (false, _) => format!("sw-h{i}"),
        (true, 0) => format!("sw-a{i}"),
        (true, _) => format!("sw-b{i}"),
    }
}

/// The access device of VLAN `vid` on `trunk` (what would be the VLAN device `trunk.vid`).
fn vlan_access_dev(trunk: &str, vid: u16) -> String {
    format!("{trunk}.{vid}")
}

/// `ip` commands creating access device `dev`: a veth whose peer `<dev>p` only provides
/// carrier; frames leave through the trunk (tc redirect), never through the peer.
fn access_veth(dev: &str) -> [String; 3] {
    [
        format!("link add {dev} type veth peer name {dev}p"),
        format!("link set {dev}p up"),
        format!("link set {dev} up"),
    ]
}

fn in_prefix(a: Ipv4Addr, net: Ipv4Addr, len: u8) -> bool {
    let mask = u32::MAX.checked_shl(32 - u32::from(len)).unwrap_or(0);
    u32::from(a) & mask == u32::from(net) & mask
}

fn ranges_overlap(a: (Ipv4Addr, Ipv4Addr), b: (Ipv4Addr, Ipv4Addr)) -> bool {
    a.0 <= b.1 && b.0 <= a.1
}

/// The fewest prefixes that cover `first..=last` exactly.
fn range_to_prefixes(first: Ipv4Addr, last: Ipv4Addr) -> Vec<(Ipv4Addr, u8)> {
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

fn nft_ruleset(spec: &TopologySpec) -> String {
    let a = &spec.addressing;
    let mut s = String::new();
    // add+delete makes the load idempotent: the table is replaced atomically.
    let _ = writeln!(s, "add table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}");
    let _ = writeln!(s, "table ip {NFT_TABLE} {{");
    let pool = |t: usize| format!("{}-{}", a.pools[t].0, a.pools[t].1);
    if spec.vlans {
        // Both tenants use the same addresses and maybe the same ports: conntrack zones keep
        // their connections apart (inbound: by destination pool), the connection mark picks
        // the tenant's source NAT pool and, copied to the packet mark, the reply route.
        let _ = writeln!(s, "  chain raw_pre {{");
        let _ = writeln!(
            s,
            "    type filter hook prerouting priority raw; policy accept;"
        );
        for (t, v) in spec.vlan_ids.iter().enumerate() {
            let _ = writeln!(s, "    iifname \"{GW_INSIDE_IF}.{v}\" ct zone set {v}");
            let _ = writeln!(
                s,
                "    iifname \"{GW_OUTSIDE_IF}\" ip daddr {} ct zone set {v}",
                pool(t)
            );
        }
        let _ = writeln!(s, "  }}\n  chain mangle_pre {{");
        let _ = writeln!(
            s,
            "    type filter hook prerouting priority mangle; policy accept;"
        );
        for v in spec.vlan_ids {
            let _ = writeln!(s, "    iifname \"{GW_INSIDE_IF}.{v}\" ct mark set {v}");
        }
        let _ = writeln!(s, "    meta mark set ct mark\n  }}");
    }
    let _ = writeln!(s, "  chain post {{");
    let _ = writeln!(
        s,
        "    type nat hook postrouting priority srcnat; policy accept;"
    );
    if spec.vlans {
        for (t, v) in spec.vlan_ids.iter().enumerate() {
            let _ = writeln!(
                s,
                "    oifname \"{GW_OUTSIDE_IF}\" ct mark {v} snat to {}",
                pool(t)
            );
        }
    } else {
        let _ = writeln!(s, "    oifname \"{GW_OUTSIDE_IF}\" snat to {}", pool(0));
    }
    let _ = writeln!(s, "  }}\n}}");
    s
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

/// Runs `cmd` with `input` on stdin; the error carries stderr.
fn run_with_stdin(cmd: &mut Command, input: &str) -> io::Result<()> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| annotate(e, &what))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{what}: {}\ninput:\n{input}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// `ip -n ns -batch -`: one process for many commands; stops at the first failure.
fn ip_batch(ns: &str, cmds: &[String]) -> io::Result<()> {
    run_with_stdin(
        Command::new("ip").args(["-n", ns, "-batch", "-"]),
        &(cmds.join("\n") + "\n"),
    )
}

fn namespaces_with_prefix(p: &str) -> io::Result<Vec<String>> {
    let want = format!("{p}-");
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&want))
        .map(str::to_string)
        .collect())
}

/// SIGKILLs the processes running in `ns` (never this one): they would keep the
/// namespace, and so its interfaces, alive.
fn kill_netns_pids(ns: &str) {
    let Ok(pids) = ip(&["netns", "pids", ns]) else {
        return;
    };
    let me = std::process::id();
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
    {
        if pid != me {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// Writes a sysctl of the calling thread's network namespace (`key` relative to /proc/sys).
fn write_sysctl(key: &str, value: &str) -> io::Result<()> {
    std::fs::write(format!("/proc/sys/{key}"), value)
        .map_err(|e| annotate(e, &format!("sysctl {key}={value}")))
}

fn write_sysctl_if_present(key: &str, value: &str) -> io::Result<()> {
    match write_sysctl(key, value) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}

// 802.1Q without the kernel's 8021q module.
//
// The development and CI kernels are built without CONFIG_VLAN_8021Q (no VLAN devices, no
// bridge VLAN filtering). A trunk is emulated with two tiny tc (tcx) BPF programs instead:
// frames arriving tagged on the trunk are untagged and injected into the VLAN's access
// device; frames the kernel sends out of an access device get the tag written into the
// frame data (not just the skb metadata, so natgw's XDP sees it) and leave by the trunk.

const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
const HELPER_SKB_VLAN_POP: i32 = 19;
const HELPER_REDIRECT: i32 = 23;
const HELPER_SKB_CHANGE_HEAD: i32 = 43;
const BPF_F_INGRESS: i32 = 1;
const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
// struct __sk_buff offsets.
const SKB_MARK: i16 = 8;
const SKB_VLAN_PRESENT: i16 = 20;
const SKB_VLAN_TCI: i16 = 24;
const SKB_DATA: i16 = 76;
const SKB_DATA_END: i16 = 80;

fn load_tc_program(insns: &[bpf::Insn], name: &str) -> io::Result<OwnedFd> {
    bpf::load_program(BPF_PROG_TYPE_SCHED_CLS, 0, insns, name)
}

/// Attaches a tc program to `ifindex` (calling thread's namespace) through a tcx bpf link:
/// it stays attached while the returned fd is open.
fn attach_tcx(prog: &OwnedFd, ifindex: u32, egress: bool) -> io::Result<OwnedFd> {
    let attach = if egress {
        BPF_TCX_EGRESS
    } else {
        BPF_TCX_INGRESS
    };
    bpf::link_create(prog.as_fd(), ifindex, attach, 0)
}

/// Trunk ingress: a tagged frame whose VLAN id is in `access` loses its tag and is received
/// by that VLAN's access device with the VLAN id as packet mark (for policy routing); other
/// tagged frames are dropped, untagged ones pass.
fn vlan_untag_program(access: &[(u16, u32)]) -> io::Result<Vec<bpf::Insn>> {
    use bpf::{BPF_ALU64, BPF_AND, BPF_JEQ, BPF_JNE, BPF_K, Insn, R0, R1, R2, R6, R7, Size};
    let mut p = bpf::ProgramBuilder::new();
    let (pass, drop) = (p.label(), p.label());
    // The kernel has already moved the tag into the skb metadata (skb_vlan_untag).
    p.push(Insn::mov64_reg(R6, R1))
        .push(Insn::ldx(Size::W, R2, R6, SKB_VLAN_PRESENT))
        .jmp_imm_to(BPF_JEQ, R2, 0, pass)
        .push(Insn::ldx(Size::W, R7, R6, SKB_VLAN_TCI))
        .push(Insn::new(BPF_ALU64 | BPF_AND | BPF_K, R7, 0, 0, 0x0fff))
        .push(Insn::mov64_reg(R1, R6))
        .push(Insn::call(HELPER_SKB_VLAN_POP))
        .jmp_imm_to(BPF_JNE, R0, 0, drop);
    for &(vid, ifindex) in access {
        let next = p.label();
        p.jmp_imm_to(BPF_JNE, R7, i32::from(vid), next)
            .push(Insn::mov64_imm(R1, i32::from(vid)))
            .push(Insn::stx(Size::W, R6, R1, SKB_MARK))
            .push(Insn::mov64_imm(R1, ifindex as i32))
            .push(Insn::mov64_imm(R2, BPF_F_INGRESS))
            .push(Insn::call(HELPER_REDIRECT))
            .push(Insn::exit())
            .bind(next);
    }
    p.bind(drop)
        .push(Insn::mov64_imm(R0, TC_ACT_SHOT))
        .push(Insn::exit());
    p.bind(pass)
        .push(Insn::mov64_imm(R0, TC_ACT_OK))
        .push(Insn::exit());
    p.finish()
}

/// Access-device egress: writes an 802.1Q tag with `vid` into the frame and sends it out
/// of the trunk `trunk_ifindex`.
fn vlan_tag_program(vid: u16, trunk_ifindex: u32) -> io::Result<Vec<bpf::Insn>> {
    use bpf::{BPF_JGT, BPF_JNE, Insn, R0, R1, R2, R3, R4, R5, R6, Size};
    let mut p = bpf::ProgramBuilder::new();
    let drop = p.label();
    p.push(Insn::mov64_reg(R6, R1))
        .push(Insn::mov64_imm(R2, 4))
        .push(Insn::mov64_imm(R3, 0))
        .push(Insn::call(HELPER_SKB_CHANGE_HEAD))
        .jmp_imm_to(BPF_JNE, R0, 0, drop)
        .push(Insn::ldx(Size::W, R2, R6, SKB_DATA))
        .push(Insn::ldx(Size::W, R3, R6, SKB_DATA_END))
        .push(Insn::mov64_reg(R4, R2))
        .push(Insn::add64_imm(R4, 18))
        .jmp_reg_to(BPF_JGT, R4, R3, drop);
    // Move both MAC addresses 4 bytes to the front, then tag (TPID, TCI) in the gap; the
    // original EtherType stays where it was.
    for off in [0i16, 4, 8] {
        p.push(Insn::ldx(Size::W, R5, R2, off + 4))
            .push(Insn::stx(Size::W, R2, R5, off));
    }
    let be16 = |v: u16| i32::from(u16::from_ne_bytes(v.to_be_bytes()));
    p.push(Insn::mov64_imm(R5, be16(0x8100)))
        .push(Insn::stx(Size::H, R2, R5, 12))
        .push(Insn::mov64_imm(R5, be16(vid)))
        .push(Insn::stx(Size::H, R2, R5, 14))
        .push(Insn::mov64_imm(R1, trunk_ifindex as i32))
        .push(Insn::mov64_imm(R2, 0))
        .push(Insn::call(HELPER_REDIRECT))
        .push(Insn::exit());
    p.bind(drop)
        .push(Insn::mov64_imm(R0, TC_ACT_SHOT))
        .push(Insn::exit());
    p.finish()
}

/// Makes `trunk` (in the calling thread's namespace) an 802.1Q trunk for the VLANs in
/// `access` (VLAN id, access device name). Returns the tcx links that keep it working.
fn attach_vlan_trunk(trunk: &str, access: &[(u16, String)]) -> io::Result<Vec<OwnedFd>> {
    let trunk_idx = sys::if_nametoindex(trunk)?;
    let mut idx = Vec::new();
    for (vid, dev) in access {
        idx.push((*vid, sys::if_nametoindex(dev)?));
    }
    let mut links = Vec::new();
    let untag = load_tc_program(&vlan_untag_program(&idx)?, "ngw_vlan_untag")?;
    links.push(attach_tcx(&untag, trunk_idx, false)?);
    for &(vid, dev_idx) in &idx {
        let tag = load_tc_program(&vlan_tag_program(vid, trunk_idx)?, "ngw_vlan_tag")?;
        links.push(attach_tcx(&tag, dev_idx, true)?);
    }
    Ok(links)
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

    #[test]
    fn names_fit_linux_limits() {
        let mut s = TopologySpec::new("abcd");
        s.vlans = true;
        s.inside_hosts = 50;
        for k in 0..100 {
            assert!(switch_port(&s, k).len() <= 15);
        }
        assert_eq!(switch_port(&s, 0), "sw-a1");
        assert_eq!(switch_port(&s, 50), "sw-b1");
        s.vlans = false;
        assert_eq!(switch_port(&s, 49), "sw-h50");
        for i in [
            GW_INSIDE_IF,
            GW_OUTSIDE_IF,
            SWITCH_UPLINK_IF,
            ROUTER_GW_IF,
            ROUTER_SERVER_IF,
        ] {
            assert!(format!("{i}.4094").len() <= 15);
        }
    }

    #[test]
    fn nft_ruleset_per_mode() {
        let mut s = TopologySpec::new("t");
        let r = nft_ruleset(&s);
        assert!(r.contains("oifname \"eth-out\" snat to 192.168.1.10-192.168.1.13"));
        assert!(!r.contains("zone"));
        s.vlans = true;
        let r = nft_ruleset(&s);
        assert!(r.contains("iifname \"eth-in.200\" ct zone set 200"));
        assert!(r.contains("ip daddr 192.168.1.20-192.168.1.23 ct zone set 200"));
        assert!(r.contains("iifname \"eth-in.100\" ct mark set 100"));
        assert!(r.contains("ct mark 200 snat to 192.168.1.20-192.168.1.23"));
        assert_eq!(r.matches('{').count(), r.matches('}').count());
    }
}
