//! The UMEM: the packet buffer area shared with the kernel, cut into equal frames.

use std::io;
use std::mem::zeroed;
use std::ptr::{self, NonNull};
use std::sync::atomic::AtomicBool;

use super::invalid;
use super::ring::Desc;
use crate::sys;

const HUGE_PAGE: usize = 2 << 20;

/// Why a received descriptor was refused (see [`Umem::check_desc`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadDesc {
    /// The address lies outside the area: no frame of this UMEM, nothing to recycle.
    Address,
    /// The packet would run past the end of its frame. `chunk` is that frame's start: the
    /// frame is the caller's again and goes back to its free list.
    Length { chunk: u64 },
}

/// The packet buffer area shared with the kernel, cut into equal frames.
///
/// Frame addresses (`u64`) are byte offsets into the area; with the aligned chunk mode
/// used here, `addr & !(frame_size - 1)` is the frame's start.
#[derive(Debug)]
pub struct Umem {
    pub(super) area: NonNull<u8>,
    len: usize,
    map_len: usize,
    frame_size: u32,
    frames: u32,
    pub(super) registered: AtomicBool,
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

    /// Checks a descriptor from the rx ring against the area: `Ok((chunk, offset, len))`
    /// with the packet at `chunk + offset`, inside the frame starting at `chunk`. The kernel
    /// validates what userspace gives it, not the other way round; a descriptor it should
    /// never produce is refused here, for the caller to count and drop, instead of being
    /// clipped into a frame that does not hold the packet.
    #[inline]
    pub fn check_desc(&self, d: Desc) -> Result<(u64, usize, usize), BadDesc> {
        if d.addr >= self.len as u64 {
            return Err(BadDesc::Address);
        }
        let chunk = d.addr & !(self.frame_size as u64 - 1);
        let off = (d.addr - chunk) as usize;
        if off + d.len as usize > self.frame_size as usize {
            return Err(BadDesc::Length { chunk });
        }
        Ok((chunk, off, d.len as usize))
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

    pub(super) fn reg(&self) -> libc::xdp_umem_reg {
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
    fn descriptors_outside_the_area_or_their_frame_are_refused() {
        let u = Umem::new(8, 2048).unwrap();
        let d = |addr, len| Desc { addr, len };
        assert_eq!(u.check_desc(d(4096 + 256, 1500)), Ok((4096, 256, 1500)));
        assert_eq!(u.check_desc(d(7 * 2048, 2048)), Ok((7 * 2048, 0, 2048)));
        assert_eq!(u.check_desc(d(0, 0)), Ok((0, 0, 0)));
        assert_eq!(u.check_desc(d(8 * 2048, 64)), Err(BadDesc::Address));
        assert_eq!(u.check_desc(d(u64::MAX, 64)), Err(BadDesc::Address));
        assert_eq!(
            u.check_desc(d(2048 + 100, 1949)),
            Err(BadDesc::Length { chunk: 2048 })
        );
        assert_eq!(
            u.check_desc(d(7 * 2048 + 1, u32::MAX)),
            Err(BadDesc::Length { chunk: 7 * 2048 })
        );
    }

    #[test]
    fn umem_rejects_bad_geometry() {
        assert!(Umem::new(8, 3000).is_err());
        assert!(Umem::new(8, 1024).is_err());
        assert!(Umem::new(8, 1 << 20).is_err());
        assert!(Umem::new(0, 2048).is_err());
    }
}
