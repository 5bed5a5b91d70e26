//! Waking a sleeping thread: an eventfd another thread signals, and poll(2) over a few
//! descriptors (AF_XDP sockets, netlink sockets, eventfds) at once.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::sys;

/// A nonblocking eventfd: readable from [`signal`](EventFd::signal) until
/// [`drain`](EventFd::drain). Signals between two drains are one wake-up.
#[derive(Debug)]
pub struct EventFd(OwnedFd);

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: plain eventfd(2).
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        let fd = sys::cvt(fd, "eventfd")?;
        // SAFETY: a fresh descriptor owned by nobody else.
        Ok(EventFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// Makes the eventfd readable. Never blocks; a full counter (2^64 - 2 signals without a
    /// drain) is readable already, so a failed write loses nothing.
    pub fn signal(&self) {
        let one = 1u64;
        // SAFETY: writes 8 bytes from a live u64, as eventfd(2) expects.
        unsafe { libc::write(self.fd(), (&one as *const u64).cast(), 8) };
    }

    /// Consumes every signal so far; returns whether there was any.
    pub fn drain(&self) -> bool {
        let mut v = 0u64;
        // SAFETY: reads 8 bytes into a live u64, as eventfd(2) expects.
        let r = unsafe { libc::read(self.fd(), (&mut v as *mut u64).cast(), 8) };
        r == 8 && v > 0
    }

    #[inline]
    pub fn fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// Most descriptors [`wait_readable`] waits on.
pub const MAX_WAIT_FDS: usize = 16;

/// Sleeps in poll(2) until one of the first [`MAX_WAIT_FDS`] of `fds` is readable or
/// `timeout_ms` passes (-1: no timeout). Returns whether one was readable; an interrupted or
/// failed poll returns false early. Negative descriptors are ignored, as poll(2) does.
pub fn wait_readable(fds: &[RawFd], timeout_ms: i32) -> bool {
    let mut p = [libc::pollfd {
        fd: -1,
        events: libc::POLLIN,
        revents: 0,
    }; MAX_WAIT_FDS];
    let n = fds.len().min(MAX_WAIT_FDS);
    for (slot, &fd) in p.iter_mut().zip(&fds[..n]) {
        slot.fd = fd;
    }
    // SAFETY: a valid array of pollfd, the length bounded by its size.
    let r = unsafe { libc::poll(p.as_mut_ptr(), n as libc::nfds_t, timeout_ms) };
    r > 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eventfd_wakes_a_waiter_once_per_drain() {
        let e = EventFd::new().unwrap();
        assert!(!wait_readable(&[e.fd()], 0), "not readable before a signal");
        assert!(!e.drain());
        e.signal();
        e.signal();
        assert!(wait_readable(&[-1, e.fd()], 0));
        assert!(e.drain(), "two signals, one drain");
        assert!(!wait_readable(&[e.fd()], 0));
        // From another thread, while this one sleeps.
        let e = std::sync::Arc::new(e);
        let t = {
            let e = std::sync::Arc::clone(&e);
            std::thread::spawn(move || {
                std::thread::sleep(std::time::Duration::from_millis(20));
                e.signal();
            })
        };
        assert!(wait_readable(&[e.fd()], 10_000), "woken by the signal");
        t.join().unwrap();
        assert!(e.drain());
    }
}
