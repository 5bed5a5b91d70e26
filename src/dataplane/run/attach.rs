//! The XDP step: one redirect program per interface, loaded, given the management
//! addresses to pass and attached.

use super::StartError;
use super::checks::Links;
use crate::config::{Config, XdpMode};
use crate::dataplane::xdp::XdpProgram;
use natgw_kernel::bpf::AttachMode;

/// The mode XDP got on each interface (for the log and the metrics).
pub(super) type XdpModes = Vec<(String, AttachMode)>;

/// Loads one redirect program per interface (outside first), fills its pass map with the
/// interface's management addresses and attaches it in `mode`.
pub(super) fn load_and_attach_xdp(
    cfg: &Config,
    links: &Links,
    mode: XdpMode,
) -> Result<(Vec<XdpProgram>, XdpModes), StartError> {
    let management =
        std::iter::once(&cfg.outside.management).chain(cfg.inside.iter().map(|i| &i.management));
    let mut progs = Vec::new();
    let mut xdp_modes = Vec::new();
    for (l, mgmt) in links.all().zip(management) {
        let mut p =
            XdpProgram::load(l.num_rx_queues.max(1)).map_err(|err| StartError::XdpLoad {
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
        progs.push(p);
    }
    Ok((progs, xdp_modes))
}
