//! The XDP step: one redirect program per interface, loaded and told which destinations
//! are the box's own (its maps filled from `Rules::kernel_addrs`: management addresses,
//! the outside address, realm gateways and their subnet broadcasts, the limited
//! broadcast); attached only once every worker's sockets are registered in its redirect
//! map.
//!
//! The order closes the window in which the program runs without sockets: until a queue's
//! socket is registered the program drops (and counts) NAT frames on it, and with this
//! order no frame meets the program before the sockets are in place at all.

use super::StartError;
use super::checks::Links;
use crate::config::{Config, XdpMode};
use crate::dataplane::xdp::XdpProgram;
use crate::nat::Rules;
use crate::nat::rules::KernelAddrs;
use natgw_kernel::bpf::AttachMode;

/// The mode XDP got on each interface (for the log and the metrics).
pub(super) type XdpModes = Vec<(String, AttachMode)>;

/// Loads one redirect program per interface (outside first) and fills its pass maps with
/// the interface's own addresses. Nothing is attached yet. Also returns what was filled in.
pub(super) fn load_xdp(
    cfg: &Config,
    rules: &Rules,
    links: &Links,
) -> Result<(Vec<XdpProgram>, Vec<KernelAddrs>), StartError> {
    let kernel = rules.kernel_addrs(cfg);
    let mut progs = Vec::new();
    for (l, own) in links.all().zip(&kernel) {
        let p = XdpProgram::load(l.num_rx_queues.max(1)).map_err(|err| StartError::XdpLoad {
            ifname: l.name.clone(),
            err,
        })?;
        p.pass_maps()
            .apply(&KernelAddrs::default(), own)
            .map_err(|(addr, err)| StartError::PassAddr {
                addr,
                ifname: l.name.clone(),
                err,
            })?;
        progs.push(p);
    }
    Ok((progs, kernel))
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
