//! 802.1Q trunks without the kernel's 8021q module, emulated with tc (tcx) BPF programs.

use std::io;
use std::os::fd::{AsFd, OwnedFd};

use natgw_kernel::{bpf, sys};

// 802.1Q without the kernel's 8021q module.
//
// The development and CI kernels are built without CONFIG_VLAN_8021Q (no VLAN devices, no
// bridge VLAN filtering). A trunk is emulated with two tiny tc (tcx) BPF programs instead:
// frames arriving tagged on the trunk are untagged and injected into the VLAN's access
// device; frames the kernel sends out of an access device get the tag written into the
// frame data (not just the skb metadata, so natgw's XDP sees it) and leave by the trunk.

const BPF_PROG_TYPE_SCHED_CLS: u32 = 3;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;
const HELPER_SKB_VLAN_POP: i32 = 19;
const HELPER_REDIRECT: i32 = 23;
const HELPER_SKB_CHANGE_HEAD: i32 = 43;
const BPF_F_INGRESS: i32 = 1;
const TC_ACT_OK: i32 = 0;
const TC_ACT_SHOT: i32 = 2;
// struct __sk_buff offsets.
const SKB_MARK: i16 = 8;
const SKB_VLAN_PRESENT: i16 = 20;
const SKB_VLAN_TCI: i16 = 24;
const SKB_DATA: i16 = 76;
const SKB_DATA_END: i16 = 80;

fn load_tc_program(insns: &[bpf::Insn], name: &str) -> io::Result<OwnedFd> {
    bpf::load_program(BPF_PROG_TYPE_SCHED_CLS, 0, insns, name)
}

/// Attaches a tc program to `ifindex` (calling thread's namespace) through a tcx bpf link:
/// it stays attached while the returned fd is open.
fn attach_tcx(prog: &OwnedFd, ifindex: u32, egress: bool) -> io::Result<OwnedFd> {
    let attach = if egress {
        BPF_TCX_EGRESS
    } else {
        BPF_TCX_INGRESS
    };
    bpf::link_create(prog.as_fd(), ifindex, attach, 0)
}

/// Trunk ingress: a tagged frame whose VLAN id is in `access` loses its tag and is received
/// by that VLAN's access device with the VLAN id as packet mark (for policy routing); other
/// tagged frames are dropped, untagged ones pass.
fn vlan_untag_program(access: &[(u16, u32)]) -> io::Result<Vec<bpf::Insn>> {
    use bpf::{BPF_ALU64, BPF_AND, BPF_JEQ, BPF_JNE, BPF_K, Insn, R0, R1, R2, R6, R7, Size};
    let mut p = bpf::ProgramBuilder::new();
    let (pass, drop) = (p.label(), p.label());
    // The kernel has already moved the tag into the skb metadata (skb_vlan_untag).
    p.push(Insn::mov64_reg(R6, R1))
        .push(Insn::ldx(Size::W, R2, R6, SKB_VLAN_PRESENT))
        .jmp_imm_to(BPF_JEQ, R2, 0, pass)
        .push(Insn::ldx(Size::W, R7, R6, SKB_VLAN_TCI))
        .push(Insn::new(BPF_ALU64 | BPF_AND | BPF_K, R7, 0, 0, 0x0fff))
        .push(Insn::mov64_reg(R1, R6))
        .push(Insn::call(HELPER_SKB_VLAN_POP))
        .jmp_imm_to(BPF_JNE, R0, 0, drop);
    for &(vid, ifindex) in access {
        let next = p.label();
        p.jmp_imm_to(BPF_JNE, R7, i32::from(vid), next)
            .push(Insn::mov64_imm(R1, i32::from(vid)))
            .push(Insn::stx(Size::W, R6, R1, SKB_MARK))
            .push(Insn::mov64_imm(R1, ifindex as i32))
            .push(Insn::mov64_imm(R2, BPF_F_INGRESS))
            .push(Insn::call(HELPER_REDIRECT))
            .push(Insn::exit())
            .bind(next);
    }
    p.bind(drop)
        .push(Insn::mov64_imm(R0, TC_ACT_SHOT))
        .push(Insn::exit());
    p.bind(pass)
        .push(Insn::mov64_imm(R0, TC_ACT_OK))
        .push(Insn::exit());
    p.finish()
}

/// Access-device egress: writes an 802.1Q tag with `vid` into the frame and sends it out
/// of the trunk `trunk_ifindex`.
fn vlan_tag_program(vid: u16, trunk_ifindex: u32) -> io::Result<Vec<bpf::Insn>> {
    use bpf::{BPF_JGT, BPF_JNE, Insn, R0, R1, R2, R3, R4, R5, R6, Size};
    let mut p = bpf::ProgramBuilder::new();
    let drop = p.label();
    p.push(Insn::mov64_reg(R6, R1))
        .push(Insn::mov64_imm(R2, 4))
        .push(Insn::mov64_imm(R3, 0))
        .push(Insn::call(HELPER_SKB_CHANGE_HEAD))
        .jmp_imm_to(BPF_JNE, R0, 0, drop)
        .push(Insn::ldx(Size::W, R2, R6, SKB_DATA))
        .push(Insn::ldx(Size::W, R3, R6, SKB_DATA_END))
        .push(Insn::mov64_reg(R4, R2))
        .push(Insn::add64_imm(R4, 18))
        .jmp_reg_to(BPF_JGT, R4, R3, drop);
    // Move both MAC addresses 4 bytes to the front, then tag (TPID, TCI) in the gap; the
    // original EtherType stays where it was.
    for off in [0i16, 4, 8] {
        p.push(Insn::ldx(Size::W, R5, R2, off + 4))
            .push(Insn::stx(Size::W, R2, R5, off));
    }
    let be16 = |v: u16| i32::from(u16::from_ne_bytes(v.to_be_bytes()));
    p.push(Insn::mov64_imm(R5, be16(0x8100)))
        .push(Insn::stx(Size::H, R2, R5, 12))
        .push(Insn::mov64_imm(R5, be16(vid)))
        .push(Insn::stx(Size::H, R2, R5, 14))
        .push(Insn::mov64_imm(R1, trunk_ifindex as i32))
        .push(Insn::mov64_imm(R2, 0))
        .push(Insn::call(HELPER_REDIRECT))
        .push(Insn::exit());
    p.bind(drop)
        .push(Insn::mov64_imm(R0, TC_ACT_SHOT))
        .push(Insn::exit());
    p.finish()
}

/// Makes `trunk` (in the calling thread's namespace) an 802.1Q trunk for the VLANs in
/// `access` (VLAN id, access device name). Returns the tcx links that keep it working.
pub(super) fn attach_vlan_trunk(trunk: &str, access: &[(u16, String)]) -> io::Result<Vec<OwnedFd>> {
    let trunk_idx = sys::if_nametoindex(trunk)?;
    let mut idx = Vec::new();
    for (vid, dev) in access {
        idx.push((*vid, sys::if_nametoindex(dev)?));
    }
    let mut links = Vec::new();
    let untag = load_tc_program(&vlan_untag_program(&idx)?, "ngw_vlan_untag")?;
    links.push(attach_tcx(&untag, trunk_idx, false)?);
    for &(vid, dev_idx) in &idx {
        let tag = load_tc_program(&vlan_tag_program(vid, trunk_idx)?, "ngw_vlan_tag")?;
        links.push(attach_tcx(&tag, dev_idx, true)?);
    }
    Ok(links)
}
