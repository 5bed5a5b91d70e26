//! The XDP program that steers NAT traffic to AF_XDP sockets, built and loaded
//! through bpf(2) directly (no clang, libbpf or libxdp).
//!
//! The program, per frame:
//! 1. shorter than an Ethernet header => `XDP_PASS`;
//! 2. one 802.1Q tag is skipped (the IPv4 header is then at +18 instead of +14);
//! 3. anything but IPv4 (ARP, IPv6, ...) => `XDP_PASS`;
//! 4. truncated IPv4 header, multicast destination (224.0.0.0/4), or destination address in
//!    the `pass_addrs` hash map
//!    (management addresses) => `XDP_PASS`;
//! 5. otherwise `bpf_redirect_map(xsks_map, rx_queue_index, XDP_PASS)`: the frame goes to
//!    the queue's AF_XDP socket, or to the kernel when no socket is registered there.

use std::io;
use std::mem::size_of;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use super::sys;

// bpf(2) commands.
const BPF_MAP_CREATE: u32 = 0;
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_MAP_DELETE_ELEM: u32 = 3;
const BPF_PROG_LOAD: u32 = 5;
const BPF_LINK_CREATE: u32 = 28;

const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_MAP_TYPE_XSKMAP: u32 = 17;
const BPF_PROG_TYPE_XDP: u32 = 6;
const BPF_XDP: u32 = 37;
const BPF_ANY: u64 = 0;

const XDP_FLAGS_SKB_MODE: u32 = 2;
const XDP_FLAGS_DRV_MODE: u32 = 4;

/// XDP verdicts.
pub const XDP_ABORTED: i32 = 0;
pub const XDP_DROP: i32 = 1;
pub const XDP_PASS: i32 = 2;
pub const XDP_TX: i32 = 3;
pub const XDP_REDIRECT: i32 = 4;

/// Helper function ids.
pub const HELPER_MAP_LOOKUP_ELEM: i32 = 1;
pub const HELPER_REDIRECT_MAP: i32 = 51;

/// Offsets in `struct xdp_md`.
const XDP_MD_DATA: i16 = 0;
const XDP_MD_DATA_END: i16 = 4;
const XDP_MD_RX_QUEUE_INDEX: i16 = 16;

/// Maximum number of management addresses in `pass_addrs`.
pub const PASS_MAP_MAX_ENTRIES: u32 = 256;

const VERIFIER_LOG_SIZE: usize = 1 << 20;

// ---------------------------------------------------------------------------------------
// Instruction encoding
// ---------------------------------------------------------------------------------------

/// eBPF registers.
pub type Reg = u8;
pub const R0: Reg = 0;
pub const R1: Reg = 1;
pub const R2: Reg = 2;
pub const R3: Reg = 3;
pub const R4: Reg = 4;
pub const R5: Reg = 5;
pub const R6: Reg = 6;
pub const R7: Reg = 7;
pub const R8: Reg = 8;
pub const R9: Reg = 9;
/// Read-only frame pointer.
pub const R10: Reg = 10;

// Opcode fields (linux/bpf_common.h, linux/bpf.h).
pub const BPF_LD: u8 = 0x00;
pub const BPF_LDX: u8 = 0x01;
pub const BPF_ST: u8 = 0x02;
pub const BPF_STX: u8 = 0x03;
pub const BPF_JMP: u8 = 0x05;
pub const BPF_ALU64: u8 = 0x07;

pub const BPF_IMM: u8 = 0x00;
pub const BPF_MEM: u8 = 0x60;

pub const BPF_K: u8 = 0x00;
pub const BPF_X: u8 = 0x08;

pub const BPF_ADD: u8 = 0x00;
pub const BPF_SUB: u8 = 0x10;
pub const BPF_AND: u8 = 0x50;
pub const BPF_MOV: u8 = 0xb0;

pub const BPF_JA: u8 = 0x00;
pub const BPF_JEQ: u8 = 0x10;
pub const BPF_JGT: u8 = 0x20;
pub const BPF_JGE: u8 = 0x30;
pub const BPF_JNE: u8 = 0x50;
pub const BPF_CALL: u8 = 0x80;
pub const BPF_EXIT: u8 = 0x90;

/// `src` value of an `ld_imm64` whose immediate is a map file descriptor.
pub const BPF_PSEUDO_MAP_FD: u8 = 1;

