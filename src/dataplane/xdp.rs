//! The XDP program that steers NAT traffic to AF_XDP sockets, built and loaded
//! through bpf(2) directly (no clang, libbpf or libxdp).
//!
//! The program, per frame:
//! 1. shorter than an Ethernet header => `XDP_PASS`;
//! 2. one 802.1Q tag is skipped (the IPv4 header is then at +18 instead of +14) and its
//!    VLAN id remembered;
//! 3. anything but IPv4 (ARP, IPv6, ...) => `XDP_PASS`;
//! 4. truncated IPv4 header or multicast destination (224.0.0.0/4) => `XDP_PASS`;
//! 5. the box's own addresses (see [`KernelAddrs`]): destination address in the hash map
//!    `pass_addrs` with value [`PASS_ANY`] (management addresses, the outside address, the
//!    limited broadcast) => `XDP_PASS`; with value [`PASS_VLAN`], `XDP_PASS` only if
//!    (address, VLAN) is in the hash map `pass_vlan` (a realm's gateway and its subnet
//!    broadcast, on the realm's VLAN). NAT traffic costs the one lookup it always did;
//! 6. otherwise `bpf_redirect_map(xsks_map, rx_queue_index, XDP_DROP)`: the frame goes to
//!    the queue's AF_XDP socket. A queue without a registered socket (one no worker serves,
//!    or one whose socket is not registered yet) drops the frame and counts it in the
//!    per-CPU array `xdp_drops` (slot [`DROP_UNSERVED_QUEUE`]): NAT traffic never reaches
//!    the kernel untranslated, where IP forwarding would route it with its inside source.
//!
//! What passes is local delivery only: every address in the maps is one of the kernel's
//! own (or a broadcast it receives), so nothing passed is ever forwarded by the kernel.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};

use std::sync::Arc;

use crate::nat::rules::KernelAddrs;
use natgw_kernel::bpf::{
    self, AttachMode, BPF_ALU64, BPF_AND, BPF_JEQ, BPF_JGT, BPF_JNE, BPF_K, BPF_MAP_TYPE_HASH,
    BPF_MAP_TYPE_PERCPU_ARRAY, BPF_MAP_TYPE_XSKMAP, HELPER_MAP_LOOKUP_ELEM, HELPER_REDIRECT_MAP,
    Insn, ProgramBuilder, R0, R1, R2, R3, R4, R5, R6, R7, R10, Size, XDP_DROP, XDP_MD_DATA,
    XDP_MD_DATA_END, XDP_MD_RX_QUEUE_INDEX, XDP_PASS, XDP_REDIRECT,
};

/// Maximum number of addresses in `pass_addrs` (and of (address, VLAN) pairs in
/// `pass_vlan`).
pub const PASS_MAP_MAX_ENTRIES: u32 = 1024;

/// `pass_addrs` value: frames to the address go to the kernel on any VLAN.
pub const PASS_ANY: u8 = 1;
/// `pass_addrs` value: frames to the address go to the kernel if (address, VLAN) is in
/// `pass_vlan`.
pub const PASS_VLAN: u8 = 2;
/// The VLAN word of an untagged frame in a `pass_vlan` key (tagged frames: the VLAN id as
/// the frame carries it, see [`vlan_word`]).
const UNTAGGED: u32 = 0x1_0000;

/// Slot of the `xdp_drops` map: frames dropped because their receive queue has no AF_XDP
/// socket.
pub const DROP_UNSERVED_QUEUE: u32 = 0;
/// Slots in `xdp_drops`.
const DROP_SLOTS: u32 = 1;

/// Why the XDP program dropped frames, with the `xdp_drops` slot and the metric label.
pub const XDP_DROP_REASONS: &[(u32, &str, &str)] = &[(
    DROP_UNSERVED_QUEUE,
    "unserved_queue",
    "frames on a receive queue without an AF_XDP socket (no worker serves it)",
)];

/// Network-order 16-bit value as the BPF machine sees it after a `u16` load.
const fn be16(v: u16) -> i32 {
    u16::from_ne_bytes(v.to_be_bytes()) as i32
}

