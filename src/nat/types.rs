//! What goes into the engine and what comes out of it.

use crate::packet::ethernet::ETHERTYPE_VLAN;
use crate::packet::{read_u16, write_u16};
use std::net::Ipv4Addr;

/// A frame in a buffer the dataplane owns (an AF_XDP UMEM chunk, a test vector). The frame is
/// `buf[off..off + len]`; the engine may move `off` (VLAN tag push/pop) and change `len` (replies
/// it builds in place), never beyond `buf`.
pub struct Frame<'a> {
    pub buf: &'a mut [u8],
    pub off: usize,
    pub len: usize,
}

impl<'a> Frame<'a> {
    /// A frame at `buf[off..off + len]`, clipped to `buf`: a range past its end (which the
    /// dataplane checks for and counts before, see `Umem::check_desc`) becomes a shorter
    /// frame the engine drops as truncated, never an out-of-bounds access.
    pub fn new(buf: &'a mut [u8], off: usize, len: usize) -> Self {
        let off = off.min(buf.len());
        let len = len.min(buf.len() - off);
        Frame { buf, off, len }
    }
    /// A frame filling the whole buffer.
    pub fn whole(buf: &'a mut [u8]) -> Self {
        let len = buf.len();
        Frame { buf, off: 0, len }
    }
    pub fn data(&self) -> &[u8] {
        &self.buf[self.off..self.off + self.len]
    }
    pub fn data_mut(&mut self) -> &mut [u8] {
        &mut self.buf[self.off..self.off + self.len]
    }

    /// Sets the frame's 802.1Q encapsulation to `want` (None = untagged), moving only the MAC
    /// addresses when the buffer has headroom. Returns false if a tag cannot be added for lack of room.
    pub fn set_vlan(&mut self, want: Option<u16>) -> bool {
        let (buf, off, len) = (&mut *self.buf, &mut self.off, &mut self.len);
        let o = *off;
        let tagged = *len >= 18 && read_u16(buf, o + 12) == ETHERTYPE_VLAN;
        match (tagged, want) {
            (false, None) => true,
            (true, Some(vid)) => {
                let tci = (read_u16(buf, o + 14) & 0xf000) | (vid & 0x0fff);
                write_u16(buf, o + 14, tci);
                true
            }
            (true, None) => {
                buf.copy_within(o..o + 12, o + 4);
                *off += 4;
                *len -= 4;
                true
            }
            (false, Some(vid)) => {
                if o >= 4 {
                    buf.copy_within(o..o + 12, o - 4);
                    *off -= 4;
                } else if o + *len + 4 <= buf.len() {
                    buf.copy_within(o + 12..o + *len, o + 16);
                } else {
                    return false;
                }
                let n = *off;
                write_u16(buf, n + 12, ETHERTYPE_VLAN);
                write_u16(buf, n + 14, vid & 0x0fff);
                *len += 4;
                true
            }
        }
    }
}

/// A frame and where it came in.
pub struct Pkt<'a> {
    pub frame: Frame<'a>,
    pub ingress: Ingress,
}

/// Where a frame entered. Inside interfaces are numbered in config order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Ingress {
    Outside,
    Inside(u8),
    /// A hairpinned frame already translated inside-to-outside, to be translated back inwards
    /// (possibly on another core, after a handoff).
    Hairpin,
}

/// Where a frame leaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Egress {
    Outside,
    Inside(u8),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Translated (or routed): send out of `egress` to the link-layer address of `next_hop`.
    /// The dataplane fills in both MAC addresses; the VLAN tag is already right.
    Forward {
        egress: Egress,
        next_hop: Ipv4Addr,
    },
    /// The engine replaced the frame with an answer of its own (echo reply, ICMP error).
    Reply {
        egress: Egress,
        next_hop: Ipv4Addr,
    },
    /// Not NAT traffic (ARP, IPv6, ...): the kernel's business.
    ToKernel,
    /// Another core owns this flow; hand the unmodified frame to it with this ingress.
    Handoff {
        core: u16,
        ingress: Ingress,
    },
    /// The engine kept a copy (an out-of-order fragment); it comes back through
    /// [`crate::nat::Engine::drain_ready`] or is dropped on timeout.
    Held,
    Drop(DropReason),
}

macro_rules! drop_reasons {
    ($($name:ident => $label:literal, $help:literal;)*) => {
        /// Why a frame was dropped. Every reason has its own counter.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum DropReason { $($name,)* }
        impl DropReason {
            pub const ALL: &'static [DropReason] = &[$(DropReason::$name,)*];
            pub const COUNT: usize = Self::ALL.len();
            /// Stable snake_case name, used as a metrics label.
            pub fn label(self) -> &'static str { match self { $(DropReason::$name => $label,)* } }
            pub fn help(self) -> &'static str { match self { $(DropReason::$name => $help,)* } }
        }
    };
}

