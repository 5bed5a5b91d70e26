//! rtnetlink (NETLINK_ROUTE) over raw `libc` sockets: link and address queries, the IPv4
//! neighbour (ARP) table, its change notifications and neighbour resolution.
//!
//! Every call opens its socket in the calling thread's network namespace, so a thread
//! that did `setns` sees that namespace's links and neighbours.

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

// Kernel ABI (include/uapi/linux/{netlink,rtnetlink,if_link,if_addr,neighbour}.h). Kept
// here rather than taken from `libc` because libc exposes only some of them on Linux.
const NLMSG_HDRLEN: usize = 16;
const NLMSG_NOOP: u16 = 1;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_OVERRUN: u16 = 4;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_MULTI: u16 = 0x02;
const NLM_F_ACK: u16 = 0x04;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_DUMP: u16 = 0x300;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLA_TYPE_MASK: u16 = 0x3fff;

const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;
const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const RTM_GETNEIGH: u16 = 30;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_NUM_TX_QUEUES: u16 = 31;
const IFLA_NUM_RX_QUEUES: u16 = 32;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;

const IFF_UP: u32 = 0x1;
const IFF_LOWER_UP: u32 = 0x1_0000;

const SOL_NETLINK: libc::c_int = 270;
const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
const NETLINK_GET_STRICT_CHK: libc::c_int = 12;
const RTNLGRP_NEIGH: u32 = 3;

/// Neighbour (NUD_*) states, as carried in [`Neighbour::state`].
pub const NUD_NONE: u16 = 0x00;
pub const NUD_INCOMPLETE: u16 = 0x01;
pub const NUD_REACHABLE: u16 = 0x02;
pub const NUD_STALE: u16 = 0x04;
pub const NUD_DELAY: u16 = 0x08;
pub const NUD_PROBE: u16 = 0x10;
pub const NUD_FAILED: u16 = 0x20;
pub const NUD_NOARP: u16 = 0x40;
pub const NUD_PERMANENT: u16 = 0x80;
const NUD_USABLE: u16 =
    NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT | NUD_NOARP;

const NTF_USE: u8 = 0x01;
const NTF_PROXY: u8 = 0x08;

/// How long a request waits for the kernel's answer before failing with `TimedOut`.
const REPLY_TIMEOUT: Duration = Duration::from_secs(5);
/// Receive buffer: the kernel sizes dump messages up to 32 KiB when the reader's buffer
/// allows it.
const RECV_BUF: usize = 64 * 1024;
/// A dump the kernel flags as interrupted (table changed mid-dump) is retried this often.
const DUMP_RETRIES: usize = 5;

fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

fn ne_u16(b: &[u8], at: usize) -> io::Result<u16> {
    b.get(at..at + 2)
        .map(|s| u16::from_ne_bytes([s[0], s[1]]))
        .ok_or_else(|| invalid("netlink: truncated field"))
}

fn ne_u32(b: &[u8], at: usize) -> io::Result<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| invalid("netlink: truncated field"))
}

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One netlink message inside a receive buffer.
#[derive(Clone, Copy, Debug)]
struct Msg<'a> {
    ty: u16,
    flags: u16,
    seq: u32,
    pid: u32,
    payload: &'a [u8],
}

/// Iterates the messages of one datagram; a malformed header ends it with an error.
struct Msgs<'a> {
    buf: &'a [u8],
}

impl<'a> Iterator for Msgs<'a> {
    type Item = io::Result<Msg<'a>>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.is_empty() {
            return None;
        }
        let parsed = (|| {
            let len = ne_u32(self.buf, 0)? as usize;
            if len < NLMSG_HDRLEN || len > self.buf.len() {
                return Err(invalid("netlink: bad message length"));
            }
            let msg = Msg {
                ty: ne_u16(self.buf, 4)?,
                flags: ne_u16(self.buf, 6)?,
                seq: ne_u32(self.buf, 8)?,
                pid: ne_u32(self.buf, 12)?,
                payload: &self.buf[NLMSG_HDRLEN..len],
            };
            Ok((msg, align4(len).min(self.buf.len())))
        })();
        match parsed {
            Ok((msg, advance)) => {
                self.buf = &self.buf[advance..];
                Some(Ok(msg))
            }
            Err(e) => {
                self.buf = &[];
                Some(Err(e))
            }
        }
    }
}

