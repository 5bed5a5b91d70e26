//! Egress MTU: "fragmentation needed" for DF datagrams that do not fit (both directions,
//! translated for their senders, rate limited), RFC 791 fragmentation of the others
//! (sizes, offsets, reassembly), the bounded egress pool, and TCP MSS clamping.

use super::util::*;
use crate::nat::ports::BlockPartition;
use crate::nat::{DropReason, Egress, Rules, Verdict};
use etherparse::{Ipv4Header, PacketBuilder, TcpHeader};
use std::sync::Arc;

const UDP_STATIC: &str = "static = [{ protocol = \"udp\", external = \"192.168.1.10:5353\", internal = \"10.0.0.7:53\" }]";
const TCP_STATIC: &str = "static = [{ protocol = \"tcp\", external = \"192.168.1.10:8080\", internal = \"10.0.0.7:80\" }]";

/// An engine whose outside link has MTU `outside` and whose inside interface has `inside`.
fn engine(keys: &str, outside: usize, inside: usize) -> H {
    let cfg = crate::config::parse(&conf(keys, "", "")).unwrap();
    let mut r = Rules::new(&cfg, Arc::new(BlockPartition::new(1)));
    r.set_mtus(outside, &[inside]);
    H::on_core(Arc::new(r), 0)
}

/// A payload of `n` bytes that shows where each byte was.
fn payload(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i * 7 + i / 256) as u8).collect()
}

/// A UDP datagram of `total` IP bytes, with DF as given (the builder sets it).
fn dgram(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, total: usize, df: bool) -> Vec<u8> {
    let mut f = udp_full(None, src, sport, dst, dport, 64, &payload(total - 28));
    set_df(&mut f, 14, df);
    f
}

fn set_df(f: &mut [u8], l3: usize, df: bool) {
    if df {
        f[l3 + 6] |= 0x40;
    } else {
        f[l3 + 6] &= !0x40;
    }
    fix_ip_checksum(f, l3);
}

fn ip_header(frame: &[u8]) -> Ipv4Header {
    let l3 = if frame[12..14] == [0x81, 0x00] {
        18
    } else {
        14
    };
    Ipv4Header::from_slice(&frame[l3..]).unwrap().0
}

/// The MTU an ICMP fragmentation needed carries (RFC 1191: bytes 6-7 of its header).
fn next_hop_mtu(frame: &[u8]) -> u16 {
    let l3 = if frame[12..14] == [0x81, 0x00] {
        18
    } else {
        14
    };
    let l4 = l3 + ip_header(frame).header_len();
    u16::from_be_bytes([frame[l4 + 6], frame[l4 + 7]])
}

fn reply(egress: Egress, nh: [u8; 4]) -> Verdict {
    Verdict::Reply {
        egress,
        next_hop: ip(nh),
    }
}

#[test]
fn df_from_inside_too_big_for_the_outside_link_gets_frag_needed_from_the_gateway() {
    let mut h = engine("", 1400, 1500);
    let sent = dgram(A, 5000, R1, 53, 1500, true);
    let (v, out) = h.run(&sent, IN0);
    assert_eq!(v, reply(Egress::Inside(0), A));
    let p = check(&out);
    assert_eq!(
        (p.src, p.dst, p.icmp_type, p.icmp_code),
        (ip(IN_GW), ip(A), 3, 4)
    );
    assert_eq!(next_hop_mtu(&out), 1400);
    // The quote is the datagram as A sent it: its own addresses and ports, its TTL.
    let q = p.quoted.unwrap();
    assert_eq!(
        (q.src, q.sport, q.dst, q.dport, q.ttl),
        (ip(A), 5000, ip(R1), 53, 64)
    );
    assert_eq!(q.bytes, l3(&sent)[..28]);
    assert_eq!(h.drops(DropReason::FragNeeded), 1);
    assert_eq!(h.e.counters().replies.get(), 1);
    assert!(h.drain().is_empty());
    // One that fits goes out as it is.
    let p = h.fwd(&dgram(A, 5000, R1, 53, 1400, true), IN0, fwd_out());
    assert_eq!((p.src, p.sport), (ip(POOL), 5000));
}

