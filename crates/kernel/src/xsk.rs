//! AF_XDP sockets: the UMEM frame area and the four single-producer/single-consumer rings
//! shared with the kernel (fill, rx, tx, completion).
//!
//! Frame ownership moves with ring entries: a frame address pushed to the fill ring or a
//! descriptor pushed to the tx ring belongs to the kernel until it comes back through the
//! rx or completion ring. Userspace may touch a frame's bytes only while it owns it.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::ptr::{self, NonNull};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::sys;

const HUGE_PAGE: usize = 2 << 20;
/// How long `bind` keeps retrying EBUSY: a queue released by another process stays busy
/// for about a second.
const BIND_BUSY_RETRY: Duration = Duration::from_secs(3);

/// The packet buffer area shared with the kernel, cut into equal frames.
///
/// Frame addresses (`u64`) are byte offsets into the area; with the aligned chunk mode
/// used here, `addr & !(frame_size - 1)` is the frame's start.
#[derive(Debug)]
pub struct Umem {
    area: NonNull<u8>,
    len: usize,
    map_len: usize,
    frame_size: u32,
    frames: u32,
    registered: AtomicBool,
}

// SAFETY: the area is plain memory; concurrent access rules are those of `frame_mut`.
unsafe impl Send for Umem {}
// SAFETY: as above; `&Umem` only hands out `&[u8]` safely, `&mut [u8]` through an unsafe fn.
unsafe impl Sync for Umem {}

impl Umem {
    /// Maps `frames * frame_size` bytes of anonymous memory (huge pages if available).
    /// `frame_size` must be a power of two between 2048 and the page size.
    pub fn new(frames: u32, frame_size: u32) -> io::Result<Umem> {
        let page = sys::page_size();
        if !frame_size.is_power_of_two() || frame_size < 2048 || frame_size as usize > page {
            return Err(invalid(format!(
                "frame size {frame_size} must be a power of two in 2048..={page}"
            )));
        }
        if frames == 0 {
            return Err(invalid("a UMEM needs at least one frame".into()));
        }
        let len = frames as usize * frame_size as usize;
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
        let huge_len = len.next_multiple_of(HUGE_PAGE);
        // SAFETY: anonymous mapping, no existing memory is affected.
        let mut p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                huge_len,
                prot,
                flags | libc::MAP_HUGETLB,
                -1,
                0,
            )
        };
        let mut map_len = huge_len;
        if p == libc::MAP_FAILED {
            map_len = len.next_multiple_of(page);
            // SAFETY: as above.
            p = unsafe { libc::mmap(ptr::null_mut(), map_len, prot, flags, -1, 0) };
            if p == libc::MAP_FAILED {
                return Err(sys::last_os_error("mmap(UMEM)"));
            }
        }
        Ok(Umem {
            area: NonNull::new(p.cast()).ok_or_else(|| invalid("mmap returned NULL".into()))?,
            len,
            map_len,
            frame_size,
            frames,
            registered: AtomicBool::new(false),
        })
    }

    #[inline]
    pub fn frame_size(&self) -> u32 {
        self.frame_size
    }

    #[inline]
    pub fn frames(&self) -> u32 {
        self.frames
    }

    /// Start address of frame number `i`.
    #[inline]
    pub fn frame_addr(&self, i: u32) -> u64 {
        i as u64 * self.frame_size as u64
    }

    /// Size of the area in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Never true: a UMEM has at least one frame.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// `[addr, addr + len)` clipped to the end of the frame that contains `addr`, so that a
    /// slice never reaches into a neighbouring frame. Empty when `addr` is outside the area.
    #[inline]
    fn clip(&self, addr: u64, len: usize) -> (usize, usize) {
        if addr >= self.len as u64 {
            return (0, 0);
        }
        let frame_end = (addr | (self.frame_size as u64 - 1)) + 1;
        let avail = (frame_end - addr) as usize;
        (addr as usize, len.min(avail))
    }

    /// The bytes at `addr`, at most `len` of them and never past the end of its frame.
    ///
    /// Only meaningful for frames userspace owns (received and not yet handed back):
    /// the kernel may be writing into frames on the fill ring.
    #[inline]
    pub fn frame(&self, addr: u64, len: usize) -> &[u8] {
        let (off, n) = self.clip(addr, len);
        // SAFETY: `off + n` lies inside the mapping, which lives as long as `self`.
        unsafe { std::slice::from_raw_parts(self.area.as_ptr().add(off), n) }
    }

    /// Mutable access to the bytes at `addr`, clipped like [`frame`](Self::frame).
    ///
    /// # Safety
    /// The caller must own the frame exclusively for the lifetime of the returned slice:
    /// it is not in the fill or tx ring (the kernel's), and no other slice of the same
    /// frame (from `frame` or `frame_mut`, on any thread) is alive.
    #[allow(clippy::mut_from_ref)]
    #[inline]
    pub unsafe fn frame_mut(&self, addr: u64, len: usize) -> &mut [u8] {
        let (off, n) = self.clip(addr, len);
        // SAFETY: in bounds as in `frame`; exclusivity is the caller's promise.
        unsafe { std::slice::from_raw_parts_mut(self.area.as_ptr().add(off), n) }
    }

    fn reg(&self) -> libc::xdp_umem_reg {
        // SAFETY: plain C struct, all-zero is valid.
        let mut r: libc::xdp_umem_reg = unsafe { zeroed() };
        r.addr = self.area.as_ptr() as u64;
        r.len = self.len as u64;
        r.chunk_size = self.frame_size;
        r.headroom = 0;
        r
    }
}

