//! Faults on the gateway's inside link for the tests of natgw's link supervision: delete
//! `eth-in` (which destroys its peer `sw-gw`) and create it again as [`Topology::build`]
//! did.

use std::io;
use std::os::fd::AsFd;

use super::commands::ip_batch;
use super::{GW_INSIDE_IF, SWITCH_UPLINK_IF, Topology};
use crate::netns::{annotate, try_run_in_netns};
use natgw_kernel::bpf::{self, AttachMode};
use natgw_kernel::{ethtool, sys};

impl Topology {
    /// Deletes the gateway's inside veth `eth-in` (and with it the switch's `sw-gw`).
    pub fn delete_inside_link(&self) -> io::Result<()> {
        ip_batch(&self.gw, &[format!("link del {GW_INSIDE_IF}")])
    }

    /// Creates `eth-in`/`sw-gw` again after [`delete_inside_link`](Self::delete_inside_link):
    /// same queues and address, `sw-gw` in the bridge, checksum offload off, XDP_PASS on
    /// `sw-gw`. The new `eth-in` is another device (another ifindex). Untagged topologies
    /// only.
    pub fn recreate_inside_link(&mut self) -> io::Result<()> {
        if self.spec.vlans {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "recreate_inside_link: VLAN topologies are not supported",
            ));
        }
        let q = self.spec.queues.to_string();
        let a = &self.spec.addressing;
        ip_batch(
            &self.gw,
            &[
                format!(
                    "link add {GW_INSIDE_IF} numrxqueues {q} numtxqueues {q} type veth peer name \
                     {SWITCH_UPLINK_IF} netns {} numrxqueues {q} numtxqueues {q}",
                    self.sw
                ),
                format!(
                    "addr add {}/{} dev {GW_INSIDE_IF}",
                    a.inside_gw, a.inside_len
                ),
                format!("link set {GW_INSIDE_IF} up"),
            ],
        )?;
        ip_batch(
            &self.sw,
            &[
                format!("link set {SWITCH_UPLINK_IF} master br0"),
                format!("link set {SWITCH_UPLINK_IF} up"),
            ],
        )?;
        try_run_in_netns(&self.gw, || ethtool::set_tx_checksum(GW_INSIDE_IF, false))?
            .map_err(|e| annotate(e, "tx checksum off on eth-in"))?;
        let link = try_run_in_netns(&self.sw, || -> io::Result<_> {
            ethtool::set_tx_checksum(SWITCH_UPLINK_IF, false)?;
            let prog = bpf::load_pass_program()?;
            let idx = sys::if_nametoindex(SWITCH_UPLINK_IF)?;
            bpf::attach_xdp(prog.as_fd(), idx, AttachMode::Native)
        })?
        .map_err(|e| annotate(e, "sw-gw again"))?;
        self.bpf_links.push(link);
        Ok(())
    }
}
