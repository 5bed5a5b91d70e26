//! Malformed input, a bounded fuzz run and a checksum property test.

use super::util::*;
use crate::nat::rng::Rng;
use crate::nat::{DropReason, Ingress, Verdict};
use proptest::prelude::*;

const STATICS: &str = "static = [{ protocol = \"tcp\", external = \"192.168.1.10:8080\", internal = \"10.0.0.7:80\" }]\n\
    one_to_one = [{ external = \"192.168.1.50\", internal = \"10.0.0.25\" }]";

fn realistic() -> H {
    H::new(&conf(STATICS, "", "[fragments]\nmax_held = 16\n"))
}

/// Valid frames of every kind the engine handles, with the ingress each belongs to.
fn corpus(h: &mut H) -> Vec<(Vec<u8>, Ingress)> {
    let p = h.fwd(&udp(A, 5000, R1, 53), IN0, fwd_out());
    let t = h.fwd(&tcp(A, 4000, R1, 80, SYN), IN0, fwd_out());
    let e = h.fwd(&echo(A, R1, 77, true), IN0, fwd_out());
    let big: Vec<u8> = (0..100u8).collect();
    let frags = fragment(&udp_full(None, A, 5000, R1, 53, 64, &big), 48, 3);
    let in_frags = fragment(&udp_full(None, R1, 53, POOL, p.sport, 64, &big), 48, 4);
    let mut v = vec![
        (udp(A, 5000, R1, 53), IN0),
        (udp(R1, 53, POOL, p.sport), OUTSIDE),
        (tcp(A, 4000, R1, 80, ACK), IN0),
        (tcp(R1, 80, POOL, t.sport, SYN | ACK), OUTSIDE),
        (tcp(R1, 80, POOL, 8080, SYN), OUTSIDE),
        (echo(A, R1, 77, true), IN0),
        (echo(R1, POOL, e.sport, false), OUTSIDE),
        (echo(R1, OUT, 1, true), OUTSIDE),
        (echo(A, IN_GW, 1, true), IN0),
        (
            icmp_err(ROUTER, POOL, 11, 0, l3(&udp(POOL, p.sport, R1, 53))),
            OUTSIDE,
        ),
        (
            icmp_err(
                ROUTER,
                POOL,
                11,
                0,
                &l3(&echo(POOL, R1, e.sport, true))[..28],
            ),
            OUTSIDE,
        ),
        (icmp_err(A, R1, 3, 3, l3(&udp(R1, 53, A, 5000))), IN0),
        (udp_full(None, A, 5000, R1, 53, 1, PAYLOAD), IN0),
        (udp_full(None, R1, 53, POOL, p.sport, 1, PAYLOAD), OUTSIDE),
        (tcp(A, 5555, POOL, 8080, SYN), IN0),
    ];
    for f in frags {
        v.push((f, IN0));
    }
    for f in in_frags {
        v.push((f, OUTSIDE));
    }
    v
}

#[test]
fn every_truncation_is_dropped_or_passed() {
    let mut h = realistic();
    let frames = corpus(&mut h);
    for (f, ing) in &frames {
        for len in 0..f.len() {
            let (v, _) = h.run(&f[..len], *ing);
            match v {
                Verdict::Drop(r) => {
                    let before = h.drops(r);
                    // Counted: running it again adds exactly one to the same reason.
                    assert_eq!(h.run(&f[..len], *ing).0, v);
                    assert_eq!(h.drops(r), before + 1, "{r:?} counted");
                }
                Verdict::ToKernel => {}
                v => panic!("len {len} of {f:02x?} gave {v:?}"),
            }
        }
    }
    // Frames whose buffer is longer than their IP packet (Ethernet padding) still translate.
    let mut padded = udp(A, 5000, R1, 53);
    padded.extend_from_slice(&[0; 20]);
    h.fwd(&padded, IN0, fwd_out());
    h.e.check_invariants();
}

#[test]
fn arp_and_ipv6_go_to_the_kernel() {
    let mut h = realistic();
    let mut arp = Vec::new();
    etherparse::PacketBuilder::ethernet2([2; 6], [0xff; 6])
        .arp(
            etherparse::ArpPacket::new(
                etherparse::ArpHardwareId::ETHERNET,
                etherparse::EtherType::IPV4,
                etherparse::ArpOperation::REQUEST,
                &[2; 6],
                &A,
                &[0; 6],
                &IN_GW,
            )
            .unwrap(),
        )
        .write(&mut arp)
        .unwrap();
    let mut v6 = Vec::new();
    etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv6([1; 16], [2; 16], 64)
        .udp(1, 2)
        .write(&mut v6, b"x")
        .unwrap();
    for ing in [IN0, OUTSIDE] {
        for f in [&arp, &v6] {
            assert_eq!(h.run(f, ing).0, Verdict::ToKernel);
        }
    }
    assert_eq!(h.e.counters().to_kernel.get(), 4);
}

