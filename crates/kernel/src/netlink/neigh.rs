//! The IPv4 neighbour (ARP) table: single lookups, dumps, change notifications and
//! resolution requests (NTF_USE).

use std::collections::VecDeque;
use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};

use super::message::{
    Msg, Msgs, NLM_F_ACK, NLM_F_CREATE, NLM_F_DUMP, NLM_F_EXCL, NLM_F_REQUEST, NLMSG_ERROR,
    Request, attrs, invalid, ne_u16, ne_u32,
};
use super::socket::{DUMP_RETRIES, SOL_NETLINK, Socket, setsockopt_u32};

// Kernel ABI (include/uapi/linux/{rtnetlink,neighbour}.h).
pub(super) const RTM_NEWNEIGH: u16 = 28;
const RTM_DELNEIGH: u16 = 29;
const RTM_GETNEIGH: u16 = 30;

pub(super) const NDA_DST: u16 = 1;
const NDA_LLADDR: u16 = 2;

const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
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
    use crate::netlink::fixtures::{MAC, rta};

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
}