/// Memory access width.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Size {
    /// 32 bits.
    W = 0x00,
    /// 16 bits.
    H = 0x08,
    /// 8 bits.
    B = 0x10,
    /// 64 bits.
    DW = 0x18,
}

/// One eBPF instruction (`struct bpf_insn`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Insn {
    pub code: u8,
    pub dst: Reg,
    pub src: Reg,
    pub off: i16,
    pub imm: i32,
}

impl Insn {
    pub const fn new(code: u8, dst: Reg, src: Reg, off: i16, imm: i32) -> Insn {
        Insn {
            code,
            dst,
            src,
            off,
            imm,
        }
    }

    /// `dst = src` (64 bit).
    pub const fn mov64_reg(dst: Reg, src: Reg) -> Insn {
        Insn::new(BPF_ALU64 | BPF_MOV | BPF_X, dst, src, 0, 0)
    }

    /// `dst = imm` (64 bit, sign-extended).
    pub const fn mov64_imm(dst: Reg, imm: i32) -> Insn {
        Insn::new(BPF_ALU64 | BPF_MOV | BPF_K, dst, 0, 0, imm)
    }

    /// `dst += imm` (64 bit).
    pub const fn add64_imm(dst: Reg, imm: i32) -> Insn {
        Insn::new(BPF_ALU64 | BPF_ADD | BPF_K, dst, 0, 0, imm)
    }

    /// `dst = *(size *)(src + off)`.
    pub const fn ldx(size: Size, dst: Reg, src: Reg, off: i16) -> Insn {
        Insn::new(BPF_LDX | BPF_MEM | size as u8, dst, src, off, 0)
    }

    /// `*(size *)(dst + off) = src`.
    pub const fn stx(size: Size, dst: Reg, src: Reg, off: i16) -> Insn {
        Insn::new(BPF_STX | BPF_MEM | size as u8, dst, src, off, 0)
    }

    /// `if dst <op> imm goto pc + 1 + off`.
    pub const fn jmp_imm(op: u8, dst: Reg, imm: i32, off: i16) -> Insn {
        Insn::new(BPF_JMP | op | BPF_K, dst, 0, off, imm)
    }

    /// `if dst <op> src goto pc + 1 + off`.
    pub const fn jmp_reg(op: u8, dst: Reg, src: Reg, off: i16) -> Insn {
        Insn::new(BPF_JMP | op | BPF_X, dst, src, off, 0)
    }

    /// `goto pc + 1 + off`.
    pub const fn ja(off: i16) -> Insn {
        Insn::new(BPF_JMP | BPF_JA, 0, 0, off, 0)
    }

    /// Call helper function `id`.
    pub const fn call(id: i32) -> Insn {
        Insn::new(BPF_JMP | BPF_CALL, 0, 0, 0, id)
    }

    /// Return `r0`.
    pub const fn exit() -> Insn {
        Insn::new(BPF_JMP | BPF_EXIT, 0, 0, 0, 0)
    }

    /// `dst = map` (two instruction slots), `map_fd` replaced by the kernel with the map.
    pub const fn ld_map_fd(dst: Reg, map_fd: RawFd) -> [Insn; 2] {
        [
            Insn::new(
                BPF_LD | Size::DW as u8 | BPF_IMM,
                dst,
                BPF_PSEUDO_MAP_FD,
                0,
                map_fd,
            ),
            Insn::new(0, 0, 0, 0, 0),
        ]
    }

    /// The 8-byte wire form of `struct bpf_insn` (host byte order, as the kernel reads it).
    pub fn encode(&self) -> [u8; 8] {
        // `dst_reg:4, src_reg:4` bitfields: the first field takes the low nibble on
        // little-endian targets and the high nibble on big-endian ones.
        let regs = if cfg!(target_endian = "little") {
            (self.dst & 0x0f) | (self.src << 4)
        } else {
            (self.dst << 4) | (self.src & 0x0f)
        };
        let off = self.off.to_ne_bytes();
        let imm = self.imm.to_ne_bytes();
        [
            self.code, regs, off[0], off[1], imm[0], imm[1], imm[2], imm[3],
        ]
    }
}

/// A jump target in a [`ProgramBuilder`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Label(usize);

/// Assembles instructions with forward/backward jumps to labels.
#[derive(Default, Debug)]
pub struct ProgramBuilder {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
    fixups: Vec<(usize, Label)>,
}

impl ProgramBuilder {
    pub fn new() -> ProgramBuilder {
        ProgramBuilder::default()
    }

