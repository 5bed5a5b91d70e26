//! The checks before anything is set up: privileges, the configured interfaces, and the
//! workers' cores and queues.

use super::StartError;
use crate::config::Config;
use natgw_kernel::netlink::{self, LinkInfo};
use natgw_kernel::{ethtool, sys};

pub(super) fn check_privileges() -> Result<(), StartError> {
    if sys::is_root() {
        Ok(())
    } else {
        Err(StartError::NotRoot)
    }
}

/// The configured interfaces: outside first, then inside in config order.
pub(super) struct Links {
    pub(super) outside: LinkInfo,
    pub(super) inside: Vec<LinkInfo>,
}

impl Links {
    pub(super) fn all(&self) -> impl Iterator<Item = &LinkInfo> {
        std::iter::once(&self.outside).chain(self.inside.iter())
    }
}

fn link(name: &str, role: &'static str) -> Result<LinkInfo, StartError> {
    netlink::link_by_name(name).map_err(|err| {
        if sys::errno(&err) == Some(sys::ENODEV) {
            StartError::NoInterface {
                role,
                name: name.to_string(),
            }
        } else {
            StartError::Interface {
                role,
                name: name.to_string(),
                err,
            }
        }
    })
}

pub(super) fn resolve_links(cfg: &Config) -> Result<Links, StartError> {
    Ok(Links {
        outside: link(&cfg.outside.name, "outside")?,
        inside: cfg
            .inside
            .iter()
            .map(|i| link(&i.name, "inside"))
            .collect::<Result<_, _>>()?,
    })
}

/// Every worker's core is usable and its queue exists on every interface.
pub(super) fn check_workers(cfg: &Config, links: &Links) -> Result<(), StartError> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    for w in &cfg.dataplane.workers {
        if !cores.iter().any(|c| c.id == w.core) {
            return Err(StartError::NoCore {
                core: w.core,
                usable: cores.iter().map(|c| c.id).collect(),
            });
        }
        for l in links.all() {
            let queues = match ethtool::channels(&l.name) {
                Ok(Some((rx, _))) if rx > 0 => rx.min(l.num_rx_queues),
                _ => l.num_rx_queues,
            };
            if w.queue >= queues {
                return Err(StartError::NoQueue {
                    queue: w.queue,
                    ifname: l.name.clone(),
                    queues,
                });
            }
        }
    }
    Ok(())
}
