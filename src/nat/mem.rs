//! Large table allocation. The engine's tables are hit at random, one cache line per lookup,
//! so two things about their memory matter:
//! - Alignment. A 32-byte slot must not straddle two cache lines. `malloc` hands out large
//!   blocks 16 bytes past a page boundary, which made every other slot of a `Vec` span two
//!   lines: two misses per lookup, the second one not prefetched. [`Table`] aligns to the
//!   cache line, and large tables to 2 MiB.
//! - Page size. With millions of entries nearly every lookup also misses the TLB; backing the
//!   tables with 2 MiB transparent huge pages removes most of those misses. The advice has to
//!   come before the pages are first touched.

use core::alloc::Layout;
use core::ops::{Deref, DerefMut};
use core::ptr::NonNull;

const HUGE: usize = 2 << 20;
const LINE: usize = 64;

/// A fixed-length array of `T` on cache-line (and, from 4 MiB, huge-page) aligned memory.
pub struct Table<T> {
    ptr: NonNull<T>,
    len: usize,
}

// SAFETY: Table owns its elements like a Box<[T]> does.
unsafe impl<T: Send> Send for Table<T> {}
// SAFETY: as above; shared access only hands out &T.
unsafe impl<T: Sync> Sync for Table<T> {}

impl<T> Table<T> {
    fn layout(len: usize) -> Layout {
        let bytes = len
            .checked_mul(size_of::<T>())
            .expect("table size overflows usize");
        let align = if bytes >= 2 * HUGE { HUGE } else { LINE };
        Layout::from_size_align(bytes, align.max(align_of::<T>())).expect("table layout")
    }
}

/// `n` copies of `v` on aligned memory, advised for transparent huge pages before it is filled.
pub fn table<T: Clone>(n: usize, v: T) -> Table<T> {
    let layout = Table::<T>::layout(n);
    if layout.size() == 0 {
        // Nothing to allocate (n == 0 or a zero-sized T); still produce n values' worth of slice.
        return Table {
            ptr: NonNull::dangling(),
            len: n,
        };
    }
    // SAFETY: the layout has a non-zero size.
    let raw = unsafe { std::alloc::alloc(layout) };
    let Some(ptr) = NonNull::new(raw.cast::<T>()) else {
        std::alloc::handle_alloc_error(layout)
    };
    if layout.align() == HUGE {
        // A failure (THP disabled) only costs the optimisation.
        // SAFETY: the range is our own fresh allocation; madvise only changes paging policy.
        unsafe {
            libc::madvise(
                raw.cast::<libc::c_void>(),
                layout.size() & !(HUGE - 1),
                libc::MADV_HUGEPAGE,
            )
        };
    }
    for i in 0..n {
        // SAFETY: i < n, inside the allocation; each element is written exactly once.
        unsafe { ptr.as_ptr().add(i).write(v.clone()) };
    }
    Table { ptr, len: n }
}

impl<T> Deref for Table<T> {
    type Target = [T];
    fn deref(&self) -> &[T] {
        // SAFETY: ptr holds len initialised elements (or is dangling with a zero-sized layout).
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> DerefMut for Table<T> {
    fn deref_mut(&mut self) -> &mut [T] {
        // SAFETY: as in deref, and &mut self is unique.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
}

impl<T> Drop for Table<T> {
    fn drop(&mut self) {
        let layout = Self::layout(self.len);
        // SAFETY: the elements are initialised and dropped once; the memory was allocated
        // with this same layout (a function of len alone).
        unsafe {
            core::ptr::drop_in_place(core::ptr::slice_from_raw_parts_mut(
                self.ptr.as_ptr(),
                self.len,
            ));
            if layout.size() != 0 {
                std::alloc::dealloc(self.ptr.as_ptr().cast::<u8>(), layout);
            }
        }
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Table<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn table_is_filled_like_vec_macro() {
        for n in [0usize, 1, 1000, 3 << 20] {
            let t = super::table(n, 7u8);
            assert_eq!(t.len(), n);
            assert!(t.iter().all(|&b| b == 7));
        }
    }

    #[test]
    fn tables_are_line_aligned_and_large_ones_huge_page_aligned() {
        let small = super::table(100, [0u8; 32]);
        assert_eq!(small.as_ptr() as usize % 64, 0);
        let large = super::table(1 << 17, [0u8; 32]);
        assert_eq!(large.as_ptr() as usize % (2 << 20), 0);
    }

    #[test]
    fn elements_are_dropped() {
        let rc = std::rc::Rc::new(());
        let t = super::table(10, rc.clone());
        assert_eq!(std::rc::Rc::strong_count(&rc), 11);
        drop(t);
        assert_eq!(std::rc::Rc::strong_count(&rc), 1);
    }
}
