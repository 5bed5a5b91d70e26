//! The AF_XDP socket: creating and binding it on a UMEM, the per-batch ring operations,
//! the wakeups the kernel asks for, and its statistics.

mod setup;

use std::io;
use std::mem::zeroed;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr;
use std::sync::atomic::Ordering;

use super::invalid;
use super::ring::{Desc, Ring};
use super::umem::Umem;
use crate::sys;
use setup::{bind_address, bind_retrying, getsockopt, mmap_offsets, set_ring_sizes, setsockopt};

/// Socket options.
#[derive(Clone, Debug)]
pub struct XskConfig {
    /// Entries of each of the four rings (power of two).
    pub ring_size: u32,
    /// `None`: the kernel chooses (zero-copy if the driver supports it);
    /// `Some(true)`: force copy mode; `Some(false)`: require zero-copy.
    pub copy: Option<bool>,
    /// Ask the kernel to flag when it needs a syscall to make progress
    /// (`XDP_USE_NEED_WAKEUP`); saves syscalls in busy loops.
    pub need_wakeup: bool,
}

impl Default for XskConfig {
    fn default() -> Self {
        XskConfig {
            ring_size: 2048,
            copy: None,
            need_wakeup: true,
        }
    }
}

/// Socket counters (`XDP_STATISTICS`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct XdpStatistics {
    /// Dropped for reasons other than an invalid descriptor (e.g. no fill ring frame).
    pub rx_dropped: u64,
    pub rx_invalid_descs: u64,
    pub tx_invalid_descs: u64,
    pub rx_ring_full: u64,
    pub rx_fill_ring_empty_descs: u64,
    pub tx_ring_empty_descs: u64,
}

/// An AF_XDP socket bound to one queue of one interface.
pub struct XskSocket {
    // Rings before the fd: unmapped before the socket closes.
    rx: Ring<libc::xdp_desc>,
    tx: Ring<libc::xdp_desc>,
    /// `None` for a socket sharing the first socket's queue (it uses that socket's rings).
    fill: Option<Ring<u64>>,
    comp: Option<Ring<u64>>,
    fd: OwnedFd,
    umem_area: usize,
    ifindex: u32,
    queue: u32,
    shared: bool,
    need_wakeup: bool,
}

// SAFETY: the ring pointers refer to mappings owned by this value; nothing is shared with
// other userspace threads, so moving the socket to another thread is fine.
unsafe impl Send for XskSocket {}

impl std::fmt::Debug for XskSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XskSocket")
            .field("fd", &self.fd.as_raw_fd())
            .field("ifindex", &self.ifindex)
            .field("queue", &self.queue)
            .field("shared", &self.shared)
            .finish()
    }
}

fn is_transient(e: &io::Error) -> bool {
    matches!(
        sys::errno(e),
        Some(libc::EAGAIN | libc::EBUSY | libc::ENOBUFS | libc::ENETDOWN | libc::EINTR)
    )
}

