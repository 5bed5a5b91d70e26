//! ICMP: error translation both ways, bad checksums, TTL expiry, echo replies from natgw.

use super::util::*;
use crate::nat::{DropReason, Egress, Verdict};

const UDP_STATIC: &str = "static = [{ protocol = \"udp\", external = \"192.168.1.10:5353\", internal = \"10.0.0.7:53\" }]";

/// Sessions and their expiry, to prove errors do not touch them.
fn state(h: &H) -> (usize, Vec<u32>) {
    (h.e.session_count(), h.expiries())
}

#[test]
fn port_unreachable_from_inside_about_inbound_flow() {
    let mut h = H::new(&conf(UDP_STATIC, "", ""));
    let inbound = udp(R1, 40000, POOL, 5353);
    let p = h.fwd(&inbound, OUTSIDE, fwd_in(SRV));
    assert_eq!((p.dst, p.dport), (ip(SRV), 53));
    // The server answers with a port unreachable quoting what it received.
    let delivered = udp_full(None, R1, 40000, SRV, 53, 63, PAYLOAD);
    let err = icmp_err(SRV, R1, 3, 3, l3(&delivered));
    h.at(T0 + 50.0);
    let before = state(&h);
    let p = h.fwd(&err, IN0, fwd_out());
    assert_eq!(
        (p.src, p.dst, p.icmp_type, p.icmp_code, p.ttl),
        (ip(POOL), ip(R1), 3, 3, 63)
    );
    let q = p.quoted.unwrap();
    assert_eq!(
        (q.src, q.sport, q.dst, q.dport, q.proto),
        (ip(R1), 40000, ip(POOL), 5353, 17)
    );
    // The quote is now what R1 sent, byte for byte except the TTL natgw decremented.
    let mut want = l3(&inbound).to_vec();
    want[8] -= 1;
    fix_ip_checksum(&mut want, 0);
    assert_eq!(q.bytes, want);
    assert_eq!(state(&h), before, "errors never create or refresh sessions");
    assert_eq!(h.e.counters().icmp_errors_translated.get(), 1);
    h.e.check_invariants();
}

#[test]
fn time_exceeded_from_outside_router_about_udp() {
    let mut h = H::std();
    let out = h.fwd(&udp(A, 5000, R1, 53), IN0, fwd_out());
    let p = out.clone();
    // What the router saw: the translated packet, TTL run down to 1.
    let mut quote = {
        let f = udp_full(None, POOL, p.sport, R1, 53, 1, PAYLOAD);
        l3(&f).to_vec()
    };
    let full = quote.clone();
    quote.truncate(28); // routers often quote only header + 8 bytes
    h.at(T0 + 30.0);
    let before = state(&h);
    for q in [full, quote] {
        let err = icmp_err(ROUTER, POOL, 11, 0, &q);
        let p = h.fwd(&err, OUTSIDE, fwd_in(A));
        assert_eq!(
            (p.src, p.dst, p.icmp_type, p.ttl),
            (ip(ROUTER), ip(A), 11, 63)
        );
        let q = p.quoted.unwrap();
        assert_eq!(
            (q.src, q.sport, q.dst, q.dport, q.ttl),
            (ip(A), 5000, ip(R1), 53, 1)
        );
    }
    assert_eq!(state(&h), before);
}

#[test]
fn time_exceeded_about_outbound_echo() {
    let mut h = H::std();
    h.fwd(&echo(B, R1, 77, true), IN0, fwd_out());
    let p = h.fwd(&echo(A, R1, 77, true), IN0, fwd_out());
    let ext_id = p.sport;
    assert_ne!(ext_id, 77);
    let seen = {
        let mut f = echo(POOL, R1, ext_id, true);
        f[14 + 8] = 1;
        fix_ip_checksum(&mut f, 14);
        l3(&f).to_vec()
    };
    let before = state(&h);
    let p = h.fwd(&icmp_err(ROUTER, POOL, 11, 0, &seen), OUTSIDE, fwd_in(A));
    let q = p.quoted.unwrap();
    assert_eq!((q.src, q.dst, q.proto, q.sport), (ip(A), ip(R1), 1, 77));
    assert_eq!(state(&h), before);
    // An error about a flow natgw does not know is dropped and counted.
    let unknown = l3(&echo(POOL, R1, 4242, true)).to_vec();
    h.drop(
        &icmp_err(ROUTER, POOL, 11, 0, &unknown),
        OUTSIDE,
        DropReason::IcmpNoSession,
    );
}

