//! Sockets for driving and observing traffic in tests: a raw ICMP socket, an AF_PACKET
//! socket bound to one interface, and the frames and checksum they need.

use std::io;
use std::mem::{size_of, zeroed};
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use natgw_kernel::sys;

/// A raw ICMP socket (root only) in the namespace of the thread that opened it: sends echo
/// requests and receives every ICMP packet delivered to the namespace, IPv4 header included.
#[derive(Debug)]
pub struct RawIcmp {
    fd: OwnedFd,
}

impl RawIcmp {
    pub fn open() -> io::Result<RawIcmp> {
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                libc::IPPROTO_ICMP,
            )
        };
        let fd = sys::cvt(fd, "socket(SOCK_RAW, IPPROTO_ICMP)")?;
        // SAFETY: fresh fd owned by nothing else.
        Ok(RawIcmp {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    /// Sends an echo request; `ttl` overrides the default TTL.
    pub fn send_echo(
        &self,
        dst: Ipv4Addr,
        id: u16,
        seq: u16,
        ttl: Option<u8>,
        payload: &[u8],
    ) -> io::Result<()> {
        if let Some(ttl) = ttl {
            let v = libc::c_int::from(ttl);
            // SAFETY: valid option buffer of the declared size.
            let r = unsafe {
                libc::setsockopt(
                    self.fd.as_raw_fd(),
                    libc::IPPROTO_IP,
                    libc::IP_TTL,
                    (&v as *const libc::c_int).cast(),
                    size_of::<libc::c_int>() as u32,
                )
            };
            sys::cvt(r, "setsockopt(IP_TTL)")?;
        }
        let mut msg = vec![8u8, 0, 0, 0];
        msg.extend_from_slice(&id.to_be_bytes());
        msg.extend_from_slice(&seq.to_be_bytes());
        msg.extend_from_slice(payload);
        let c = internet_checksum(&msg);
        msg[2..4].copy_from_slice(&c.to_be_bytes());
        // SAFETY: all-zero sockaddr_in is valid.
        let mut sa: libc::sockaddr_in = unsafe { zeroed() };
        sa.sin_family = libc::AF_INET as libc::sa_family_t;
        sa.sin_addr.s_addr = u32::from(dst).to_be();
        // SAFETY: valid buffer and address of the declared sizes.
        let n = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                msg.as_ptr().cast(),
                msg.len(),
                0,
                (&sa as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as u32,
            )
        };
        if n < 0 {
            return Err(sys::last_os_error("sendto(icmp)"));
        }
        Ok(())
    }

    /// Waits up to `timeout` for the next ICMP packet; returns its source and the whole IPv4
    /// packet, or None on timeout.
    pub fn recv(&self, timeout: Duration) -> io::Result<Option<(Ipv4Addr, Vec<u8>)>> {
        let mut p = libc::pollfd {
            fd: self.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        let ms = timeout.as_millis().clamp(1, i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        if sys::cvt(unsafe { libc::poll(&mut p, 1, ms) }, "poll")? == 0 {
            return Ok(None);
        }
        let mut buf = vec![0u8; 65536];
        // SAFETY: all-zero sockaddr_in is valid.
        let mut sa: libc::sockaddr_in = unsafe { zeroed() };
        let mut len = size_of::<libc::sockaddr_in>() as u32;
        // SAFETY: valid buffers of the declared sizes.
        let n = unsafe {
            libc::recvfrom(
                self.fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
                (&mut sa as *mut libc::sockaddr_in).cast(),
                &mut len,
            )
        };
        if n < 0 {
            return Err(sys::last_os_error("recvfrom(icmp)"));
        }
        buf.truncate(n as usize);
        Ok(Some((
            Ipv4Addr::from(u32::from_be(sa.sin_addr.s_addr)),
            buf,
        )))
    }
}

/// The payload of IPv4 packet `pkt` if its protocol is `proto` and it is well formed.
pub fn ipv4_payload(pkt: &[u8], proto: u8) -> Option<&[u8]> {
    let ihl = usize::from(*pkt.first()? & 0x0f) * 4;
    if pkt[0] >> 4 != 4 || ihl < 20 || pkt.len() < ihl || pkt[9] != proto {
        return None;
    }
    let total = usize::from(u16::from_be_bytes([pkt[2], pkt[3]]));
    pkt.get(ihl..total.min(pkt.len()).max(ihl))
}

/// The Internet checksum (RFC 1071) of `data`.
pub fn internet_checksum(data: &[u8]) -> u16 {
    let mut sum: u32 = data
        .chunks(2)
        .map(|c| u32::from(u16::from_be_bytes([c[0], *c.get(1).unwrap_or(&0)])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

/// An AF_PACKET raw socket bound to one interface: sends and captures whole frames.
pub struct PacketSocket {
    fd: OwnedFd,
}

const PACKET_OUTGOING: u8 = 4;

impl PacketSocket {
    /// Opens the socket on `ifname` in the calling thread's namespace.
    pub fn bind(ifname: &str) -> io::Result<PacketSocket> {
        let proto = (libc::ETH_P_ALL as u16).to_be();
        // SAFETY: plain socket(2).
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                proto as i32,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fresh fd.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let idx = sys::if_nametoindex(ifname)?;
        // SAFETY: all-zero sockaddr_ll is valid.
        let mut sll: libc::sockaddr_ll = unsafe { zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto;
        sll.sll_ifindex = idx as i32;
        // SAFETY: valid sockaddr_ll.
        let r = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                (&sll as *const libc::sockaddr_ll).cast(),
                size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        if r != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket { fd })
    }

    pub fn send(&self, frame: &[u8]) -> io::Result<()> {
        // SAFETY: valid buffer.
        let r = unsafe { libc::send(self.fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0) };
        if r as usize != frame.len() {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Waits up to `timeout` for an incoming frame for which `want` is true; other
    /// frames (and the interface's own outgoing ones) are skipped.
    pub fn recv_matching(
        &self,
        timeout: Duration,
        want: impl Fn(&[u8]) -> bool,
    ) -> Option<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 65536];
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            let mut p = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd.
            let r = unsafe { libc::poll(&mut p, 1, left.as_millis().max(1) as i32) };
            if r <= 0 {
                continue;
            }
            // SAFETY: all-zero sockaddr_ll is valid.
            let mut from: libc::sockaddr_ll = unsafe { zeroed() };
            let mut flen = size_of::<libc::sockaddr_ll>() as u32;
            // SAFETY: valid buffers.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                    (&mut from as *mut libc::sockaddr_ll).cast(),
                    &mut flen,
                )
            };
            if n <= 0 || from.sll_pkttype == PACKET_OUTGOING {
                continue;
            }
            let f = &buf[..n as usize];
            if want(f) {
                return Some(f.to_vec());
            }
        }
        None
    }
}

/// An Ethernet/IPv4/UDP frame (optionally with one 802.1Q tag) with valid IPv4 header
/// checksum and UDP checksum 0 (none).
pub fn udp_frame(
    dst_mac: [u8; 6],
    src_mac: [u8; 6],
    vlan: Option<u16>,
    src: [u8; 4],
    dst: [u8; 4],
    payload: &[u8],
) -> Vec<u8> {
    let mut f = Vec::new();
    f.extend_from_slice(&dst_mac);
    f.extend_from_slice(&src_mac);
    if let Some(v) = vlan {
        f.extend_from_slice(&[0x81, 0x00]);
        f.extend_from_slice(&v.to_be_bytes());
    }
    f.extend_from_slice(&[0x08, 0x00]);
    let total = (20 + 8 + payload.len()) as u16;
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&total.to_be_bytes());
    ip[8] = 64;
    ip[9] = 17;
    ip[12..16].copy_from_slice(&src);
    ip[16..20].copy_from_slice(&dst);
    let c = internet_checksum(&ip);
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    f.extend_from_slice(&40000u16.to_be_bytes());
    f.extend_from_slice(&9u16.to_be_bytes());
    f.extend_from_slice(&(8 + payload.len() as u16).to_be_bytes());
    f.extend_from_slice(&[0, 0]);
    f.extend_from_slice(payload);
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv4_payload_checks_header() {
        let mut p = vec![
            0x45, 0, 0, 24, 0, 0, 0, 0, 64, 1, 0, 0, 10, 0, 0, 1, 10, 0, 0, 2,
        ];
        p.extend_from_slice(&[0, 0, 0, 0, 9, 9]);
        assert_eq!(ipv4_payload(&p, 1), Some(&[0u8, 0, 0, 0][..]));
        assert_eq!(ipv4_payload(&p, 17), None);
        assert_eq!(ipv4_payload(&p[..10], 1), None);
        assert_eq!(ipv4_payload(&[], 1), None);
        p[0] = 0x65;
        assert_eq!(ipv4_payload(&p, 1), None);
    }

    #[test]
    fn checksum_of_echo_request() {
        // An echo request with its checksum filled in sums to zero.
        let mut m = vec![8u8, 0, 0, 0, 0x12, 0x34, 0, 1, b'a', b'b', b'c'];
        let c = internet_checksum(&m);
        m[2..4].copy_from_slice(&c.to_be_bytes());
        assert_eq!(internet_checksum(&m), 0);
    }
}

/// A TCP segment without payload, IPv4 header included (for [`RawSender`]): any source
/// address, valid IPv4 and TCP checksums, window 64240, no options.
pub fn tcp_segment(
    src: Ipv4Addr,
    sport: u16,
    dst: Ipv4Addr,
    dport: u16,
    seq: u32,
    ack: u32,
    flags: u8,
) -> [u8; 40] {
    let mut p = [0u8; 40];
    p[0] = 0x45;
    p[2..4].copy_from_slice(&40u16.to_be_bytes());
    p[8] = 64;
    p[9] = 6;
    p[12..16].copy_from_slice(&src.octets());
    p[16..20].copy_from_slice(&dst.octets());
    let c = internet_checksum(&p[..20]);
    p[10..12].copy_from_slice(&c.to_be_bytes());
    let t = &mut p[20..];
    t[0..2].copy_from_slice(&sport.to_be_bytes());
    t[2..4].copy_from_slice(&dport.to_be_bytes());
    t[4..8].copy_from_slice(&seq.to_be_bytes());
    t[8..12].copy_from_slice(&ack.to_be_bytes());
    t[12] = 5 << 4;
    t[13] = flags;
    t[14..16].copy_from_slice(&64240u16.to_be_bytes());
    let mut pseudo = Vec::with_capacity(32);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 6, 0, 20]);
    pseudo.extend_from_slice(&p[20..]);
    let c = internet_checksum(&pseudo);
    p[36..38].copy_from_slice(&c.to_be_bytes());
    p
}