impl Drop for Umem {
    fn drop(&mut self) {
        // Sockets may outlive the Umem: the kernel pinned the pages at registration and
        // keeps them until the last socket closes, so unmapping here is safe.
        // SAFETY: the mapping was created in `new` with this length.
        unsafe { libc::munmap(self.area.as_ptr().cast(), self.map_len) };
    }
}

fn invalid(msg: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, msg)
}

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

/// An rx or tx descriptor: a frame address and the length of the packet in it.
/// Sockets are bound without `XDP_USE_SG`, so a packet always fits one frame and the
/// kernel's `options` field is not needed.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Desc {
    pub addr: u64,
    pub len: u32,
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

/// One mmapped ring. `T` is `u64` (fill, completion) or `xdp_desc` (rx, tx).
///
/// The producer and consumer indexes are free-running u32 counters; the kernel side is
/// synchronised with acquire loads of the other side's index and release stores of ours,
/// as in libxdp's xsk.h. `cached_*` avoid touching the shared cache lines on every call.
struct Ring<T> {
    map: NonNull<libc::c_void>,
    map_len: usize,
    producer: NonNull<AtomicU32>,
    consumer: NonNull<AtomicU32>,
    flags: NonNull<AtomicU32>,
    descs: NonNull<T>,
    mask: u32,
    size: u32,
    cached_prod: u32,
    cached_cons: u32,
}

