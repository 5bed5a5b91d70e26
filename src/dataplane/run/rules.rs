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
    rules.set_mtus(link_mtu(outside), &inside);
    rules.cores = dp.workers.len().max(1);
    rules.rss = rss_steering(
        &outside.name,
        &dp.workers.iter().map(|w| w.queue).collect::<Vec<_>>(),
    );
    rules
}

/// A link's MTU; a link that reports none (0) sets no limit.
fn link_mtu(l: &LinkInfo) -> usize {
    if l.mtu == 0 { NO_MTU } else { l.mtu as usize }
}