    /// A new, not yet placed, label.
    pub fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    /// Places `l` at the next instruction.
    pub fn bind(&mut self, l: Label) -> &mut Self {
        self.labels[l.0] = Some(self.insns.len());
        self
    }

    pub fn push(&mut self, i: Insn) -> &mut Self {
        self.insns.push(i);
        self
    }

    pub fn extend(&mut self, i: impl IntoIterator<Item = Insn>) -> &mut Self {
        self.insns.extend(i);
        self
    }

    /// `if dst <op> imm goto l`.
    pub fn jmp_imm_to(&mut self, op: u8, dst: Reg, imm: i32, l: Label) -> &mut Self {
        self.fixups.push((self.insns.len(), l));
        self.push(Insn::jmp_imm(op, dst, imm, 0))
    }

    /// `if dst <op> src goto l`.
    pub fn jmp_reg_to(&mut self, op: u8, dst: Reg, src: Reg, l: Label) -> &mut Self {
        self.fixups.push((self.insns.len(), l));
        self.push(Insn::jmp_reg(op, dst, src, 0))
    }

    /// `goto l`.
    pub fn ja_to(&mut self, l: Label) -> &mut Self {
        self.fixups.push((self.insns.len(), l));
        self.push(Insn::ja(0))
    }

    /// Resolves the jumps; fails on an unplaced label or an out-of-range jump.
    pub fn finish(mut self) -> io::Result<Vec<Insn>> {
        for &(at, l) in &self.fixups {
            let target = self.labels[l.0].ok_or_else(|| {
                io::Error::new(io::ErrorKind::InvalidInput, "jump to an unbound label")
            })?;
            let rel = target as i64 - at as i64 - 1;
            self.insns[at].off = i16::try_from(rel).map_err(|_| {
                io::Error::new(io::ErrorKind::InvalidInput, "jump offset out of range")
            })?;
        }
        Ok(self.insns)
    }
}

/// Network-order 16-bit value as the BPF machine sees it after a `u16` load.
const fn be16(v: u16) -> i32 {
    u16::from_ne_bytes(v.to_be_bytes()) as i32
}

/// The redirect program (see the module documentation), referring to the given map fds.
pub fn redirect_program(xsks_map_fd: RawFd, pass_map_fd: RawFd) -> io::Result<Vec<Insn>> {
    const ETH_HLEN: i32 = 14;
    const VLAN_HLEN: i32 = 4;
    const IPV4_MIN_HLEN: i32 = 20;
    const IPV4_DADDR_OFF: i16 = 16;

    let mut b = ProgramBuilder::new();
    let pass = b.label();
    let untagged = b.label();

    // r6 = ctx (survives helper calls); r2 = data, r3 = data_end.
    b.push(Insn::mov64_reg(R6, R1))
        .push(Insn::ldx(Size::W, R2, R6, XDP_MD_DATA))
        .push(Insn::ldx(Size::W, R3, R6, XDP_MD_DATA_END))
        .push(Insn::mov64_reg(R4, R2))
        .push(Insn::add64_imm(R4, ETH_HLEN))
        .jmp_reg_to(BPF_JGT, R4, R3, pass)
        .push(Insn::ldx(Size::H, R5, R2, 12))
        .jmp_imm_to(BPF_JNE, R5, be16(0x8100), untagged)
        // One 802.1Q tag: read the inner EtherType, then shift r2 by the tag so that the
        // code below sees the same layout as for an untagged frame.
        .push(Insn::mov64_reg(R4, R2))
        .push(Insn::add64_imm(R4, ETH_HLEN + VLAN_HLEN))
        .jmp_reg_to(BPF_JGT, R4, R3, pass)
        .push(Insn::ldx(Size::H, R5, R2, 16))
        .push(Insn::add64_imm(R2, VLAN_HLEN))
        .bind(untagged)
        .jmp_imm_to(BPF_JNE, R5, be16(0x0800), pass)
        .push(Insn::mov64_reg(R4, R2))
        .push(Insn::add64_imm(R4, ETH_HLEN + IPV4_MIN_HLEN))
        .jmp_reg_to(BPF_JGT, R4, R3, pass)
        // Key = destination address exactly as in the packet (network order).
        .push(Insn::ldx(Size::W, R5, R2, ETH_HLEN as i16 + IPV4_DADDR_OFF))
        // Multicast (224.0.0.0/4: IGMP, mDNS, ...) is link-local business of the kernel and is
        // never translated. The first address byte is the low byte of the loaded word.
        .push(Insn::mov64_reg(R4, R5))
        .push(Insn::new(BPF_ALU64 | BPF_AND | BPF_K, R4, 0, 0, 0xf0))
        .jmp_imm_to(BPF_JEQ, R4, 0xe0, pass)
        .push(Insn::stx(Size::W, R10, R5, -4))
        .extend(Insn::ld_map_fd(R1, pass_map_fd))
        .push(Insn::mov64_reg(R2, R10))
        .push(Insn::add64_imm(R2, -4))
        .push(Insn::call(HELPER_MAP_LOOKUP_ELEM))
        .jmp_imm_to(BPF_JNE, R0, 0, pass)
        .push(Insn::ldx(Size::W, R2, R6, XDP_MD_RX_QUEUE_INDEX))
        .extend(Insn::ld_map_fd(R1, xsks_map_fd))
        .push(Insn::mov64_imm(R3, XDP_PASS))
        .push(Insn::call(HELPER_REDIRECT_MAP))
        .push(Insn::exit())
        .bind(pass)
        .push(Insn::mov64_imm(R0, XDP_PASS))
        .push(Insn::exit());
    b.finish()
}