#[test]
fn malformed_headers_have_reasons() {
    let mut h = realistic();
    let good = udp(A, 5000, R1, 53);
    let mut f = good.clone();
    f[14 + 10] ^= 0xff;
    h.drop(&f, IN0, DropReason::BadIpChecksum);
    let mut f = good.clone();
    f[14] = 0x44; // IHL 4
    h.drop(&f, IN0, DropReason::BadIpHeader);
    let mut f = good.clone();
    f[14] = 0x65; // version 6 in an IPv4 ethertype
    h.drop(&f, IN0, DropReason::BadIpHeader);
    let mut f = good.clone();
    f[14 + 3] += 40; // total length beyond the frame
    fix_ip_checksum(&mut f, 14);
    h.drop(&f, IN0, DropReason::Truncated);
    let mut f = good.clone();
    f[14 + 20 + 4] = 0;
    f[14 + 20 + 5] = 4; // UDP length 4
    h.drop(&f, IN0, DropReason::BadL4Header);
    let mut f = tcp(A, 1, R1, 2, SYN);
    f[14 + 20 + 12] = 0x40; // data offset 4
    h.drop(&f, IN0, DropReason::BadL4Header);
    // An ICMP error whose quote is cut short.
    let e = icmp_err(ROUTER, POOL, 3, 1, &l3(&udp(POOL, 5000, R1, 53))[..24]);
    h.drop(&e, OUTSIDE, DropReason::Truncated);
}

fn mutate(rng: &mut Rng, f: &[u8]) -> Vec<u8> {
    let mut v = f.to_vec();
    match rng.below(4) {
        0 => {
            for _ in 0..=rng.below(4) {
                let i = rng.below(v.len() as u32) as usize;
                v[i] ^= 1 << rng.below(8);
            }
        }
        1 => v.truncate(rng.below(v.len() as u32 + 1) as usize),
        2 => {
            // Bit flips with the IP checksum repaired, so they reach the deeper layers.
            let l3 = if v.len() > 14 && v[12..14] == [0x81, 0] {
                18
            } else {
                14
            };
            for _ in 0..=rng.below(3) {
                let i = l3 + rng.below((v.len() - l3) as u32) as usize;
                v[i] ^= 1 << rng.below(8);
            }
            if v.len() >= l3 + 20 && v[l3] >> 4 == 4 {
                let ihl = ((v[l3] & 0xf) as usize * 4).max(20);
                if v.len() >= l3 + ihl {
                    fix_ip_checksum(&mut v, l3);
                }
            }
        }
        _ => {
            let n = rng.below(64) as usize;
            for _ in 0..n {
                v.push(rng.next_u64() as u8);
            }
        }
    }
    v
}

#[test]
fn fuzz_200k_frames() {
    let mut h = realistic();
    let frames = corpus(&mut h);
    let mut rng = Rng::new(0x5eed);
    let rx0 = h.e.counters().rx_frames.get();
    let ingresses = [OUTSIDE, IN0, Ingress::Inside(1), Ingress::Hairpin];
    let n = 200_000u64;
    let mut buf = vec![0u8; 4096];
    for i in 0..n {
        let ing = ingresses[rng.below(4) as usize];
        let f = if rng.below(4) == 0 {
            let len = rng.below(200) as usize;
            let mut v: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            if len >= 14 && rng.below(2) == 0 {
                v[12] = 8;
                v[13] = 0;
                if len > 14 {
                    v[14] = 0x45;
                }
            }
            v
        } else {
            let (f, _) = &frames[rng.below(frames.len() as u32) as usize];
            mutate(&mut rng, f)
        };
        // Random headroom 0..8, tailroom 0..100.
        let off = rng.below(9) as usize;
        let room = rng.below(101) as usize;
        let total = off + f.len() + room;
        buf[..total].fill(0);
        buf[off..off + f.len()].copy_from_slice(&f);
        h.t = T0 + i as f64 * 0.01;
        let (v, out) = h.run_buf(&mut buf[..total], off, f.len(), ing);
        if let Verdict::Forward { .. } | Verdict::Reply { .. } = v {
            // Whatever the engine emits must itself be well formed.
            let l3 = if out.len() > 14 && out[12..14] == [0x81, 0] {
                18
            } else {
                14
            };
            assert_eq!(
                crate::packet::checksum::checksum(&out[l3..l3 + ((out[l3] & 0xf) as usize * 4)]),
                0,
                "emitted IP header checksum for {f:02x?} -> {out:02x?}"
            );
        }
        if i % 10_000 == 0 {
            h.e.drain_ready(|_, _| {});
            h.e.check_invariants();
        }
    }
    h.e.drain_ready(|_, _| {});
    let c = h.e.counters().clone();
    assert_eq!(c.rx_frames.get() - rx0, n);
    h.tick(h.t);
    let mut listed = 0;
    h.e.for_each_session(|_| listed += 1);
    assert_eq!(listed, h.e.session_count());
    h.e.check_invariants();
    assert!(
        c.in2out.get() > 1000 && c.out2in.get() > 1000,
        "fuzz reached translation"
    );
}

