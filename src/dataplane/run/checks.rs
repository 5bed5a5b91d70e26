//! The checks before anything is set up: privileges, the configured interfaces, the
//! workers' cores and queues (every receive queue must have a worker), and whether the
//! kernel would route what reaches it (IP forwarding: a warning).

use super::StartError;
use crate::config::Config;
use natgw_kernel::caps::{self, Cap};
use natgw_kernel::netlink::{self, LinkInfo};
use natgw_kernel::{ethtool, sys};

/// What set-up needs: XDP programs and maps (CAP_BPF, with CAP_NET_ADMIN to attach them and
/// to ask rtnetlink to resolve neighbours), AF_XDP sockets (CAP_NET_RAW). Locked memory for
/// the UMEM and mlockall comes from CAP_IPC_LOCK or RLIMIT_MEMLOCK, checked when it is used.
pub(super) const START_CAPS: [Cap; 3] = [Cap::NET_ADMIN, Cap::NET_RAW, Cap::BPF];

/// Capabilities, not the user id: natgw runs as an unprivileged user that was given them.
pub(super) fn check_privileges() -> Result<(), StartError> {
    let missing = caps::missing(&START_CAPS).unwrap_or_else(|_| START_CAPS.to_vec());
    if missing.is_empty() {
        Ok(())
    } else {
        Err(StartError::MissingCapabilities(
            missing.into_iter().map(Cap::name).collect(),
        ))
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

/// The receive queues `l` uses, and the `ethtool -L` arguments that set their number
/// (`combined` on NICs with combined channels, `rx` on those with separate ones, veth).
fn rx_queues(l: &LinkInfo) -> (u32, &'static str) {
    match ethtool::channel_counts(&l.name) {
        Ok(Some(c)) if c.rx_queues() > 0 => {
            let knob = if c.combined > 0 || c.max_combined > 0 {
                "combined"
            } else {
                "rx"
            };
            (c.rx_queues().min(l.num_rx_queues.max(1)), knob)
        }
        _ => (l.num_rx_queues.max(1), "combined"),
    }
}

/// Every worker's core is usable, its queue exists on every interface, and every receive
/// queue of every interface has a worker.
///
/// natgw refuses to start rather than leave a queue unserved: the XDP program drops what
/// arrives on a queue without a socket (it never passes it to the kernel, where IP
/// forwarding would route it untranslated), so an unserved queue is silent loss of every
/// flow the NIC hashes onto it.
pub(super) fn check_workers(cfg: &Config, links: &Links) -> Result<(), StartError> {
    // Any online core, not only those of natgw's own affinity: the cores a box keeps for
    // its gateway (isolcpus=, CPUAffinity= of the other services) are usually outside the
    // mask natgw inherits. A core the kernel will not let natgw use (a cpuset) fails when
    // the worker pins itself, with the kernel's reason.
    let cores = natgw_kernel::sched::online_cpus()
        .or_else(|_| natgw_kernel::sched::affinity())
        .unwrap_or_default();
    let workers = &cfg.dataplane.workers;
    for w in workers {
        if !cores.contains(&w.core) {
            return Err(StartError::NoCore {
                core: w.core,
                usable: cores,
            });
        }
    }
    for l in links.all() {
        let (queues, knob) = rx_queues(l);
        for w in workers {
            if w.queue >= queues {
                return Err(StartError::NoQueue {
                    queue: w.queue,
                    ifname: l.name.clone(),
                    queues,
                });
            }
        }
        let unserved: Vec<u32> = (0..queues)
            .filter(|q| !workers.iter().any(|w| w.queue == *q))
            .collect();
        if !unserved.is_empty() {
            return Err(StartError::UnservedQueues {
                ifname: l.name.clone(),
                queues,
                unserved,
                workers: workers.len(),
                knob,
            });
        }
    }
    Ok(())
}

/// Whether the kernel forwards IPv4 arriving on `ifname`
/// (`net.ipv4.conf.<ifname>.forwarding`, which `net.ipv4.ip_forward=1` turns on for every
/// interface). None if it cannot be read.
pub fn kernel_forwarding(ifname: &str) -> Option<bool> {
    if ifname.is_empty() || ifname.contains('/') || ifname.starts_with('.') {
        return None;
    }
    let v = std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{ifname}/forwarding")).ok()?;
    Some(v.trim() != "0")
}

/// Logs a warning for each of natgw's interfaces on which the kernel forwards IPv4. natgw
/// never hands NAT traffic to the kernel, but whatever does reach the kernel on such an
/// interface (frames before natgw starts or after it stops, traffic to a management
/// address) is routed without translation. `natgw_kernel_forwarding` exports the same.
pub(super) fn warn_kernel_forwarding(links: &Links) {
    let on: Vec<&str> = links
        .all()
        .filter(|l| kernel_forwarding(&l.name) == Some(true))
        .map(|l| l.name.as_str())
        .collect();
    if !on.is_empty() {
        tracing::warn!(
            "the kernel forwards IPv4 on {} (net.ipv4.ip_forward or \
             net.ipv4.conf.<interface>.forwarding is 1): traffic that reaches the kernel there \
             (before natgw starts, after it stops, to a management address) is routed \
             untranslated. natgw does not need kernel forwarding: set net.ipv4.ip_forward=0, \
             or load deploy/nftables-natgw.nft (tuning.md, \"Fail closed\")",
            on.join(", ")
        );
    }
}