/// The VLAN word of a `pass_vlan` key: the 12-bit id as the program reads it from the tag
/// (network order, priority bits masked off), [`UNTAGGED`] for untagged frames.
fn vlan_word(vlan: Option<u16>) -> u32 {
    vlan.map_or(UNTAGGED, |v| be16(v & 0x0fff) as u32)
}

/// A `pass_vlan` key: the address as in the packet, then the VLAN word.
fn vlan_key(a: Ipv4Addr, vlan: Option<u16>) -> [u8; 8] {
    let mut k = [0u8; 8];
    k[..4].copy_from_slice(&a.octets());
    k[4..].copy_from_slice(&vlan_word(vlan).to_ne_bytes());
    k
}

/// The redirect program (see the module documentation), referring to the given map fds.
pub fn redirect_program(
    xsks_map_fd: RawFd,
    pass_map_fd: RawFd,
    vlan_map_fd: RawFd,
    drops_map_fd: RawFd,
) -> io::Result<Vec<Insn>> {
    const ETH_HLEN: i32 = 14;
    const VLAN_HLEN: i32 = 4;
    const IPV4_MIN_HLEN: i32 = 20;
    const IPV4_DADDR_OFF: i16 = 16;

    let mut b = ProgramBuilder::new();
    let pass = b.label();
    let untagged = b.label();
    let unserved = b.label();
    let drop = b.label();
    let nat = b.label();

    // r6 = ctx, r7 = VLAN word (both survive helper calls); r2 = data, r3 = data_end.
    b.push(Insn::mov64_reg(R6, R1))
        .push(Insn::mov64_imm(R7, UNTAGGED as i32))
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
        .push(Insn::ldx(Size::H, R7, R2, 14))
        .push(Insn::new(
            BPF_ALU64 | BPF_AND | BPF_K,
            R7,
            0,
            0,
            be16(0x0fff),
        ))
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
        .jmp_imm_to(BPF_JEQ, R0, 0, nat)
        .push(Insn::ldx(Size::B, R1, R0, 0))
        .jmp_imm_to(BPF_JEQ, R1, PASS_ANY as i32, pass)
        .jmp_imm_to(BPF_JNE, R1, PASS_VLAN as i32, nat)
        // One of the box's addresses on some VLANs: key (address, VLAN word) at fp-16.
        .push(Insn::ldx(Size::W, R1, R10, -4))
        .push(Insn::stx(Size::W, R10, R1, -16))
        .push(Insn::stx(Size::W, R10, R7, -12))
        .extend(Insn::ld_map_fd(R1, vlan_map_fd))
        .push(Insn::mov64_reg(R2, R10))
        .push(Insn::add64_imm(R2, -16))
        .push(Insn::call(HELPER_MAP_LOOKUP_ELEM))
        .jmp_imm_to(BPF_JNE, R0, 0, pass)
        .bind(nat)
        .push(Insn::ldx(Size::W, R2, R6, XDP_MD_RX_QUEUE_INDEX))
        .extend(Insn::ld_map_fd(R1, xsks_map_fd))
        // The lower bits of the flags are the verdict when the queue has no socket.
        .push(Insn::mov64_imm(R3, XDP_DROP))
        .push(Insn::call(HELPER_REDIRECT_MAP))
        .jmp_imm_to(BPF_JNE, R0, XDP_REDIRECT, unserved)
        .push(Insn::exit())
        // No socket on this queue: count (per-CPU slot, XDP runs with preemption off, so a
        // plain add is exact) and drop.
        .bind(unserved)
        .push(Insn::mov64_imm(R1, DROP_UNSERVED_QUEUE as i32))
        .push(Insn::stx(Size::W, R10, R1, -8))
        .extend(Insn::ld_map_fd(R1, drops_map_fd))
        .push(Insn::mov64_reg(R2, R10))
        .push(Insn::add64_imm(R2, -8))
        .push(Insn::call(HELPER_MAP_LOOKUP_ELEM))
        .jmp_imm_to(BPF_JEQ, R0, 0, drop)
        .push(Insn::ldx(Size::DW, R1, R0, 0))
        .push(Insn::add64_imm(R1, 1))
        .push(Insn::stx(Size::DW, R0, R1, 0))
        .bind(drop)
        .push(Insn::mov64_imm(R0, XDP_DROP))
        .push(Insn::exit())
        .bind(pass)
        .push(Insn::mov64_imm(R0, XDP_PASS))
        .push(Insn::exit());
    b.finish()
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
    pass: PassMaps,
    drops: XdpDrops,
    max_queues: u32,
}