impl XskSocket {
    /// The first socket of a UMEM: registers it (`XDP_UMEM_REG`) and creates its fill and
    /// completion rings. A UMEM can be registered only once.
    pub fn new(umem: &Umem, ifindex: u32, queue: u32, cfg: &XskConfig) -> io::Result<XskSocket> {
        if umem.registered.swap(true, Ordering::AcqRel) {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "UMEM already registered: use XskSocket::new_shared",
            ));
        }
        let r = Self::create(umem, None, ifindex, queue, cfg);
        if r.is_err() {
            umem.registered.store(false, Ordering::Release);
        }
        r
    }

    /// A further socket on the same UMEM (`XDP_SHARED_UMEM`), possibly on another
    /// interface or queue; then it gets its own fill and completion rings. On the same
    /// interface and queue as `first` it shares `first`'s fill and completion rings, and
    /// its own [`fill`](Self::fill) and [`complete`](Self::complete) do nothing.
    /// Copy/zero-copy and need-wakeup are inherited from `first`; `cfg.copy` and
    /// `cfg.need_wakeup` are ignored.
    pub fn new_shared(
        umem: &Umem,
        first: &XskSocket,
        ifindex: u32,
        queue: u32,
        cfg: &XskConfig,
    ) -> io::Result<XskSocket> {
        if first.umem_area != umem.area.as_ptr() as usize {
            return Err(invalid("`first` was not created on this UMEM".into()));
        }
        Self::create(umem, Some(first), ifindex, queue, cfg)
    }

    fn create(
        umem: &Umem,
        first: Option<&XskSocket>,
        ifindex: u32,
        queue: u32,
        cfg: &XskConfig,
    ) -> io::Result<XskSocket> {
        let size = cfg.ring_size;
        if !size.is_power_of_two() {
            return Err(invalid(format!("ring size {size} is not a power of two")));
        }
        // SAFETY: plain socket(2).
        let raw = unsafe { libc::socket(libc::AF_XDP, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
        let raw = sys::cvt(raw, "socket(AF_XDP)")?;
        // SAFETY: fresh fd owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        let fdb = fd.as_fd();

        if first.is_none() {
            setsockopt(
                fdb,
                libc::XDP_UMEM_REG,
                &umem.reg(),
                "setsockopt(XDP_UMEM_REG)",
            )?;
        }
        // The kernel forbids own fill/completion rings when sharing a queue's pool.
        let same_queue = first.is_some_and(|f| f.ifindex == ifindex && f.queue == queue);
        let own_umem_rings = !same_queue;
        set_ring_sizes(fdb, size, own_umem_rings)?;
        let off = mmap_offsets(fdb)?;

        // The rings must be mapped before bind: afterwards the kernel refuses.
        let rx = Ring::map(fdb, &off.rx, size, libc::XDP_PGOFF_RX_RING as u64, false)?;
        let tx = Ring::map(fdb, &off.tx, size, libc::XDP_PGOFF_TX_RING as u64, true)?;
        let (fill, comp) = if own_umem_rings {
            (
                Some(Ring::map(
                    fdb,
                    &off.fr,
                    size,
                    libc::XDP_UMEM_PGOFF_FILL_RING,
                    true,
                )?),
                Some(Ring::map(
                    fdb,
                    &off.cr,
                    size,
                    libc::XDP_UMEM_PGOFF_COMPLETION_RING,
                    false,
                )?),
            )
        } else {
            (None, None)
        };

        let (sa, need_wakeup) = bind_address(first, ifindex, queue, cfg);
        bind_retrying(fdb, &sa)?;

        Ok(XskSocket {
            rx,
            tx,
            fill,
            comp,
            fd,
            umem_area: umem.area.as_ptr() as usize,
            ifindex,
            queue,
            shared: first.is_some(),
            need_wakeup,
        })
    }

    #[inline]
    pub fn fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn ifindex(&self) -> u32 {
        self.ifindex
    }

    pub fn queue(&self) -> u32 {
        self.queue
    }

    /// Whether this socket was created with [`new_shared`](Self::new_shared).
    pub fn is_shared(&self) -> bool {
        self.shared
    }

    /// Whether the socket runs in zero-copy mode (`XDP_OPTIONS`; false if the kernel
    /// cannot tell, which only happens on kernels older than 5.3).
    pub fn is_zero_copy(&self) -> bool {
        // SAFETY: plain C struct, all-zero is valid.
        let mut o: libc::xdp_options = unsafe { zeroed() };
        getsockopt(
            self.fd.as_fd(),
            libc::XDP_OPTIONS,
            &mut o,
            "getsockopt(XDP_OPTIONS)",
        )
        .is_ok_and(|_| o.flags & libc::XDP_OPTIONS_ZEROCOPY != 0)
    }

    /// Gives frames to the kernel for receiving. Returns how many fit (0 for a socket
    /// that shares its queue's fill ring).
    #[inline]
    pub fn fill(&mut self, addrs: &[u64]) -> usize {
        match &mut self.fill {
            Some(r) => r.produce(addrs, |&a| a),
            None => 0,
        }
    }

    /// Takes received descriptors; the frames now belong to the caller.
    #[inline]
    pub fn recv(&mut self, out: &mut [Desc]) -> usize {
        self.rx.consume(out, |d| Desc {
            addr: d.addr,
            len: d.len,
        })
    }

    /// Queues frames for transmission; they belong to the kernel until they come back
    /// through [`complete`](Self::complete). Returns how many fit. Call
    /// [`kick_tx`](Self::kick_tx) afterwards.
    #[inline]
    pub fn send(&mut self, descs: &[Desc]) -> usize {
        self.tx.produce(descs, |d| libc::xdp_desc {
            addr: d.addr,
            len: d.len,
            options: 0,
        })
    }

    /// Takes back transmitted frames (0 for a socket sharing its queue's completion ring).
    #[inline]
    pub fn complete(&mut self, out: &mut [u64]) -> usize {
        match &mut self.comp {
            Some(r) => r.consume(out, |a| a),
            None => 0,
        }
    }

    /// Entries waiting in the tx ring not yet taken by the kernel (cheap estimate).
    #[inline]
    pub fn tx_pending(&self) -> u32 {
        self.tx
            .cached_prod
            .wrapping_sub(self.tx.consumer().load(Ordering::Acquire))
    }

    /// Whether the kernel wants a syscall before it looks at the fill ring again.
    #[inline]
    pub fn fill_needs_wakeup(&self) -> bool {
        match &self.fill {
            Some(r) => !self.need_wakeup || r.needs_wakeup(),
            None => false,
        }
    }

    /// Whether the kernel wants a syscall to process the tx ring. Always true without
    /// `need_wakeup` (copy mode transmits only from the syscall).
    #[inline]
    pub fn tx_needs_wakeup(&self) -> bool {
        !self.need_wakeup || self.tx.needs_wakeup()
    }

    /// Makes the kernel process the tx ring when it needs it. Transient conditions
    /// (EAGAIN, EBUSY, ENOBUFS, ENETDOWN) are not errors: call again later. In copy mode
    /// one call transmits a bounded batch (32 frames in current kernels), so keep calling
    /// while [`tx_pending`](Self::tx_pending) is non-zero.
    #[inline]
    pub fn kick_tx(&self) -> io::Result<()> {
        if !self.tx_needs_wakeup() {
            return Ok(());
        }
        // SAFETY: zero-length send without a buffer, as the AF_XDP ABI expects.
        let r = unsafe {
            libc::sendto(
                self.fd(),
                ptr::null(),
                0,
                libc::MSG_DONTWAIT,
                ptr::null(),
                0,
            )
        };
        if r < 0 {
            let e = sys::last_os_error("sendto(AF_XDP)");
            if !is_transient(&e) {
                return Err(e);
            }
        }
        Ok(())
    }

    /// Tells the kernel that the fill ring has frames again, if it asked to be told.
    /// Errors are transient by nature here (the next poll loop iteration retries).
    #[inline]
    pub fn wakeup_rx(&self) {
        if self.fill_needs_wakeup() {
            // SAFETY: zero-length receive without a buffer, as the AF_XDP ABI expects.
            unsafe {
                libc::recvfrom(
                    self.fd(),
                    ptr::null_mut(),
                    0,
                    libc::MSG_DONTWAIT,
                    ptr::null_mut(),
                    ptr::null_mut(),
                )
            };
        }
    }

    /// Waits up to `timeout_ms` (-1: forever) for received descriptors.
    pub fn poll_rx(&self, timeout_ms: i32) -> io::Result<bool> {
        let mut p = libc::pollfd {
            fd: self.fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut p, 1, timeout_ms) };
        if r < 0 {
            let e = sys::last_os_error("poll(AF_XDP)");
            return if sys::errno(&e) == Some(libc::EINTR) {
                Ok(false)
            } else {
                Err(e)
            };
        }
        Ok(p.revents & libc::POLLIN != 0)
    }

    /// Socket counters.
    pub fn statistics(&self) -> io::Result<XdpStatistics> {
        statistics(self.fd.as_fd())
    }

    /// A second descriptor of this socket for reading its counters from another thread
    /// (the management plane, at scrape time) while the owner keeps using the rings.
    pub fn stats_reader(&self) -> io::Result<XskStatsReader> {
        Ok(XskStatsReader {
            fd: self.fd.try_clone()?,
        })
    }
}