/// A raw IPv4 socket (IPPROTO_RAW) in namespace `ns`: sends packets whose IPv4 header the
/// caller writes, so with any source address (a spoofer).
#[derive(Debug)]
pub struct RawSender(OwnedFd);

impl RawSender {
    pub fn open(ns: &str) -> io::Result<RawSender> {
        crate::run_in_netns(ns, || {
            // SAFETY: plain socket(2); checked below.
            let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_RAW) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: a fresh fd that nothing else owns.
            Ok(RawSender(unsafe { OwnedFd::from_raw_fd(fd) }))
        })
    }

    /// Sends the IPv4 packet `p` (header included) towards `dst`.
    pub fn send(&self, p: &[u8], dst: Ipv4Addr) -> io::Result<()> {
        // SAFETY: all-zero sockaddr_in is valid; filled below.
        let mut to: libc::sockaddr_in = unsafe { zeroed() };
        to.sin_family = libc::AF_INET as libc::sa_family_t;
        to.sin_addr.s_addr = u32::from(dst).to_be();
        // SAFETY: p and to are valid for the given lengths.
        let n = unsafe {
            libc::sendto(
                self.0.as_raw_fd(),
                p.as_ptr().cast(),
                p.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        if n == p.len() as isize {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }
}

/// A TCP echo server for one connection on `addr` in namespace `ns`: bound before this
/// returns, it echoes until the peer closes or stays silent for 10 s (so that a cut
/// connection cannot keep a test waiting).
pub fn tcp_echo_once(
    ns: &str,
    addr: std::net::SocketAddrV4,
) -> io::Result<std::thread::JoinHandle<()>> {
    use std::io::{Read, Write};
    let listener = crate::run_in_netns(ns, || std::net::TcpListener::bind(addr))?;
    Ok(std::thread::spawn(move || {
        let Ok((mut c, _)) = listener.accept() else {
            return;
        };
        let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
        let mut buf = [0u8; 256];
        while let Ok(n) = c.read(&mut buf) {
            if n == 0 || c.write_all(&buf[..n]).is_err() {
                break;
            }
        }
    }))
}