#[test]
fn df_from_outside_too_big_for_the_inside_link_gets_frag_needed_from_the_outside_address() {
    let mut h = engine(UDP_STATIC, 1500, 1400);
    let sent = dgram(R1, 40000, POOL, 5353, 1500, true);
    let (v, out) = h.run(&sent, OUTSIDE);
    assert_eq!(v, reply(Egress::Outside, GW));
    let p = check(&out);
    assert_eq!(
        (p.src, p.dst, p.icmp_type, p.icmp_code, p.vlan),
        (ip(OUT), ip(R1), 3, 4, None)
    );
    assert_eq!(next_hop_mtu(&out), 1400);
    // About what R1 sent: to the external address and port, not the inside host's.
    let q = p.quoted.unwrap();
    assert_eq!(
        (q.src, q.sport, q.dst, q.dport),
        (ip(R1), 40000, ip(POOL), 5353)
    );
    assert_eq!(q.bytes, l3(&sent)[..28]);
    assert_eq!(h.drops(DropReason::FragNeeded), 1);
}

#[test]
fn frag_needed_goes_back_on_the_senders_vlan() {
    let mut h = engine("vlan = 100", 1400, 1500);
    let mut sent = udp_full(Some(100), A, 5000, R1, 53, 64, &payload(1472));
    set_df(&mut sent, 18, true);
    let (v, out) = h.run(&sent, IN0);
    assert_eq!(v, reply(Egress::Inside(0), A));
    let p = check(&out);
    assert_eq!(
        (p.vlan, p.src, p.dst, p.icmp_code),
        (Some(100), ip(IN_GW), ip(A), 4)
    );
    assert_eq!(next_hop_mtu(&out), 1400);
    // Inbound towards the VLAN realm: the inside link's MTU counts, and the error leaves
    // untagged by the outside link.
    let mut h = engine(&format!("vlan = 100\n{UDP_STATIC}"), 1500, 1400);
    let (v, out) = h.run(&dgram(R1, 40000, POOL, 5353, 1420, true), OUTSIDE);
    assert_eq!(v, reply(Egress::Outside, GW));
    let p = check(&out);
    assert_eq!((p.vlan, p.src, p.icmp_code), (None, ip(OUT), 4));
    assert_eq!(next_hop_mtu(&out), 1400);
}

#[test]
fn a_vlan_device_with_a_smaller_mtu_counts_for_its_realm() {
    let cfg = crate::config::parse(&conf(&format!("vlan = 100\n{UDP_STATIC}"), "", "")).unwrap();
    let mut r = Rules::new(&cfg, Arc::new(BlockPartition::new(1)));
    r.set_mtus(1500, &[1500]);
    r.set_realm_mtu(0, 1300);
    assert_eq!(r.min_mtu, 1300);
    let mut h = H::on_core(Arc::new(r), 0);
    let (v, out) = h.run(&dgram(R1, 40000, POOL, 5353, 1400, true), OUTSIDE);
    assert_eq!(v, reply(Egress::Outside, GW));
    assert_eq!(next_hop_mtu(&out), 1300);
    let (v, first) = h.run(&dgram(R1, 40000, POOL, 5353, 1400, false), OUTSIDE);
    assert_eq!(v, fwd_in(SRV));
    let mut frags = vec![first];
    frags.extend(h.drain().into_iter().map(|(_, f)| f));
    assert_eq!(frags.len(), 2);
    assert!(frags.iter().all(|f| ip_header(f).total_len <= 1300));
    assert_eq!(&reassemble_check(&frags)[8..], &payload(1372)[..]);
}

