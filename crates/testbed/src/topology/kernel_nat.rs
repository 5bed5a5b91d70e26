//! The kernel NAT baseline: the gateway's own kernel translating with nftables instead of
//! natgw.

use std::fmt::Write as _;
use std::io;
use std::process::Command;

use super::commands::{run_with_stdin, write_sysctl};
use super::{GW_INSIDE_IF, GW_OUTSIDE_IF, Topology, TopologySpec};
use crate::netns::try_run_in_netns;

const NFT_TABLE: &str = "natgw_lab";
const NFT_FT_TABLE: &str = "natgw_lab_ft";

impl Topology {
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

    /// Adds the kernel's fastest NAT path to [`Topology::enable_kernel_nat`]: an nftables
    /// flowtable on `eth-in` and `eth-out` (table `natgw_lab_ft`) and a forward rule
    /// `flow add @ft` that offloads every established UDP/TCP connection to it, so its
    /// packets skip the routing and netfilter hooks at ingress. Needs nf_flow_table in the
    /// kernel (nft fails with "No such file or directory" otherwise). Removed by
    /// [`Topology::disable_kernel_nat`].
    pub fn enable_kernel_flowtable(&self) -> io::Result<()> {
        run_with_stdin(
            Command::new("ip").args(["netns", "exec", &self.gw, "nft", "-f", "-"]),
            &flowtable_ruleset(),
        )
    }

    /// Receive packet steering on the gateway's two interfaces: every receive queue's
    /// `rps_cpus` set to the hex CPU mask `mask` ("0" turns it off). Through `ip netns exec`,
    /// which mounts the namespace's own /sys.
    pub fn set_gateway_rps(&self, mask: &str) -> io::Result<()> {
        let script = format!(
            "for f in /sys/class/net/{GW_INSIDE_IF}/queues/rx-*/rps_cpus \
             /sys/class/net/{GW_OUTSIDE_IF}/queues/rx-*/rps_cpus; do echo {mask} > $f || exit 1; done"
        );
        let out = Command::new("ip")
            .args(["netns", "exec", &self.gw, "sh", "-c", &script])
            .output()?;
        if !out.status.success() {
            return Err(io::Error::other(format!(
                "setting rps_cpus {mask} in {}: {}",
                self.gw,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(())
    }

    /// Undoes [`Topology::enable_kernel_nat`]: the gateway neither forwards nor translates.
    pub fn disable_kernel_nat(&self) -> io::Result<()> {
        try_run_in_netns(&self.gw, || write_sysctl("net/ipv4/ip_forward", "0"))??;
        let _ = run_with_stdin(
            Command::new("ip").args(["netns", "exec", &self.gw, "nft", "-f", "-"]),
            &format!(
                "add table ip {NFT_TABLE}\ndelete table ip {NFT_TABLE}\n\
                 add table ip {NFT_FT_TABLE}\ndelete table ip {NFT_FT_TABLE}\n"
            ),
        );
        Ok(())
    }
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

fn flowtable_ruleset() -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "add table ip {NFT_FT_TABLE}\ndelete table ip {NFT_FT_TABLE}"
    );
    let _ = writeln!(s, "table ip {NFT_FT_TABLE} {{");
    let _ = writeln!(
        s,
        "  flowtable ft {{ hook ingress priority 0; devices = {{ \"{GW_INSIDE_IF}\", \"{GW_OUTSIDE_IF}\" }}; }}"
    );
    let _ = writeln!(
        s,
        "  chain forward {{ type filter hook forward priority 0; policy accept; \
         ip protocol {{ tcp, udp }} flow add @ft; }}"
    );
    let _ = writeln!(s, "}}");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

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
