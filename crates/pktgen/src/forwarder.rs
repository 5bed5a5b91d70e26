//! A minimal AF_XDP forwarder, the ceiling of `natgw-bench compare`: frames received on one
//! interface (natgw-kernel's `XskRedirect` program, one socket on queue 0) leave by another
//! with only their Ethernet addresses rewritten (source = the out interface, destination =
//! the next hop). Both sockets share one UMEM, so a frame is never copied in user space:
//! the rx descriptor goes to the tx ring as it is. No parsing, no lookup, no translation:
//! whatever natgw costs on top of this is its own work.
//!
//! Bounded like the generator and sink: one UMEM of `frames` frames, batches of at most
//! [`MAX_BATCH`], no allocation per packet.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use natgw_kernel::bpf::AttachMode;
use natgw_kernel::netlink;
use natgw_kernel::xdp::XskRedirect;
use natgw_kernel::xsk::{BadDesc, Desc, Umem, XskConfig, XskSocket};

use crate::generator::MAX_BATCH;
use crate::port::{self, FRAME_SIZE, XskMode};

#[derive(Clone, Debug)]
pub struct ForwarderConfig {
    /// Frames arrive here (queue 0).
    pub rx_if: String,
    /// And leave here (queue 0).
    pub tx_if: String,
    /// Destination MAC written into every frame (the next hop on `tx_if`).
    pub next_hop_mac: [u8; 6],
    pub xsk_mode: XskMode,
    /// `None`: native XDP, falling back to generic.
    pub xdp_mode: Option<AttachMode>,
    pub ring_size: u32,
    pub frames: u32,
    pub batch: usize,
    /// Core the forwarding thread is pinned to.
    pub core: Option<usize>,
}

#[derive(Clone, Debug, Default)]
pub struct ForwarderReport {
    pub received: u64,
    pub forwarded: u64,
    /// Frames the tx ring had no room for (dropped, their frame reused).
    pub tx_full: u64,
    /// Descriptors the kernel should never give (counted and dropped).
    pub bad_desc: u64,
    pub zero_copy: bool,
    pub xdp_mode: &'static str,
    /// CPU time of the forwarding thread (getrusage(RUSAGE_THREAD)), ns.
    pub user_ns: u64,
    pub system_ns: u64,
}

/// Sockets bound and the program attached; [`Forwarder::run`] forwards until `stop`.
pub struct Forwarder {
    cfg: ForwarderConfig,
    umem: Umem,
    rx: XskSocket,
    tx: XskSocket,
    src_mac: [u8; 6],
    zero_copy: bool,
    mode: AttachMode,
    // Detaches on drop: kept until the sockets are gone.
    _prog: XskRedirect,
}

fn ctx(what: String) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Opens both sockets in the calling thread's namespace and attaches the redirect program
/// to `rx_if` (after the rx socket is registered, so no frame finds the map empty).
pub fn open(cfg: &ForwarderConfig) -> io::Result<Forwarder> {
    if cfg.batch == 0 || cfg.batch > MAX_BATCH {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("forwarder batch {}: 1-{MAX_BATCH}", cfg.batch),
        ));
    }
    let rx_link =
        netlink::link_by_name(&cfg.rx_if).map_err(ctx(format!("interface {}", cfg.rx_if)))?;
    let tx_link =
        netlink::link_by_name(&cfg.tx_if).map_err(ctx(format!("interface {}", cfg.tx_if)))?;
    let xcfg = XskConfig {
        ring_size: cfg.ring_size,
        copy: match cfg.xsk_mode {
            XskMode::Auto => None,
            XskMode::Copy => Some(true),
            XskMode::ZeroCopy => Some(false),
        },
        need_wakeup: true,
    };
    let umem = Umem::new(cfg.frames, FRAME_SIZE).map_err(ctx("forwarder UMEM".into()))?;
    let rx = XskSocket::new(&umem, rx_link.ifindex, 0, &xcfg)
        .map_err(ctx(format!("AF_XDP socket on {} queue 0", cfg.rx_if)))?;
    let tx = XskSocket::new_shared(&umem, &rx, tx_link.ifindex, 0, &xcfg)
        .map_err(ctx(format!("AF_XDP socket on {} queue 0", cfg.tx_if)))?;
    let mut prog = XskRedirect::load(1).map_err(ctx("loading the XDP program".into()))?;
    prog.register_socket(0, rx.fd())
        .map_err(ctx("registering the rx socket".into()))?;
    let mode = prog
        .attach(rx_link.ifindex, cfg.xdp_mode)
        .map_err(ctx(format!("attaching XDP to {}", cfg.rx_if)))?;
    let zero_copy = rx.is_zero_copy() && tx.is_zero_copy();
    Ok(Forwarder {
        cfg: cfg.clone(),
        umem,
        rx,
        tx,
        src_mac: tx_link.mac,
        zero_copy,
        mode,
        _prog: prog,
    })
}