/// Reads an AF_XDP socket's counters (`XDP_STATISTICS`) through a descriptor of its own.
///
/// Safe next to the socket's owner: getsockopt(XDP_STATISTICS) only reads counters, under the
/// socket's own mutex in the kernel (`xsk_getsockopt`), and touches neither the rings nor
/// the UMEM. (Copy-mode transmit, `sendto`, takes the same mutex: a read delays a kick by
/// the few loads it holds it for.) Being a dup(2) of the socket, it stays valid whatever the owner does: after the
/// owner closes its descriptor the numbers just stop changing (the kernel releases the
/// socket when the last descriptor goes, so keep this one no longer than the program that
/// redirects to it).
#[derive(Debug)]
pub struct XskStatsReader {
    fd: OwnedFd,
}

impl XskStatsReader {
    pub fn statistics(&self) -> io::Result<XdpStatistics> {
        statistics(self.fd.as_fd())
    }
}

/// `XDP_STATISTICS` of the socket `fd`. A kernel before 5.9 fills only the first three
/// fields (`xdp_statistics_v1`); the others stay 0.
fn statistics(fd: BorrowedFd<'_>) -> io::Result<XdpStatistics> {
    // SAFETY: plain C struct, all-zero is valid.
    let mut s: libc::xdp_statistics = unsafe { zeroed() };
    getsockopt(
        fd,
        libc::XDP_STATISTICS,
        &mut s,
        "getsockopt(XDP_STATISTICS)",
    )?;
    Ok(XdpStatistics {
        rx_dropped: s.rx_dropped,
        rx_invalid_descs: s.rx_invalid_descs,
        tx_invalid_descs: s.tx_invalid_descs,
        rx_ring_full: s.rx_ring_full,
        rx_fill_ring_empty_descs: s.rx_fill_ring_empty_descs,
        tx_ring_empty_descs: s.tx_ring_empty_descs,
    })
}

/// Sleeps in poll(2) until one of the first 8 of `socks` has received descriptors or
/// `timeout_ms` passes (an interrupted or failed poll just returns early).
pub fn wait_rx_any<'a>(socks: impl IntoIterator<Item = &'a XskSocket>, timeout_ms: i32) {
    let mut fds = [libc::pollfd {
        fd: -1,
        events: libc::POLLIN,
        revents: 0,
    }; 8];
    let mut n = 0;
    for (f, s) in fds.iter_mut().zip(socks) {
        f.fd = s.fd();
        n += 1;
    }
    // SAFETY: valid array of pollfd, length bounded by its size.
    unsafe { libc::poll(fds.as_mut_ptr(), n as libc::nfds_t, timeout_ms) };
}

impl AsFd for XskSocket {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}