/// Iterates the route attributes (`struct rtattr`) that follow a fixed header.
struct Attrs<'a> {
    buf: &'a [u8],
}

impl<'a> Iterator for Attrs<'a> {
    type Item = io::Result<(u16, &'a [u8])>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buf.len() < 4 {
            // Trailing padding shorter than an attribute header is legal.
            return None;
        }
        let len = usize::from(u16::from_ne_bytes([self.buf[0], self.buf[1]]));
        let ty = u16::from_ne_bytes([self.buf[2], self.buf[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > self.buf.len() {
            self.buf = &[];
            return Some(Err(invalid("netlink: bad attribute length")));
        }
        let value = &self.buf[4..len];
        self.buf = &self.buf[align4(len).min(self.buf.len())..];
        Some(Ok((ty, value)))
    }
}

/// Attributes of a message whose fixed header is `hdr_len` bytes.
fn attrs(payload: &[u8], hdr_len: usize) -> io::Result<Attrs<'_>> {
    // Every fixed header used here (ifinfomsg, ifaddrmsg, ndmsg) is 4-byte aligned.
    payload
        .get(hdr_len..)
        .map(|buf| Attrs { buf })
        .ok_or_else(|| invalid("netlink: message shorter than its header"))
}

/// A request under construction: header, fixed part, attributes.
struct Request {
    buf: Vec<u8>,
}

impl Request {
    fn new(ty: u16, flags: u16, fixed: &[u8]) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&[0; NLMSG_HDRLEN]);
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(fixed);
        buf.resize(align4(buf.len()), 0);
        Self { buf }
    }

    fn attr(mut self, ty: u16, value: &[u8]) -> Self {
        // Callers pass names and addresses only, far below the u16 attribute limit.
        let len = (4 + value.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A NETLINK_ROUTE socket. Always nonblocking; request/reply waits use `poll`.
struct Socket {
    fd: OwnedFd,
    port: u32,
    seq: u32,
    buf: Vec<u8>,
}

impl Socket {
    fn open() -> io::Result<Self> {
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
    fn recv(&mut self) -> io::Result<Option<usize>> {
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
    fn transact(
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

fn setsockopt_u32(
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

/// A network interface as rtnetlink reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LinkInfo {
    pub ifindex: u32,
    pub name: String,
    /// All zeros for links without a 6-byte hardware address (tun, some tunnels).
    pub mac: [u8; 6],
    pub mtu: u32,
    /// Administratively up (IFF_UP).
    pub up: bool,
    /// Carrier present (IFF_LOWER_UP); a veth whose peer is down is up but carrierless.
    pub carrier: bool,
    /// Allocated queues (IFLA_NUM_*_QUEUES); [`crate::ethtool::channels`] gives the
    /// number in use.
    pub num_rx_queues: u32,
    pub num_tx_queues: u32,
}

fn check_ifname(name: &str) -> io::Result<()> {
    if name.is_empty() || name.len() >= 16 || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "interface name must be 1..=15 bytes without NUL",
        ));
    }
    Ok(())
}

fn parse_link(payload: &[u8]) -> io::Result<LinkInfo> {
    // struct ifinfomsg { u8 family, pad; u16 type; i32 index; u32 flags, change; }
    let ifindex = ne_u32(payload, 4)?;
    let flags = ne_u32(payload, 8)?;
    let mut link = LinkInfo {
        ifindex,
        name: String::new(),
        mac: [0; 6],
        mtu: 0,
        up: flags & IFF_UP != 0,
        carrier: flags & IFF_LOWER_UP != 0,
        num_rx_queues: 1,
        num_tx_queues: 1,
    };
    for attr in attrs(payload, 16)? {
        let (ty, v) = attr?;
        match ty {
            IFLA_IFNAME => {
                let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
                link.name = String::from_utf8_lossy(&v[..end]).into_owned();
            }
            IFLA_ADDRESS => {
                if let Ok(mac) = <[u8; 6]>::try_from(v) {
                    link.mac = mac;
                }
            }
            IFLA_MTU => link.mtu = ne_u32(v, 0)?,
            IFLA_NUM_RX_QUEUES => link.num_rx_queues = ne_u32(v, 0)?,
            IFLA_NUM_TX_QUEUES => link.num_tx_queues = ne_u32(v, 0)?,
            _ => {}
        }
    }
    Ok(link)
}

/// Looks a link up by name (RTM_GETLINK). A missing link is `ENODEV`.
pub fn link_by_name(name: &str) -> io::Result<LinkInfo> {
    check_ifname(name)?;
    let mut ifname = name.as_bytes().to_vec();
    ifname.push(0);
    let req = Request::new(RTM_GETLINK, NLM_F_REQUEST, &[0; 16]).attr(IFLA_IFNAME, &ifname);
    let mut sock = Socket::open()?;
    let mut found = None;
    sock.transact(
        req,
        |m| {
            if m.ty == RTM_NEWLINK {
                found = Some(parse_link(m.payload)?);
            }
            Ok(())
        },
        |_| {},
    )?;
    found.ok_or_else(|| invalid("netlink: RTM_GETLINK without a link in the reply"))
}

fn parse_addr(payload: &[u8]) -> io::Result<Option<(u32, Ipv4Addr, u8)>> {
    // struct ifaddrmsg { u8 family, prefixlen, flags, scope; u32 index; }
    let (Some(&family), Some(&prefix)) = (payload.first(), payload.get(1)) else {
        return Err(invalid("netlink: short ifaddrmsg"));
    };
    let index = ne_u32(payload, 4)?;
    if i32::from(family) != libc::AF_INET {
        return Ok(None);
    }
    let (mut local, mut address) = (None, None);
    for attr in attrs(payload, 8)? {
        let (ty, v) = attr?;
        let ip = <[u8; 4]>::try_from(v).ok().map(Ipv4Addr::from);
        match ty {
            IFA_LOCAL => local = ip,
            IFA_ADDRESS => address = ip,
            _ => {}
        }
    }
    // On point-to-point links IFA_ADDRESS is the peer; IFA_LOCAL is ours when present.
    Ok(local.or(address).map(|ip| (index, ip, prefix)))
}

/// The IPv4 addresses (with prefix length) configured on `ifindex` (RTM_GETADDR dump).
pub fn addresses(ifindex: u32) -> io::Result<Vec<(Ipv4Addr, u8)>> {
    let mut sock = Socket::open()?;
    for _ in 0..DUMP_RETRIES {
        let mut out = Vec::new();
        let fixed = [libc::AF_INET as u8, 0, 0, 0, 0, 0, 0, 0];
        let req = Request::new(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, &fixed);
        let interrupted = sock.transact(
            req,
            |m| {
                if m.ty == RTM_NEWADDR
                    && let Some((idx, ip, prefix)) = parse_addr(m.payload)?
                    && idx == ifindex
                {
                    out.push((ip, prefix));
                }
                Ok(())
            },
            |_| {},
        )?;
        if !interrupted {
            return Ok(out);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::Interrupted,
        "netlink: address dump kept being interrupted",
    ))
}

/// An IPv4 neighbour (ARP) entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Neighbour {
    pub ifindex: u32,
    pub addr: Ipv4Addr,
    pub mac: Option<[u8; 6]>,
    /// NUD_* bits ([`NUD_REACHABLE`] ...).
    pub state: u16,
}

impl Neighbour {
    /// Whether frames can be sent to this neighbour now: the kernel would use its MAC.
    pub fn is_usable(&self) -> bool {
        self.state & NUD_USABLE != 0 && self.mac.is_some()
    }
}

/// `Ok(None)` for entries this module ignores (other families, proxy entries).
fn parse_neigh(payload: &[u8]) -> io::Result<Option<Neighbour>> {
    // struct ndmsg { u8 family, pad1; u16 pad2; i32 ifindex; u16 state; u8 flags, type; }
    let Some(&family) = payload.first() else {
        return Err(invalid("netlink: short ndmsg"));
    };
    let ifindex = ne_u32(payload, 4)?;
    let state = ne_u16(payload, 8)?;
    let flags = *payload
        .get(10)
        .ok_or_else(|| invalid("netlink: short ndmsg"))?;
    if i32::from(family) != libc::AF_INET || flags & NTF_PROXY != 0 {
        return Ok(None);
    }
    let (mut addr, mut mac) = (None, None);
    for attr in attrs(payload, 12)? {
        let (ty, v) = attr?;
        match ty {
            NDA_DST => {
                addr =
                    Some(Ipv4Addr::from(<[u8; 4]>::try_from(v).map_err(|_| {
                        invalid("netlink: NDA_DST is not an IPv4 address")
                    })?))
            }
            NDA_LLADDR => mac = <[u8; 6]>::try_from(v).ok(),
            _ => {}
        }
    }
    let addr = addr.ok_or_else(|| invalid("netlink: neighbour without NDA_DST"))?;
    Ok(Some(Neighbour {
        ifindex,
        addr,
        mac,
        state,
    }))
}

fn ndmsg(ifindex: u32, state: u16, flags: u8) -> [u8; 12] {
    let mut m = [0u8; 12];
    m[0] = libc::AF_INET as u8;
    m[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    m[8..10].copy_from_slice(&state.to_ne_bytes());
    m[10] = flags;
    m
}

/// A change to the IPv4 neighbour table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NeighEvent {
    /// Added or changed (including transitions to unusable states such as FAILED).
    New(Neighbour),
    Del(Neighbour),
}

fn parse_event(m: &Msg<'_>) -> io::Result<Option<NeighEvent>> {
    Ok(match m.ty {
        RTM_NEWNEIGH => parse_neigh(m.payload)?.map(NeighEvent::New),
        RTM_DELNEIGH => parse_neigh(m.payload)?.map(NeighEvent::Del),
        _ => None,
    })
}

/// A nonblocking rtnetlink socket subscribed to neighbour notifications (RTNLGRP_NEIGH).
///
/// Typical use: `open`, `dump` to seed a [`NeighTable`], then `poll_events` whenever
/// `fd()` is readable. If `poll_events` fails with `ENOBUFS` the kernel dropped
/// notifications; `dump` again to resynchronise ([`NeighTable::sync`]).
pub struct NeighSocket {
    sock: Socket,
    /// Notifications that arrived while a dump was being read.
    pending: VecDeque<NeighEvent>,
}

impl fmt::Debug for NeighSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NeighSocket")
            .field("fd", &self.sock.fd)
            .field("port", &self.sock.port)
            .finish_non_exhaustive()
    }
}

