//! The UMEM: the packet buffer area shared with the kernel, cut into equal frames.

use std::io;
use std::mem::zeroed;
use std::ptr::{self, NonNull};
use std::sync::atomic::AtomicBool;

use super::invalid;
use crate::sys;

const HUGE_PAGE: usize = 2 << 20;

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
    fn umem_rejects_bad_geometry() {
        assert!(Umem::new(8, 3000).is_err());
        assert!(Umem::new(8, 1024).is_err());
        assert!(Umem::new(8, 1 << 20).is_err());
        assert!(Umem::new(0, 2048).is_err());
    }
}
