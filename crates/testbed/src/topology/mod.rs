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

//!
//! `spec.rs` describes a topology, `build.rs` builds it, `vlan.rs` emulates the VLAN trunk,
//! `kernel_nat.rs` is the kernel NAT baseline, `relink.rs` deletes and re-creates the inside
//! link (fault tests) and `cleanup.rs` tears it down.

mod build;
mod cleanup;
mod commands;
mod kernel_nat;
mod relink;
mod spec;
mod vlan;

pub use spec::{Addressing, Host, TopologySpec};

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::OwnedFd;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::{Duration, Instant};

use crate::netns::try_run_in_netns;
use crate::sockets::{RawIcmp, ipv4_payload};
use cleanup::namespaces_with_prefix;

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

pub(crate) fn prefix(tag: &str) -> String {
    format!("ngw-{tag}")
}
