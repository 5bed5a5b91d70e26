//! Typed zero-copy views over packet bytes.
//!
//! Each view wraps a buffer `T: AsRef<[u8]>` and reads fields straight out of
//! it in network byte order. `new_checked` validates the lengths every
//! accessor relies on, so a view built that way never panics; `new_unchecked`
//! skips validation and its accessors may panic on a short buffer.

pub mod checksum;
pub mod ethernet;
pub mod icmp;
pub mod ipv4;
pub mod tcp;
pub mod udp;

pub use ethernet::EthernetFrame;
pub use icmp::IcmpPacket;
pub use ipv4::{Ipv4Packet, Ipv4Repr};
pub use tcp::TcpPacket;
pub use udp::UdpPacket;

use core::fmt;

/// Why a buffer could not be viewed as a packet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Error {
    /// The buffer is shorter than the headers or lengths require.
    Truncated,
    /// A field holds a value the format does not allow.
    Malformed,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Truncated => f.write_str("truncated packet"),
            Error::Malformed => f.write_str("malformed packet"),
        }
    }
}

impl std::error::Error for Error {}

pub type Result<T> = core::result::Result<T, Error>;

/// Big-endian field access at an offset the caller has bounds-checked (a view's checked
/// constructor or the engine's parse): the one copy in the crate. The views use them, and so
/// do the engine's rewrites, which patch fields at offsets `nat::parse` validated.
#[inline(always)]
pub fn read_u16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline(always)]
pub fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline(always)]
pub fn write_u16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline(always)]
pub fn write_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// Cross-checks against the `etherparse` crate.
#[cfg(test)]
mod golden_tests {
    use super::*;
    use etherparse::{
        IcmpEchoHeader, Icmpv4Type, IpDscp, IpEcn, IpFragOffset, IpNumber, Ipv4Header, Ipv4Options,
        PacketBuilder, TcpHeader, UdpHeader, VlanId,
    };
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    const MAC_A: [u8; 6] = [0x02, 0xAA, 0xBB, 0xCC, 0xDD, 0x01];
    const MAC_B: [u8; 6] = [0x02, 0xAA, 0xBB, 0xCC, 0xDD, 0x02];

    /// Zeroes a 16-bit field and returns what was there.
    fn take16(b: &mut [u8], at: usize) -> u16 {
        let v = read_u16(b, at);
        write_u16(b, at, 0);
        v
    }

    #[test]
    fn vlan_ipv4_udp() {
        let payload = b"golden udp payload";
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .single_vlan(VlanId::try_new(0x123).unwrap())
            .ipv4([10, 0, 0, 1], [192, 168, 1, 2], 61)
            .udp(40000, 53)
            .write(&mut frame, payload)
            .unwrap();

        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        assert_eq!(eth.src_addr(), MAC_A);
        assert_eq!(eth.dst_addr(), MAC_B);
        assert_eq!(eth.vlan_id(), Some(0x123));
        assert_eq!(eth.ethertype(), ethernet::ETHERTYPE_IPV4);
        assert_eq!(eth.header_len(), 18);

        let (eh, _) = Ipv4Header::from_slice(eth.payload()).unwrap();
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert_eq!(ip.src_addr().octets(), eh.source);
        assert_eq!(ip.dst_addr().octets(), eh.destination);
        assert_eq!(ip.ttl(), eh.time_to_live);
        assert_eq!(ip.protocol(), eh.protocol.0);
        assert_eq!(ip.total_len(), eh.total_len);
        assert_eq!(ip.ident(), eh.identification);
        assert_eq!(ip.dont_frag(), eh.dont_fragment);
        assert_eq!(ip.checksum(), eh.header_checksum);
        assert!(ip.verify_checksum());

        let udp = UdpPacket::new_checked(ip.payload()).unwrap();
        let (uh, rest) = UdpHeader::from_slice(ip.payload()).unwrap();
        assert_eq!(udp.src_port(), uh.source_port);
        assert_eq!(udp.dst_port(), uh.destination_port);
        assert_eq!(udp.len(), uh.length);
        assert_eq!(udp.checksum(), uh.checksum);
        assert_eq!(udp.payload(), rest);
        assert_eq!(udp.payload(), payload);
        assert!(udp.verify_checksum(ip.src_addr(), ip.dst_addr()));

        // Our fill_checksum reproduces etherparse's values.
        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let mut f = frame.clone();
        let want_ip = take16(&mut f, 18 + 10);
        let want_udp = take16(&mut f, 18 + 20 + 6);
        let mut eth = EthernetFrame::new_checked(&mut f[..]).unwrap();
        let mut ip = Ipv4Packet::new_checked(eth.payload_mut()).unwrap();
        ip.fill_checksum();
        assert_eq!(ip.checksum(), want_ip);
        let mut udp = UdpPacket::new_checked(ip.payload_mut()).unwrap();
        udp.fill_checksum(src, dst);
        assert_eq!(udp.checksum(), want_udp);
        assert_eq!(f, frame);
    }