impl<T: Copy> Ring<T> {
    /// Maps a ring of `size` entries at page offset `pgoff` of socket `fd`.
    fn map(
        fd: BorrowedFd<'_>,
        off: &libc::xdp_ring_offset,
        size: u32,
        pgoff: u64,
        producer_side: bool,
    ) -> io::Result<Ring<T>> {
        let map_len = off.desc as usize + size as usize * size_of::<T>();
        // SAFETY: maps the kernel's ring memory for this socket; checked below.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_POPULATE,
                fd.as_raw_fd(),
                pgoff as libc::off_t,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(sys::last_os_error("mmap(AF_XDP ring)"));
        }
        let base = p.cast::<u8>();
        let at = |o: u64| {
            // SAFETY: the kernel's offsets lie inside the ring mapping.
            NonNull::new(unsafe { base.add(o as usize) }).expect("mmap result is non-null")
        };
        let mut r = Ring {
            map: NonNull::new(p).expect("mmap result is non-null"),
            map_len,
            producer: at(off.producer).cast(),
            consumer: at(off.consumer).cast(),
            flags: at(off.flags).cast(),
            descs: at(off.desc).cast(),
            mask: size - 1,
            size,
            cached_prod: 0,
            cached_cons: 0,
        };
        r.cached_prod = r.producer().load(Ordering::Relaxed);
        r.cached_cons = r.consumer().load(Ordering::Relaxed);
        if producer_side {
            // Seen from the producer, `cached_cons` is one lap ahead: free = cons - prod.
            r.cached_cons = r.cached_cons.wrapping_add(size);
        }
        Ok(r)
    }

    #[inline]
    fn producer(&self) -> &AtomicU32 {
        // SAFETY: points into the live mapping; the kernel only accesses it atomically.
        unsafe { self.producer.as_ref() }
    }

    #[inline]
    fn consumer(&self) -> &AtomicU32 {
        // SAFETY: as for `producer`.
        unsafe { self.consumer.as_ref() }
    }

    #[inline]
    fn needs_wakeup(&self) -> bool {
        // SAFETY: as for `producer`.
        let flags = unsafe { self.flags.as_ref() };
        flags.load(Ordering::Relaxed) & libc::XDP_RING_NEED_WAKEUP != 0
    }

    #[inline]
    fn slot(&self, idx: u32) -> *mut T {
        // SAFETY: `idx & mask` < size, inside the mapping.
        unsafe { self.descs.as_ptr().add((idx & self.mask) as usize) }
    }

    /// Producer side: free slots, up to `want`.
    #[inline]
    fn free(&mut self, want: u32) -> u32 {
        let free = self.cached_cons.wrapping_sub(self.cached_prod);
        if free >= want {
            return want;
        }
        // Acquire: the kernel finished reading the slots before it advanced `consumer`.
        self.cached_cons = self
            .consumer()
            .load(Ordering::Acquire)
            .wrapping_add(self.size);
        self.cached_cons.wrapping_sub(self.cached_prod).min(want)
    }

    /// Producer side: writes `items` (as many as fit) and publishes them.
    #[inline]
    fn produce<S>(&mut self, items: &[S], conv: impl Fn(&S) -> T) -> usize {
        let want = items.len().min(self.size as usize) as u32;
        let n = self.free(want);
        for (i, item) in items[..n as usize].iter().enumerate() {
            // SAFETY: slots between cached_prod and cached_cons are ours to write.
            unsafe {
                ptr::write_volatile(
                    self.slot(self.cached_prod.wrapping_add(i as u32)),
                    conv(item),
                )
            };
        }
        if n > 0 {
            self.cached_prod = self.cached_prod.wrapping_add(n);
            // Release: the slot contents are visible before the new producer index.
            self.producer().store(self.cached_prod, Ordering::Release);
        }
        n as usize
    }

    /// Consumer side: reads up to `out.len()` entries and releases their slots.
    #[inline]
    fn consume<S>(&mut self, out: &mut [S], conv: impl Fn(T) -> S) -> usize {
        let want = out.len().min(self.size as usize) as u32;
        let mut avail = self.cached_prod.wrapping_sub(self.cached_cons);
        if avail == 0 {
            // Acquire: slot contents written before `producer` advanced are visible.
            self.cached_prod = self.producer().load(Ordering::Acquire);
            avail = self.cached_prod.wrapping_sub(self.cached_cons);
        }
        let n = avail.min(want);
        for (i, o) in out[..n as usize].iter_mut().enumerate() {
            // SAFETY: slots between cached_cons and cached_prod were published to us.
            *o = conv(unsafe {
                ptr::read_volatile(self.slot(self.cached_cons.wrapping_add(i as u32)))
            });
        }
        if n > 0 {
            self.cached_cons = self.cached_cons.wrapping_add(n);
            // Release: we are done reading the slots before the kernel may reuse them.
            self.consumer().store(self.cached_cons, Ordering::Release);
        }
        n as usize
    }
}

impl<T> Drop for Ring<T> {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly the mapping created in `map`.
        unsafe { libc::munmap(self.map.as_ptr(), self.map_len) };
    }
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

