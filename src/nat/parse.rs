//! The slow path's parser: one frame -> [`Meta`], the engine's description of it, through
//! packet/'s typed, bounds-checked views; and the IPv4 packet quoted in an ICMP error
//! ([`Quote`]). Every translation path reads frames through what this module returns.
//!
//! Never panics on any input: each view is created with a checked constructor and every
//! malformed frame maps to a [`DropReason`] (or, for non-IPv4 frames, to "the kernel's").

use super::types::DropReason;
use crate::packet::ethernet::ETHERTYPE_IPV4;
use crate::packet::ipv4::Protocol;
use crate::packet::{
    self, EthernetFrame, IcmpPacket, Ipv4Packet, TcpPacket, UdpPacket, checksum, icmp, tcp,
};

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub(crate) enum Frag {
    #[default]
    None,
    First,
    Later,
}

/// What `parse` learned about a frame; offsets are into `Frame::data()`.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Meta {
    pub l3: usize,
    pub ihl: usize,
    pub tot: usize,
    pub l4: usize,
    pub proto: Protocol,
    pub ttl: u8,
    pub src: u32,
    pub dst: u32,
    /// TCP/UDP ports; for ICMP queries both hold the identifier.
    pub sport: u16,
    pub dport: u16,
    pub frag: Frag,
    pub ident: u16,
    pub icmp_type: u8,
    pub tcp_flags: u8,
    /// TCP: sequence and acknowledgement numbers, the payload length (by the IP total
    /// length, so a truncated capture does not shorten it), and for a SYN its window scale
    /// option (`store::tcp_window`).
    pub tcp_seq: u32,
    pub tcp_ack: u32,
    pub tcp_payload: u16,
    pub tcp_wscale: Option<u8>,
    pub vlan: Option<u16>,
}

impl Meta {
    pub fn is_icmp_error(&self) -> bool {
        self.proto == Protocol::ICMP
            && self.frag != Frag::Later
            && matches!(
                self.icmp_type,
                icmp::DEST_UNREACHABLE | icmp::TIME_EXCEEDED | icmp::PARAMETER_PROBLEM
            )
    }

    /// The TCP segment's fields the state tracking reads.
    pub fn tcp_seg(&self) -> crate::nat::session::tcp::Seg {
        crate::nat::session::tcp::Seg {
            flags: self.tcp_flags,
            seq: self.tcp_seq,
            ack: self.tcp_ack,
            payload: self.tcp_payload,
            wscale: self.tcp_wscale,
        }
    }

    /// The remote port of an inside frame's session key (its destination port); ICMP
    /// queries have none.
    #[inline(always)]
    pub fn rem_port_in(&self) -> u16 {
        if self.proto == Protocol::ICMP {
            0
        } else {
            self.dport
        }
    }

    /// The remote port of an outside frame's session key (its source port).
    #[inline(always)]
    pub fn rem_port_out(&self) -> u16 {
        if self.proto == Protocol::ICMP {
            0
        } else {
            self.sport
        }
    }
}

/// A header that fails its view's checks: `Truncated` stays truncated, a malformed field is
/// this layer's reason.
fn reason(e: packet::Error, malformed: DropReason) -> DropReason {
    match e {
        packet::Error::Truncated => DropReason::Truncated,
        packet::Error::Malformed => malformed,
    }
}

/// Validates Ethernet, IPv4 and the transport header. `Err(None)`: not IPv4, the kernel's.
pub(crate) fn parse(d: &[u8]) -> Result<Meta, Option<DropReason>> {
    let eth = EthernetFrame::new_checked(d).map_err(|_| Some(DropReason::Truncated))?;
    if eth.ethertype() != ETHERTYPE_IPV4 {
        return Err(None);
    }
    let l3 = eth.header_len();
    let ip =
        Ipv4Packet::new_checked(&d[l3..]).map_err(|e| Some(reason(e, DropReason::BadIpHeader)))?;
    let ihl = ip.header_len();
    let ok = match ip.header().first_chunk::<20>() {
        // The common header without options: the fast path's word-wise check.
        Some(h) if ihl == 20 => checksum::ipv4_header_ok(h),
        _ => ip.verify_checksum(),
    };
    if !ok {
        return Err(Some(DropReason::BadIpChecksum));
    }
    let mut m = Meta {
        l3,
        ihl,
        tot: usize::from(ip.total_len()),
        l4: l3 + ihl,
        proto: ip.protocol(),
        ttl: ip.ttl(),
        src: ip.src_u32(),
        dst: ip.dst_u32(),
        ident: ip.ident(),
        frag: if ip.frag_offset() != 0 {
            Frag::Later
        } else if ip.more_frags() {
            Frag::First
        } else {
            Frag::None
        },
        vlan: eth.vlan_id(),
        ..Meta::default()
    };
    if m.frag == Frag::Later {
        return Ok(m);
    }
    let l4 = ip.payload();
    let bad_l4 = |e| Some(reason(e, DropReason::BadL4Header));
    match m.proto {
        Protocol::TCP => {
            // Only the fixed header is required: options past the datagram are the
            // receiver's problem, and the fast path (which sees 20 bytes) agrees.
            if l4.len() < tcp::MIN_HEADER_LEN {
                return Err(Some(DropReason::Truncated));
            }
            let t = TcpPacket::new_unchecked(l4);
            if t.header_len() < tcp::MIN_HEADER_LEN {
                return Err(Some(DropReason::BadL4Header));
            }
            (m.sport, m.dport, m.tcp_flags) = (t.src_port(), t.dst_port(), t.flags());
            (m.tcp_seq, m.tcp_ack) = (t.seq_number(), t.ack_number());
            let ip_payload = m.tot.saturating_sub(ihl);
            m.tcp_payload = ip_payload.saturating_sub(t.header_len()) as u16;
            if m.tcp_flags & tcp::flags::SYN != 0 {
                m.tcp_wscale = t.window_scale();
            }
        }
        Protocol::UDP => {
            let u = UdpPacket::new_checked(l4).map_err(bad_l4)?;
            (m.sport, m.dport) = (u.src_port(), u.dst_port());
        }
        Protocol::ICMP => {
            let i = IcmpPacket::new_checked(l4).map_err(bad_l4)?;
            m.icmp_type = i.msg_type();
            // The query identifier (meaningless for errors, which are keyed by their quote).
            m.sport = i.echo_ident();
            m.dport = m.sport;
        }
        _ => {}
    }
    Ok(m)
}