    #[test]
    fn ipv4_tcp_with_options() {
        let payload = b"GET / HTTP/1.1\r\n\r\n";
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([100, 64, 3, 4], [203, 0, 113, 80], 64)
            .tcp(51000, 80, 0xDEAD_BEEF, 29200)
            .syn()
            .ack(0x0102_0304)
            .options_raw(&[2, 4, 0x05, 0xB4, 1, 1, 4, 2])
            .unwrap()
            .write(&mut frame, payload)
            .unwrap();

        let eth = EthernetFrame::new_checked(&frame[..]).unwrap();
        assert_eq!(eth.vlan_id(), None);
        assert_eq!(eth.header_len(), 14);
        let ip = Ipv4Packet::new_checked(eth.payload()).unwrap();
        assert_eq!(ip.protocol(), ipv4::proto::TCP);
        let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
        let (th, rest) = TcpHeader::from_slice(ip.payload()).unwrap();
        assert_eq!(tcp.src_port(), th.source_port);
        assert_eq!(tcp.dst_port(), th.destination_port);
        assert_eq!(tcp.seq_number(), th.sequence_number);
        assert_eq!(tcp.ack_number(), th.acknowledgment_number);
        assert_eq!(tcp.header_len(), th.header_len());
        assert_eq!(tcp.header_len(), 28);
        assert_eq!(tcp.syn(), th.syn);
        assert_eq!(tcp.ack(), th.ack);
        assert_eq!(tcp.fin(), th.fin);
        assert_eq!(tcp.rst(), th.rst);
        assert_eq!(tcp.window(), th.window_size);
        assert_eq!(tcp.checksum(), th.checksum);
        assert_eq!(tcp.options(), th.options.as_slice());
        assert_eq!(tcp.payload(), rest);
        assert!(tcp.verify_checksum(ip.src_addr(), ip.dst_addr()));

        let (src, dst) = (ip.src_addr(), ip.dst_addr());
        let mut f = frame.clone();
        let want = take16(&mut f, 14 + 20 + 16);
        let mut tcp = TcpPacket::new_checked(&mut f[34..]).unwrap();
        tcp.fill_checksum(src, dst);
        assert_eq!(tcp.checksum(), want);
    }

    #[test]
    fn icmp_echo_and_error() {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([192, 168, 7, 7], [1, 1, 1, 1], 64)
            .icmpv4_echo_request(0x4242, 9)
            .write(&mut frame, b"abcdefghijklmnopqrstuvw")
            .unwrap();
        let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
        let icmp = IcmpPacket::new_checked(ip.payload()).unwrap();
        assert_eq!(icmp.msg_type(), icmp::ECHO_REQUEST);
        assert_eq!(icmp.echo_ident(), 0x4242);
        assert_eq!(icmp.echo_seq(), 9);
        assert_eq!(icmp.data(), b"abcdefghijklmnopqrstuvw");
        assert!(icmp.verify_checksum());
        let mut f = frame.clone();
        let want = take16(&mut f, 34 + 2);
        IcmpPacket::new_checked(&mut f[34..])
            .unwrap()
            .fill_checksum();
        assert_eq!(read_u16(&f, 36), want);

        // Port unreachable quoting a UDP datagram, cut after 8 bytes.
        let mut quoted = Vec::new();
        PacketBuilder::ipv4([1, 1, 1, 1], [192, 168, 7, 7], 3)
            .udp(53, 33434)
            .write(&mut quoted, &[0x55; 40])
            .unwrap();
        quoted.truncate(28);
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .ipv4([10, 9, 8, 7], [1, 1, 1, 1], 255)
            .icmpv4_raw(icmp::DEST_UNREACHABLE, 3, [0; 4])
            .write(&mut frame, &quoted)
            .unwrap();
        let ip = Ipv4Packet::new_checked(&frame[14..]).unwrap();
        let icmp = IcmpPacket::new_checked(ip.payload()).unwrap();
        assert!(icmp.is_error());
        assert!(icmp.verify_checksum());
        let inner = icmp.embedded().unwrap();
        assert_eq!(inner.total_len(), 68);
        assert_eq!(inner.src_addr(), Ipv4Addr::new(1, 1, 1, 1));
        assert!(inner.verify_checksum());
        assert!(Ipv4Packet::new_checked(icmp.data()).is_err());
        let udp = UdpPacket::new_checked(inner.payload()).unwrap();
        assert_eq!((udp.src_port(), udp.dst_port(), udp.len()), (53, 33434, 48));
        assert!(udp.payload().is_empty());
    }

    /// Every prefix of a full frame: each layer accepts exactly when its
    /// bytes are all there, and never panics.
    #[test]
    fn frame_prefixes() {
        let mut frame = Vec::new();
        PacketBuilder::ethernet2(MAC_A, MAC_B)
            .single_vlan(VlanId::try_new(7).unwrap())
            .ipv4([10, 0, 0, 1], [10, 0, 0, 2], 64)
            .tcp(1, 2, 3, 4)
            .write(&mut frame, b"xyz")
            .unwrap();
        let ip_end = frame.len();
        for n in 0..=frame.len() {
            let eth = EthernetFrame::new_checked(&frame[..n]);
            if n < 18 {
                assert_eq!(eth.err(), Some(Error::Truncated));
                continue;
            }
            let eth = eth.unwrap();
            let ip = Ipv4Packet::new_checked(eth.payload());
            if n < ip_end {
                assert_eq!(ip.err(), Some(Error::Truncated), "len {n}");
            } else {
                let ip = ip.unwrap();
                let tcp = TcpPacket::new_checked(ip.payload()).unwrap();
                assert_eq!(tcp.payload(), b"xyz");
            }
            let tcp = TcpPacket::new_checked(&frame[18 + 20..n.max(38)]);
            assert_eq!(tcp.is_ok(), n >= 58, "len {n}");
        }
    }