// ---------------------------------------------------------------------------------------
// bpf(2)
// ---------------------------------------------------------------------------------------

#[repr(C)]
#[derive(Default)]
struct MapCreateAttr {
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
    inner_map_fd: u32,
    numa_node: u32,
    map_name: [u8; 16],
}

#[repr(C)]
#[derive(Default)]
struct MapElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value: u64,
    flags: u64,
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_ifindex: u32,
    attach_type: u32,
    flags: u32,
}

/// bpf(2). `attr` must be one of the `*Attr` structs above: plain data whose unused tail
/// the kernel treats as zero.
fn bpf<T>(cmd: u32, attr: &mut T, op: &'static str) -> io::Result<i32> {
    // SAFETY: `attr` points to a live, initialised `repr(C)` struct of the given size;
    // every pointer inside it refers to memory that outlives the call.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd as libc::c_long,
            attr as *mut T as *mut libc::c_void,
            size_of::<T>() as libc::c_long,
        )
    };
    if r < 0 {
        Err(sys::last_os_error(op))
    } else {
        Ok(r as i32)
    }
}

fn owned(fd: i32) -> OwnedFd {
    // SAFETY: `fd` was just returned by the kernel and is owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn name16(name: &str) -> [u8; 16] {
    let mut out = [0u8; 16];
    // The kernel wants a NUL inside the 16 bytes.
    for (o, b) in out.iter_mut().zip(name.bytes().take(15)) {
        *o = b;
    }
    out
}

fn map_create(
    map_type: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    name: &str,
) -> io::Result<OwnedFd> {
    let mut attr = MapCreateAttr {
        map_type,
        key_size,
        value_size,
        max_entries,
        map_name: name16(name),
        ..Default::default()
    };
    bpf(BPF_MAP_CREATE, &mut attr, "bpf(BPF_MAP_CREATE)").map(owned)
}

fn map_update<K, V>(map: BorrowedFd<'_>, key: &K, value: &V) -> io::Result<()> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key as *const K as u64,
        value: value as *const V as u64,
        flags: BPF_ANY,
        ..Default::default()
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr, "bpf(BPF_MAP_UPDATE_ELEM)").map(drop)
}

fn map_delete<K>(map: BorrowedFd<'_>, key: &K) -> io::Result<()> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key as *const K as u64,
        ..Default::default()
    };
    bpf(BPF_MAP_DELETE_ELEM, &mut attr, "bpf(BPF_MAP_DELETE_ELEM)").map(drop)
}