/// The IPv4 packet quoted in an ICMP error: its header plus at least 8 bytes of transport.
/// Offsets are into the frame, like [`Meta`]'s.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Quote {
    pub ip: usize,
    pub l4: usize,
    pub end: usize,
    pub proto: Protocol,
    pub src: u32,
    pub dst: u32,
    pub sport: u16,
    pub dport: u16,
}

impl Quote {
    /// The quote of the ICMP error `m` describes, through [`Ipv4Packet::new_embedded`].
    pub fn parse(d: &[u8], m: &Meta) -> Result<Quote, DropReason> {
        let ip = m.l4 + icmp::HEADER_LEN;
        let end = (m.l3 + m.tot).min(d.len());
        let q = d.get(ip..end).ok_or(DropReason::Truncated)?;
        let p = Ipv4Packet::new_embedded(q).map_err(|e| reason(e, DropReason::BadIpHeader))?;
        if p.frag_offset() != 0 {
            // A quoted non-first fragment has no ports to find the session by.
            return Err(DropReason::IcmpUnsupported);
        }
        let l4 = ip + p.header_len();
        let t = &d[l4..end];
        let proto = p.protocol();
        let (sport, dport) = match proto {
            // The quote has 8 bytes of transport: both ports, whatever the header's length.
            Protocol::TCP | Protocol::UDP => {
                let u = UdpPacket::new_unchecked(t);
                (u.src_port(), u.dst_port())
            }
            Protocol::ICMP => {
                let i = IcmpPacket::new_unchecked(t);
                if !i.is_echo() {
                    return Err(DropReason::IcmpUnsupported);
                }
                (i.echo_ident(), i.echo_ident())
            }
            _ => return Err(DropReason::IcmpUnsupported),
        };
        Ok(Quote {
            ip,
            l4,
            end,
            proto,
            src: p.src_u32(),
            dst: p.dst_u32(),
            sport,
            dport,
        })
    }

    /// The quote of an error, parsed and with its checksums verified.
    pub fn checked(d: &[u8], m: &Meta) -> Result<Quote, DropReason> {
        let e = Self::parse(d, m)?;
        if !e.checksums_ok(d, m) {
            return Err(DropReason::IcmpBadChecksum);
        }
        Ok(e)
    }

    fn checksums_ok(&self, d: &[u8], m: &Meta) -> bool {
        // RFC 5508 REQ-3: a bad ICMP checksum or a bad embedded IP header checksum is dropped;
        // the embedded transport checksum is not checked (the quote is truncated).
        (m.frag != Frag::None || IcmpPacket::new_unchecked(&d[m.l4..self.end]).verify_checksum())
            && checksum::checksum(&d[self.ip..self.l4]) == 0
    }
}

/// The inside host a frame from inside is about: its source, or for an ICMP error the
/// destination of the quoted packet.
pub(crate) fn inside_addr_of(d: &[u8], m: &Meta) -> Option<u32> {
    if m.is_icmp_error() {
        Some(Quote::parse(d, m).ok()?.dst)
    } else {
        Some(m.src)
    }
}

/// (protocol, external address, external port) an outside frame is addressed to.
pub(crate) fn outside_endpoint(d: &[u8], m: &Meta) -> Option<(Protocol, u32, u16)> {
    if m.frag == Frag::Later {
        return None;
    }
    if m.is_icmp_error() {
        let e = Quote::parse(d, m).ok()?;
        Some((e.proto, e.src, e.sport))
    } else {
        Some((m.proto, m.dst, m.dport))
    }
}