    fn ether_ipv4() -> impl Strategy<Value = Ipv4Header> {
        (
            (
                0u8..64,
                0u8..4,
                any::<u16>(),
                any::<u16>(),
                any::<bool>(),
                any::<bool>(),
            ),
            (
                0u16..0x2000,
                any::<u8>(),
                any::<u8>(),
                any::<[u8; 4]>(),
                any::<[u8; 4]>(),
            ),
            (0usize..=10).prop_flat_map(|w| proptest::collection::vec(any::<u8>(), w * 4)),
        )
            .prop_map(
                |((dscp, ecn, plen, id, df, mf), (off, ttl, p, s, d), opts)| {
                    let mut h = Ipv4Header {
                        dscp: IpDscp::try_new(dscp).unwrap(),
                        ecn: IpEcn::try_new(ecn).unwrap(),
                        total_len: 0,
                        identification: id,
                        dont_fragment: df,
                        more_fragments: mf,
                        fragment_offset: IpFragOffset::try_new(off).unwrap(),
                        time_to_live: ttl,
                        protocol: IpNumber(p),
                        header_checksum: 0,
                        source: s,
                        destination: d,
                        options: Ipv4Options::try_from(&opts[..]).unwrap(),
                    };
                    h.total_len = (h.header_len() as u16).saturating_add(plen % 2000);
                    h.header_checksum = h.calc_header_checksum();
                    h
                },
            )
    }

    proptest! {
        #[test]
        fn random_ipv4_headers_agree(h in ether_ipv4()) {
            let mut b = h.to_bytes().to_vec();
            let p = Ipv4Packet::new_embedded(&b[..]);
            // Header alone is 20..=60 bytes; embedded needs 8 more.
            prop_assert_eq!(p.err(), Some(Error::Truncated));
            b.resize(usize::from(h.total_len).max(b.len() + 8), 0xA5);
            let p = Ipv4Packet::new_checked(&b[..]).unwrap();
            prop_assert_eq!(p.header_len(), h.header_len());
            prop_assert_eq!(p.tos(), (h.dscp.value() << 2) | h.ecn.value());
            prop_assert_eq!(p.total_len(), h.total_len);
            prop_assert_eq!(p.ident(), h.identification);
            prop_assert_eq!(p.dont_frag(), h.dont_fragment);
            prop_assert_eq!(p.more_frags(), h.more_fragments);
            prop_assert_eq!(p.frag_offset(), h.fragment_offset.value() * 8);
            prop_assert_eq!(p.ttl(), h.time_to_live);
            prop_assert_eq!(p.protocol(), h.protocol.0);
            prop_assert_eq!(p.src_addr().octets(), h.source);
            prop_assert_eq!(p.dst_addr().octets(), h.destination);
            prop_assert_eq!(p.options(), h.options.as_slice());
            prop_assert_eq!(p.payload().len(), usize::from(h.total_len) - h.header_len());
            prop_assert!(p.verify_checksum());
            let mut b2 = b.clone();
            take16(&mut b2, 10);
            Ipv4Packet::new_checked(&mut b2[..]).unwrap().fill_checksum();
            prop_assert_eq!(&b2, &b);
        }

        #[test]
        fn random_l4_checksums_agree(
            s in any::<[u8; 4]>(), d in any::<[u8; 4]>(),
            sp in any::<u16>(), dp in any::<u16>(), seq in any::<u32>(),
            opts in (0usize..=10).prop_flat_map(|w| proptest::collection::vec(any::<u8>(), w * 4)),
            payload in proptest::collection::vec(any::<u8>(), 0..100),
            id in any::<u16>(), icmp_seq in any::<u16>(),
        ) {
            let (src, dst) = (Ipv4Addr::from(s), Ipv4Addr::from(d));

            let uh = UdpHeader::with_ipv4_checksum(sp, dp, &Ipv4Header::new(0, 1, IpNumber::UDP, s, d).unwrap(), &payload).unwrap();
            let mut b = uh.to_bytes().to_vec();
            b.extend_from_slice(&payload);
            take16(&mut b, 6);
            let mut u = UdpPacket::new_checked(&mut b[..]).unwrap();
            u.fill_checksum(src, dst);
            prop_assert_eq!(u.checksum(), uh.checksum);
            prop_assert!(u.verify_checksum(src, dst));

            let mut th = TcpHeader::new(sp, dp, seq, 1000);
            th.set_options_raw(&opts).unwrap();
            th.checksum = th.calc_checksum_ipv4_raw(s, d, &payload).unwrap();
            let mut b = th.to_bytes().to_vec();
            b.extend_from_slice(&payload);
            take16(&mut b, 16);
            let mut t = TcpPacket::new_checked(&mut b[..]).unwrap();
            prop_assert_eq!(t.header_len(), th.header_len());
            t.fill_checksum(src, dst);
            prop_assert_eq!(t.checksum(), th.checksum);
            prop_assert!(t.verify_checksum(src, dst));

            let ty = Icmpv4Type::EchoReply(IcmpEchoHeader { id, seq: icmp_seq });
            let want = ty.calc_checksum(&payload);
            let mut b = vec![0u8, 0, 0, 0];
            b.extend_from_slice(&id.to_be_bytes());
            b.extend_from_slice(&icmp_seq.to_be_bytes());
            b.extend_from_slice(&payload);
            let mut c = IcmpPacket::new_checked(&mut b[..]).unwrap();
            c.fill_checksum();
            prop_assert_eq!(c.checksum(), want);
            prop_assert!(c.verify_checksum());
        }
    }
}

/// RFC 1624 incremental updates versus full recomputation, bit for bit.
#[cfg(test)]
mod incremental_tests {
    use super::checksum::{self as ck, Delta};
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    /// 16-bit values biased toward the one's complement edge cases.
    fn word16() -> impl Strategy<Value = u16> {
        prop_oneof![
            Just(0u16),
            Just(0xFFFF),
            Just(1),
            Just(0xFFFE),
            any::<u16>()
        ]
    }

    fn addr() -> impl Strategy<Value = Ipv4Addr> {
        prop_oneof![
            Just(Ipv4Addr::new(0, 0, 0, 0)),
            Just(Ipv4Addr::new(255, 255, 255, 255)),
            Just(Ipv4Addr::new(0, 0, 255, 255)),
            Just(Ipv4Addr::new(255, 255, 0, 0)),
            any::<u32>().prop_map(Ipv4Addr::from),
        ]
    }