#[test]
fn frag_needed_is_rate_limited_and_never_about_errors_or_later_fragments() {
    let mut h = engine("", 1400, 1500);
    let sent = dgram(A, 5000, R1, 53, 1500, true);
    let mut replies = 0;
    for _ in 0..1001 {
        match h.run(&sent, IN0).0 {
            Verdict::Reply { .. } => replies += 1,
            Verdict::Drop(DropReason::FragNeeded) => {}
            v => panic!("{v:?}"),
        }
    }
    assert_eq!(
        replies, 1000,
        "the ICMP rate limit (1000 per second and core)"
    );
    assert_eq!(h.drops(DropReason::FragNeeded), 1001);
    // A new second, new tokens.
    h.at(T0 + 1.0);
    assert!(matches!(h.run(&sent, IN0).0, Verdict::Reply { .. }));

    // An ICMP error too large with DF: dropped, no error about an error.
    let mut h = engine(UDP_STATIC, 1400, 1500);
    h.fwd(&udp(R1, 40000, POOL, 5353), OUTSIDE, fwd_in(SRV));
    let big_quote = dgram(R1, 40000, SRV, 53, 1400, false);
    let err = icmp_err(SRV, R1, 3, 3, l3(&big_quote));
    assert!(err.len() - 14 > 1400);
    h.drop(&err, IN0, DropReason::FragNeeded);
    assert_eq!(h.e.counters().replies.get(), 0);
}

#[test]
fn without_df_a_datagram_is_fragmented_to_fit_and_reassembles_to_the_translation() {
    for (outside, total) in [(1400usize, 1500usize), (576, 1500), (1280, 1281), (68, 200)] {
        let mut h = engine("", outside, 1500);
        let mut plain = engine("", crate::nat::rules::NO_MTU, 1500);
        let sent = dgram(A, 5000, R1, 53, total, false);
        let (pv, whole) = plain.run(&sent, IN0);
        assert_eq!(pv, fwd_out());
        let (v, first) = h.run(&sent, IN0);
        assert_eq!(v, fwd_out(), "mtu {outside}");
        let mut frags = vec![first];
        for (v, f) in h.drain() {
            assert_eq!(v, fwd_out());
            frags.push(f);
        }
        // Every fragment fits; all but the last carry a multiple of 8 bytes and MF.
        let per = (outside - 20) & !7;
        assert_eq!(frags.len(), (total - 20).div_ceil(per), "mtu {outside}");
        for (i, f) in frags.iter().enumerate() {
            let hd = ip_header(f);
            assert!(hd.total_len as usize <= outside);
            assert_eq!(f.len(), 14 + hd.total_len as usize);
            assert_eq!(hd.fragment_offset.value() as usize * 8, i * per);
            assert_eq!(hd.more_fragments, i + 1 < frags.len());
            assert!(!hd.dont_fragment);
            let p = check(f);
            assert_eq!((p.src, p.dst, p.ttl, p.ident), (ip(POOL), ip(R1), 63, 0));
        }
        // Reassembled, the datagram natgw would have sent whole on a large link.
        let data = reassemble_check(&frags);
        assert_eq!(&data[..], &whole[14 + 20..], "mtu {outside}");
        assert_eq!(h.e.counters().fragmented.get(), 1);
        assert_eq!(h.e.counters().fragments_made.get(), frags.len() as u64);
    }
}

#[test]
fn inbound_without_df_is_fragmented_for_the_inside_link_with_its_vlan() {
    let mut h = engine(&format!("vlan = 100\n{UDP_STATIC}"), 1500, 1000);
    let sent = dgram(R1, 40000, POOL, 5353, 1500, false);
    let (v, first) = h.run(&sent, OUTSIDE);
    assert_eq!(v, fwd_in(SRV));
    let mut frags = vec![first];
    frags.extend(h.drain().into_iter().map(|(v, f)| {
        assert_eq!(v, fwd_in(SRV));
        f
    }));
    assert_eq!(frags.len(), 2);
    for f in &frags {
        let p = check(f);
        assert_eq!((p.vlan, p.dst), (Some(100), ip(SRV)));
        assert!(ip_header(f).total_len <= 1000);
    }
    let data = reassemble_check(&frags);
    assert_eq!(u16::from_be_bytes([data[2], data[3]]), 53);
    assert_eq!(&data[8..], &payload(1472)[..]);
}