/// (kind, src, sport, dst, dport, ttl, payload, zero UDP checksum)
type FrameSpec = (u8, [u8; 4], u16, [u8; 4], u16, u8, Vec<u8>, bool);

fn any_frame() -> impl Strategy<Value = FrameSpec> {
    (
        0u8..3,
        (2u8..255).prop_map(|b| [10, 0, 0, b]),
        1u16..,
        any::<[u8; 4]>().prop_filter("not natgw, not martian", |a| {
            a[0] != 10
                && a[0] != 0
                && a[0] != 127
                && a[0] < 224
                && *a != OUT
                && !(a[0] == 192 && a[1] == 168)
        }),
        1u16..,
        2u8..,
        proptest::collection::vec(any::<u8>(), 0..64),
        any::<bool>(),
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]
    #[test]
    fn translated_checksums_always_verify(
        (kind, src, sport, dst, dport, ttl, payload, zero_udp) in any_frame()
    ) {
        let mut h = H::std();
        let f = match kind {
            0 => {
                let mut f = udp_full(None, src, sport, dst, dport, ttl, &payload);
                if zero_udp { f[40] = 0; f[41] = 0; }
                f
            }
            1 => {
                let mut f = tcp_ttl(src, sport, dst, dport, SYN, ttl);
                f.truncate(14 + 40);
                f.extend_from_slice(&payload);
                let n = (f.len() - 14) as u16;
                f[16..18].copy_from_slice(&n.to_be_bytes());
                fix_ip_checksum(&mut f, 14);
                let s = crate::packet::checksum::pseudo_header_sum(ip(src), ip(dst), crate::packet::ipv4::Protocol::TCP, n - 20);
                f[14 + 36] = 0; f[14 + 37] = 0;
                let c = !crate::packet::checksum::fold(s + crate::packet::checksum::sum(&f[34..]));
                f[14 + 36..14 + 38].copy_from_slice(&c.to_be_bytes());
                f
            }
            _ => {
                let mut v = Vec::new();
                etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
                    .ipv4(src, dst, ttl)
                    .icmpv4_echo_request(sport, dport)
                    .write(&mut v, &payload)
                    .unwrap();
                v
            }
        };
        check(&f);
        let (v, out) = h.run(&f, IN0);
        prop_assert_eq!(v, fwd_out());
        let p = check(&out);
        prop_assert_eq!((p.src, p.dst, p.ttl), (ip(POOL), ip(dst), ttl - 1));
        if kind == 0 && zero_udp { prop_assert_eq!(p.l4_checksum, 0); }
        // The reply.
        let r = match kind {
            0 => udp_full(None, dst, dport, POOL, p.sport, ttl, &payload),
            1 => tcp_ttl(dst, dport, POOL, p.sport, SYN | ACK, ttl),
            _ => {
                let mut v = Vec::new();
                etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
                    .ipv4(dst, POOL, ttl)
                    .icmpv4_echo_reply(p.sport, dport)
                    .write(&mut v, &payload)
                    .unwrap();
                v
            }
        };
        let (v, back) = h.run(&r, OUTSIDE);
        prop_assert_eq!(v, fwd_in(src));
        let q = check(&back);
        prop_assert_eq!((q.src, q.dst, q.ttl), (ip(dst), ip(src), ttl - 1));
        let port = if kind == 2 { q.sport } else { q.dport };
        prop_assert_eq!(port, sport);
    }
}
