//! The XDP step: one redirect program per interface, loaded and given the management
//! addresses to pass; attached only once every worker's sockets are registered in its
//! redirect map.
//!
//! The order closes the window in which the program runs without sockets: until a queue's
//! socket is registered the program drops (and counts) NAT frames on it, and with this
//! order no frame meets the program before the sockets are in place at all.

use super::StartError;
use super::checks::Links;
use crate::config::{Config, XdpMode};
use crate::dataplane::xdp::XdpProgram;
use natgw_kernel::bpf::AttachMode;

/// The mode XDP got on each interface (for the log and the metrics).
pub(super) type XdpModes = Vec<(String, AttachMode)>;

/// Loads one redirect program per interface (outside first) and fills its pass map with
/// the interface's management addresses. Nothing is attached yet.
pub(super) fn load_xdp(cfg: &Config, links: &Links) -> Result<Vec<XdpProgram>, StartError> {
    let management =
        std::iter::once(&cfg.outside.management).chain(cfg.inside.iter().map(|i| &i.management));
    let mut progs = Vec::new();
    for (l, mgmt) in links.all().zip(management) {
        let p = XdpProgram::load(l.num_rx_queues.max(1)).map_err(|err| StartError::XdpLoad {
            ifname: l.name.clone(),
            err,
        })?;
        for a in mgmt {
            p.add_pass_addr(*a).map_err(|err| StartError::PassAddr {
                addr: *a,
                ifname: l.name.clone(),
                err,
            })?;
        }
        progs.push(p);
    }
    Ok(progs)
}

/// Attaches each program (see [`load_xdp`]) to its interface in `mode`.
pub(super) fn attach_xdp(
    progs: &mut [XdpProgram],
    links: &Links,
    mode: XdpMode,
) -> Result<XdpModes, StartError> {
    let mut xdp_modes = Vec::new();
    for (p, l) in progs.iter_mut().zip(links.all()) {
        let got = match mode {
            XdpMode::Auto => p.attach_auto(l.ifindex),
            XdpMode::Native => p
                .attach(l.ifindex, AttachMode::Native)
                .map(|_| AttachMode::Native),
            XdpMode::Generic => p
                .attach(l.ifindex, AttachMode::Generic)
                .map(|_| AttachMode::Generic),
        }
        .map_err(|err| StartError::XdpAttach {
            mode,
            ifname: l.name.clone(),
            err,
        })?;
        xdp_modes.push((l.name.clone(), got));
    }
    Ok(xdp_modes)
}