fn setsockopt<T>(
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
fn getsockopt<T>(
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
        // SAFETY: plain C struct, all-zero is valid.
        let mut s: libc::xdp_statistics = unsafe { zeroed() };
        getsockopt(
            self.fd.as_fd(),
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

/// Sizes the rx and tx rings and, with `umem_rings`, the fill and completion rings.
fn set_ring_sizes(fd: BorrowedFd<'_>, size: u32, umem_rings: bool) -> io::Result<()> {
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
fn mmap_offsets(fd: BorrowedFd<'_>) -> io::Result<libc::xdp_mmap_offsets> {
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
fn bind_address(
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
fn bind_retrying(fd: BorrowedFd<'_>, sa: &libc::sockaddr_xdp) -> io::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn umem_geometry_and_clipping() {
        let u = Umem::new(8, 2048).unwrap();
        assert_eq!(u.frames(), 8);
        assert_eq!(u.frame_size(), 2048);
        assert_eq!(u.len(), 8 * 2048);
        assert_eq!(u.frame_addr(3), 6144);
        assert_eq!(u.frame(0, 100).len(), 100);
        // Clipped at the end of the frame holding the address.
        assert_eq!(u.frame(2048 + 2000, 100).len(), 48);
        assert_eq!(u.frame(2047, 10).len(), 1);
        // Outside the area.
        assert!(u.frame(8 * 2048, 1).is_empty());
        assert!(u.frame(u64::MAX, 1).is_empty());
        // SAFETY: the test owns every frame; no other slice is alive.
        let f = unsafe { u.frame_mut(4096, 4) };
        f.copy_from_slice(&[1, 2, 3, 4]);
        assert_eq!(u.frame(4096, 4), &[1, 2, 3, 4]);
    }

    #[test]
    fn umem_rejects_bad_geometry() {
        assert!(Umem::new(8, 3000).is_err());
        assert!(Umem::new(8, 1024).is_err());
        assert!(Umem::new(8, 1 << 20).is_err());
        assert!(Umem::new(0, 2048).is_err());
    }

    /// A ring over plain memory, to check index arithmetic without a kernel.
    fn fake_ring<T: Copy>(mem: &mut Vec<u64>, size: u32, producer_side: bool) -> Ring<T> {
        // Layout: producer at 0, consumer at 8, flags at 16, descs from 64.
        mem.resize(8 + size as usize * size_of::<T>().div_ceil(8), 0);
        let base = mem.as_mut_ptr().cast::<u8>();
        let at = |o: usize| NonNull::new(unsafe { base.add(o) }).unwrap();
        let mut r = Ring {
            map: NonNull::dangling(),
            map_len: 0,
            producer: at(0).cast(),
            consumer: at(8).cast(),
            flags: at(16).cast(),
            descs: at(64).cast(),
            mask: size - 1,
            size,
            cached_prod: 0,
            cached_cons: 0,
        };
        if producer_side {
            r.cached_cons = size;
        }
        r
    }

    #[test]
    fn ring_produce_consume_wraps() {
        let mut mem = Vec::new();
        let mut prod: Ring<u64> = fake_ring(&mut mem, 4, true);
        // Second view of the same memory playing the kernel's consumer role.
        let mut cons: Ring<u64> = Ring {
            map: NonNull::dangling(),
            map_len: 0,
            producer: prod.producer,
            consumer: prod.consumer,
            flags: prod.flags,
            descs: prod.descs,
            mask: 3,
            size: 4,
            cached_prod: 0,
            cached_cons: 0,
        };
        let mut out = [0u64; 8];
        for round in 0..5u64 {
            let items: Vec<u64> = (0..6).map(|i| round * 100 + i).collect();
            assert_eq!(prod.produce(&items, |&a| a), 4, "only 4 slots");
            assert_eq!(prod.produce(&items, |&a| a), 0, "ring full");
            assert_eq!(cons.consume(&mut out[..3], |a| a), 3);
            assert_eq!(&out[..3], &items[..3]);
            assert_eq!(prod.produce(&items[4..], |&a| a), 2);
            assert_eq!(cons.consume(&mut out, |a| a), 1);
            assert_eq!(out[0], items[3]);
            assert_eq!(cons.consume(&mut out, |a| a), 2);
            assert_eq!(&out[..2], &items[4..6]);
            assert_eq!(cons.consume(&mut out, |a| a), 0);
        }
        assert_eq!(prod.producer().load(Ordering::Relaxed), 30);
        // Do not munmap the fake mappings.
        std::mem::forget(prod);
        std::mem::forget(cons);
    }
}