/// The program's `pass_addrs` and `pass_vlan` maps: what goes to the kernel. Cheap to
/// clone; the running gateway keeps them to apply a reload.
#[derive(Clone, Debug)]
pub struct PassMaps {
    addrs: Arc<OwnedFd>,
    vlan: Arc<OwnedFd>,
}

impl PassMaps {
    fn value(k: &KernelAddrs, a: Ipv4Addr) -> Option<u8> {
        if k.any.contains(&a) {
            Some(PASS_ANY)
        } else if k.on_vlan.iter().any(|&(b, _)| b == a) {
            Some(PASS_VLAN)
        } else {
            None
        }
    }

    /// Changes the maps from passing `old` to passing `new` (at start, `old` is empty).
    /// Entries are added before the ones that go are removed. Err: the address whose
    /// update the kernel refused (map full: [`PASS_MAP_MAX_ENTRIES`]).
    pub fn apply(&self, old: &KernelAddrs, new: &KernelAddrs) -> Result<(), (Ipv4Addr, io::Error)> {
        for &(a, v) in new.on_vlan.difference(&old.on_vlan) {
            bpf::map_update(self.vlan.as_fd(), &vlan_key(a, v), &1u8).map_err(|e| (a, e))?;
        }
        let addrs = |k: &KernelAddrs| -> std::collections::BTreeSet<Ipv4Addr> {
            k.any
                .iter()
                .copied()
                .chain(k.on_vlan.iter().map(|&(a, _)| a))
                .collect()
        };
        let (was, now) = (addrs(old), addrs(new));
        for &a in &now {
            let v = Self::value(new, a);
            if v != Self::value(old, a)
                && let Some(v) = v
            {
                let key = u32::from_ne_bytes(a.octets());
                bpf::map_update(self.addrs.as_fd(), &key, &v).map_err(|e| (a, e))?;
            }
        }
        // An entry already gone is what a delete wants (a retry after a failed apply).
        let gone = |r: io::Result<()>| match r {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(e),
            _ => Ok(()),
        };
        for &a in was.difference(&now) {
            let key = u32::from_ne_bytes(a.octets());
            gone(bpf::map_delete(self.addrs.as_fd(), &key)).map_err(|e| (a, e))?;
        }
        for &(a, v) in old.on_vlan.difference(&new.on_vlan) {
            gone(bpf::map_delete(self.vlan.as_fd(), &vlan_key(a, v))).map_err(|e| (a, e))?;
        }
        Ok(())
    }
}

/// The program's drop counters (`xdp_drops`), readable while natgw runs; cheap to clone.
#[derive(Clone, Debug)]
pub struct XdpDrops {
    map: Arc<OwnedFd>,
}

impl XdpDrops {
    /// Frames dropped for the reason in `slot` ([`XDP_DROP_REASONS`]), summed over CPUs.
    pub fn get(&self, slot: u32) -> io::Result<u64> {
        bpf::percpu_u64_sum(self.map.as_fd(), &slot)
    }
}