    /// Which checksum the packet starts with: whatever the data gives, or a
    /// forced edge value (0x0000 means "one's complement sum is -0").
    fn start() -> impl Strategy<Value = Option<u16>> {
        prop_oneof![
            Just(None),
            Just(Some(0x0000)),
            Just(Some(0x0001)),
            Just(Some(0xFFFE)),
            any::<u16>()
                .prop_filter("needs all-zero data", |&c| c != 0xFFFF)
                .prop_map(Some),
        ]
    }

    fn bytes(max: usize) -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(Just(0u8), 0..max),
            proptest::collection::vec(Just(0xFFu8), 0..max),
            proptest::collection::vec(any::<u8>(), 0..max),
        ]
    }

    /// Chooses the 16-bit word at `free` so that the full checksum comes out
    /// as `target`. `extra` is the sum of anything outside `b` (pseudo-header)
    /// and `cksum_at` the checksum field, which is zero while summing.
    fn force(b: &mut [u8], extra: u32, cksum_at: usize, free: usize, target: u16) {
        write_u16(b, cksum_at, 0);
        write_u16(b, free, 0);
        let rest = ck::fold(extra + ck::sum(b));
        let want = !target;
        let w = if want >= rest {
            want - rest
        } else {
            want + (0xFFFF - rest)
        };
        write_u16(b, free, w);
        write_u16(b, cksum_at, target);
    }

    #[derive(Debug, Clone)]
    struct IpCase {
        header: Vec<u8>,
        start: Option<u16>,
        new_src: Option<Ipv4Addr>,
        new_dst: Option<Ipv4Addr>,
        new_ttl: Option<u8>,
        new_ident: Option<u16>,
    }

    fn ip_case() -> impl Strategy<Value = IpCase> {
        (
            (5usize..=15).prop_flat_map(|ihl| proptest::collection::vec(any::<u8>(), ihl * 4)),
            (addr(), addr(), word16(), start()),
            (
                proptest::option::of(addr()),
                proptest::option::of(addr()),
                proptest::option::of(prop_oneof![Just(0u8), Just(255), any::<u8>()]),
                proptest::option::of(word16()),
            ),
        )
            .prop_map(|(mut h, (s, d, tl, start), (ns, nd, nt, ni))| {
                h[0] = 0x40 | (h.len() / 4) as u8;
                write_u16(&mut h, 2, tl);
                write_u32(&mut h, 12, u32::from(s));
                write_u32(&mut h, 16, u32::from(d));
                IpCase {
                    header: h,
                    start,
                    new_src: ns,
                    new_dst: nd,
                    new_ttl: nt,
                    new_ident: ni,
                }
            })
    }

    fn full_ip(h: &[u8]) -> u16 {
        let mut c = h.to_vec();
        let mut p = Ipv4Packet::new_unchecked(&mut c[..]);
        p.fill_checksum();
        p.checksum()
    }

    #[derive(Debug, Clone)]
    struct L4Case {
        src: Ipv4Addr,
        dst: Ipv4Addr,
        sport: u16,
        dport: u16,
        /// For TCP: header bytes after the ports (options included).
        rest: Vec<u8>,
        payload: Vec<u8>,
        start: Option<u16>,
        /// UDP only: start without a checksum.
        no_cksum: bool,
        new_src: Option<Ipv4Addr>,
        new_dst: Option<Ipv4Addr>,
        new_sport: Option<u16>,
        new_dport: Option<u16>,
    }

    fn l4_case() -> impl Strategy<Value = L4Case> {
        (
            (addr(), addr(), word16(), word16()),
            (
                (5usize..=15)
                    .prop_flat_map(|off| proptest::collection::vec(any::<u8>(), off * 4 - 4)),
                bytes(64),
                start(),
                proptest::bool::weighted(0.15),
            ),
            (
                proptest::option::of(addr()),
                proptest::option::of(addr()),
                proptest::option::of(word16()),
                proptest::option::of(word16()),
            ),
        )
            .prop_map(
                |((src, dst, sport, dport), (rest, payload, start, no_cksum), (a, b, c, d))| {
                    L4Case {
                        src,
                        dst,
                        sport,
                        dport,
                        rest,
                        payload,
                        start,
                        no_cksum,
                        new_src: a,
                        new_dst: b,
                        new_sport: c,
                        new_dport: d,
                    }
                },
            )
    }

    impl L4Case {
        fn new_src(&self) -> Ipv4Addr {
            self.new_src.unwrap_or(self.src)
        }
        fn new_dst(&self) -> Ipv4Addr {
            self.new_dst.unwrap_or(self.dst)
        }
        /// Pseudo-header and port changes, as the NAT engine records them.
        fn delta(&self) -> Delta {
            let mut d = Delta::new();
            d.add32(u32::from(self.src), u32::from(self.new_src()));
            d.add32(u32::from(self.dst), u32::from(self.new_dst()));
            d.add16(self.sport, self.new_sport.unwrap_or(self.sport));
            d.add16(self.dport, self.new_dport.unwrap_or(self.dport));
            d
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn ipv4_header_rewrite(c in ip_case()) {
            let mut h = c.header.clone();
            match c.start {
                Some(t) => force(&mut h, 0, 10, 4, t),
                None => {
                    let c0 = full_ip(&h);
                    write_u16(&mut h, 10, c0)
                }
            }
            let mut p = Ipv4Packet::new_unchecked(&mut h[..]);
            prop_assert!(p.verify_checksum());
            if let Some(t) = c.start {
                prop_assert_eq!(p.checksum(), t);
            }
            let old = p.checksum();

            let mut d = Delta::new();
            let mut chained = old;
            if let Some(a) = c.new_src {
                d.add32(p.src_u32(), u32::from(a));
                chained = ck::update32(chained, p.src_u32(), u32::from(a));
                p.set_src_addr(a);
            }
            if let Some(a) = c.new_dst {
                d.add32(p.dst_u32(), u32::from(a));
                chained = ck::update32(chained, p.dst_u32(), u32::from(a));
                p.set_dst_addr(a);
            }
            if let Some(t) = c.new_ttl {
                let proto = u16::from(p.protocol());
                let (o, n) = ((u16::from(p.ttl()) << 8) | proto, (u16::from(t) << 8) | proto);
                d.add16(o, n);
                chained = ck::update16(chained, o, n);
                p.set_ttl(t);
            }
            if let Some(i) = c.new_ident {
                d.add16(p.ident(), i);
                chained = ck::update16(chained, p.ident(), i);
                p.set_ident(i);
            }
            let inc = d.apply(old);
            let full = full_ip(p.header());
            prop_assert_eq!(inc, full);
            prop_assert_eq!(chained, full);
            p.set_checksum(inc);
            prop_assert!(p.verify_checksum());
        }

        #[test]
        fn udp_rewrite(c in l4_case()) {
            let mut b = vec![0u8; 8];
            write_u16(&mut b, 0, c.sport);
            write_u16(&mut b, 2, c.dport);
            write_u16(&mut b, 4, 8 + c.payload.len() as u16);
            b.extend_from_slice(&c.payload);
            let ph = ck::pseudo_header_sum(c.src, c.dst, ipv4::proto::UDP, b.len() as u16);
            if c.no_cksum {
                write_u16(&mut b, 6, 0);
            } else if let Some(t) = c.start {
                // The free word is the first payload word or, without one,
                // the source port.
                let free = if c.payload.len() >= 2 { 8 } else { 0 };
                force(&mut b, ph, 6, free, t);
                if t == 0 {
                    write_u16(&mut b, 6, 0xFFFF);
                }
            } else {
                UdpPacket::new_unchecked(&mut b[..]).fill_checksum(c.src, c.dst);
            }
            let mut u = UdpPacket::new_checked(&mut b[..]).unwrap();
            if let (false, Some(t)) = (c.no_cksum, c.start) {
                // A sum of -0 is transmitted as 0xFFFF.
                prop_assert_eq!(u.checksum(), if t == 0 { 0xFFFF } else { t });
            }
            prop_assert!(u.verify_checksum(c.src, c.dst));
            let c = L4Case { sport: u.src_port(), ..c };
            let old = u.checksum();
            u.set_src_port(c.new_sport.unwrap_or(c.sport));
            u.set_dst_port(c.new_dport.unwrap_or(c.dport));
            let inc = c.delta().apply_udp(old);

            let mut full = u.as_ref().to_vec();
            let mut f = UdpPacket::new_unchecked(&mut full[..]);
            if c.no_cksum {
                prop_assert_eq!(inc, 0);
            } else {
                f.fill_checksum(c.new_src(), c.new_dst());
                prop_assert_eq!(inc, f.checksum());
            }
            u.set_checksum(inc);
            prop_assert!(u.verify_checksum(c.new_src(), c.new_dst()));
        }

        #[test]
        fn tcp_rewrite(c in l4_case()) {
            let mut b = vec![0u8; 4];
            write_u16(&mut b, 0, c.sport);
            write_u16(&mut b, 2, c.dport);
            b.extend_from_slice(&c.rest);
            b[12] = ((b.len() / 4) as u8) << 4 | (b[12] & 0x0F);
            b.extend_from_slice(&c.payload);
            let ph = ck::pseudo_header_sum(c.src, c.dst, ipv4::proto::TCP, b.len() as u16);
            match c.start {
                Some(t) => force(&mut b, ph, 16, 18, t),
                None => TcpPacket::new_unchecked(&mut b[..]).fill_checksum(c.src, c.dst),
            }
            let mut t = TcpPacket::new_checked(&mut b[..]).unwrap();
            if let Some(want) = c.start {
                prop_assert_eq!(t.checksum(), want);
            }
            prop_assert!(t.verify_checksum(c.src, c.dst));
            let old = t.checksum();
            t.set_src_port(c.new_sport.unwrap_or(c.sport));
            t.set_dst_port(c.new_dport.unwrap_or(c.dport));
            let inc = c.delta().apply(old);

            let mut full = t.as_ref().to_vec();
            let mut f = TcpPacket::new_unchecked(&mut full[..]);
            f.fill_checksum(c.new_src(), c.new_dst());
            prop_assert_eq!(inc, f.checksum());
            t.set_checksum(inc);
            prop_assert!(t.verify_checksum(c.new_src(), c.new_dst()));
        }

        #[test]
        fn icmp_echo_ident_rewrite(
            ty in prop_oneof![Just(icmp::ECHO_REPLY), Just(icmp::ECHO_REQUEST)],
            code in prop_oneof![Just(0u8), any::<u8>()],
            id in word16(), seq in word16(), new_id in word16(),
            data in bytes(32),
            start in start(),
        ) {
            let mut b = vec![ty, code, 0, 0, 0, 0, 0, 0];
            write_u16(&mut b, 4, id);
            write_u16(&mut b, 6, seq);
            b.extend_from_slice(&data);
            match start {
                Some(t) => force(&mut b, 0, 2, 6, t),
                None => IcmpPacket::new_unchecked(&mut b[..]).fill_checksum(),
            }
            let mut p = IcmpPacket::new_checked(&mut b[..]).unwrap();
            if let Some(t) = start {
                prop_assert_eq!(p.checksum(), t);
            }
            prop_assert!(p.verify_checksum());
            let old = p.checksum();
            let mut d = Delta::new();
            d.add16(id, new_id);
            p.set_echo_ident(new_id);

            let mut full = p.as_ref().to_vec();
            IcmpPacket::new_unchecked(&mut full[..]).fill_checksum();
            let full = read_u16(&full, 2);

            let plain = d.apply(old);
            let zero_after = p.as_ref().iter().enumerate().all(|(i, &x)| i == 2 || i == 3 || x == 0);
            if zero_after && id != new_id {
                // The one undecidable case (see checksum module docs).
                prop_assert_eq!((plain, full), (0x0000, 0xFFFF));
            } else {
                prop_assert_eq!(plain, full);
            }
            p.update_checksum(d);
            prop_assert_eq!(p.checksum(), full);
            prop_assert!(p.verify_checksum());
        }

        /// ICMP error translated back inward: the quoted datagram's source
        /// address and port change, which changes the quoted IP checksum and
        /// (UDP) the quoted L4 checksum; the outer ICMP checksum absorbs all
        /// of these words.
        #[test]
        fn icmp_error_rewrite(
            ty in prop_oneof![Just(icmp::DEST_UNREACHABLE), Just(icmp::TIME_EXCEEDED), Just(icmp::PARAMETER_PROBLEM)],
            code in any::<u8>(),
            unused in any::<[u8; 4]>(),
            opts in (0usize..=2).prop_flat_map(|w| proptest::collection::vec(any::<u8>(), w * 4)),
            udp in any::<bool>(),
            (isrc, idst, sport, dport) in (addr(), addr(), word16(), word16()),
            (ip_start, udp_start, icmp_start) in (start(), start(), start()),
            udp_no_cksum in proptest::bool::weighted(0.2),
            (new_src, new_sport) in (addr(), word16()),
            tail in bytes(16),
        ) {
            // The quoted datagram: complete for UDP (len 8, so its checksum
            // can be recomputed in full), cut after 8 bytes for TCP.
            let ihl = 20 + opts.len();
            let mut q = vec![0u8; ihl + 8];
            q[0] = 0x40 | (ihl / 4) as u8;
            q[8] = 1;
            q[9] = if udp { ipv4::proto::UDP } else { ipv4::proto::TCP };
            write_u16(&mut q, 2, if udp { ihl as u16 + 8 } else { 1500 });
            write_u32(&mut q, 12, u32::from(isrc));
            write_u32(&mut q, 16, u32::from(idst));
            q[20..ihl].copy_from_slice(&opts);
            write_u16(&mut q, ihl, sport);
            write_u16(&mut q, ihl + 2, dport);
            if udp {
                write_u16(&mut q, ihl + 4, 8);
                let ph = ck::pseudo_header_sum(isrc, idst, ipv4::proto::UDP, 8);
                match udp_start {
                    _ if udp_no_cksum => {}
                    // The destination port is the free word here.
                    Some(t) => {
                        force(&mut q[ihl..], ph, 6, 2, t);
                        if t == 0 {
                            write_u16(&mut q, ihl + 6, 0xFFFF);
                        }
                    }
                    None => UdpPacket::new_unchecked(&mut q[ihl..]).fill_checksum(isrc, idst),
                }
            } else {
                q[ihl + 4..].copy_from_slice(&[0xFF, 0, 0x12, 0x34]);
            }
            match ip_start {
                Some(t) => force(&mut q[..ihl], 0, 10, 4, t),
                None => Ipv4Packet::new_unchecked(&mut q[..]).fill_checksum(),
            }
            let dport = read_u16(&q, ihl + 2);

            let mut b = vec![ty, code, 0, 0];
            b.extend_from_slice(&unused);
            b.extend_from_slice(&q);
            if !udp {
                b.extend_from_slice(&tail);
            }
            match icmp_start {
                Some(t) => force(&mut b, 0, 2, 4, t),
                None => IcmpPacket::new_unchecked(&mut b[..]).fill_checksum(),
            }

            let mut p = IcmpPacket::new_checked(&mut b[..]).unwrap();
            prop_assert!(p.is_error() && p.verify_checksum());
            let old_icmp = p.checksum();
            let mut outer = Delta::new();
            {
                let mut ip = p.embedded_mut().unwrap();
                prop_assert!(ip.verify_checksum());
                let mut ipd = Delta::new();
                ipd.add32(ip.src_u32(), u32::from(new_src));
                outer.add32(ip.src_u32(), u32::from(new_src));
                ip.set_src_addr(new_src);
                let (o, n) = (ip.checksum(), ipd.apply(ip.checksum()));
                outer.add16(o, n);
                ip.set_checksum(n);
                prop_assert!(ip.verify_checksum());
                let mut h = ip.header().to_vec();
                Ipv4Packet::new_unchecked(&mut h[..]).fill_checksum();
                prop_assert_eq!(read_u16(&h, 10), n);

                if udp {
                    let mut u = UdpPacket::new_checked(ip.payload_mut()).unwrap();
                    let mut ud = Delta::new();
                    ud.add32(u32::from(isrc), u32::from(new_src));
                    ud.add16(u.src_port(), new_sport);
                    outer.add16(u.src_port(), new_sport);
                    u.set_src_port(new_sport);
                    let (o, n) = (u.checksum(), ud.apply_udp(u.checksum()));
                    outer.add16(o, n);
                    u.set_checksum(n);
                    let mut full = u.as_ref().to_vec();
                    let mut f = UdpPacket::new_unchecked(&mut full[..]);
                    if o == 0 {
                        prop_assert_eq!(n, 0);
                    } else {
                        f.fill_checksum(new_src, idst);
                        prop_assert_eq!(n, f.checksum());
                    }
                    prop_assert!(u.verify_checksum(new_src, idst));
                    prop_assert_eq!(u.dst_port(), dport);
                } else {
                    let mut t = TcpPacket::new_unchecked(ip.payload_mut());
                    outer.add16(t.src_port(), new_sport);
                    t.set_src_port(new_sport);
                }
            }
            let plain = outer.apply(old_icmp);
            p.update_checksum(outer);
            // Error types are non-zero, so the plain apply is already exact.
            prop_assert_eq!(plain, p.checksum());
            let mut full = p.as_ref().to_vec();
            IcmpPacket::new_unchecked(&mut full[..]).fill_checksum();
            prop_assert_eq!(p.checksum(), read_u16(&full, 2));
            prop_assert!(p.verify_checksum());
        }
    }

    /// Exhaustive over the start checksum: for a fixed 4-word "header" whose
    /// free word takes every value, a rewrite of another word matches.
    #[test]
    fn exhaustive_free_word() {
        for free in 0..=0xFFFFu16 {
            for (old, new) in [
                (0u16, 0xFFFF),
                (0xFFFF, 0),
                (0x1234, 0x1234),
                (0, 1),
                (1, 0),
            ] {
                let mut b = [0x45, 0x00, 0, 0, 0, 0, 0, 0];
                write_u16(&mut b, 2, free);
                write_u16(&mut b, 6, old);
                let c0 = ck::checksum(&b);
                write_u16(&mut b, 6, new);
                assert_eq!(
                    ck::update16(c0, old, new),
                    ck::checksum(&b),
                    "free {free:#x} {old:#x}->{new:#x}"
                );
            }
        }
    }

    /// All-zero ICMP message, every way of getting there and leaving it.
    #[test]
    fn icmp_all_zero_edges() {
        for id in [0u16, 1, 0x8000, 0xFFFE, 0xFFFF] {
            for data_len in [0usize, 1, 2, 7] {
                let mut b = vec![0u8; 8 + data_len];
                write_u16(&mut b, 4, id);
                let mut p = IcmpPacket::new_checked(&mut b[..]).unwrap();
                p.fill_checksum();
                for new in [0u16, 1, 0xFFFF] {
                    let mut q = p.as_ref().to_vec();
                    let mut p2 = IcmpPacket::new_unchecked(&mut q[..]);
                    let mut d = Delta::new();
                    d.add16(id, new);
                    p2.set_echo_ident(new);
                    p2.update_checksum(d);
                    let got = p2.checksum();
                    p2.fill_checksum();
                    assert_eq!(got, p2.checksum(), "id {id:#x}->{new:#x} len {data_len}");
                    assert!(p2.verify_checksum());
                }
            }
        }
    }
}

