//! What creating a socket asks of the kernel: socket options, the ring sizes and mmap
//! offsets, the bind address (copy mode, need-wakeup, a shared UMEM) and bind(2).

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::time::{Duration, Instant};

use super::{XskConfig, XskSocket};
use crate::sys;

/// How long `bind` keeps retrying EBUSY: a queue released by another process stays busy
/// for about a second.
const BIND_BUSY_RETRY: Duration = Duration::from_secs(3);

pub(super) fn setsockopt<T>(
    fd: BorrowedFd<'_>,
    opt: libc::c_int,
    val: &T,
    op: &'static str,
) -> io::Result<()> {
    // SAFETY: `val` is a live value of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            val as *const T as *const libc::c_void,
            size_of::<T>() as libc::socklen_t,
        )
    };
    sys::cvt(r, op).map(drop)
}

/// getsockopt into `out`, returning the length the kernel wrote.
pub(super) fn getsockopt<T>(
    fd: BorrowedFd<'_>,
    opt: libc::c_int,
    out: &mut T,
    op: &'static str,
) -> io::Result<usize> {
    let mut len = size_of::<T>() as libc::socklen_t;
    // SAFETY: `out` is writable for `len` bytes.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_XDP,
            opt,
            out as *mut T as *mut libc::c_void,
            &mut len,
        )
    };
    sys::cvt(r, op).map(|_| len as usize)
}

/// Sizes the rx and tx rings and, with `umem_rings`, the fill and completion rings.
pub(super) fn set_ring_sizes(fd: BorrowedFd<'_>, size: u32, umem_rings: bool) -> io::Result<()> {
    if umem_rings {
        setsockopt(
            fd,
            libc::XDP_UMEM_FILL_RING,
            &size,
            "setsockopt(XDP_UMEM_FILL_RING)",
        )?;
        setsockopt(
            fd,
            libc::XDP_UMEM_COMPLETION_RING,
            &size,
            "setsockopt(XDP_UMEM_COMPLETION_RING)",
        )?;
    }
    setsockopt(fd, libc::XDP_RX_RING, &size, "setsockopt(XDP_RX_RING)")?;
    setsockopt(fd, libc::XDP_TX_RING, &size, "setsockopt(XDP_TX_RING)")
}

/// Where the kernel placed the rings' producer, consumer, flags and descriptors
/// (`XDP_MMAP_OFFSETS`); refuses kernels whose offsets lack the ring flags.
pub(super) fn mmap_offsets(fd: BorrowedFd<'_>) -> io::Result<libc::xdp_mmap_offsets> {
    // SAFETY: plain C struct, all-zero is valid.
    let mut off: libc::xdp_mmap_offsets = unsafe { zeroed() };
    let got = getsockopt(
        fd,
        libc::XDP_MMAP_OFFSETS,
        &mut off,
        "getsockopt(XDP_MMAP_OFFSETS)",
    )?;
    if got != size_of::<libc::xdp_mmap_offsets>() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "kernel without ring flags (need Linux >= 5.4)",
        ));
    }
    Ok(off)
}

/// The address to bind a socket to `queue` of `ifindex`, and whether it uses need-wakeup.
/// A socket sharing `first`'s UMEM inherits copy mode and need-wakeup from it.
pub(super) fn bind_address(
    first: Option<&XskSocket>,
    ifindex: u32,
    queue: u32,
    cfg: &XskConfig,
) -> (libc::sockaddr_xdp, bool) {
    // SAFETY: plain C struct, all-zero is valid.
    let mut sa: libc::sockaddr_xdp = unsafe { zeroed() };
    sa.sxdp_family = libc::AF_XDP as u16;
    sa.sxdp_ifindex = ifindex;
    sa.sxdp_queue_id = queue;
    let need_wakeup = match first {
        Some(f) => {
            // Flags other than XDP_SHARED_UMEM are rejected here: mode and wakeup
            // behaviour come from the socket that registered the UMEM.
            sa.sxdp_flags = libc::XDP_SHARED_UMEM;
            sa.sxdp_shared_umem_fd = f.fd.as_raw_fd() as u32;
            f.need_wakeup
        }
        None => {
            sa.sxdp_flags = match cfg.copy {
                None => 0,
                Some(true) => libc::XDP_COPY,
                Some(false) => libc::XDP_ZEROCOPY,
            };
            if cfg.need_wakeup {
                sa.sxdp_flags |= libc::XDP_USE_NEED_WAKEUP;
            }
            cfg.need_wakeup
        }
    };
    (sa, need_wakeup)
}

/// bind(2), retrying EBUSY for up to [`BIND_BUSY_RETRY`]: the kernel releases a queue
/// asynchronously after its previous socket closes.
pub(super) fn bind_retrying(fd: BorrowedFd<'_>, sa: &libc::sockaddr_xdp) -> io::Result<()> {
    let start = Instant::now();
    let mut backoff = Duration::from_millis(20);
    loop {
        // SAFETY: `sa` is a valid sockaddr_xdp of the size passed.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (sa as *const libc::sockaddr_xdp).cast(),
                size_of::<libc::sockaddr_xdp>() as libc::socklen_t,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let errno = sys::last_errno();
        if errno != libc::EBUSY || start.elapsed() >= BIND_BUSY_RETRY {
            return Err(sys::os_error("bind(AF_XDP)", errno));
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_millis(250));
    }
}
