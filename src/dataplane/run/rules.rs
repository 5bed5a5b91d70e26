//! The rules for this machine: built from the configuration, with the outside link's own
//! prefixes on-link, the worker count and the NIC's RSS steering.

use super::checks::Links;
use crate::config::{Config, Ipv4Net};
use crate::dataplane::rss::rss_steering;
use crate::nat::Rules;
use crate::nat::ports::BlockPartition;
use crate::nat::rules::NO_MTU;
use natgw_kernel::netlink::{self, LinkInfo};
use std::net::Ipv4Addr;
use std::sync::Arc;

/// Builds the rules for `cfg` on this machine: the partition matches the worker count and
/// the outside link's own prefixes are on-link.
pub(super) fn rules_for(cfg: &Config, running: Option<&Rules>) -> Rules {
    let partition = Arc::new(BlockPartition::new(cfg.dataplane.workers.len().max(1)));
    let mut rules = match running {
        Some(prev) => Rules::reload(cfg, partition, prev),
        None => Rules::new(cfg, partition),
    };
    if let Ok(l) = netlink::link_by_name(&cfg.outside.name)
        && let Ok(addrs) = netlink::addresses(l.ifindex)
    {
        for (a, len) in addrs {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len as u32)
            };
            rules.outside_onlink.push(Ipv4Net {
                addr: Ipv4Addr::from(u32::from(a) & mask),
                len,
            });
        }
    }
    rules
}

/// The rules at start: [`rules_for`] `cfg`, one core per worker, the outside NIC's RSS
/// steering for the workers' queues, and every interface's MTU as the kernel has it (natgw
/// ends when one changes, see supervise.rs, so it stays true while natgw runs).
pub(super) fn start_rules(cfg: &Config, links: &Links) -> Rules {
    let dp = &cfg.dataplane;
    let outside = &links.outside;
    let mut rules = rules_for(cfg, None);
    let inside: Vec<usize> = links.inside.iter().map(link_mtu).collect();
    set_mtus(cfg, &mut rules, link_mtu(outside), &inside);
    rules.cores = dp.workers.len().max(1);
    rules.rss = rss_steering(
        &outside.name,
        &dp.workers.iter().map(|w| w.queue).collect::<Vec<_>>(),
    );
    rules
}

/// Sets the egress MTUs of `rules`: the outside link's, each inside interface's, and for a
/// realm on a VLAN its VLAN device's (`<interface>.<vid>`, as for its neighbours) when that
/// is smaller.
pub(super) fn set_mtus(cfg: &Config, rules: &mut Rules, outside: usize, inside: &[usize]) {
    rules.set_mtus(outside, inside);
    let vlans: Vec<(u16, u16, u8)> = rules
        .realms
        .iter()
        .filter(|r| !r.retired)
        .filter_map(|r| Some((r.id, r.vlan?, r.iface)))
        .collect();
    for (id, vid, iface) in vlans {
        let Some(i) = cfg.inside.get(iface as usize) else {
            continue;
        };
        if let Ok(l) = netlink::link_by_name(&format!("{}.{vid}", i.name)) {
            rules.set_realm_mtu(id, link_mtu(&l));
        }
    }
}

/// A link's MTU; a link that reports none (0) sets no limit.
fn link_mtu(l: &LinkInfo) -> usize {
    if l.mtu == 0 { NO_MTU } else { l.mtu as usize }
}
