//! The AF_XDP side shared by generator and sink: one UMEM and one socket per queue, on
//! natgw-kernel's `xsk`, and (for receiving) `xdp::XskRedirect` attached to the interface
//! once every socket is registered.

use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, Instant};

use natgw_kernel::bpf::AttachMode;
use natgw_kernel::netlink;
use natgw_kernel::xdp::XskRedirect;
use natgw_kernel::xsk::{Umem, XskConfig, XskSocket};

/// The UMEM frame size: holds any frame up to 2048 bytes (the interface MTU is the real
/// limit, 1514 bytes of frame on a default veth).
pub const FRAME_SIZE: u32 = 2048;

/// Copy or zero-copy AF_XDP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XskMode {
    /// Zero-copy where the driver supports it, else copy (the kernel falls back itself).
    Auto,
    Copy,
    ZeroCopy,
}

impl std::str::FromStr for XskMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(XskMode::Auto),
            "copy" => Ok(XskMode::Copy),
            "zero-copy" | "zc" => Ok(XskMode::ZeroCopy),
            _ => Err(format!("{s:?}: one of auto, copy, zero-copy")),
        }
    }
}

/// How the XDP program is attached (`None` in options: native, else generic).
pub fn parse_xdp_mode(s: &str) -> Result<Option<AttachMode>, String> {
    match s {
        "auto" => Ok(None),
        "native" => Ok(Some(AttachMode::Native)),
        "generic" => Ok(Some(AttachMode::Generic)),
        _ => Err(format!("{s:?}: one of auto, native, generic")),
    }
}

pub fn attach_mode_name(m: Option<AttachMode>) -> &'static str {
    match m {
        None => "none",
        Some(AttachMode::Native) => "native",
        Some(AttachMode::Generic) => "generic",
    }
}

/// Where and how to open the sockets.
#[derive(Clone, Debug)]
pub struct PortOptions {
    pub ifname: String,
    /// Queues `first_queue .. first_queue + queues`, one socket and thread each.
    pub first_queue: u32,
    pub queues: u32,
    pub xsk_mode: XskMode,
    /// XDP attach mode for receiving (`None`: native, falling back to generic).
    pub xdp_mode: Option<AttachMode>,
    /// Entries of each ring (power of two).
    pub ring_size: u32,
    /// UMEM frames per queue (power of two is not required).
    pub frames: u32,
}

impl PortOptions {
    /// Queue 0 of `ifname` alone, zero-copy where the driver allows, 2048-entry rings and
    /// 4096 frames: how the comparison, the listing bench and the tests open a veth.
    pub fn one_queue(ifname: &str) -> PortOptions {
        PortOptions {
            ifname: ifname.into(),
            first_queue: 0,
            queues: 1,
            xsk_mode: XskMode::Auto,
            xdp_mode: None,
            ring_size: 2048,
            frames: 4096,
        }
    }
}

/// One queue's UMEM and socket.
pub struct QueuePort {
    pub umem: Umem,
    pub sock: XskSocket,
    pub queue: u32,
}

/// The interface with its sockets and, when receiving, the program that feeds them.
pub struct Ports {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub queues: Vec<QueuePort>,
    pub zero_copy: bool,
    pub xdp: Option<(XskRedirect, AttachMode)>,
}

fn ctx(what: String) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Opens one socket per queue on `o.ifname`; with `rx`, loads the redirect program,
/// registers every socket and attaches it (in that order, so that no frame meets the
/// program before its socket is there).
pub fn open(o: &PortOptions, rx: bool) -> io::Result<Ports> {
    let link = netlink::link_by_name(&o.ifname).map_err(ctx(format!("interface {}", o.ifname)))?;
    if o.queues == 0 {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "--queues must be at least 1",
        ));
    }
    let last = o.first_queue + o.queues;
    if link.num_rx_queues > 0 && last > link.num_rx_queues.max(link.num_tx_queues) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "--queues {} from queue {}: {} has {} rx / {} tx queues",
                o.queues, o.first_queue, o.ifname, link.num_rx_queues, link.num_tx_queues
            ),
        ));
    }
    let cfg = XskConfig {
        ring_size: o.ring_size,
        copy: match o.xsk_mode {
            XskMode::Auto => None,
            XskMode::Copy => Some(true),
            XskMode::ZeroCopy => Some(false),
        },
        need_wakeup: true,
    };
    let prog = if rx {
        Some(XskRedirect::load(last).map_err(ctx("loading the XDP program".into()))?)
    } else {
        None
    };
    let mut queues = Vec::new();
    for q in o.first_queue..last {
        let umem = Umem::new(o.frames, FRAME_SIZE).map_err(ctx(format!("UMEM of queue {q}")))?;
        let sock = XskSocket::new(&umem, link.ifindex, q, &cfg)
            .map_err(ctx(format!("AF_XDP socket on {} queue {q}", o.ifname)))?;
        if let Some(p) = &prog {
            p.register_socket(q, sock.fd())
                .map_err(ctx(format!("registering the socket of queue {q}")))?;
        }
        queues.push(QueuePort {
            umem,
            sock,
            queue: q,
        });
    }
    let zero_copy = queues.iter().all(|q| q.sock.is_zero_copy());
    let xdp = match prog {
        Some(mut p) => {
            let m = p
                .attach(link.ifindex, o.xdp_mode)
                .map_err(ctx(format!("attaching XDP to {}", o.ifname)))?;
            Some((p, m))
        }
        None => None,
    };
    Ok(Ports {
        ifindex: link.ifindex,
        mac: link.mac,
        queues,
        zero_copy,
        xdp,
    })
}

/// The MAC of `addr` on `ifindex` from the kernel's neighbour table, asking the kernel to
/// resolve it (ARP) and waiting up to `timeout` if it has no usable entry.
pub fn resolve_mac(ifindex: u32, addr: Ipv4Addr, timeout: Duration) -> io::Result<[u8; 6]> {
    let deadline = Instant::now() + timeout;
    let mut asked = false;
    loop {
        if let Some(n) = netlink::neighbour(ifindex, addr)?
            && n.is_usable()
            && let Some(m) = n.mac
        {
            return Ok(m);
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no neighbour entry for {addr} after {timeout:?} (is an address of its subnet on the interface? or give --dst-mac)"
                ),
            ));
        }
        if !asked {
            netlink::resolve(ifindex, addr)?;
            asked = true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pins the calling thread to `core` (`None`: left to the scheduler).
pub fn pin(core: Option<usize>) -> Result<(), String> {
    if let Some(c) = core
        && !core_affinity::set_for_current(core_affinity::CoreId { id: c })
    {
        return Err(format!("--cores: cannot pin to core {c}"));
    }
    Ok(())
}
