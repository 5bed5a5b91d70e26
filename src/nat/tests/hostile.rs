//! Hostile frames (issue 10 part 6): martian destinations and spoofed or martian sources
//! create no session; ICMP errors addressed elsewhere than the quoted packet's source.

use super::util::*;
use crate::nat::{DropReason, Verdict};

const TCP_STATIC: &str = "static = [{ protocol = \"tcp\", external = \"192.168.1.10:8080\", internal = \"10.0.0.7:80\" }]";

#[test]
fn martian_destinations_from_inside_create_no_session() {
    let mut h = H::std();
    for dst in [
        [127, 0, 0, 1],
        [127, 9, 9, 9],
        [0, 0, 0, 0],
        [0, 1, 2, 3],
        [224, 0, 0, 251],
        [239, 255, 255, 250],
        [240, 0, 0, 1],
        [255, 255, 255, 254],
    ] {
        h.drop(&udp(A, 5000, dst, 53), IN0, DropReason::MartianDestination);
        h.drop(
            &tcp(A, 5001, dst, 80, SYN),
            IN0,
            DropReason::MartianDestination,
        );
        h.drop(&echo(A, dst, 7, true), IN0, DropReason::MartianDestination);
    }
    assert_eq!(h.e.session_count(), 0);
    assert_eq!(h.e.mapping_count(), 0);
    // Broadcasts (limited, and the realm's subnet broadcast) are the kernel's (DHCP): never
    // translated, no session, whatever the source (a DISCOVER comes from 0.0.0.0).
    for (src, dst) in [
        (A, [255, 255, 255, 255]),
        ([0, 0, 0, 0], [255, 255, 255, 255]),
        (A, [10, 0, 0, 255]),
    ] {
        let (v, _) = h.run(&udp(src, 68, dst, 67), IN0);
        assert_eq!(v, Verdict::ToKernel, "{src:?} -> {dst:?}");
    }
    assert_eq!(h.e.session_count(), 0);
    // Ordinary destinations are unaffected.
    h.fwd(&udp(A, 5000, [223, 255, 255, 254], 53), IN0, fwd_out());
    h.e.check_invariants();
}

#[test]
fn spoofed_sources_from_inside_create_no_session() {
    // 10.0.0.0/24 on-link (broadcast 10.0.0.255), gateway 10.0.0.1; a second /30 prefix.
    let mut h = H::new(&conf(
        "prefixes = [\"10.0.0.0/24\", \"10.0.9.0/30\"]",
        "",
        "",
    ));
    for src in [
        IN_GW,
        [10, 0, 0, 255],
        [10, 0, 9, 3],
        [0, 0, 0, 0],
        [127, 0, 0, 1],
        [224, 0, 0, 1],
        [240, 0, 0, 1],
        [255, 255, 255, 255],
    ] {
        h.drop(&udp(src, 5000, R1, 53), IN0, DropReason::MartianSource);
        h.drop(&tcp(src, 5000, R1, 80, SYN), IN0, DropReason::MartianSource);
    }
    // Outside the realm's prefixes, but not martian: as before.
    h.drop(
        &udp([10, 0, 1, 5], 5000, R1, 53),
        IN0,
        DropReason::SourceNotInside,
    );
    // The network's other addresses are hosts.
    h.fwd(&udp([10, 0, 0, 254], 5000, R1, 53), IN0, fwd_out());
    h.fwd(&udp([10, 0, 9, 1], 5000, R1, 53), IN0, fwd_out());
    assert_eq!(h.e.session_count(), 2);
    h.e.check_invariants();
}

#[test]
fn martian_sources_from_outside_open_nothing() {
    let mut h = H::new(&conf(TCP_STATIC, "", ""));
    for src in [
        [127, 0, 0, 1],
        [0, 0, 0, 0],
        [224, 0, 0, 5],
        [240, 1, 2, 3],
        [255, 255, 255, 255],
    ] {
        h.drop(
            &tcp(src, 40000, POOL, 8080, SYN),
            OUTSIDE,
            DropReason::MartianSource,
        );
        h.drop(
            &echo(src, POOL, 1, true),
            OUTSIDE,
            DropReason::MartianSource,
        );
    }
    assert_eq!(h.e.session_count(), 0);
    h.fwd(&tcp(R1, 40000, POOL, 8080, SYN), OUTSIDE, fwd_in(SRV));
    h.e.check_invariants();
}

#[test]
fn icmp_error_from_outside_to_another_address_than_the_quoted_source() {
    let mut h = H::new(&conf("pool = [\"192.168.1.10-192.168.1.11\"]", "", ""));
    let p = h.fwd(&udp(A, 5000, R1, 53), IN0, fwd_out());
    let ext: [u8; 4] = p.src.octets();
    let other = if ext == POOL { [192, 168, 1, 11] } else { POOL };
    let sent = udp_full(None, ext, p.sport, R1, 53, 1, PAYLOAD);
    // Quoting the real flow, but sent to the pool's other address: forged.
    let err = icmp_err(ROUTER, other, 11, 0, l3(&sent));
    h.drop(&err, OUTSIDE, DropReason::IcmpAddressMismatch);
    // To the flow's own external address it is translated as before.
    let err = icmp_err(ROUTER, ext, 11, 0, l3(&sent));
    h.fwd(&err, OUTSIDE, fwd_in(A));
    h.e.check_invariants();
}

#[test]
fn icmp_error_from_inside_to_another_host_than_the_flows_remote() {
    let mut h = H::new(&conf(
        "static = [{ protocol = \"udp\", external = \"192.168.1.10:5353\", internal = \"10.0.0.7:53\" }]",
        "",
        "",
    ));
    h.fwd(&udp(R1, 40000, POOL, 5353), OUTSIDE, fwd_in(SRV));
    let delivered = udp_full(None, R1, 40000, SRV, 53, 63, PAYLOAD);
    // The server's port unreachable about R1's datagram, aimed at R2.
    let err = icmp_err(SRV, R2, 3, 3, l3(&delivered));
    h.drop(&err, IN0, DropReason::IcmpAddressMismatch);
    let err = icmp_err(SRV, R1, 3, 3, l3(&delivered));
    h.fwd(&err, IN0, fwd_out());
    h.e.check_invariants();
}