impl XdpProgram {
    /// Creates the maps (`xsks_map` with `max_queues` entries, `pass_addrs`, `pass_vlan`,
    /// `xdp_drops`) and loads the program; it passes nothing to the kernel but what is not
    /// IPv4 until [`PassMaps::apply`] fills its pass maps. A verifier rejection carries the verifier log in the error message.
    pub fn load(max_queues: u32) -> io::Result<Self> {
        if max_queues == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "max_queues must be at least 1",
            ));
        }
        let xsks_map = bpf::map_create(BPF_MAP_TYPE_XSKMAP, 4, 4, max_queues, "xsks_map")?;
        let pass_map =
            bpf::map_create(BPF_MAP_TYPE_HASH, 4, 1, PASS_MAP_MAX_ENTRIES, "pass_addrs")?;
        let vlan_map = bpf::map_create(BPF_MAP_TYPE_HASH, 8, 1, PASS_MAP_MAX_ENTRIES, "pass_vlan")?;
        let drops = bpf::map_create(BPF_MAP_TYPE_PERCPU_ARRAY, 4, 8, DROP_SLOTS, "xdp_drops")?;
        let insns = redirect_program(
            xsks_map.as_raw_fd(),
            pass_map.as_raw_fd(),
            vlan_map.as_raw_fd(),
            drops.as_raw_fd(),
        )?;
        let prog = bpf::load_xdp_program(&insns, "natgw_xsk")?;
        Ok(XdpProgram {
            link: None,
            prog,
            xsks_map,
            pass: PassMaps {
                addrs: Arc::new(pass_map),
                vlan: Arc::new(vlan_map),
            },
            drops: XdpDrops {
                map: Arc::new(drops),
            },
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
        let link = bpf::attach_xdp(self.prog.as_fd(), ifindex, mode)?;
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
        let (link, mode) = bpf::attach_xdp_auto(self.prog.as_fd(), ifindex)?;
        self.link = Some((link, ifindex, mode));
        Ok(mode)
    }

    /// Detaches the program (keeps maps and program loaded).
    pub fn detach(&mut self) {
        self.link = None;
    }

    /// The interface and mode this program is attached to, if any.
    pub fn attached(&self) -> Option<(u32, AttachMode)> {
        self.link.as_ref().map(|&(_, i, m)| (i, m))
    }

    /// Frames to `a` go to the kernel instead of the sockets, on any VLAN.
    pub fn add_pass_addr(&self, a: Ipv4Addr) -> io::Result<()> {
        let key = u32::from_ne_bytes(a.octets());
        bpf::map_update(self.pass.addrs.as_fd(), &key, &PASS_ANY)
    }

    /// Undoes [`add_pass_addr`](Self::add_pass_addr).
    pub fn remove_pass_addr(&self, a: Ipv4Addr) -> io::Result<()> {
        let key = u32::from_ne_bytes(a.octets());
        bpf::map_delete(self.pass.addrs.as_fd(), &key)
    }

    /// The maps that say what goes to the kernel.
    pub fn pass_maps(&self) -> PassMaps {
        self.pass.clone()
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
        bpf::map_update(self.xsks_map.as_fd(), &queue, &(xsk_fd as u32))
    }

    /// The program's drop counters.
    pub fn drops(&self) -> XdpDrops {
        self.drops.clone()
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
    use natgw_kernel::bpf::{
        BPF_ADD, BPF_CALL, BPF_EXIT, BPF_JA, BPF_JMP, BPF_LD, BPF_LDX, BPF_MOV, BPF_STX, BPF_X,
    };

    /// A tiny interpreter for the subset of eBPF the redirect program uses, so that its
    /// decisions can be checked without loading it.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    enum Outcome {
        Pass,
        Redirect {
            queue: u32,
        },
        /// Dropped; the `xdp_drops` slot it counted in (None: the lookup found nothing).
        Drop {
            counted: Option<u32>,
        },
    }

    const CTX: u64 = 0x1000_0000;
    const PKT: u64 = 0x2000_0000;
    const STACK_TOP: u64 = 0x3000_0000;
    /// Where the `xdp_drops` slots live in the interpreter's address space.
    const DROPS: u64 = 0x4000_0000;
    /// Where the `pass_addrs` values live: entry `i` of `Machine::pass` at `VALUES + i`.
    const VALUES: u64 = 0x5000_0000;
    /// What a `pass_vlan` lookup that finds its key returns (the value is never read).
    const VLAN_HIT: u64 = 0x6000_0000;
    const XSKS_FD: i32 = 100;
    const PASS_FD: i32 = 200;
    const VLAN_FD: i32 = 250;
    const DROPS_FD: i32 = 300;

    /// A machine state: the frame, its queue, the pass maps, the queues with a registered
    /// socket, and the drop counters (which persist across runs).
    struct Machine<'a> {
        /// `pass_addrs`: (address, value).
        pass: &'a [([u8; 4], u8)],
        /// `pass_vlan`: (address, VLAN).
        vlan: &'a [([u8; 4], Option<u16>)],
        sockets: &'a [u32],
        drops: [u64; DROP_SLOTS as usize],
    }

    /// A machine passing only the management address `a` (on any VLAN).
    fn mgmt_only(a: &[([u8; 4], u8)]) -> Machine<'_> {
        Machine {
            pass: a,
            vlan: &[],
            sockets: &[0, 3],
            drops: [0; DROP_SLOTS as usize],
        }
    }

    fn size_bytes(size: Size) -> usize {
        match size {
            Size::W => 4,
            Size::H => 2,
            Size::B => 1,
            Size::DW => 8,
        }
    }

    fn ld_size(code: u8) -> Size {
        match code & 0x18 {
            0x00 => Size::W,
            0x08 => Size::H,
            0x10 => Size::B,
            _ => Size::DW,
        }
    }

    impl Machine<'_> {
        fn run(&mut self, prog: &[Insn], frame: &[u8], queue: u32) -> Outcome {
            let mut r = [0u64; 11];
            let mut stack = [0u8; 512];
            r[1] = CTX;
            r[10] = STACK_TOP;
            let mut pc = 0usize;
            let mut redirected = None;
            let mut counted = None;
            let drops = &mut self.drops;
            let pass = self.pass;
            let load = |addr: u64, size: Size, stack: &[u8; 512], drops: &[u64]| -> u64 {
                let n = size_bytes(size);
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
                } else if (DROPS..DROPS + 8 * drops.len() as u64).contains(&addr) {
                    assert_eq!(n, 8, "counter access must be 64-bit");
                    let o = ((addr - DROPS) / 8) as usize;
                    drops[o].to_le_bytes().to_vec()
                } else if (VALUES..VALUES + pass.len() as u64).contains(&addr) {
                    assert_eq!(n, 1, "pass_addrs values are one byte");
                    vec![pass[(addr - VALUES) as usize].1]
                } else {
                    assert!(
                        (STACK_TOP - 512..STACK_TOP).contains(&addr),
                        "read outside the stack at {addr:#x}"
                    );
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
                        let addr = r[i.src as usize].wrapping_add(i.off as i64 as u64);
                        r[i.dst as usize] = load(addr, ld_size(i.code), &stack, &drops[..]);
                    }
                    BPF_STX => {
                        let addr = r[i.dst as usize].wrapping_add(i.off as i64 as u64);
                        let v = r[i.src as usize];
                        if (DROPS..DROPS + 8 * drops.len() as u64).contains(&addr) {
                            assert_eq!(i.code, 0x7b, "counter store must be 64-bit");
                            let o = ((addr - DROPS) / 8) as usize;
                            drops[o] = v;
                            counted = Some(o as u32);
                        } else {
                            assert_eq!(i.code, 0x63, "only 32-bit stack stores");
                            let o = (addr - (STACK_TOP - 512)) as usize;
                            stack[o..o + 4].copy_from_slice(&(v as u32).to_le_bytes());
                        }
                    }
                    BPF_LD => {
                        r[i.dst as usize] = i.imm as u32 as u64;
                        pc += 1;
                    }
                    BPF_JMP => match i.code & 0xf0 {
                        BPF_EXIT => {
                            return match r[0] as i32 {
                                XDP_PASS => {
                                    assert!(redirected.is_none() && counted.is_none());
                                    Outcome::Pass
                                }
                                XDP_REDIRECT => Outcome::Redirect {
                                    queue: redirected.expect("XDP_REDIRECT without a redirect"),
                                },
                                XDP_DROP => Outcome::Drop { counted },
                                v => panic!("verdict {v}"),
                            };
                        }
                        BPF_CALL => match i.imm {
                            HELPER_MAP_LOOKUP_ELEM => {
                                let key = load(r[2], Size::W, &stack, &drops[..]) as u32;
                                r[0] = match r[1] as i32 {
                                    PASS_FD => self
                                        .pass
                                        .iter()
                                        .position(|(a, _)| u32::from_ne_bytes(*a) == key)
                                        .map_or(0, |i| VALUES + i as u64),
                                    VLAN_FD => {
                                        let word = load(r[2] + 4, Size::W, &stack, &drops[..]);
                                        let hit = self.vlan.iter().any(|&(a, v)| {
                                            u32::from_ne_bytes(a) == key
                                                && u64::from(vlan_word(v)) == word
                                        });
                                        if hit { VLAN_HIT } else { 0 }
                                    }
                                    DROPS_FD if key < DROP_SLOTS => DROPS + 8 * key as u64,
                                    DROPS_FD => 0,
                                    fd => panic!("lookup in map fd {fd}"),
                                };
                            }
                            HELPER_REDIRECT_MAP => {
                                assert_eq!(r[1], XSKS_FD as u64, "redirect must use xsks_map");
                                let q = r[2] as u32;
                                if self.sockets.contains(&q) {
                                    redirected = Some(q);
                                    r[0] = XDP_REDIRECT as u64;
                                } else {
                                    // The kernel returns the flags' low bits.
                                    r[0] = r[3] & 3;
                                }
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
    }

    fn frame(vlan: bool, ethertype: u16, dst: [u8; 4], len_after_l2: usize) -> Vec<u8> {
        tagged(vlan.then_some(5), ethertype, dst, len_after_l2)
    }

    /// A frame on VLAN `vlan` (priority bits set, which the program must ignore).
    fn tagged(vlan: Option<u16>, ethertype: u16, dst: [u8; 4], len_after_l2: usize) -> Vec<u8> {
        let mut f = vec![0u8; 12];
        if let Some(v) = vlan {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&(0xe000 | v).to_be_bytes());
        }
        f.extend_from_slice(&ethertype.to_be_bytes());
        let mut ip = vec![0u8; 20];
        ip[0] = 0x45;
        ip[16..20].copy_from_slice(&dst);
        ip.resize(len_after_l2.max(20), 0);
        f.extend_from_slice(&ip[..len_after_l2]);
        f
    }

    fn program() -> Vec<Insn> {
        redirect_program(XSKS_FD, PASS_FD, VLAN_FD, DROPS_FD).unwrap()
    }

    #[test]
    fn program_decisions() {
        if cfg!(target_endian = "big") {
            return;
        }
        let p = program();
        let mgmt = [10, 0, 0, 1];
        let nat = [10, 9, 8, 7];
        let redirect = Outcome::Redirect { queue: 3 };
        let pass = [(mgmt, PASS_ANY)];
        let mut m = mgmt_only(&pass);
        for vlan in [false, true] {
            assert_eq!(m.run(&p, &frame(vlan, 0x0800, nat, 28), 3), redirect);
            assert_eq!(m.run(&p, &frame(vlan, 0x0800, mgmt, 28), 3), Outcome::Pass);
            assert_eq!(m.run(&p, &frame(vlan, 0x0806, nat, 28), 3), Outcome::Pass);
            assert_eq!(m.run(&p, &frame(vlan, 0x86dd, nat, 40), 3), Outcome::Pass);
            // Truncated IPv4 header.
            assert_eq!(m.run(&p, &frame(vlan, 0x0800, nat, 19), 3), Outcome::Pass);
            // Exactly the minimum header.
            assert_eq!(m.run(&p, &frame(vlan, 0x0800, nat, 20), 3), redirect);
            // Multicast goes to the kernel; the addresses around the range do not.
            for mc in [[224, 0, 0, 22], [239, 255, 255, 250]] {
                assert_eq!(m.run(&p, &frame(vlan, 0x0800, mc, 28), 3), Outcome::Pass);
            }
            for uc in [[223, 255, 255, 255], [240, 0, 0, 1], [14, 0, 0, 224]] {
                assert_eq!(m.run(&p, &frame(vlan, 0x0800, uc, 28), 3), redirect);
            }
        }
        // Shorter than Ethernet, and a tag with no room for the inner EtherType.
        assert_eq!(m.run(&p, &[0u8; 13], 0), Outcome::Pass);
        let mut cut = vec![0u8; 12];
        cut.extend_from_slice(&[0x81, 0x00, 0x00]);
        assert_eq!(m.run(&p, &cut, 0), Outcome::Pass);
        assert_eq!(m.drops, [0], "nothing was dropped");
    }

    /// A frame on a queue without a socket is dropped and counted, never passed to the
    /// kernel (which would route it untranslated with IP forwarding on); the kernel's own
    /// traffic (ARP, management addresses) still passes on such a queue.
    #[test]
    fn unserved_queue_drops_and_counts() {
        if cfg!(target_endian = "big") {
            return;
        }
        let p = program();
        let mgmt = [10, 0, 0, 1];
        let nat = [10, 9, 8, 7];
        let pass = [(mgmt, PASS_ANY)];
        let mut m = mgmt_only(&pass);
        m.sockets = &[0];
        let unserved = Outcome::Drop {
            counted: Some(DROP_UNSERVED_QUEUE),
        };
        for vlan in [false, true] {
            assert_eq!(m.run(&p, &frame(vlan, 0x0800, nat, 28), 1), unserved);
            assert_eq!(
                m.run(&p, &frame(vlan, 0x0800, nat, 28), 0),
                Outcome::Redirect { queue: 0 }
            );
            assert_eq!(m.run(&p, &frame(vlan, 0x0800, mgmt, 28), 1), Outcome::Pass);
            assert_eq!(m.run(&p, &frame(vlan, 0x0806, nat, 28), 1), Outcome::Pass);
        }
        assert_eq!(m.drops[DROP_UNSERVED_QUEUE as usize], 2);
        // Before any socket is registered (start-up), every NAT frame is dropped.
        m.sockets = &[];
        assert_eq!(m.run(&p, &frame(false, 0x0800, nat, 28), 0), unserved);
        assert_eq!(m.drops[DROP_UNSERVED_QUEUE as usize], 3);
        assert_eq!(
            XDP_DROP_REASONS[DROP_UNSERVED_QUEUE as usize].0,
            DROP_UNSERVED_QUEUE
        );
    }

    /// The box's own addresses: any-VLAN ones pass on every VLAN and untagged; per-VLAN
    /// ones (a realm's gateway, also when two realms share it) only on their VLAN; the
    /// same address elsewhere, and everything else, is NAT traffic.
    #[test]
    fn own_addresses_per_vlan() {
        if cfg!(target_endian = "big") {
            return;
        }
        let p = program();
        let outside = [203, 0, 113, 2];
        let gw = [10, 0, 0, 1];
        let bcast = [10, 0, 0, 255];
        let lone = [10, 7, 0, 1];
        let nat = [10, 9, 8, 7];
        let mut m = Machine {
            pass: &[
                (outside, PASS_ANY),
                ([255, 255, 255, 255], PASS_ANY),
                (gw, PASS_VLAN),
                (bcast, PASS_VLAN),
                (lone, PASS_VLAN),
            ],
            vlan: &[
                (gw, Some(100)),
                (gw, Some(200)),
                (bcast, Some(100)),
                (lone, None),
            ],
            sockets: &[0],
            drops: [0; DROP_SLOTS as usize],
        };
        let redirect = Outcome::Redirect { queue: 0 };
        for v in [None, Some(100), Some(200), Some(300), Some(4095)] {
            let f = |dst| tagged(v, 0x0800, dst, 28);
            assert_eq!(m.run(&p, &f(outside), 0), Outcome::Pass, "{v:?}");
            assert_eq!(m.run(&p, &f([255; 4]), 0), Outcome::Pass, "{v:?}");
            assert_eq!(m.run(&p, &f(nat), 0), redirect, "{v:?}");
            let gw_here = matches!(v, Some(100 | 200));
            let want = |yes: bool| if yes { Outcome::Pass } else { redirect };
            assert_eq!(m.run(&p, &f(gw), 0), want(gw_here), "{v:?}");
            assert_eq!(m.run(&p, &f(bcast), 0), want(v == Some(100)), "{v:?}");
            assert_eq!(m.run(&p, &f(lone), 0), want(v.is_none()), "{v:?}");
        }
        // An address in pass_addrs with an unknown value is NAT traffic.
        let odd = [(nat, 7)];
        m.pass = &odd;
        assert_eq!(m.run(&p, &frame(false, 0x0800, nat, 28), 0), redirect);
        assert_eq!(m.drops, [0], "nothing was dropped");
        // The key layout the maps are filled with matches what the program builds.
        assert_eq!(
            vlan_key(Ipv4Addr::from(gw), None)[4..],
            UNTAGGED.to_ne_bytes()
        );
        assert_eq!(vlan_word(Some(0x1005)), vlan_word(Some(5)));
    }
}