fn thread_cpu_ns() -> (u64, u64) {
    // SAFETY: getrusage writes the plain C struct we pass; all-zero is a valid value.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_THREAD on the calling thread, `ru` is a valid out pointer.
    if unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut ru) } != 0 {
        return (0, 0);
    }
    let ns = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    (ns(ru.ru_utime), ns(ru.ru_stime))
}

impl Forwarder {
    /// Forwards on the calling thread (pinned to `core`), always spinning, until `stop`.
    pub fn run(mut self, stop: &AtomicBool) -> io::Result<ForwarderReport> {
        port::pin(self.cfg.core).map_err(io::Error::other)?;
        let (u0, s0) = thread_cpu_ns();
        let mask = !(self.umem.frame_size() as u64 - 1);
        let frames = self.umem.frames();
        let mut free: Vec<u64> = (0..frames).map(|i| self.umem.frame_addr(i)).collect();
        // Half the frames to the fill ring, half in reserve for frames in flight on tx.
        let k = self.rx.fill(&free[..free.len() / 2]);
        free.drain(..k);
        self.rx.wakeup_rx();
        let batch = self.cfg.batch;
        let mut descs = [Desc { addr: 0, len: 0 }; MAX_BATCH];
        let mut out = [Desc { addr: 0, len: 0 }; MAX_BATCH];
        let mut comp = [0u64; MAX_BATCH];
        let mut r = ForwarderReport {
            zero_copy: self.zero_copy,
            xdp_mode: port::attach_mode_name(Some(self.mode)),
            ..Default::default()
        };
        let (dst, src) = (self.cfg.next_hop_mac, self.src_mac);
        while !stop.load(Ordering::Relaxed) {
            let n = self.rx.recv(&mut descs[..batch]);
            let mut m = 0;
            for d in &descs[..n] {
                let (chunk, off, len) = match self.umem.check_desc(*d) {
                    Ok(v) => v,
                    Err(BadDesc::Address) => {
                        r.bad_desc += 1;
                        continue;
                    }
                    Err(BadDesc::Length { chunk }) => {
                        r.bad_desc += 1;
                        free.push(chunk);
                        continue;
                    }
                };
                let addr = chunk + off as u64;
                if len < 14 {
                    free.push(chunk);
                    continue;
                }
                // SAFETY: the frame came from the rx ring, so it is ours until it goes to
                // the tx ring below; no other slice of it exists.
                let f = unsafe { self.umem.frame_mut(addr, 12) };
                f[..6].copy_from_slice(&dst);
                f[6..12].copy_from_slice(&src);
                out[m] = Desc {
                    addr,
                    len: len as u32,
                };
                m += 1;
            }
            r.received += n as u64;
            if m > 0 {
                let k = self.tx.send(&out[..m]);
                r.forwarded += k as u64;
                r.tx_full += (m - k) as u64;
                free.extend(out[k..m].iter().map(|d| d.addr & mask));
            }
            if self.tx.tx_pending() > 0 {
                // Copy mode sends only on a kick; transient errors (EAGAIN, ENOBUFS) are
                // retried on the next turn.
                let _ = self.tx.kick_tx();
            }
            let c = self.tx.complete(&mut comp[..]);
            free.extend(comp[..c].iter().map(|a| a & mask));
            if !free.is_empty() {
                let k = self.rx.fill(&free);
                free.drain(..k);
                if self.rx.fill_needs_wakeup() {
                    self.rx.wakeup_rx();
                }
            }
        }
        let (u1, s1) = thread_cpu_ns();
        r.user_ns = u1.saturating_sub(u0);
        r.system_ns = s1.saturating_sub(s0);
        Ok(r)
    }
}
