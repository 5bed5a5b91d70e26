//! Netlink messages: reading the messages and route attributes of a datagram, and
//! building a request (header, fixed part, attributes).

use std::io;

// Kernel ABI (include/uapi/linux/netlink.h). Kept here rather than taken from `libc`
// because libc exposes only some of them on Linux.
const NLMSG_HDRLEN: usize = 16;
pub(super) const NLMSG_NOOP: u16 = 1;
pub(super) const NLMSG_ERROR: u16 = 2;
pub(super) const NLMSG_DONE: u16 = 3;
pub(super) const NLMSG_OVERRUN: u16 = 4;
pub(super) const NLM_F_REQUEST: u16 = 0x01;
pub(super) const NLM_F_MULTI: u16 = 0x02;
pub(super) const NLM_F_ACK: u16 = 0x04;
pub(super) const NLM_F_DUMP_INTR: u16 = 0x10;
pub(super) const NLM_F_DUMP: u16 = 0x300;
pub(super) const NLM_F_EXCL: u16 = 0x200;
pub(super) const NLM_F_CREATE: u16 = 0x400;
const NLA_TYPE_MASK: u16 = 0x3fff;

pub(super) fn invalid(msg: &'static str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg)
}

pub(super) fn ne_u16(b: &[u8], at: usize) -> io::Result<u16> {
    b.get(at..at + 2)
        .map(|s| u16::from_ne_bytes([s[0], s[1]]))
        .ok_or_else(|| invalid("netlink: truncated field"))
}

pub(super) fn ne_u32(b: &[u8], at: usize) -> io::Result<u32> {
    b.get(at..at + 4)
        .map(|s| u32::from_ne_bytes([s[0], s[1], s[2], s[3]]))
        .ok_or_else(|| invalid("netlink: truncated field"))
}

pub(super) const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// One netlink message inside a receive buffer.
#[derive(Clone, Copy, Debug)]
pub(super) struct Msg<'a> {
    pub(super) ty: u16,
    pub(super) flags: u16,
    pub(super) seq: u32,
    pub(super) pid: u32,
    pub(super) payload: &'a [u8],
}

/// Iterates the messages of one datagram; a malformed header ends it with an error.
pub(super) struct Msgs<'a> {
    pub(super) buf: &'a [u8],
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
pub(super) struct Attrs<'a> {
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
pub(super) fn attrs(payload: &[u8], hdr_len: usize) -> io::Result<Attrs<'_>> {
    // Every fixed header used here (ifinfomsg, ifaddrmsg, ndmsg) is 4-byte aligned.
    payload
        .get(hdr_len..)
        .map(|buf| Attrs { buf })
        .ok_or_else(|| invalid("netlink: message shorter than its header"))
}

/// A request under construction: header, fixed part, attributes.
pub(super) struct Request {
    buf: Vec<u8>,
}

impl Request {
    pub(super) fn new(ty: u16, flags: u16, fixed: &[u8]) -> Self {
        let mut buf = Vec::with_capacity(64);
        buf.extend_from_slice(&[0; NLMSG_HDRLEN]);
        buf[4..6].copy_from_slice(&ty.to_ne_bytes());
        buf[6..8].copy_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(fixed);
        buf.resize(align4(buf.len()), 0);
        Self { buf }
    }

    pub(super) fn attr(mut self, ty: u16, value: &[u8]) -> Self {
        // Callers pass names and addresses only, far below the u16 attribute limit.
        let len = (4 + value.len()) as u16;
        self.buf.extend_from_slice(&len.to_ne_bytes());
        self.buf.extend_from_slice(&ty.to_ne_bytes());
        self.buf.extend_from_slice(value);
        self.buf.resize(align4(self.buf.len()), 0);
        self
    }

    pub(super) fn finish(mut self, seq: u32) -> Vec<u8> {
        let len = self.buf.len() as u32;
        self.buf[0..4].copy_from_slice(&len.to_ne_bytes());
        self.buf[8..12].copy_from_slice(&seq.to_ne_bytes());
        self.buf
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::netlink::fixtures::rta;
    use crate::netlink::neigh::{NDA_DST, RTM_NEWNEIGH};

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
}