/// Loads a program of `prog_type` (e.g. 6 = XDP, 3 = tc `sched_cls`). On failure the load
/// is repeated with the verifier log enabled and the log is put into the error.
pub fn load_program(
    prog_type: u32,
    expected_attach_type: u32,
    insns: &[Insn],
    name: &str,
) -> io::Result<OwnedFd> {
    let code: Vec<[u8; 8]> = insns.iter().map(Insn::encode).collect();
    let license = c"GPL"; // bpf_redirect_map and friends are GPL-only helpers.
    let mut attr = ProgLoadAttr {
        prog_type,
        insn_cnt: code.len() as u32,
        insns: code.as_ptr() as u64,
        license: license.as_ptr() as u64,
        prog_name: name16(name),
        expected_attach_type,
        ..Default::default()
    };
    match bpf(BPF_PROG_LOAD, &mut attr, "bpf(BPF_PROG_LOAD)") {
        Ok(fd) => Ok(owned(fd)),
        Err(first) => {
            let errno = sys::errno(&first).unwrap_or(libc::EINVAL);
            let mut log = vec![0u8; VERIFIER_LOG_SIZE];
            attr.log_level = 1;
            attr.log_size = log.len() as u32;
            attr.log_buf = log.as_mut_ptr() as u64;
            match bpf(BPF_PROG_LOAD, &mut attr, "bpf(BPF_PROG_LOAD)") {
                // Loads that fail only without a log do not happen in practice; take it.
                Ok(fd) => Ok(owned(fd)),
                Err(_) => {
                    let end = log.iter().position(|&b| b == 0).unwrap_or(log.len());
                    let text = String::from_utf8_lossy(&log[..end]).trim_end().to_string();
                    let detail =
                        (!text.is_empty()).then(|| format!("{name}: verifier log:\n{text}"));
                    Err(sys::os_error_detail("bpf(BPF_PROG_LOAD)", errno, detail))
                }
            }
        }
    }
}

/// Loads an XDP program (see [`load_program`]).
pub fn load_xdp_program(insns: &[Insn], name: &str) -> io::Result<OwnedFd> {
    load_program(BPF_PROG_TYPE_XDP, BPF_XDP, insns, name)
}

/// Loads the trivial `return XDP_PASS` program. A veth only accepts frames redirected into
/// it (XDP_TX, XDP_REDIRECT, AF_XDP zero-copy forwarding) when its peer runs a native XDP
/// program; this one is that program.
pub fn load_pass_program() -> io::Result<OwnedFd> {
    load_xdp_program(&[Insn::mov64_imm(R0, XDP_PASS), Insn::exit()], "natgw_pass")
}

/// Attaching mode of an XDP program.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AttachMode {
    /// In the driver (`XDP_FLAGS_DRV_MODE`).
    Native,
    /// In the generic skb path (`XDP_FLAGS_SKB_MODE`), works on any device.
    Generic,
}

impl AttachMode {
    fn flags(self) -> u32 {
        match self {
            AttachMode::Native => XDP_FLAGS_DRV_MODE,
            AttachMode::Generic => XDP_FLAGS_SKB_MODE,
        }
    }
}

/// Attaches `prog` to `ifindex` (in the calling thread's network namespace) through a bpf
/// link. The program stays attached while the returned link fd is open: closing it, or
/// the process ending in any way, detaches it.
pub fn attach_xdp(prog: BorrowedFd<'_>, ifindex: u32, mode: AttachMode) -> io::Result<OwnedFd> {
    link_create(prog, ifindex, BPF_XDP, mode.flags())
}

/// Attaches `prog` to `ifindex` with `attach_type` (e.g. 37 = XDP, 46/47 = tcx ingress/egress)
/// through a bpf link; closing the returned fd detaches it.
pub fn link_create(
    prog: BorrowedFd<'_>,
    ifindex: u32,
    attach_type: u32,
    flags: u32,
) -> io::Result<OwnedFd> {
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        target_ifindex: ifindex,
        attach_type,
        flags,
    };
    bpf(BPF_LINK_CREATE, &mut attr, "bpf(BPF_LINK_CREATE)").map(owned)
}

/// The redirect program with its maps, optionally attached to one interface.
///
/// Dropping it closes every fd, which detaches the program.
#[derive(Debug)]
pub struct XdpProgram {
    // Field order is drop order: the link goes first so the program is detached before
    // its maps disappear.
    link: Option<(OwnedFd, u32, AttachMode)>,
    prog: OwnedFd,
    xsks_map: OwnedFd,
    pass_map: OwnedFd,
    max_queues: u32,
}

