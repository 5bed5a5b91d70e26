//! Building a topology: the namespaces, their veths, bridges, addresses and routes (one `ip`
//! batch per namespace), sysctls, checksum offload and the XDP_PASS programs.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use super::commands::{ip_batch, write_sysctl, write_sysctl_if_present};
use super::spec::range_to_prefixes;
use super::vlan::attach_vlan_trunk;
use super::{
    GW_INSIDE_IF, GW_OUTSIDE_IF, HOST_IF, ROUTER_GW_IF, ROUTER_SERVER_IF, SWITCH_UPLINK_IF,
    Topology, TopologySpec,
};
use crate::netns::{annotate, ip, try_run_in_netns};
use natgw_kernel::bpf::{self, AttachMode};
use natgw_kernel::{ethtool, sys};

/// Policy routing in VLAN mode: packets marked with VLAN id `v` use table (and rule
/// preference) `ROUTE_TABLE_BASE + v`, holding that VLAN's inside route.
const ROUTE_TABLE_BASE: u32 = 1000;

impl Topology {
    /// Creates the namespaces, links, addresses and routes of `self`, turns transmit
    /// checksum offload off, and attaches the XDP_PASS programs and (VLAN mode) the trunks.
    pub(super) fn create(&mut self) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