#[test]
fn icmp_errors_with_bad_checksums_dropped() {
    let mut h = H::std();
    let p = h.fwd(&udp(A, 5000, R1, 53), IN0, fwd_out());
    let seen = l3(&udp(POOL, p.sport, R1, 53)).to_vec();
    let good = icmp_err(ROUTER, POOL, 3, 1, &seen);
    let mut bad_icmp = good.clone();
    bad_icmp[14 + 20 + 8 + 30] ^= 0x40; // payload of the quote: ICMP checksum now wrong
    h.drop(&bad_icmp, OUTSIDE, DropReason::IcmpBadChecksum);
    let mut bad_inner = seen.clone();
    bad_inner[10] ^= 1;
    let e = icmp_err(ROUTER, POOL, 3, 1, &bad_inner); // ICMP checksum right, inner IP wrong
    h.drop(&e, OUTSIDE, DropReason::IcmpBadChecksum);
    assert_eq!(h.drops(DropReason::IcmpBadChecksum), 2);
    // From inside too.
    h.fwd(&udp(R1, 53, POOL, 5000), OUTSIDE, fwd_in(A));
    let delivered = l3(&udp(R1, 53, A, 5000)).to_vec();
    let mut bad = icmp_err(A, R1, 3, 3, &delivered);
    bad[14 + 20 + 8 + 30] ^= 0x40;
    h.drop(&bad, IN0, DropReason::IcmpBadChecksum);
    let mut bad_inner = delivered.clone();
    bad_inner[10] ^= 1;
    h.drop(
        &icmp_err(A, R1, 3, 3, &bad_inner),
        IN0,
        DropReason::IcmpBadChecksum,
    );
    h.fwd(&good, OUTSIDE, fwd_in(A));
    h.e.check_invariants();
}

#[test]
fn ttl_decremented_and_expired_inside() {
    let mut h = H::std();
    let p = h.fwd(&udp_full(None, A, 5000, R1, 53, 2, PAYLOAD), IN0, fwd_out());
    assert_eq!(p.ttl, 1);
    let orig = udp_full(None, A, 5000, R1, 53, 1, PAYLOAD);
    let (v, out) = h.run(&orig, IN0);
    assert_eq!(
        v,
        Verdict::Reply {
            egress: Egress::Inside(0),
            next_hop: ip(A)
        }
    );
    let p = check(&out);
    assert_eq!(
        (p.src, p.dst, p.icmp_type, p.icmp_code),
        (ip(IN_GW), ip(A), 11, 0)
    );
    let q = p.quoted.unwrap();
    assert_eq!(
        q.bytes,
        l3(&orig)[..28].to_vec(),
        "quote = original header + 8"
    );
    assert_eq!(h.drops(DropReason::TtlExceeded), 1);
    assert_eq!(h.e.counters().replies.get(), 1);
    // A TTL-expired ICMP error gets no error back.
    let inner = l3(&udp(R1, 53, A, 5000)).to_vec();
    let mut e = icmp_err(A, R1, 3, 3, &inner);
    e[14 + 8] = 1;
    fix_ip_checksum(&mut e, 14);
    h.drop(&e, IN0, DropReason::TtlExceeded);
}