/// Random bytes through every constructor and accessor: errors, never panics.
#[cfg(test)]
mod fuzz_tests {
    use super::*;
    use std::hint::black_box;
    use std::net::Ipv4Addr;

    struct XorShift(u64);

    impl XorShift {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn below(&mut self, n: u64) -> usize {
            (self.next() % n) as usize
        }
    }

    const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
    const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

    #[derive(Default, Debug)]
    struct Hits {
        eth: usize,
        ip: usize,
        embedded: usize,
        udp: usize,
        tcp: usize,
        icmp: usize,
        icmp_embedded: usize,
    }

    fn eth_all(b: &[u8], h: &mut Hits) {
        let (mut fb, n) = copy(b);
        if let Ok(mut f) = EthernetFrame::new_checked(&mut fb[..n]) {
            h.eth += 1;
            black_box((f.dst_addr(), f.src_addr(), f.vlan_id(), f.ethertype()));
            black_box((f.header_len(), f.payload().len()));
            ip_all(f.payload(), h);
            f.set_vlan_id(0xABC);
            f.set_ethertype(ethernet::ETHERTYPE_IPV4);
            f.set_src_addr([1; 6]);
            f.set_dst_addr([2; 6]);
            f.payload_mut().fill(0);
        }
    }

    fn ip_read<T: AsRef<[u8]>>(p: &Ipv4Packet<T>) {
        black_box((
            p.version(),
            p.header_len(),
            p.tos(),
            p.total_len(),
            p.ident(),
        ));
        black_box((
            p.dont_frag(),
            p.more_frags(),
            p.frag_offset(),
            p.is_fragment(),
        ));
        black_box((
            p.ttl(),
            p.protocol(),
            p.checksum(),
            p.src_addr(),
            p.dst_addr(),
        ));
        black_box((p.src_u32(), p.dst_u32(), p.verify_checksum()));
        black_box((p.payload().len(), p.header().len(), p.options().len()));
        black_box(Ipv4Repr::parse(p).unwrap());
    }