impl NeighSocket {
    pub fn open() -> io::Result<Self> {
        let sock = Socket::open()?;
        setsockopt_u32(&sock.fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, RTNLGRP_NEIGH)?;
        // A burst of ARP churn must not overflow the default ~200 KiB buffer between two
        // polls of the management thread. Failure only means a smaller buffer.
        let _ = setsockopt_u32(&sock.fd, libc::SOL_SOCKET, libc::SO_RCVBUF, 4 << 20);
        Ok(Self {
            sock,
            pending: VecDeque::new(),
        })
    }

    /// The whole IPv4 neighbour table (RTM_GETNEIGH dump), proxy entries excluded.
    /// Blocks (up to a few seconds) for the kernel's reply; notifications that arrive
    /// meanwhile are kept for the next `poll_events`.
    pub fn dump(&mut self) -> io::Result<Vec<Neighbour>> {
        for _ in 0..DUMP_RETRIES {
            let mut out = Vec::new();
            let req = Request::new(RTM_GETNEIGH, NLM_F_REQUEST | NLM_F_DUMP, &ndmsg(0, 0, 0));
            let pending = &mut self.pending;
            let interrupted = self.sock.transact(
                req,
                |m| {
                    if m.ty == RTM_NEWNEIGH
                        && let Some(n) = parse_neigh(m.payload)?
                    {
                        out.push(n);
                    }
                    Ok(())
                },
                |m| {
                    if let Ok(Some(ev)) = parse_event(m) {
                        pending.push_back(ev);
                    }
                },
            )?;
            if !interrupted {
                return Ok(out);
            }
        }
        Err(io::Error::new(
            io::ErrorKind::Interrupted,
            "netlink: neighbour dump kept being interrupted",
        ))
    }