drop_reasons! {
    Truncated => "truncated", "frame shorter than its headers say";
    BadIpHeader => "bad_ip_header", "IPv4 version, header length or total length invalid";
    BadIpChecksum => "bad_ip_checksum", "IPv4 header checksum wrong";
    BadL4Header => "bad_l4_header", "TCP/UDP/ICMP header malformed";
    UnknownRealm => "unknown_realm", "inside frame on an interface/VLAN no realm uses";
    SourceNotInside => "source_not_inside", "inside frame whose source is outside the realm's prefixes";
    UnsupportedProtocol => "unsupported_protocol", "IP protocol the NAT cannot translate";
    NotForUs => "not_for_us", "outside frame to an address natgw does not translate";
    Unsolicited => "unsolicited", "inbound frame matching no session or mapping";
    Filtered => "filtered", "inbound frame refused by the realm's filtering behaviour";
    SessionTableFull => "session_table_full", "no free session slot";
    PortsExhausted => "ports_exhausted", "no free external port";
    PerHostLimit => "per_host_limit", "inside host reached its port limit";
    PerHostSessions => "per_host_sessions", "inside host reached its session limit (RFC 6888 REQ-4)";
    InboundLimit => "inbound_limit", "static or 1:1 mapping reached its limit of sessions opened from outside";
    MartianSource => "martian_source", "source is this-network, loopback, multicast, reserved, a subnet broadcast or natgw's own gateway address";
    MartianDestination => "martian_destination", "inside frame to a this-network, loopback, multicast or reserved address";
    IcmpAddressMismatch => "icmp_address_mismatch", "ICMP error whose outer destination is not the quoted packet's source";
    TtlExceeded => "ttl_exceeded", "TTL expired in natgw (an ICMP time exceeded was sent if allowed)";
    IcmpBadChecksum => "icmp_bad_checksum", "ICMP error with a bad ICMP or embedded IP checksum";
    IcmpNoSession => "icmp_no_session", "ICMP error about a flow natgw does not know";
    IcmpUnsupported => "icmp_unsupported", "ICMP type natgw does not translate";
    HairpinDisabled => "hairpin_disabled", "inside-to-external-address traffic with hairpinning off";
    FragmentTableFull => "fragment_table_full", "too many fragmented datagrams in flight";
    FragmentBufferFull => "fragment_buffer_full", "no room to hold an out-of-order fragment";
    FragmentTimeout => "fragment_timeout", "held fragment whose first fragment never came";
    FragmentTooLarge => "fragment_too_large", "out-of-order fragment larger than a hold slot";
    FragNeeded => "frag_needed", "datagram with DF set larger than its egress link's MTU (an ICMP fragmentation needed was sent back if allowed)";
    FragmentOutFull => "fragment_out_full", "datagram larger than its egress link's MTU with no free buffer for its fragments";
    NoHeadroom => "no_headroom", "no room to add a VLAN tag or build a reply";
    TcpInvalid => "tcp_invalid", "TCP segment not valid for the session (e.g. unsolicited non-SYN)";
    TcpOutOfWindow => "tcp_out_of_window", "inbound TCP RST or FIN whose sequence number is outside the inside host's window (RFC 5961: a blind reset)";
    ExtAddrTableFull => "ext_addr_table_full", "new session refused: its core's sessions already use 65535 distinct external addresses";
    ToKernelUnavailable => "to_kernel_unavailable", "frame for the kernel that reached a worker";
    HandoffFull => "handoff_full", "owner core's handoff queue full";
    NoNeighbour => "no_neighbour", "next hop not resolved: hold limit reached, timed out or failed";
    TxFull => "tx_full", "transmit ring full";
    BadDescriptor => "bad_descriptor", "receive descriptor whose address or length lies outside the packet buffer";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(tag: Option<u16>) -> Vec<u8> {
        let mut f = vec![1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12];
        if let Some(v) = tag {
            f.extend_from_slice(&[0x81, 0x00]);
            f.extend_from_slice(&(0x2000 | v).to_be_bytes());
        }
        f.extend_from_slice(&[0x08, 0x00, 0x45, 0xaa]);
        f
    }

    #[test]
    fn push_with_and_without_headroom_then_pop() {
        for head in [0usize, 4, 8] {
            let mut buf = vec![0u8; head + 40];
            let f = frame(None);
            buf[head..head + f.len()].copy_from_slice(&f);
            let mut fr = Frame::new(&mut buf, head, f.len());
            assert!(fr.set_vlan(Some(100)));
            let want = {
                let mut w = frame(Some(100));
                w[14] &= 0x0f; // pushed tags have PCP 0
                w
            };
            assert_eq!(fr.data(), &want[..]);
            assert!(fr.set_vlan(Some(200)));
            assert_eq!(read_u16(fr.data(), 14) & 0xfff, 200);
            assert!(fr.set_vlan(None));
            assert_eq!(fr.data(), &frame(None)[..]);
        }
    }

    #[test]
    fn a_frame_never_reaches_past_its_buffer() {
        let mut buf = [7u8; 64];
        for (off, len, want) in [(0, 65, (0, 64)), (60, 10, (60, 4)), (100, 1, (64, 0))] {
            let f = Frame::new(&mut buf, off, len);
            assert_eq!((f.off, f.len), want);
            assert_eq!(f.data().len(), want.1);
        }
        let mut buf = [0u8; 64];
        let mut f = Frame::new(&mut buf, usize::MAX, usize::MAX);
        assert!(f.data_mut().is_empty());
    }

    #[test]
    fn push_without_room_fails_cleanly() {
        let f = frame(None);
        let mut buf = f.clone();
        let mut fr = Frame::whole(&mut buf);
        assert!(!fr.set_vlan(Some(5)));
        assert_eq!((fr.off, fr.len), (0, f.len()));
        assert_eq!(buf, f);
    }
}