    fn ip_all(b: &[u8], h: &mut Hits) {
        black_box(Ipv4Repr::parse(&Ipv4Packet::new_unchecked(b)).ok());
        let (mut pb, n) = copy(b);
        if let Ok(mut p) = Ipv4Packet::new_checked(&mut pb[..n]) {
            h.ip += 1;
            ip_read(&p);
            p.set_ttl(p.ttl().wrapping_sub(1));
            p.set_src_addr(A);
            p.set_dst_addr(B);
            p.fill_checksum();
            assert!(p.verify_checksum());
            l4_all(p.payload(), h);
        }
        let (mut eb, n) = copy(b);
        if let Ok(mut p) = Ipv4Packet::new_embedded(&mut eb[..n]) {
            h.embedded += 1;
            ip_read(&p);
            // Short only if the quoted datagram itself claims to be.
            let claimed = usize::from(p.total_len()) - p.header_len();
            assert!(p.payload().len() >= claimed.min(8));
            p.set_ident(1);
            p.fill_checksum();
            l4_all(p.payload(), h);
        }
    }

    /// Each parser gets its own copy: the setters below would otherwise
    /// steer what the next parser sees.
    fn copy(b: &[u8]) -> ([u8; 256], usize) {
        let mut c = [0u8; 256];
        c[..b.len()].copy_from_slice(b);
        (c, b.len())
    }

