//! Cross-checks against the `etherparse` crate.

use crate::packet::*;
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
    assert_eq!(ip.protocol().0, eh.protocol.0);
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
    assert_eq!(ip.protocol(), ipv4::Protocol::TCP);
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
        prop_assert_eq!(p.protocol().0, h.protocol.0);
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
