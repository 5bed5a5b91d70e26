//! eBPF through bpf(2) directly (no clang, libbpf or libxdp): instruction encoding, an
//! assembler with labels ([`ProgramBuilder`]), maps, program loading (with the verifier log
//! on failure) and bpf links (XDP in native or generic mode, tcx).

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use crate::sys;

// bpf(2) commands.
const BPF_MAP_CREATE: u32 = 0;
const BPF_MAP_LOOKUP_ELEM: u32 = 1;
const BPF_MAP_UPDATE_ELEM: u32 = 2;
const BPF_MAP_DELETE_ELEM: u32 = 3;
const BPF_PROG_LOAD: u32 = 5;
const BPF_LINK_CREATE: u32 = 28;

/// Map types.
pub const BPF_MAP_TYPE_HASH: u32 = 1;
pub const BPF_MAP_TYPE_PERCPU_ARRAY: u32 = 6;
pub const BPF_MAP_TYPE_XSKMAP: u32 = 17;
/// Program type of XDP programs.
pub const BPF_PROG_TYPE_XDP: u32 = 6;
/// Attach type of XDP programs.
pub const BPF_XDP: u32 = 37;
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
pub const XDP_MD_DATA: i16 = 0;
pub const XDP_MD_DATA_END: i16 = 4;
pub const XDP_MD_RX_QUEUE_INDEX: i16 = 16;

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

/// Creates a map (`BPF_MAP_CREATE`); `name` is cut to 15 bytes.
pub fn map_create(
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

/// Sets `key` to `value` in `map` (`BPF_ANY`). `K` and `V` must be plain data of the map's
/// key and value sizes.
pub fn map_update<K, V>(map: BorrowedFd<'_>, key: &K, value: &V) -> io::Result<()> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key as *const K as u64,
        value: value as *const V as u64,
        flags: BPF_ANY,
        ..Default::default()
    };
    bpf(BPF_MAP_UPDATE_ELEM, &mut attr, "bpf(BPF_MAP_UPDATE_ELEM)").map(drop)
}

/// Reads `key` of `map` into `value` (`BPF_MAP_LOOKUP_ELEM`). `K` and `V` must be plain
/// data of the map's key and value sizes; for a per-CPU map `V` holds one value per
/// possible CPU ([`possible_cpus`]), each rounded up to 8 bytes.
pub fn map_lookup<K, V>(map: BorrowedFd<'_>, key: &K, value: &mut V) -> io::Result<()> {
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key as *const K as u64,
        value: value as *mut V as u64,
        ..Default::default()
    };
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr, "bpf(BPF_MAP_LOOKUP_ELEM)").map(drop)
}

/// Reads `key` of a per-CPU map whose values are one `u64` each and returns their sum
/// over all possible CPUs.
pub fn percpu_u64_sum<K>(map: BorrowedFd<'_>, key: &K) -> io::Result<u64> {
    let n = possible_cpus()?;
    let mut values = vec![0u64; n];
    let mut attr = MapElemAttr {
        map_fd: map.as_raw_fd() as u32,
        key: key as *const K as u64,
        value: values.as_mut_ptr() as u64,
        ..Default::default()
    };
    bpf(BPF_MAP_LOOKUP_ELEM, &mut attr, "bpf(BPF_MAP_LOOKUP_ELEM)")?;
    Ok(values.iter().fold(0u64, |a, v| a.wrapping_add(*v)))
}

/// The number of possible CPUs (`/sys/devices/system/cpu/possible`, e.g. `0-3`): how many
/// values a per-CPU map holds per key.
pub fn possible_cpus() -> io::Result<usize> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/possible")?;
    parse_cpu_list(s.trim()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/sys/devices/system/cpu/possible: cannot parse {s:?}"),
        )
    })
}

/// The highest CPU number + 1 in a kernel CPU list (`0`, `0-3`, `0-3,8-11`).
fn parse_cpu_list(s: &str) -> Option<usize> {
    let mut max = None;
    for part in s.split(',') {
        let last = match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?);
                if a > b {
                    return None;
                }
                b
            }
            None => part.parse::<usize>().ok()?,
        };
        max = Some(max.map_or(last, |m: usize| m.max(last)));
    }
    max.and_then(|m| m.checked_add(1))
}

/// Deletes `key` from `map`.
pub fn map_delete<K>(map: BorrowedFd<'_>, key: &K) -> io::Result<()> {
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

/// Attaches `prog` to `ifindex` in native mode, falling back to generic mode if the driver
/// refuses; returns the link (see [`attach_xdp`]) and the mode it got. The error names both
/// refusals.
pub fn attach_xdp_auto(prog: BorrowedFd<'_>, ifindex: u32) -> io::Result<(OwnedFd, AttachMode)> {
    match attach_xdp(prog, ifindex, AttachMode::Native) {
        Ok(l) => Ok((l, AttachMode::Native)),
        Err(native) => attach_xdp(prog, ifindex, AttachMode::Generic)
            .map(|l| (l, AttachMode::Generic))
            .map_err(|generic| {
                io::Error::new(
                    generic.kind(),
                    format!("native: {native}; generic: {generic}"),
                )
            }),
    }
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
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0"), Some(1));
        assert_eq!(parse_cpu_list("0-3"), Some(4));
        assert_eq!(parse_cpu_list("0-3,8-11"), Some(12));
        for bad in ["", "a", "3-1", "0-", "0,,1"] {
            assert_eq!(parse_cpu_list(bad), None, "{bad:?}");
        }
        assert!(possible_cpus().unwrap() >= 1);
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
}