    /// Appends every pending neighbour notification to `out` without blocking; returns
    /// how many were appended. On error, events read before it are still in `out`.
    pub fn poll_events(&mut self, out: &mut Vec<NeighEvent>) -> io::Result<usize> {
        let before = out.len();
        out.extend(self.pending.drain(..));
        while let Some(n) = self.sock.recv()? {
            for msg in (Msgs {
                buf: &self.sock.buf[..n],
            }) {
                let msg = msg?;
                if msg.ty == NLMSG_ERROR {
                    // Only a reply to a request we abandoned (dump timeout) gets here.
                    continue;
                }
                if let Some(ev) = parse_event(&msg)? {
                    out.push(ev);
                }
            }
        }
        Ok(out.len() - before)
    }

    /// For registering with poll/epoll; readable when `poll_events` has work.
    pub fn fd(&self) -> RawFd {
        self.sock.fd.as_raw_fd()
    }
}

/// The kernel's entry for `addr` on `ifindex`, if any (single RTM_GETNEIGH).
pub fn neighbour(ifindex: u32, addr: Ipv4Addr) -> io::Result<Option<Neighbour>> {
    let req = Request::new(RTM_GETNEIGH, NLM_F_REQUEST, &ndmsg(ifindex, 0, 0))
        .attr(NDA_DST, &addr.octets());
    let mut sock = Socket::open()?;
    let mut found = None;
    match sock.transact(
        req,
        |m| {
            if m.ty == RTM_NEWNEIGH {
                found = parse_neigh(m.payload)?;
            }
            Ok(())
        },
        |_| {},
    ) {
        Ok(_) => Ok(found),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

fn send_use(ifindex: u32, addr: Ipv4Addr, extra_flags: u16) -> io::Result<()> {
    let req = Request::new(
        RTM_NEWNEIGH,
        NLM_F_REQUEST | NLM_F_ACK | extra_flags,
        &ndmsg(ifindex, NUD_NONE, NTF_USE),
    )
    .attr(NDA_DST, &addr.octets());
    Socket::open()?.transact(req, |_| Ok(()), |_| {}).map(drop)
}

/// Asks the kernel to resolve `addr` on `ifindex`: it sends an ARP request, and the entry
/// becomes REACHABLE if the neighbour answers. Returns once the request is queued; watch
/// a [`NeighSocket`] for the outcome.
///
/// Like iproute2's `ip neigh ... use`: RTM_NEWNEIGH with NTF_USE, which makes
/// the kernel run `neigh_event_send` on the entry exactly as if a packet were routed to
/// it. An unknown neighbour is created in state NONE (then INCOMPLETE, then FAILED and
/// garbage-collected if nobody answers); no MAC is installed by us. The kernel's
/// NTF_USE path also clears NUD_PERMANENT, so static (PERMANENT/NOARP) entries are left
/// alone: they need no resolution.
pub fn resolve(ifindex: u32, addr: Ipv4Addr) -> io::Result<()> {
    match neighbour(ifindex, addr)? {
        Some(n) if n.state & (NUD_PERMANENT | NUD_NOARP) != 0 => Ok(()),
        Some(_) => match send_use(ifindex, addr, 0) {
            // Garbage-collected between the lookup and now.
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                send_use(ifindex, addr, NLM_F_CREATE | NLM_F_EXCL)
            }
            r => r,
        },
        None => match send_use(ifindex, addr, NLM_F_CREATE | NLM_F_EXCL) {
            // Created by someone else meanwhile (possibly static): re-check its state.
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => match neighbour(ifindex, addr)? {
                Some(n) if n.state & (NUD_PERMANENT | NUD_NOARP) != 0 => Ok(()),
                _ => send_use(ifindex, addr, 0),
            },
            r => r,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nlmsg(ty: u16, flags: u16, seq: u32, pid: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(&flags.to_ne_bytes());
        v.extend_from_slice(&seq.to_ne_bytes());
        v.extend_from_slice(&pid.to_ne_bytes());
        v.extend_from_slice(payload);
        v.resize(align4(v.len()), 0);
        v
    }

    fn rta(ty: u16, value: &[u8]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&((4 + value.len()) as u16).to_ne_bytes());
        v.extend_from_slice(&ty.to_ne_bytes());
        v.extend_from_slice(value);
        v.resize(align4(v.len()), 0);
        v
    }

    fn neigh_payload(
        family: u8,
        ifindex: u32,
        state: u16,
        flags: u8,
        attrs: &[Vec<u8>],
    ) -> Vec<u8> {
        let mut p = ndmsg(ifindex, state, flags).to_vec();
        p[0] = family;
        for a in attrs {
            p.extend_from_slice(a);
        }
        p
    }

    const MAC: [u8; 6] = [2, 0, 0, 0xaa, 0xbb, 0xcc];

    #[test]
    fn parses_two_messages() {
        let mut buf = nlmsg(RTM_NEWNEIGH, NLM_F_MULTI, 7, 9, &[1, 2, 3]);
        buf.extend(nlmsg(NLMSG_DONE, NLM_F_MULTI, 7, 9, &[0; 4]));
        let msgs: Vec<_> = Msgs { buf: &buf }.collect::<io::Result<_>>().unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(msgs[0].ty, RTM_NEWNEIGH);
        assert_eq!(msgs[0].payload, &[1, 2, 3]);
        assert_eq!((msgs[0].seq, msgs[0].pid), (7, 9));
        assert_eq!(msgs[1].ty, NLMSG_DONE);
    }

    #[test]
    fn rejects_malformed_messages() {
        // Length shorter than the header.
        let mut buf = nlmsg(RTM_NEWNEIGH, 0, 1, 1, &[]);
        buf[0..4].copy_from_slice(&8u32.to_ne_bytes());
        assert!(Msgs { buf: &buf }.next().unwrap().is_err());
        // Length beyond the datagram.
        buf[0..4].copy_from_slice(&100u32.to_ne_bytes());
        let mut it = Msgs { buf: &buf };
        assert!(it.next().unwrap().is_err());
        assert!(it.next().is_none(), "iteration stops after an error");
        // Truncated header.
        assert!(Msgs { buf: &buf[..10] }.next().unwrap().is_err());
    }

    #[test]
    fn rejects_malformed_attributes() {
        let mut a = rta(NDA_DST, &[10, 0, 0, 1]);
        a[0..2].copy_from_slice(&200u16.to_ne_bytes());
        assert!(Attrs { buf: &a }.next().unwrap().is_err());
        a[0..2].copy_from_slice(&2u16.to_ne_bytes());
        assert!(Attrs { buf: &a }.next().unwrap().is_err());
        // Trailing bytes shorter than an attribute header are padding.
        assert!(Attrs { buf: &[0, 0] }.next().is_none());
    }

    #[test]
    fn parses_neighbour() {
        let p = neigh_payload(
            libc::AF_INET as u8,
            5,
            NUD_REACHABLE,
            0,
            &[rta(NDA_DST, &[10, 1, 2, 3]), rta(NDA_LLADDR, &MAC)],
        );
        let n = parse_neigh(&p).unwrap().unwrap();
        assert_eq!(n.ifindex, 5);
        assert_eq!(n.addr, Ipv4Addr::new(10, 1, 2, 3));
        assert_eq!(n.mac, Some(MAC));
        assert_eq!(n.state, NUD_REACHABLE);
        assert!(n.is_usable());
    }

    #[test]
    fn ignores_other_families_and_proxies() {
        let dst6 = rta(
            NDA_DST,
            &[0xfe, 0x80, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
        );
        let p = neigh_payload(libc::AF_INET6 as u8, 5, NUD_REACHABLE, 0, &[dst6]);
        assert_eq!(parse_neigh(&p).unwrap(), None);
        let p = neigh_payload(
            libc::AF_INET as u8,
            5,
            NUD_NONE,
            NTF_PROXY,
            &[rta(NDA_DST, &[10, 1, 2, 3])],
        );
        assert_eq!(parse_neigh(&p).unwrap(), None);
    }

    #[test]
    fn rejects_bad_neighbours() {
        assert!(parse_neigh(&[2, 0, 0]).is_err());
        let no_dst = neigh_payload(libc::AF_INET as u8, 5, NUD_REACHABLE, 0, &[]);
        assert!(parse_neigh(&no_dst).is_err());
        let bad_dst = neigh_payload(
            libc::AF_INET as u8,
            5,
            NUD_REACHABLE,
            0,
            &[rta(NDA_DST, &[10, 1, 2])],
        );
        assert!(parse_neigh(&bad_dst).is_err());
    }

    #[test]
    fn usable_needs_state_and_mac() {
        let mut n = Neighbour {
            ifindex: 1,
            addr: Ipv4Addr::new(10, 0, 0, 1),
            mac: Some(MAC),
            state: NUD_STALE,
        };
        assert!(n.is_usable());
        for bad in [NUD_NONE, NUD_INCOMPLETE, NUD_FAILED] {
            n.state = bad;
            assert!(!n.is_usable(), "state {bad:#x}");
        }
        n.state = NUD_PERMANENT;
        n.mac = None;
        assert!(!n.is_usable());
    }

    #[test]
    fn parses_link() {
        let mut p = vec![0u8; 16];
        p[4..8].copy_from_slice(&7u32.to_ne_bytes());
        p[8..12].copy_from_slice(&(IFF_UP | IFF_LOWER_UP).to_ne_bytes());
        p.extend(rta(IFLA_IFNAME, b"eth7\0"));
        p.extend(rta(IFLA_ADDRESS, &MAC));
        p.extend(rta(IFLA_MTU, &9000u32.to_ne_bytes()));
        p.extend(rta(IFLA_NUM_RX_QUEUES, &4u32.to_ne_bytes()));
        p.extend(rta(IFLA_NUM_TX_QUEUES, &8u32.to_ne_bytes()));
        let l = parse_link(&p).unwrap();
        assert_eq!(
            l,
            LinkInfo {
                ifindex: 7,
                name: "eth7".into(),
                mac: MAC,
                mtu: 9000,
                up: true,
                carrier: true,
                num_rx_queues: 4,
                num_tx_queues: 8,
            }
        );
        assert!(parse_link(&p[..10]).is_err());
    }

    #[test]
    fn parses_address_preferring_local() {
        let mut p = vec![libc::AF_INET as u8, 24, 0, 0];
        p.extend_from_slice(&3u32.to_ne_bytes());
        p.extend(rta(IFA_ADDRESS, &[10, 0, 0, 9]));
        p.extend(rta(IFA_LOCAL, &[10, 0, 0, 1]));
        assert_eq!(
            parse_addr(&p).unwrap(),
            Some((3, Ipv4Addr::new(10, 0, 0, 1), 24))
        );
    }

    #[test]
    fn rejects_bad_ifnames() {
        assert!(link_by_name("").is_err());
        assert!(link_by_name("0123456789abcdef").is_err());
        assert!(link_by_name("a\0b").is_err());
    }
}
