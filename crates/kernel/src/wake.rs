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

/// How long the calling thread has waited, runnable, for a CPU (`run_delay`, the second
/// field of `/proc/thread-self/schedstat`, ns). A polling thread whose wait grows by a
/// sizeable share of the wall time shares its core with other work; a brief preemption
/// (a kworker, the softirq thread running the thread's own traffic) barely moves it, where
/// a count of context switches cannot tell the two apart.
#[derive(Debug)]
pub struct RunDelay(std::fs::File);

impl RunDelay {
    /// For the calling thread (the file names it: read it from that thread only). None
    /// where the kernel has no scheduler statistics (`CONFIG_SCHED_INFO`).
    pub fn open() -> Option<RunDelay> {
        let f = std::fs::File::open("/proc/thread-self/schedstat").ok()?;
        let r = RunDelay(f);
        r.read().map(|_| r)
    }

    /// The thread's total wait so far, ns (one pread).
    pub fn read(&self) -> Option<u64> {
        use std::os::unix::fs::FileExt;
        let mut buf = [0u8; 96];
        let n = self.0.read_at(&mut buf, 0).ok()?;
        parse_run_delay(&buf[..n])
    }
}

/// The second field of a schedstat line: `"<runtime> <run_delay> <timeslices>\n"`.
fn parse_run_delay(line: &[u8]) -> Option<u64> {
    let s = std::str::from_utf8(line).ok()?;
    s.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// Restricts the calling thread (and every thread it spawns afterwards, which inherit the
/// mask) to `cores`. Err: the kernel refused (a core outside the cpuset, or none usable).
pub fn set_affinity(cores: &[usize]) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; CPU_SET writes inside it for a core
    // below CPU_SETSIZE (checked), and sched_setaffinity(0, ..) only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for &c in cores {
            if c >= libc::CPU_SETSIZE as usize {
                return Err(io::Error::from_raw_os_error(libc::EINVAL));
            }
            libc::CPU_SET(c, &mut set);
        }
        let r = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        sys::cvt(r, "sched_setaffinity").map(|_| ())
    }
}

/// How often the calling thread was preempted (involuntary context switches,
/// `getrusage(RUSAGE_THREAD)`): a polling thread that finds this growing shares its core.
pub fn involuntary_switches() -> u64 {
    // SAFETY: a zeroed rusage is valid; getrusage writes only into it.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut u);
        u.ru_nivcsw as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_delay_is_the_second_schedstat_field() {
        assert_eq!(parse_run_delay(b"123 456 7\n"), Some(456));
        assert_eq!(parse_run_delay(b"123\n"), None);
        assert_eq!(parse_run_delay(b"1 x 2"), None);
        assert_eq!(parse_run_delay(b""), None);
        // This kernel has the statistics (CI runs on the same kind of machine): a thread
        // that waits for nothing reads a figure that never goes backwards.
        if let Some(r) = RunDelay::open() {
            let a = r.read().unwrap();
            assert!(r.read().unwrap() >= a);
        }
    }

    /// Two threads spinning on one core wait for it about half the time each: the figure a
    /// worker judges its core by grows by far more than a tenth of the wall time.
    #[test]
    fn run_delay_grows_when_two_threads_share_a_core() {
        let spin = || {
            set_affinity(&[0]).unwrap();
            let r = RunDelay::open().expect("scheduler statistics (CONFIG_SCHED_INFO)");
            let before = r.read().unwrap();
            let t = std::time::Instant::now();
            while t.elapsed() < std::time::Duration::from_millis(300) {
                std::hint::spin_loop();
            }
            r.read().unwrap() - before
        };
        let a = std::thread::spawn(spin);
        let b = std::thread::spawn(spin);
        let waited = a.join().unwrap().max(b.join().unwrap());
        assert!(waited > 30_000_000, "waited {waited} ns of 300 ms");
    }

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