#[test]
fn fragments_are_fragmented_again_keeping_their_offsets() {
    let mut h = engine("", 600, 1500);
    let sent = dgram(A, 5000, R1, 53, 1500, false);
    // Arriving in two fragments of 1000 and 480 payload bytes.
    let parts = fragment(&sent, 1000, 0x77);
    assert_eq!(parts.len(), 2);
    let mut out = Vec::new();
    for p in &parts {
        let (v, f) = h.run(p, IN0);
        assert_eq!(v, fwd_out());
        out.push(f);
        out.extend(h.drain().into_iter().map(|(_, f)| f));
    }
    // 1000 -> 576 + 424; 480 stays whole (500 bytes).
    let offs: Vec<(usize, bool)> = out
        .iter()
        .map(|f| {
            let hd = ip_header(f);
            (hd.fragment_offset.value() as usize * 8, hd.more_fragments)
        })
        .collect();
    assert_eq!(offs, [(0, true), (576, true), (1000, false)]);
    let data = reassemble_check(&out);
    assert_eq!(&data[8..], &payload(1472)[..]);
    assert!(out.iter().all(|f| ip_header(f).identification == 0x77));
}

#[test]
fn only_copied_options_go_into_later_fragments() {
    let mut h = engine("", 600, 1500);
    // Options: record route (not copied, 11 bytes), NOP, then a copied option (type 0x88,
    // stream id, 4 bytes): 16 bytes, IHL 9.
    let opts = [7u8, 11, 4, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x88, 4, 0x12, 0x34];
    let mut v = Vec::new();
    let mut iph = Ipv4Header::new(1000 + 8, 64, etherparse::IpNumber::UDP, A, R1).unwrap();
    iph.options = opts[..].try_into().unwrap();
    iph.dont_fragment = false;
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ip(etherparse::IpHeaders::Ipv4(iph, Default::default()))
        .udp(5000, 53)
        .write(&mut v, &payload(1000))
        .unwrap();
    let (verdict, first) = h.run(&v, IN0);
    assert_eq!(verdict, fwd_out());
    let mut frags = vec![first];
    frags.extend(h.drain().into_iter().map(|(_, f)| f));
    assert_eq!(ip_header(&frags[0]).options.as_slice(), &opts[..]);
    for f in &frags[1..] {
        assert_eq!(ip_header(f).options.as_slice(), &[0x88, 4, 0x12, 0x34]);
        assert!(ip_header(f).total_len <= 600);
    }
    let data = reassemble_check(&frags);
    assert_eq!(&data[8..], &payload(1000)[..]);
}

#[test]
fn the_fast_path_leaves_oversized_packets_of_established_flows_to_the_full_path() {
    let mut h = engine(UDP_STATIC, 1400, 1400);
    for _ in 0..3 {
        h.fwd(&udp(A, 5000, R1, 53), IN0, fwd_out());
        h.fwd(&udp(R1, 53, POOL, 5000), OUTSIDE, fwd_in(A));
    }
    let (v, _) = h.run(&dgram(A, 5000, R1, 53, 1500, false), IN0);
    assert_eq!(v, fwd_out());
    assert_eq!(h.drain().len(), 1);
    let (v, _) = h.run(&dgram(R1, 53, POOL, 5000, 1500, false), OUTSIDE);
    assert_eq!(v, fwd_in(A));
    assert_eq!(h.drain().len(), 1);
    assert_eq!(h.e.counters().fragmented.get(), 2);
    let (v, _) = h.run(&dgram(A, 5000, R1, 53, 1401, true), IN0);
    assert_eq!(v, reply(Egress::Inside(0), A));
    let (v, out) = h.run(&dgram(R1, 53, POOL, 5000, 1401, true), OUTSIDE);
    assert_eq!(v, reply(Egress::Outside, GW));
    assert_eq!(check(&out).quoted.unwrap().dport, 5000);
}

#[test]
fn the_egress_fragment_pool_is_bounded_and_counted() {
    let mut h = engine("", 1400, 1500);
    let sent = dgram(A, 5000, R1, 53, 1500, false);
    let slots = crate::nat::frag::OUT_SLOTS;
    for _ in 0..slots {
        assert_eq!(h.run(&sent, IN0).0, fwd_out());
    }
    h.drop(&sent, IN0, DropReason::FragmentOutFull);
    assert_eq!(h.drain().len(), slots);
    assert_eq!(h.run(&sent, IN0).0, fwd_out());
    assert_eq!(h.drain().len(), 1);
}