impl XdpProgram {
    /// Creates the maps (`xsks_map` with `max_queues` entries, `pass_addrs`) and loads the
    /// program. A verifier rejection carries the verifier log in the error message.
    pub fn load(max_queues: u32) -> io::Result<Self> {
        if max_queues == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "max_queues must be at least 1",
            ));
        }
        let xsks_map = map_create(BPF_MAP_TYPE_XSKMAP, 4, 4, max_queues, "xsks_map")?;
        let pass_map = map_create(BPF_MAP_TYPE_HASH, 4, 1, PASS_MAP_MAX_ENTRIES, "pass_addrs")?;
        let insns = redirect_program(xsks_map.as_raw_fd(), pass_map.as_raw_fd())?;
        let prog = load_xdp_program(&insns, "natgw_xsk")?;
        Ok(XdpProgram {
            link: None,
            prog,
            xsks_map,
            pass_map,
            max_queues,
        })
    }

    /// Attaches to `ifindex` in the calling thread's network namespace. Fails if this
    /// program is already attached (one `XdpProgram` per interface).
    pub fn attach(&mut self, ifindex: u32, mode: AttachMode) -> io::Result<()> {
        if self.link.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "XDP program already attached",
            ));
        }
        let link = attach_xdp(self.prog.as_fd(), ifindex, mode)?;
        self.link = Some((link, ifindex, mode));
        Ok(())
    }

    /// Attaches in native mode, falling back to generic mode if the driver refuses.
    pub fn attach_auto(&mut self, ifindex: u32) -> io::Result<AttachMode> {
        if self.link.is_some() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "XDP program already attached",
            ));
        }
        match self.attach(ifindex, AttachMode::Native) {
            Ok(()) => Ok(AttachMode::Native),
            Err(native) => self
                .attach(ifindex, AttachMode::Generic)
                .map(|()| AttachMode::Generic)
                .map_err(|generic| {
                    io::Error::new(
                        generic.kind(),
                        format!("native: {native}; generic: {generic}"),
                    )
                }),
        }
    }

    /// Detaches the program (keeps maps and program loaded).
    pub fn detach(&mut self) {
        self.link = None;
    }

    /// The interface and mode this program is attached to, if any.
    pub fn attached(&self) -> Option<(u32, AttachMode)> {
        self.link.as_ref().map(|&(_, i, m)| (i, m))
    }

    /// Frames to `a` go to the kernel instead of the sockets.
    pub fn add_pass_addr(&self, a: Ipv4Addr) -> io::Result<()> {
        let key = u32::from_ne_bytes(a.octets());
        map_update(self.pass_map.as_fd(), &key, &1u8)
    }

    /// Undoes [`add_pass_addr`](Self::add_pass_addr).
    pub fn remove_pass_addr(&self, a: Ipv4Addr) -> io::Result<()> {
        let key = u32::from_ne_bytes(a.octets());
        map_delete(self.pass_map.as_fd(), &key)
    }

    /// Frames received on `queue` go to the AF_XDP socket `xsk_fd` (which must be bound to
    /// that queue of this interface, else the kernel drops them).
    pub fn register_socket(&self, queue: u32, xsk_fd: RawFd) -> io::Result<()> {
        if queue >= self.max_queues {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("queue {queue} >= max_queues {}", self.max_queues),
            ));
        }
        map_update(self.xsks_map.as_fd(), &queue, &(xsk_fd as u32))
    }

    /// Frames received on `queue` go to the kernel again.
    pub fn unregister_socket(&self, queue: u32) -> io::Result<()> {
        map_delete(self.xsks_map.as_fd(), &queue)
    }

    /// The program fd.
    pub fn prog_fd(&self) -> BorrowedFd<'_> {
        self.prog.as_fd()
    }
}