#[test]
fn ttl_expired_outside() {
    let mut h = H::std();
    let p = h.fwd(&udp(A, 5000, R1, 53), IN0, fwd_out());
    let orig = udp_full(None, R1, 53, POOL, p.sport, 1, PAYLOAD);
    let before = state(&h);
    let (v, out) = h.run(&orig, OUTSIDE);
    assert_eq!(
        v,
        Verdict::Reply {
            egress: Egress::Outside,
            next_hop: ip(GW)
        }
    );
    let p = check(&out);
    assert_eq!((p.src, p.dst, p.icmp_type), (ip(OUT), ip(R1), 11));
    assert_eq!(p.quoted.unwrap().bytes, l3(&orig)[..28].to_vec());
    assert_eq!(state(&h), before);
}

#[test]
fn time_exceeded_without_tailroom() {
    let mut h = H::std();
    let orig = udp_full(None, A, 5000, R1, 53, 1, b"");
    let mut buf = orig.clone();
    let n = buf.len();
    let (v, _) = h.run_buf(&mut buf, 0, n, IN0);
    assert_eq!(v, Verdict::Drop(DropReason::NoHeadroom));
    assert_eq!(h.drops(DropReason::NoHeadroom), 1);
}

#[test]
fn echo_to_own_addresses_answered() {
    let mut h = H::new(&conf(UDP_STATIC, "", ""));
    for (src, dst, ing, egress, nh) in [
        (A, IN_GW, IN0, Egress::Inside(0), A),
        (A, OUT, IN0, Egress::Inside(0), A),
        (A, POOL, IN0, Egress::Inside(0), A),
        (R1, OUT, OUTSIDE, Egress::Outside, GW),
        (R1, POOL, OUTSIDE, Egress::Outside, GW),
    ] {
        let (v, out) = h.run(&echo(src, dst, 31, true), ing);
        assert_eq!(
            v,
            Verdict::Reply {
                egress,
                next_hop: ip(nh)
            },
            "{dst:?}"
        );
        let p = check(&out);
        assert_eq!(
            (p.src, p.dst, p.icmp_type, p.sport),
            (ip(dst), ip(src), 0, 31)
        );
        assert_eq!(p.payload, PAYLOAD);
    }
    assert_eq!(h.e.session_count(), 0);
    assert_eq!(h.e.counters().replies.get(), 5);
}

#[test]
fn unsupported_icmp_dropped() {
    let mut h = H::std();
    let mut v = Vec::new();
    etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
        .ipv4(A, R1, 64)
        .icmpv4_raw(13, 0, [0; 4]) // timestamp
        .write(&mut v, &[0; 12])
        .unwrap();
    h.drop(&v, IN0, DropReason::IcmpUnsupported);
    // An echo reply from inside with no request seen is unsolicited.
    h.drop(&echo(A, R1, 5, false), IN0, DropReason::Unsolicited);
}

/// An error about a flow whose session has expired (but was not swept yet) is not translated,
/// and does not remove the session itself either.
#[test]
fn icmp_error_about_an_expired_session_is_dropped() {
    let mut h = H::std();
    let p = h.fwd(&udp(A, 5000, R1, 53), IN0, fwd_out());
    let quote = l3(&udp_full(None, POOL, p.sport, R1, 53, 1, PAYLOAD)).to_vec();
    let err = icmp_err(ROUTER, POOL, 11, 0, &quote);
    // Default UDP timeout is 300 s; no tick, so the sweep has not run.
    h.at(T0 + 301.0);
    h.drop(&err, OUTSIDE, DropReason::IcmpNoSession);
    // From inside: an error about an inbound flow of a session that expired.
    let mut h = H::new(&conf(UDP_STATIC, "", ""));
    h.fwd(&udp(R1, 40000, POOL, 5353), OUTSIDE, fwd_in(SRV));
    let delivered = udp_full(None, R1, 40000, SRV, 53, 63, PAYLOAD);
    let err = icmp_err(SRV, R1, 3, 3, l3(&delivered));
    h.at(T0 + 301.0);
    h.drop(&err, IN0, DropReason::IcmpNoSession);
}