// ---- MSS clamping ----------------------------------------------------------------------

/// A TCP segment with raw option bytes (a multiple of 4 long).
fn tcp_opts(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8, opts: &[u8]) -> Vec<u8> {
    let mut t = TcpHeader::new(sport, dport, 1000, 8192);
    t.syn = flags & SYN != 0;
    if flags & ACK != 0 {
        t.ack = true;
        t.acknowledgment_number = 77;
    }
    t.set_options_raw(opts).unwrap();
    let mut v = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, dst, 64)
        .tcp_header(t)
        .write(&mut v, PAYLOAD)
        .unwrap();
    v
}

/// The MSS option of a checked TCP frame (None: it has none).
fn mss_of(frame: &[u8]) -> Option<u16> {
    let l4 = 14 + ip_header(frame).header_len();
    let (t, _) = TcpHeader::from_slice(&frame[l4..]).unwrap();
    t.options_iterator().find_map(|o| match o {
        Ok(etherparse::TcpOptionElement::MaximumSegmentSize(m)) => Some(m),
        _ => None,
    })
}

const MSS_1460: [u8; 4] = [2, 4, 0x05, 0xb4];

#[test]
fn mss_is_clamped_in_syn_and_syn_ack_both_ways_with_checksums_right() {
    let mut h = engine(&format!("mss_clamp = 1360\n{TCP_STATIC}"), 1500, 1500);
    // Outbound SYN, inbound SYN-ACK.
    let out = h.fwd(&tcp_opts(A, 4000, R1, 443, SYN, &MSS_1460), IN0, fwd_out());
    assert_eq!(out.tcp_flags & SYN, SYN);
    let syn = h.run(&tcp_opts(A, 4001, R1, 443, SYN, &MSS_1460), IN0).1;
    assert_eq!(mss_of(&syn), Some(1360));
    let back = tcp_opts(R1, 443, POOL, 4001, SYN | ACK, &MSS_1460);
    let (v, f) = h.run(&back, OUTSIDE);
    assert_eq!(v, fwd_in(A));
    check(&f);
    assert_eq!(mss_of(&f), Some(1360));
    // Inbound SYN through the port forward, outbound SYN-ACK.
    let (v, f) = h.run(&tcp_opts(R1, 5555, POOL, 8080, SYN, &MSS_1460), OUTSIDE);
    assert_eq!(v, fwd_in(SRV));
    check(&f);
    assert_eq!(mss_of(&f), Some(1360));
    let (v, f) = h.run(&tcp_opts(SRV, 80, R1, 5555, SYN | ACK, &MSS_1460), IN0);
    assert_eq!(v, fwd_out());
    check(&f);
    assert_eq!(mss_of(&f), Some(1360));
    assert_eq!(h.e.counters().mss_clamped.get(), 5);
    // A smaller MSS stays, and so does a segment without the option or without SYN.
    let small = [2, 4, 0x04, 0x00];
    let f = h.run(&tcp_opts(A, 4002, R1, 443, SYN, &small), IN0).1;
    assert_eq!(mss_of(&f), Some(1024));
    let f = h.run(&tcp_opts(A, 4003, R1, 443, SYN, &[]), IN0).1;
    assert_eq!(mss_of(&f), None);
    let f = h.run(&tcp_opts(A, 4001, R1, 443, ACK, &MSS_1460), IN0).1;
    check(&f);
    assert_eq!(mss_of(&f), Some(1460));
    assert_eq!(h.e.counters().mss_clamped.get(), 5);
}

