//! POSIX capabilities of the calling thread (capget/capset, prctl), and locking memory.
//!
//! Linux keeps capabilities per thread: a thread started after [`limit_thread`] inherits the
//! reduced set, one started before keeps what it had, so natgw drops in each thread it
//! starts and once in the main thread after set-up.

use crate::sys::cvt;
use std::io;

/// A capability number (linux/capability.h).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap(pub u32);

impl Cap {
    pub const NET_ADMIN: Cap = Cap(12);
    pub const NET_RAW: Cap = Cap(13);
    pub const IPC_LOCK: Cap = Cap(14);
    pub const SYS_ADMIN: Cap = Cap(21);
    pub const SYS_NICE: Cap = Cap(23);
    pub const SETPCAP: Cap = Cap(8);
    pub const BPF: Cap = Cap(39);

    /// The name as capabilities(7), systemd and setpriv spell it.
    pub fn name(self) -> String {
        match self {
            Cap::NET_ADMIN => "CAP_NET_ADMIN".into(),
            Cap::NET_RAW => "CAP_NET_RAW".into(),
            Cap::IPC_LOCK => "CAP_IPC_LOCK".into(),
            Cap::SYS_ADMIN => "CAP_SYS_ADMIN".into(),
            Cap::SYS_NICE => "CAP_SYS_NICE".into(),
            Cap::SETPCAP => "CAP_SETPCAP".into(),
            Cap::BPF => "CAP_BPF".into(),
            Cap(n) => format!("capability {n}"),
        }
    }

    fn bit(self) -> u64 {
        1u64 << self.0
    }
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct Header {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The calling thread's (effective, permitted, inheritable) sets as bit masks.
fn get() -> io::Result<(u64, u64, u64)> {
    let mut h = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut d = [Data::default(); 2];
    // SAFETY: version 3 takes two Data structs; both pointers are valid for the call.
    cvt(
        unsafe { libc::syscall(libc::SYS_capget, &mut h, d.as_mut_ptr()) as libc::c_int },
        "capget",
    )?;
    let join = |lo: u32, hi: u32| u64::from(lo) | u64::from(hi) << 32;
    Ok((
        join(d[0].effective, d[1].effective),
        join(d[0].permitted, d[1].permitted),
        join(d[0].inheritable, d[1].inheritable),
    ))
}

fn set(effective: u64, permitted: u64, inheritable: u64) -> io::Result<()> {
    let mut h = Header {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let split = |v: u64| (v as u32, (v >> 32) as u32);
    let (e, eh) = split(effective);
    let (p, ph) = split(permitted);
    let (i, ih) = split(inheritable);
    let d = [
        Data {
            effective: e,
            permitted: p,
            inheritable: i,
        },
        Data {
            effective: eh,
            permitted: ph,
            inheritable: ih,
        },
    ];
    // SAFETY: as in `get`; capset only reads the two structs.
    cvt(
        unsafe { libc::syscall(libc::SYS_capset, &mut h, d.as_ptr()) as libc::c_int },
        "capset",
    )?;
    Ok(())
}

/// Which of `wanted` the calling thread does not have in its effective set.
pub fn missing(wanted: &[Cap]) -> io::Result<Vec<Cap>> {
    let (eff, _, _) = get()?;
    Ok(wanted
        .iter()
        .copied()
        .filter(|c| eff & c.bit() == 0)
        .collect())
}

/// Whether the calling thread has `cap` in its effective set.
pub fn has(cap: Cap) -> bool {
    missing(&[cap]).is_ok_and(|m| m.is_empty())
}

/// Reduces the calling thread to `keep` (those of them it has): effective and permitted
/// become `keep`, inheritable and ambient empty, and, where the thread may (CAP_SETPCAP),
/// every other capability leaves the bounding set so that nothing it executes regains
/// one. Irreversible for this thread and the threads it starts afterwards.
pub fn limit_thread(keep: &[Cap]) -> io::Result<()> {
    let (_, permitted, _) = get()?;
    let keep = keep.iter().fold(0u64, |m, c| m | c.bit()) & permitted;
    // SAFETY: prctl with integer arguments only.
    cvt(
        unsafe {
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        },
        "prctl(PR_CAP_AMBIENT_CLEAR_ALL)",
    )?;
    if permitted & Cap::SETPCAP.bit() != 0 {
        for n in 0..=last_cap() {
            if keep & Cap(n).bit() == 0 {
                // SAFETY: as above. EINVAL for numbers this kernel does not know is fine.
                unsafe { libc::prctl(libc::PR_CAPBSET_DROP, n as libc::c_ulong, 0, 0, 0) };
            }
        }
    }
    set(keep, keep, 0)
}

/// The highest capability number this kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
        .min(63)
}

/// Locks every page of the process, now and future ones, so that the dataplane never waits
/// for a page-in. Needs CAP_IPC_LOCK or an RLIMIT_MEMLOCK large enough for all of natgw.
pub fn lock_memory() -> io::Result<()> {
    // SAFETY: mlockall takes flags only.
    cvt(
        unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE) },
        "mlockall",
    )?;
    Ok(())
}

/// Whether the locked-memory limit (RLIMIT_MEMLOCK) is unlimited.
pub fn memlock_unlimited() -> bool {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit struct, which `r` is.
    let ok = unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut r) } == 0;
    ok && r.rlim_cur == libc::RLIM_INFINITY
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_only_what_it_is_limited_to() {
        // In a thread of its own: the limit is per thread and irreversible.
        std::thread::spawn(|| {
            let had_raw = has(Cap::NET_RAW);
            limit_thread(&[Cap::NET_RAW]).expect("limit");
            assert_eq!(has(Cap::NET_RAW), had_raw);
            assert!(!has(Cap::SYS_ADMIN));
            assert!(!has(Cap::NET_ADMIN));
            // Threads started now inherit the reduced set.
            std::thread::spawn(|| assert!(!has(Cap::SYS_ADMIN)))
                .join()
                .unwrap();
        })
        .join()
        .unwrap();
    }

    #[test]
    fn names_are_the_ones_operators_type() {
        assert_eq!(Cap::NET_ADMIN.name(), "CAP_NET_ADMIN");
        assert_eq!(Cap::BPF.name(), "CAP_BPF");
        assert_eq!(Cap(33).name(), "capability 33");
    }
}
