//! Small syscall helpers shared by the data-plane modules.
//!
//! Errors keep their errno: an [`OsError`] is wrapped in `io::Error` so that callers
//! keep a single error type while [`errno`] still recovers the code (for EBUSY retries,
//! EAGAIN filtering) and the message names the operation that failed.

use std::ffi::CString;
use std::fmt;
use std::io;

/// An OS error together with the operation that produced it.
#[derive(Debug)]
pub struct OsError {
    op: &'static str,
    errno: i32,
    detail: Option<String>,
}

impl OsError {
    /// The operation that failed, e.g. `"bind(AF_XDP)"`.
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// The raw errno value.
    pub fn errno(&self) -> i32 {
        self.errno
    }

    /// Extra text attached to the error (for example a verifier log).
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }
}

impl fmt::Display for OsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: {}",
            self.op,
            io::Error::from_raw_os_error(self.errno)
        )?;
        if let Some(d) = &self.detail {
            write!(f, "\n{d}")?;
        }
        Ok(())
    }
}

impl std::error::Error for OsError {}

/// An `io::Error` for `errno`, labelled with `op`.
pub fn os_error(op: &'static str, errno: i32) -> io::Error {
    os_error_detail(op, errno, None)
}

/// Like [`os_error`], with extra text appended to the message.
pub fn os_error_detail(op: &'static str, errno: i32, detail: Option<String>) -> io::Error {
    let kind = io::Error::from_raw_os_error(errno).kind();
    io::Error::new(kind, OsError { op, errno, detail })
}

/// The current thread's errno as an `io::Error` labelled with `op`.
pub fn last_os_error(op: &'static str) -> io::Error {
    os_error(op, last_errno())
}

/// The current thread's errno.
pub fn last_errno() -> i32 {
    io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The errno carried by `e`, whether it came from [`os_error`] or from
/// `io::Error::from_raw_os_error`.
pub fn errno(e: &io::Error) -> Option<i32> {
    e.raw_os_error().or_else(|| {
        e.get_ref()
            .and_then(|inner| inner.downcast_ref::<OsError>())
            .map(OsError::errno)
    })
}

/// "No such device": the errno of a lookup of an interface that does not exist.
pub const ENODEV: i32 = libc::ENODEV;

/// Whether the process runs with effective user id 0.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// Turns a C-style `-1 means errno` return value into a `Result`.
pub fn cvt(ret: libc::c_int, op: &'static str) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(last_os_error(op))
    } else {
        Ok(ret)
    }
}

/// Interface index of `name` in the calling thread's network namespace.
pub fn if_nametoindex(name: &str) -> io::Result<u32> {
    let c = CString::new(name)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name contains NUL"))?;
    // SAFETY: `c` is a valid NUL-terminated string for the duration of the call.
    let idx = unsafe { libc::if_nametoindex(c.as_ptr()) };
    if idx == 0 {
        Err(last_os_error("if_nametoindex"))
    } else {
        Ok(idx)
    }
}

/// The system page size.
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 { p as usize } else { 4096 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_survives_wrapping() {
        let e = os_error_detail("bind", libc::EBUSY, Some("log".into()));
        assert_eq!(errno(&e), Some(libc::EBUSY));
        assert_eq!(e.kind(), io::ErrorKind::ResourceBusy);
        let msg = e.to_string();
        assert!(msg.starts_with("bind: "), "{msg}");
        assert!(msg.ends_with("\nlog"), "{msg}");
        assert_eq!(
            errno(&io::Error::from_raw_os_error(libc::EAGAIN)),
            Some(libc::EAGAIN)
        );
        assert_eq!(errno(&io::Error::other("x")), None);
    }

    #[test]
    fn nametoindex() {
        assert_eq!(if_nametoindex("lo").unwrap(), 1);
        assert!(if_nametoindex("no-such-if-xyz").is_err());
        assert!(if_nametoindex("a\0b").is_err());
    }
}