#[test]
fn mss_at_an_odd_offset_and_after_other_options_keeps_the_checksum_right() {
    let mut h = engine("mss_clamp = 1300", 1500, 1500);
    for (i, opts) in [
        // NOP, MSS (value at odd offset 23), NOP NOP NOP.
        vec![1, 2, 4, 0x05, 0xb4, 1, 1, 1],
        // Window scale, SACK permitted, then MSS.
        vec![3, 3, 7, 4, 2, 2, 4, 0xff, 0xff, 1, 1, 1],
        // Timestamps (10 bytes) then MSS at an odd offset.
        vec![8, 10, 1, 2, 3, 4, 5, 6, 7, 8, 1, 2, 4, 0x23, 0x45, 0],
    ]
    .into_iter()
    .enumerate()
    {
        let f = h
            .run(&tcp_opts(A, 4000 + i as u16, R1, 443, SYN, &opts), IN0)
            .1;
        check(&f);
        assert_eq!(mss_of(&f), Some(1300), "options {opts:?}");
    }
    // A malformed option list (length 0) is left alone.
    let f = h
        .run(
            &tcp_opts(A, 4100, R1, 443, SYN, &[5, 0, 2, 4, 0x05, 0xb4, 1, 1]),
            IN0,
        )
        .1;
    check(&f);
    assert_eq!(h.e.counters().mss_clamped.get(), 3);
}

#[test]
fn mss_auto_follows_the_smaller_link_and_off_changes_nothing() {
    let mut h = engine("mss_clamp = \"auto\"", 1400, 1500);
    let f = h.run(&tcp_opts(A, 4000, R1, 443, SYN, &MSS_1460), IN0).1;
    assert_eq!(mss_of(&f), Some(1360));
    let f = h
        .run(
            &tcp_opts(R1, 443, POOL, 4000, SYN | ACK, &MSS_1460),
            OUTSIDE,
        )
        .1;
    check(&f);
    assert_eq!(mss_of(&f), Some(1360));
    let mut h = engine("mss_clamp = \"auto\"", 1500, 1280);
    let f = h.run(&tcp_opts(A, 4000, R1, 443, SYN, &MSS_1460), IN0).1;
    assert_eq!(mss_of(&f), Some(1240));
    for keys in ["", "mss_clamp = \"off\""] {
        let mut h = engine(keys, 1400, 1400);
        let f = h.run(&tcp_opts(A, 4000, R1, 443, SYN, &MSS_1460), IN0).1;
        assert_eq!(mss_of(&f), Some(1460));
        assert_eq!(h.e.counters().mss_clamped.get(), 0);
    }
}

// ---- robustness ------------------------------------------------------------------------

use proptest::prelude::*;

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]
    /// Damaged and odd frames through small links: no panic, and whatever is forwarded fits.
    #[test]
    fn any_frame_through_small_links_never_panics_and_what_leaves_fits(
        outside in 68usize..1500,
        inside in 68usize..1500,
        total in 28usize..1700,
        df in any::<bool>(),
        syn in any::<bool>(),
        from_outside in any::<bool>(),
        flips in proptest::collection::vec((0usize..1720, any::<u8>()), 0..6),
        fix in any::<bool>(),
    ) {
        let mut h = engine(&format!("mss_clamp = \"auto\"\n{UDP_STATIC}"), outside, inside);
        h.fwd(&udp(R1, 40000, POOL, 5353), OUTSIDE, fwd_in(SRV));
        let mut f = if syn {
            let opts: Vec<u8> = [1u8, 2, 4, 0x05, 0xb4, 1, 1, 1].repeat((total / 200).min(5));
            tcp_opts(A, 4000, R1, 443, SYN, &opts)
        } else if from_outside {
            dgram(R1, 40000, POOL, 5353, total, df)
        } else {
            dgram(A, 5000, R1, 53, total, df)
        };
        for (at, b) in flips {
            if let Some(x) = f.get_mut(at) {
                *x ^= b;
            }
        }
        if fix && f.len() >= 34 && f[14] >> 4 == 4 {
            let ihl = usize::from(f[14] & 0xf) * 4;
            if ihl >= 20 && f.len() >= 14 + ihl {
                fix_ip_checksum(&mut f, 14);
            }
        }
        let ingress = if from_outside { OUTSIDE } else { IN0 };
        let (v, out) = h.run(&f, ingress);
        let mut sent = vec![(v, out)];
        sent.extend(h.drain());
        for (v, out) in sent {
            if let Verdict::Forward { egress, .. } = v {
                let mtu = if egress == Egress::Outside { outside } else { inside };
                let l3 = if out[12..14] == [0x81, 0x00] { 18 } else { 14 };
                prop_assert!(out.len() - l3 <= mtu, "{} bytes onto a {mtu}-byte link", out.len() - l3);
            }
        }
    }
}