    fn l4_all(b: &[u8], h: &mut Hits) {
        let (mut ub, n) = copy(b);
        if let Ok(mut u) = UdpPacket::new_checked(&mut ub[..n]) {
            h.udp += 1;
            black_box((u.src_port(), u.dst_port(), u.len(), u.checksum()));
            black_box((u.payload().len(), u.verify_checksum(A, B)));
            u.set_src_port(1);
            u.set_dst_port(2);
            u.fill_checksum(A, B);
            assert!(u.verify_checksum(A, B));
            u.payload_mut().fill(0);
        }
        let (mut tb, n) = copy(b);
        if let Ok(mut t) = TcpPacket::new_checked(&mut tb[..n]) {
            h.tcp += 1;
            black_box((t.src_port(), t.dst_port(), t.seq_number(), t.ack_number()));
            black_box((
                t.header_len(),
                t.flags(),
                t.syn(),
                t.ack(),
                t.fin(),
                t.rst(),
            ));
            black_box((t.psh(), t.window(), t.checksum(), t.urgent_pointer()));
            black_box((
                t.options().len(),
                t.payload().len(),
                t.verify_checksum(A, B),
            ));
            t.set_src_port(3);
            t.set_dst_port(4);
            t.fill_checksum(A, B);
            assert!(t.verify_checksum(A, B));
            t.payload_mut().fill(0);
        }
        let (mut cb, n) = copy(b);
        if let Ok(mut c) = IcmpPacket::new_checked(&mut cb[..n]) {
            h.icmp += 1;
            black_box((
                c.msg_type(),
                c.code(),
                c.checksum(),
                c.echo_ident(),
                c.echo_seq(),
            ));
            black_box((
                c.is_error(),
                c.is_echo(),
                c.data().len(),
                c.verify_checksum(),
            ));
            if let Ok(ip) = c.embedded() {
                h.icmp_embedded += 1;
                ip_read(&ip);
            }
            let was_valid = c.verify_checksum();
            let mut d = checksum::Delta::new();
            d.add16(c.echo_ident(), 7);
            c.set_echo_ident(7);
            c.update_checksum(d);
            assert_eq!(c.verify_checksum(), was_valid);
            c.set_msg_type(3);
            c.set_code(1);
            c.set_echo_seq(9);
            if let Ok(mut ip) = c.embedded_mut() {
                ip.set_src_addr(B);
            }
            c.data_mut().fill(0);
            c.fill_checksum();
            assert!(c.verify_checksum());
        }
    }

