//! Link and address queries (RTM_GETLINK, RTM_GETADDR) and link change notifications
//! (RTNLGRP_LINK).

use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, RawFd};

use super::message::{
    Msgs, NLM_F_DUMP, NLM_F_REQUEST, NLMSG_ERROR, Request, attrs, invalid, ne_u32,
};
use super::socket::{DUMP_RETRIES, SOL_NETLINK, Socket, setsockopt_u32};

// Kernel ABI (include/uapi/linux/{rtnetlink,if_link,if_addr}.h).
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const NETLINK_ADD_MEMBERSHIP: libc::c_int = 1;
const RTNLGRP_LINK: u32 = 1;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_GETADDR: u16 = 22;

const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFLA_MTU: u16 = 4;
const IFLA_NUM_TX_QUEUES: u16 = 31;
const IFLA_NUM_RX_QUEUES: u16 = 32;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;

const IFF_UP: u32 = 0x1;
const IFF_LOWER_UP: u32 = 0x1_0000;

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

/// A change to a network interface.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkEvent {
    /// Created or changed (state, MTU, name, address ...): the link as it is now.
    New(LinkInfo),
    /// Deleted (also when its namespace goes away or it moves to another namespace).
    Del(LinkInfo),
}

/// A nonblocking rtnetlink socket subscribed to link notifications (RTNLGRP_LINK).
///
/// `poll_events` whenever `fd()` is readable. If it fails with `ENOBUFS` the kernel dropped
/// notifications; query the links of interest again ([`link_by_name`]).
pub struct LinkSocket {
    sock: Socket,
}

impl fmt::Debug for LinkSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LinkSocket")
            .field("fd", &self.sock.fd)
            .field("port", &self.sock.port)
            .finish_non_exhaustive()
    }
}

impl LinkSocket {
    pub fn open() -> io::Result<Self> {
        let sock = Socket::open()?;
        setsockopt_u32(&sock.fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, RTNLGRP_LINK)?;
        Ok(Self { sock })
    }

    /// Appends every pending link notification to `out` without blocking; returns how many
    /// were appended. On error, events read before it are still in `out`.
    pub fn poll_events(&mut self, out: &mut Vec<LinkEvent>) -> io::Result<usize> {
        let before = out.len();
        while let Some(n) = self.sock.recv()? {
            for msg in (Msgs {
                buf: &self.sock.buf[..n],
            }) {
                let msg = msg?;
                match msg.ty {
                    RTM_NEWLINK => out.push(LinkEvent::New(parse_link(msg.payload)?)),
                    RTM_DELLINK => out.push(LinkEvent::Del(parse_link(msg.payload)?)),
                    NLMSG_ERROR => continue,
                    _ => {}
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::fixtures::{MAC, rta};

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
