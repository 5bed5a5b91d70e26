//! The smallest useful AF_XDP steering program, for tools that want every IPv4 frame of an
//! interface in userspace (the benchmark generator and sink): IPv4 frames go to the AF_XDP
//! socket registered for their receive queue in an XSKMAP; everything else (ARP above all,
//! so that neighbours still resolve) and frames on a queue without a socket go to the
//! kernel. natgw's own program (the gateway's `dataplane::xdp`) adds the pass maps for the
//! box's addresses on top of the same steps.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use crate::bpf::{
    self, AttachMode, BPF_JGT, BPF_JNE, BPF_MAP_TYPE_XSKMAP, HELPER_REDIRECT_MAP, Insn,
    ProgramBuilder, R0, R1, R2, R3, R4, Size, XDP_MD_DATA, XDP_MD_DATA_END, XDP_MD_RX_QUEUE_INDEX,
    XDP_PASS,
};

/// The program: IPv4 (untagged) => `bpf_redirect_map(xsks, rx_queue_index, XDP_PASS)`,
/// anything else => `XDP_PASS`.
pub fn redirect_ipv4_program(xsks_map_fd: RawFd) -> io::Result<Vec<Insn>> {
    const ETH_HLEN: i32 = 14;
    // EtherType 0x0800 as a little-endian u16 load sees it.
    const ETH_P_IP_LOADED: i32 = u16::from_ne_bytes(0x0800u16.to_be_bytes()) as i32;
    let mut b = ProgramBuilder::new();
    let pass = b.label();
    b.push(Insn::ldx(Size::W, R2, R1, XDP_MD_DATA))
        .push(Insn::ldx(Size::W, R3, R1, XDP_MD_DATA_END))
        .push(Insn::mov64_reg(R4, R2))
        .push(Insn::add64_imm(R4, ETH_HLEN))
        .jmp_reg_to(BPF_JGT, R4, R3, pass)
        .push(Insn::ldx(Size::H, R4, R2, 12))
        .jmp_imm_to(BPF_JNE, R4, ETH_P_IP_LOADED, pass)
        .push(Insn::ldx(Size::W, R2, R1, XDP_MD_RX_QUEUE_INDEX))
        .extend(Insn::ld_map_fd(R1, xsks_map_fd))
        // The lower bits of the flags are the verdict when the queue has no socket.
        .push(Insn::mov64_imm(R3, XDP_PASS))
        .push(Insn::call(HELPER_REDIRECT_MAP))
        .push(Insn::exit())
        .bind(pass)
        .push(Insn::mov64_imm(R0, XDP_PASS))
        .push(Insn::exit());
    b.finish()
}

/// [`redirect_ipv4_program`] with its XSKMAP, optionally attached to one interface. Dropping
/// it detaches the program (the link closes before the program and the map).
#[derive(Debug)]
pub struct XskRedirect {
    link: Option<(OwnedFd, u32, AttachMode)>,
    prog: OwnedFd,
    xsks_map: OwnedFd,
    max_queues: u32,
}

impl XskRedirect {
    /// Creates the XSKMAP (`max_queues` entries) and loads the program.
    pub fn load(max_queues: u32) -> io::Result<XskRedirect> {
        if max_queues == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "max_queues must be at least 1",
            ));
        }
        let xsks_map = bpf::map_create(BPF_MAP_TYPE_XSKMAP, 4, 4, max_queues, "xsks_map")?;
        let insns = redirect_ipv4_program(xsks_map.as_raw_fd())?;
        let prog = bpf::load_xdp_program(&insns, "xsk_ipv4")?;
        Ok(XskRedirect {
            link: None,
            prog,
            xsks_map,
            max_queues,
        })
    }

    /// Attaches to `ifindex` (calling thread's namespace) in `mode`, or native with a
    /// generic fallback for `None`; returns the mode it got.
    pub fn attach(&mut self, ifindex: u32, mode: Option<AttachMode>) -> io::Result<AttachMode> {
        if self.link.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "XDP program already attached",
            ));
        }
        let (link, got) = match mode {
            Some(m) => (bpf::attach_xdp(self.prog.as_fd(), ifindex, m)?, m),
            None => bpf::attach_xdp_auto(self.prog.as_fd(), ifindex)?,
        };
        self.link = Some((link, ifindex, got));
        Ok(got)
    }

    /// The interface and mode this program is attached to, if any.
    pub fn attached(&self) -> Option<(u32, AttachMode)> {
        self.link.as_ref().map(|&(_, i, m)| (i, m))
    }

    /// Frames received on `queue` go to the AF_XDP socket `xsk_fd` (bound to that queue of
    /// the interface the program is attached to).
    pub fn register_socket(&self, queue: u32, xsk_fd: RawFd) -> io::Result<()> {
        if queue >= self.max_queues {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("queue {queue} >= max_queues {}", self.max_queues),
            ));
        }
        bpf::map_update(self.xsks_map.as_fd(), &queue, &(xsk_fd as u32))
    }

    /// The program fd.
    pub fn prog_fd(&self) -> BorrowedFd<'_> {
        self.prog.as_fd()
    }
}

impl Drop for XskRedirect {
    fn drop(&mut self) {
        self.link.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn program_assembles_with_resolved_jumps() {
        let p = redirect_ipv4_program(7).unwrap();
        assert!(p.len() > 10);
        assert_eq!(p.last().unwrap().encode(), Insn::exit().encode());
    }
}