    #[test]
    fn random_buffers_never_panic() {
        let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
        let mut hits = Hits::default();
        let mut buf = [0u8; 256];
        for _ in 0..100_000 {
            let len = rng.below(buf.len() as u64 + 1);
            for x in buf[..len].iter_mut() {
                *x = rng.next() as u8;
            }
            let b = &mut buf[..len];
            // Steer some inputs past the first checks so the deeper paths
            // see random data too.
            let steer = rng.below(4);
            if steer >= 1 && len > 18 {
                let eth_type: u16 = if rng.below(2) == 0 { 0x0800 } else { 0x8100 };
                write_u16(b, 12, eth_type);
                write_u16(b, 16, 0x0800);
            }
            for start in [0usize, 14, 18] {
                if steer >= 2 && len > start + 4 {
                    b[start] = 0x40 | (5 + rng.below(3) as u8);
                    let tl = rng.below((len - start) as u64 + 8) as u16;
                    write_u16(b, start + 2, tl);
                }
                if steer == 3 && len > start + 20 {
                    b[start + 9] = [1u8, 6, 17][rng.below(3)];
                }
            }
            eth_all(b, &mut hits);
            ip_all(b, &mut hits);
            l4_all(b, &mut hits);
        }
        // The steering must actually reach the parsers, or the test proves
        // nothing.
        assert!(hits.eth > 10_000, "{hits:?}");
        assert!(hits.ip > 1_000, "{hits:?}");
        assert!(hits.embedded > 1_000, "{hits:?}");
        assert!(
            hits.udp > 10_000 && hits.tcp > 10_000 && hits.icmp > 10_000,
            "{hits:?}"
        );
        assert!(hits.icmp_embedded > 100, "{hits:?}");
        eprintln!("{hits:?}");
    }

    /// Unchecked views over short buffers: smoltcp-style, accessors may
    /// panic, but the range helpers that take lengths from header fields
    /// must not slice out of bounds.
    #[test]
    fn unchecked_payload_ranges_clamp() {
        let mut b = [
            0x4Fu8, 0, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert!(Ipv4Packet::new_unchecked(&b[..]).payload().is_empty());
        b[0] = 0x45;
        b[2] = 0;
        b[3] = 10; // total_len < header_len
        assert!(Ipv4Packet::new_unchecked(&b[..]).payload().is_empty());
        let t = [
            0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xF0, 0, 0, 0, 0, 0, 0, 0,
        ];
        let t = TcpPacket::new_unchecked(&t[..]);
        assert!(t.payload().is_empty() && t.options().is_empty());
        let u = [0u8, 0, 0, 0, 0, 3, 0, 0];
        assert!(UdpPacket::new_unchecked(&u[..]).payload().is_empty());
    }
}