impl Drop for XdpProgram {
    fn drop(&mut self) {
        // Detach first, explicitly; the fds close afterwards in field order.
        self.link.take();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encoding_matches_kernel_layout() {
        // r2 = *(u32 *)(r1 + 16)
        assert_eq!(
            Insn::ldx(Size::W, R2, R1, 16).encode(),
            [0x61, 0x12, 16, 0, 0, 0, 0, 0]
        );
        // r3 = 2
        assert_eq!(
            Insn::mov64_imm(R3, 2).encode(),
            [0xb7, 0x03, 0, 0, 2, 0, 0, 0]
        );
        // call 51; exit
        assert_eq!(Insn::call(51).encode(), [0x85, 0, 0, 0, 51, 0, 0, 0]);
        assert_eq!(Insn::exit().encode(), [0x95, 0, 0, 0, 0, 0, 0, 0]);
        // r1 = map fd 7 (ld_imm64, src = BPF_PSEUDO_MAP_FD)
        let [a, b] = Insn::ld_map_fd(R1, 7);
        assert_eq!(a.encode(), [0x18, 0x11, 0, 0, 7, 0, 0, 0]);
        assert_eq!(b.encode(), [0; 8]);
        // if r4 > r3 goto +5
        assert_eq!(
            Insn::jmp_reg(BPF_JGT, R4, R3, 5).encode(),
            [0x2d, 0x34, 5, 0, 0, 0, 0, 0]
        );
        // *(u32 *)(r10 - 4) = r5
        assert_eq!(
            Insn::stx(Size::W, R10, R5, -4).encode(),
            [0x63, 0x5a, 0xfc, 0xff, 0, 0, 0, 0]
        );
    }

    #[test]
    fn builder_resolves_labels() {
        let mut b = ProgramBuilder::new();
        let fwd = b.label();
        let back = b.label();
        b.bind(back)
            .jmp_imm_to(BPF_JEQ, R1, 0, fwd)
            .push(Insn::mov64_imm(R0, 1))
            .ja_to(back)
            .bind(fwd)
            .push(Insn::exit());
        let p = b.finish().unwrap();
        assert_eq!(p[0].off, 2);
        assert_eq!(p[2].off, -3);

        let mut b = ProgramBuilder::new();
        let l = b.label();
        b.ja_to(l);
        assert!(b.finish().is_err());
    }

    /// A tiny interpreter for the subset of eBPF the redirect program uses, so that its
    /// decisions can be checked without loading it.
    #[derive(Debug, PartialEq, Eq)]
    enum Outcome {
        Pass,
        Redirect { queue: u32, fallback: i32 },
    }

    const CTX: u64 = 0x1000_0000;
    const PKT: u64 = 0x2000_0000;
    const STACK_TOP: u64 = 0x3000_0000;

    fn run(prog: &[Insn], frame: &[u8], queue: u32, pass: &[[u8; 4]]) -> Outcome {
        let mut r = [0u64; 11];
        let mut stack = [0u8; 512];
        r[1] = CTX;
        r[10] = STACK_TOP;
        let mut pc = 0usize;
        let load = |addr: u64, size: Size, stack: &[u8; 512]| -> u64 {
            let n = match size {
                Size::W => 4,
                Size::H => 2,
                Size::B => 1,
                Size::DW => 8,
            };
            let bytes: Vec<u8> = if (CTX..CTX + 24).contains(&addr) {
                let ctx = [
                    PKT as u32,
                    (PKT + frame.len() as u64) as u32,
                    0,
                    0,
                    queue,
                    0,
                ];
                let raw: Vec<u8> = ctx.iter().flat_map(|v| v.to_ne_bytes()).collect();
                let o = (addr - CTX) as usize;
                raw[o..o + n].to_vec()
            } else if (PKT..PKT + frame.len() as u64).contains(&addr) {
                let o = (addr - PKT) as usize;
                assert!(o + n <= frame.len(), "out-of-bounds packet read at {o}");
                frame[o..o + n].to_vec()
            } else {
                let o = (addr - (STACK_TOP - 512)) as usize;
                stack[o..o + n].to_vec()
            };
            let mut v = [0u8; 8];
            v[..n].copy_from_slice(&bytes);
            u64::from_le_bytes(v) // host is little-endian for these tests
        };
        for _ in 0..1000 {
            let i = prog[pc];
            pc += 1;
            let class = i.code & 0x07;
            match class {
                BPF_ALU64 => {
                    let src = if i.code & BPF_X != 0 {
                        r[i.src as usize]
                    } else {
                        i.imm as i64 as u64
                    };
                    match i.code & 0xf0 {
                        BPF_MOV => r[i.dst as usize] = src,
                        BPF_ADD => r[i.dst as usize] = r[i.dst as usize].wrapping_add(src),
                        BPF_AND => r[i.dst as usize] &= src,
                        op => panic!("alu op {op:#x}"),
                    }
                }
                BPF_LDX => {
                    let size = match i.code & 0x18 {
                        0x00 => Size::W,
                        0x08 => Size::H,
                        0x10 => Size::B,
                        _ => Size::DW,
                    };
                    let addr = r[i.src as usize].wrapping_add(i.off as i64 as u64);
                    r[i.dst as usize] = load(addr, size, &stack);
                }
                BPF_STX => {
                    assert_eq!(i.code, 0x63);
                    let addr = r[i.dst as usize].wrapping_add(i.off as i64 as u64);
                    let o = (addr - (STACK_TOP - 512)) as usize;
                    stack[o..o + 4].copy_from_slice(&(r[i.src as usize] as u32).to_le_bytes());
                }
                BPF_LD => {
                    r[i.dst as usize] = i.imm as u32 as u64;
                    pc += 1;
                }
                BPF_JMP => match i.code & 0xf0 {
                    BPF_EXIT => {
                        assert_eq!(r[0], XDP_PASS as u64);
                        return Outcome::Pass;
                    }
                    BPF_CALL => match i.imm {
                        HELPER_MAP_LOOKUP_ELEM => {
                            assert_eq!(r[1], 200, "lookup must use pass_addrs");
                            let key = load(r[2], Size::W, &stack) as u32;
                            let found = pass.iter().any(|a| u32::from_ne_bytes(*a) == key);
                            r[0] = if found { 0x4000 } else { 0 };
                        }
                        HELPER_REDIRECT_MAP => {
                            assert_eq!(r[1], 100, "redirect must use xsks_map");
                            assert_eq!(prog[pc].code, BPF_JMP | BPF_EXIT);
                            return Outcome::Redirect {
                                queue: r[2] as u32,
                                fallback: r[3] as i32,
                            };
                        }
                        h => panic!("helper {h}"),
                    },
                    op => {
                        let a = r[i.dst as usize];
                        let b = if i.code & BPF_X != 0 {
                            r[i.src as usize]
                        } else {
                            i.imm as i64 as u64
                        };
                        let taken = match op {
                            BPF_JA => true,
                            BPF_JEQ => a == b,
                            BPF_JNE => a != b,
                            BPF_JGT => a > b,
                            _ => panic!("jmp op {op:#x}"),
                        };
                        if taken {
                            pc = (pc as i64 + i.off as i64) as usize;
                        }
                    }
                },
                c => panic!("class {c}"),
            }
        }
        panic!("program did not terminate");
    }

    fn frame(vlan: bool, ethertype: u16, dst: [u8; 4], len_after_l2: usize) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        if vlan {
            f.extend_from_slice(&[0x81, 0x00, 0x00, 0x05]);
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        let mut ip = vec![0u8; 20];
        ip[0] = 0x45;
        ip[16..20].copy_from_slice(&dst);
        ip.resize(len_after_l2.max(20), 0);
        f.extend_from_slice(&ip[..len_after_l2]);
        f
    }

    #[test]
    fn program_decisions() {
        if cfg!(target_endian = "big") {
            return;
        }
        let p = redirect_program(100, 200).unwrap();
        let mgmt = [10, 0, 0, 1];
        let nat = [10, 9, 8, 7];
        let redirect = Outcome::Redirect {
            queue: 3,
            fallback: XDP_PASS,
        };
        for vlan in [false, true] {
            assert_eq!(run(&p, &frame(vlan, 0x0800, nat, 28), 3, &[mgmt]), redirect);
            assert_eq!(
                run(&p, &frame(vlan, 0x0800, mgmt, 28), 3, &[mgmt]),
                Outcome::Pass
            );
            assert_eq!(
                run(&p, &frame(vlan, 0x0806, nat, 28), 3, &[mgmt]),
                Outcome::Pass
            );
            assert_eq!(
                run(&p, &frame(vlan, 0x86dd, nat, 40), 3, &[mgmt]),
                Outcome::Pass
            );
            // Truncated IPv4 header.
            assert_eq!(
                run(&p, &frame(vlan, 0x0800, nat, 19), 3, &[]),
                Outcome::Pass
            );
            // Exactly the minimum header.
            assert_eq!(run(&p, &frame(vlan, 0x0800, nat, 20), 3, &[]), redirect);
            // Multicast goes to the kernel; the addresses around the range do not.
            for mc in [[224, 0, 0, 22], [239, 255, 255, 250]] {
                assert_eq!(run(&p, &frame(vlan, 0x0800, mc, 28), 3, &[]), Outcome::Pass);
            }
            for uc in [[223, 255, 255, 255], [240, 0, 0, 1], [14, 0, 0, 224]] {
                assert_eq!(run(&p, &frame(vlan, 0x0800, uc, 28), 3, &[]), redirect);
            }
        }
        // Shorter than Ethernet, and a tag with no room for the inner EtherType.
        assert_eq!(run(&p, &[0u8; 13], 0, &[]), Outcome::Pass);
        let mut cut = vec![0u8; 12];
        cut.extend_from_slice(&[0x81, 0x00, 0x00]);
        assert_eq!(run(&p, &cut, 0, &[]), Outcome::Pass);
    }
}
