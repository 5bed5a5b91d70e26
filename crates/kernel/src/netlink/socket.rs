//! The NETLINK_ROUTE socket: opening it, request/reply transactions with the kernel.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::message::{
    Msg, Msgs, NLM_F_DUMP_INTR, NLM_F_MULTI, NLMSG_DONE, NLMSG_ERROR, NLMSG_NOOP, NLMSG_OVERRUN,
    Request, invalid, ne_u32,
};

pub(super) const SOL_NETLINK: libc::c_int = 270;
const NETLINK_GET_STRICT_CHK: libc::c_int = 12;

/// How long a request waits for the kernel's answer before failing with `TimedOut`.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Receive buffer: the kernel sizes dump messages up to 32 KiB when the reader's buffer
/// allows it.
const RECV_BUF: usize = 64 * 1024;
/// A dump the kernel flags as interrupted (table changed mid-dump) is retried this often.
pub(super) const DUMP_RETRIES: usize = 5;

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A NETLINK_ROUTE socket. Always nonblocking; request/reply waits use `poll`.
pub(super) struct Socket {
    pub(super) fd: OwnedFd,
    pub(super) port: u32,
    seq: u32,
    pub(super) buf: Vec<u8>,
}

impl Socket {
    pub(super) fn open() -> io::Result<Self> {
        // SAFETY: plain socket(2); the result is checked before being wrapped.
        let raw = cvt(unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
                libc::NETLINK_ROUTE,
            )
        })?;
        // SAFETY: `raw` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_nl is plain old data; all-zero is a valid value.
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        let sa_len = std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t;
        // SAFETY: `sa` is a valid sockaddr_nl of `sa_len` bytes. nl_pid 0 lets the kernel
        // pick a unique port id.
        cvt(unsafe { libc::bind(fd.as_raw_fd(), (&raw const sa).cast(), sa_len) })?;
        let mut len = sa_len;
        // SAFETY: getsockname writes at most `len` bytes into `sa`.
        cvt(unsafe { libc::getsockname(fd.as_raw_fd(), (&raw mut sa).cast(), &mut len) })?;
        // Strict checking makes single-entry RTM_GETNEIGH requests work; kernels without
        // it reject the option, which only matters to `neighbour`.
        let _ = setsockopt_u32(&fd, SOL_NETLINK, NETLINK_GET_STRICT_CHK, 1);
        Ok(Self {
            fd,
            port: sa.nl_pid,
            // Distinct starting points keep replies to a previous socket's requests from
            // matching (port ids are reused).
            seq: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.subsec_nanos()),
            buf: vec![0; RECV_BUF],
        })
    }

    fn next_seq(&mut self) -> u32 {
        self.seq = self.seq.wrapping_add(1).max(1);
        self.seq
    }

    fn send(&self, msg: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_nl zeroed = the kernel (port 0).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        loop {
            // SAFETY: `msg` and `sa` are valid for the lengths given.
            let n = unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    msg.as_ptr().cast(),
                    msg.len(),
                    0,
                    (&raw const sa).cast(),
                    std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
                )
            };
            if n >= 0 {
                return Ok(());
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    /// Receives one datagram into `self.buf`; `Ok(None)` when nothing is pending.
    pub(super) fn recv(&mut self) -> io::Result<Option<usize>> {
        loop {
            // SAFETY: `buf` is valid for writes of its length. MSG_TRUNC makes the
            // kernel report the real datagram size so truncation is detectable.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr().cast(),
                    self.buf.len(),
                    libc::MSG_TRUNC,
                )
            };
            if n >= 0 {
                let n = n as usize;
                if n > self.buf.len() {
                    return Err(invalid("netlink: datagram larger than receive buffer"));
                }
                return Ok(Some(n));
            }
            let e = io::Error::last_os_error();
            match e.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(e),
            }
        }
    }

    /// Waits until a datagram can be read or `deadline` passes.
    fn wait(&self, deadline: Instant) -> io::Result<()> {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "netlink: no reply from the kernel",
            ));
        }
        let mut pfd = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = left.as_millis().clamp(1, i32::MAX as u128) as libc::c_int;
        // SAFETY: one valid pollfd.
        match cvt(unsafe { libc::poll(&mut pfd, 1, ms) }) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// Sends `req` and feeds every reply message to `on_reply` until the request is
    /// complete (NLMSG_DONE, an ACK, or a single non-multipart reply). Messages that are
    /// not replies to this request (multicast notifications) go to `on_other`.
    ///
    /// Returns whether the kernel flagged the dump as interrupted (inconsistent).
    pub(super) fn transact(
        &mut self,
        req: Request,
        mut on_reply: impl FnMut(&Msg<'_>) -> io::Result<()>,
        mut on_other: impl FnMut(&Msg<'_>),
    ) -> io::Result<bool> {
        let seq = self.next_seq();
        self.send(&req.finish(seq))?;
        let port = self.port;
        let deadline = Instant::now() + REPLY_TIMEOUT;
        let mut interrupted = false;
        loop {
            let Some(n) = self.recv()? else {
                self.wait(deadline)?;
                continue;
            };
            for msg in (Msgs {
                buf: &self.buf[..n],
            }) {
                let msg = msg?;
                if msg.seq != seq || msg.pid != port {
                    on_other(&msg);
                    continue;
                }
                interrupted |= msg.flags & NLM_F_DUMP_INTR != 0;
                match msg.ty {
                    NLMSG_NOOP => continue,
                    NLMSG_DONE => return Ok(interrupted),
                    NLMSG_OVERRUN => return Err(invalid("netlink: overrun")),
                    NLMSG_ERROR => {
                        let code = ne_u32(msg.payload, 0)? as i32;
                        return if code == 0 {
                            Ok(interrupted)
                        } else {
                            Err(io::Error::from_raw_os_error(code.saturating_neg()))
                        };
                    }
                    _ => {
                        on_reply(&msg)?;
                        if msg.flags & NLM_F_MULTI == 0 {
                            return Ok(interrupted);
                        }
                    }
                }
            }
        }
    }
}

pub(super) fn setsockopt_u32(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: u32,
) -> io::Result<()> {
    // SAFETY: `value` outlives the call and its size is passed.
    cvt(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&raw const value).cast(),
            std::mem::size_of::<u32>() as libc::socklen_t,
        )
    })
    .map(drop)
}
