//! Where threads run: pinning a thread to cores, the machine's online cores, and how long a
//! thread waited for its CPU (how a polling worker tells that it shares its core).

use std::io;

use crate::sys;

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

/// The cores the kernel has online (`/sys/devices/system/cpu/online`, e.g. `0-3,6`),
/// whatever the calling process's affinity: a box that keeps its gateway cores away from
/// everything else (`isolcpus=`, a service manager's `CPUAffinity=`) starts natgw with a
/// mask that leaves them out, and a worker may still be pinned there.
pub fn online_cpus() -> io::Result<Vec<usize>> {
    let s = std::fs::read_to_string("/sys/devices/system/cpu/online")?;
    parse_cpu_list(s.trim()).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/sys/devices/system/cpu/online: {s:?} is not a CPU list"),
        )
    })
}

/// A kernel CPU list: comma-separated cores and inclusive ranges (`0-3,6`).
fn parse_cpu_list(s: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in s.split(',') {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.parse::<usize>().ok()?, b.parse::<usize>().ok()?),
            None => {
                let a = part.parse::<usize>().ok()?;
                (a, a)
            }
        };
        if b < a || b >= libc::CPU_SETSIZE as usize {
            return None;
        }
        cpus.extend(a..=b);
    }
    Some(cpus)
}

/// The cores the calling thread may run on (sched_getaffinity).
pub fn affinity() -> io::Result<Vec<usize>> {
    // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity(0, ..) writes only into it and
    // CPU_ISSET reads inside it for cores below CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        let r = libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set);
        sys::cvt(r, "sched_getaffinity")?;
        Ok((0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect())
    }
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
    fn cpu_lists_parse_as_the_kernel_writes_them() {
        assert_eq!(parse_cpu_list("0"), Some(vec![0]));
        assert_eq!(parse_cpu_list("0-3,6"), Some(vec![0, 1, 2, 3, 6]));
        assert_eq!(parse_cpu_list("1,3-4"), Some(vec![1, 3, 4]));
        for bad in ["", "a", "3-1", "0-", "1,,2", "0-99999"] {
            assert_eq!(parse_cpu_list(bad), None, "{bad:?}");
        }
        let online = online_cpus().unwrap();
        assert!(online.contains(&0), "{online:?}");
        // The test's own affinity is a subset of the online cores.
        assert!(affinity().unwrap().iter().all(|c| online.contains(c)));
    }

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
}
