//! Outbound mapping, inbound replies, filtering, static and 1:1 mappings, hairpinning.

use super::util::*;
use crate::config::parse;
use crate::nat::{DropReason, Verdict};

const STATICS: &str = "static = [\
    { protocol = \"tcp\", external = \"192.168.1.10:8080\", internal = \"10.0.0.7:80\" },\
    { protocol = \"udp\", external = \"192.168.1.10:5353\", internal = \"10.0.0.7:53\" }]\n\
    one_to_one = [{ external = \"192.168.1.50\", internal = \"10.0.0.25\" }]";

#[test]
fn outbound_udp_endpoint_independent_mapping() {
    let mut h = H::std();
    let p1 = h.fwd(&udp(A, 5000, R1, 53), IN0, fwd_out());
    assert_eq!((p1.src, p1.sport), (ip(POOL), 5000), "port preserved");
    assert_eq!((p1.dst, p1.dport, p1.ttl), (ip(R1), 53, 63));
    assert_eq!(p1.payload, PAYLOAD);
    // Same inside endpoint, other destinations: same external endpoint.
    for (dst, dport) in [(R2, 53), (R1, 54), (R2, 9999)] {
        let p = h.fwd(&udp(A, 5000, dst, dport), IN0, fwd_out());
        assert_eq!((p.src, p.sport), (ip(POOL), 5000));
        assert_eq!((p.dst, p.dport), (ip(dst), dport));
    }
    assert_eq!(h.sessions(), 4);
    assert_eq!(h.e.mapping_count(), 1);
    assert_eq!(h.e.counters().in2out.get(), 4);
    assert_eq!(h.e.counters().sessions_created.get(), 4);
    assert_eq!(h.e.counters().mappings_created.get(), 1);
    // Another host asking for the same port gets another one, in the same class.
    let p = h.fwd(&udp(B, 5000, R1, 53), IN0, fwd_out());
    assert_eq!(p.src, ip(POOL));
    assert!(p.sport >= 1024 && p.sport != 5000, "{}", p.sport);
    h.e.check_invariants();
}

#[test]
fn outbound_next_hop_onlink() {
    let cfg = parse(&conf("", "", "")).unwrap();
    let mut r = crate::nat::Rules::new(
        &cfg,
        std::sync::Arc::new(crate::nat::ports::BlockPartition::new(1)),
    );
    r.outside_onlink.push(crate::config::Ipv4Net {
        addr: ip([198, 51, 100, 0]),
        len: 24,
    });
    let mut h = H::on_core(std::sync::Arc::new(r), 0);
    h.fwd(
        &udp(A, 5000, R1, 53),
        IN0,
        crate::nat::Verdict::Forward {
            egress: crate::nat::Egress::Outside,
            next_hop: ip(R1),
        },
    );
    h.fwd(&udp(A, 5000, [203, 0, 113, 1], 53), IN0, fwd_out());
}

#[test]
fn port_class_is_kept() {
    let mut h = H::std();
    let p = h.fwd(&udp(A, 123, R1, 123), IN0, fwd_out());
    assert_eq!(p.sport, 123);
    let p = h.fwd(&udp(B, 123, R1, 123), IN0, fwd_out());
    assert!(
        p.sport < 1024 && p.sport != 123 && p.sport != 0,
        "{}",
        p.sport
    );
    let p = h.fwd(&tcp(B, 22, R1, 22, SYN), IN0, fwd_out());
    assert_eq!(p.sport, 22, "TCP and UDP port spaces are separate");
    let p = h.fwd(&tcp(A, 22, R1, 22, SYN), IN0, fwd_out());
    assert!(p.sport < 1024 && p.sport != 22, "{}", p.sport);
    let p = h.fwd(&tcp(A, 40000, R1, 22, SYN), IN0, fwd_out());
    assert_eq!(p.sport, 40000);
    let p = h.fwd(&tcp(B, 40000, R1, 22, SYN), IN0, fwd_out());
    assert!(p.sport >= 1024 && p.sport != 40000, "{}", p.sport);
}

#[test]
fn outbound_tcp_and_echo_eim() {
    let mut h = H::std();
    let p = h.fwd(&tcp(A, 4000, R1, 80, SYN), IN0, fwd_out());
    assert_eq!(
        (p.src, p.sport, p.dst, p.dport, p.ttl),
        (ip(POOL), 4000, ip(R1), 80, 63)
    );
    assert_eq!(p.tcp_flags, SYN);
    let p = h.fwd(&tcp(A, 4000, R2, 443, SYN), IN0, fwd_out());
    assert_eq!((p.src, p.sport), (ip(POOL), 4000));
    let p = h.fwd(&echo(A, R1, 77, true), IN0, fwd_out());
    assert_eq!((p.src, p.sport, p.icmp_type, p.ttl), (ip(POOL), 77, 8, 63));
    let p = h.fwd(&echo(A, R2, 77, true), IN0, fwd_out());
    assert_eq!(
        (p.src, p.sport),
        (ip(POOL), 77),
        "query id independent of remote"
    );
    // RFC 5508: a second host with the same id gets another external id.
    let p = h.fwd(&echo(B, R1, 77, true), IN0, fwd_out());
    assert_ne!(p.sport, 77);
    let bid = p.sport;
    let q = h.fwd(&echo(R1, POOL, bid, false), OUTSIDE, fwd_in(B));
    assert_eq!((q.dst, q.sport, q.icmp_type, q.ttl), (ip(B), 77, 0, 63));
    let q = h.fwd(&echo(R1, POOL, 77, false), OUTSIDE, fwd_in(A));
    assert_eq!((q.dst, q.sport), (ip(A), 77));
    assert_eq!(h.sessions(), 5);
    h.e.check_invariants();
}

#[test]
fn inbound_reply_translated_back() {
    let mut h = H::std();
    h.fwd(&udp(A, 5000, R1, 53), IN0, fwd_out());
    let p = h.fwd(&udp(R1, 53, POOL, 5000), OUTSIDE, fwd_in(A));
    assert_eq!(
        (p.src, p.sport, p.dst, p.dport, p.ttl),
        (ip(R1), 53, ip(A), 5000, 63)
    );
    assert_eq!(p.vlan, None);
    assert_eq!(p.payload, PAYLOAD);
    h.fwd(&tcp(A, 4000, R1, 80, SYN), IN0, fwd_out());
    let p = h.fwd(&tcp(R1, 80, POOL, 4000, SYN | ACK), OUTSIDE, fwd_in(A));
    assert_eq!((p.dst, p.dport, p.tcp_flags), (ip(A), 4000, SYN | ACK));
    assert_eq!(h.e.counters().out2in.get(), 2);
}

#[test]
fn udp_zero_checksum_stays_zero() {
    let mut h = H::std();
    let mut f = udp(A, 5000, R1, 53);
    f[14 + 20 + 6] = 0;
    f[14 + 20 + 7] = 0;
    let p = h.fwd(&f, IN0, fwd_out());
    assert_eq!(p.l4_checksum, 0);
}

#[test]
fn filtering_address_dependent_default() {
    let mut h = H::std();
    h.fwd(&udp(A, 5000, R1, 53), IN0, fwd_out());
    // Same remote address, other port: allowed, and it gets its own session.
    let p = h.fwd(&udp(R1, 999, POOL, 5000), OUTSIDE, fwd_in(A));
    assert_eq!((p.dst, p.dport), (ip(A), 5000));
    assert_eq!(h.sessions(), 2);
    // Another remote address: refused, no state.
    h.drop(&udp(R2, 53, POOL, 5000), OUTSIDE, DropReason::Filtered);
    assert_eq!(h.sessions(), 2);
    h.e.check_invariants();
}

#[test]
fn filtering_endpoint_independent() {
    let mut h = H::new(&conf("filtering = \"endpoint-independent\"", "", ""));
    h.fwd(&udp(A, 5000, R1, 53), IN0, fwd_out());
    let p = h.fwd(&udp(R2, 7, POOL, 5000), OUTSIDE, fwd_in(A));
    assert_eq!((p.dst, p.dport), (ip(A), 5000));
    // A's reply to the new remote leaves through the same mapping.
    let p = h.fwd(&udp(A, 5000, R2, 7), IN0, fwd_out());
    assert_eq!((p.src, p.sport), (ip(POOL), 5000));
    assert_eq!(h.sessions(), 2);
    // An inbound TCP SYN to a mapped UDP port is still unsolicited (other protocol).
    h.drop(
        &tcp(R2, 7, POOL, 5000, SYN),
        OUTSIDE,
        DropReason::Unsolicited,
    );
}

#[test]
fn filtering_address_and_port_dependent() {
    let mut h = H::new(&conf("filtering = \"address-and-port-dependent\"", "", ""));
    h.fwd(&udp(A, 5000, R1, 53), IN0, fwd_out());
    h.drop(&udp(R1, 999, POOL, 5000), OUTSIDE, DropReason::Filtered);
    h.drop(&udp(R2, 53, POOL, 5000), OUTSIDE, DropReason::Filtered);
    h.fwd(&udp(R1, 53, POOL, 5000), OUTSIDE, fwd_in(A));
    assert_eq!(h.sessions(), 1);
}

#[test]
fn unsolicited_inbound_creates_no_state_and_steals_no_port() {
    let mut h = H::std();
    h.drop(&udp(R1, 53, POOL, 6000), OUTSIDE, DropReason::Unsolicited);
    h.drop(
        &tcp(R1, 80, POOL, 6000, SYN),
        OUTSIDE,
        DropReason::Unsolicited,
    );
    h.drop(
        &echo(R1, POOL, 6000, false),
        OUTSIDE,
        DropReason::Unsolicited,
    );
    assert_eq!(h.sessions(), 0);
    assert_eq!(h.e.mapping_count(), 0);
    // Filtered traffic to a live mapping does not create state either.
    h.fwd(&udp(B, 7000, R1, 53), IN0, fwd_out());
    h.drop(&udp(R2, 53, POOL, 7000), OUTSIDE, DropReason::Filtered);
    assert_eq!(h.sessions(), 1);
    // The ports probed from outside are still free for inside hosts.
    let p = h.fwd(&udp(A, 6000, R2, 53), IN0, fwd_out());
    assert_eq!(p.sport, 6000);
    let p = h.fwd(&tcp(A, 6000, R2, 80, SYN), IN0, fwd_out());
    assert_eq!(p.sport, 6000);
    // Traffic for an address natgw does not own.
    h.drop(
        &udp(R1, 53, [192, 168, 1, 99], 6000),
        OUTSIDE,
        DropReason::NotForUs,
    );
    h.e.check_invariants();
}

fn inbound_refresh(on: bool) -> Vec<u32> {
    let keys = format!("inbound_refresh = {on}");
    let mut h = H::new(&conf(&keys, "[realm.timeouts]\nudp = 120", ""));
    h.fwd(&udp(A, 5000, R1, 53), IN0, fwd_out());
    assert_eq!(h.expiries(), vec![T0 as u32 + 120]);
    h.at(T0 + 100.0);
    h.fwd(&udp(R1, 53, POOL, 5000), OUTSIDE, fwd_in(A));
    let e = h.expiries();
    // Expiry is enforced: the session is gone after its (possibly refreshed) timeout.
    h.tick(e[0] as f64 + 0.5);
    assert_eq!(h.e.session_count(), 0);
    h.drop(&udp(R1, 53, POOL, 5000), OUTSIDE, DropReason::Unsolicited);
    e
}

#[test]
fn inbound_refresh_off_and_on() {
    assert_eq!(inbound_refresh(false), vec![T0 as u32 + 120]);
    assert_eq!(inbound_refresh(true), vec![T0 as u32 + 220]);
}

#[test]
fn outbound_refresh_and_udp_expiry() {
    let mut h = H::new(&conf("", "[realm.timeouts]\nudp = 120", ""));
    h.fwd(&udp(A, 5000, R1, 53), IN0, fwd_out());
    h.at(T0 + 100.0);
    h.fwd(&udp(A, 5000, R1, 53), IN0, fwd_out());
    h.tick(T0 + 200.0);
    assert_eq!(h.e.session_count(), 1, "outbound traffic refreshes");
    h.tick(T0 + 221.0);
    assert_eq!(h.e.session_count(), 0);
    assert_eq!(h.e.mapping_count(), 0);
    assert_eq!(h.e.counters().sessions_expired.get(), 1);
    h.e.check_invariants();
}

#[test]
fn static_port_forward() {
    let mut h = H::new(&conf(STATICS, "", ""));
    let p = h.fwd(&tcp(R1, 40000, POOL, 8080, SYN), OUTSIDE, fwd_in(SRV));
    assert_eq!(
        (p.src, p.sport, p.dst, p.dport, p.ttl),
        (ip(R1), 40000, ip(SRV), 80, 63)
    );
    let p = h.fwd(&tcp(SRV, 80, R1, 40000, SYN | ACK), IN0, fwd_out());
    assert_eq!(
        (p.src, p.sport, p.dst, p.dport),
        (ip(POOL), 8080, ip(R1), 40000)
    );
    let p = h.fwd(&udp(R2, 1111, POOL, 5353), OUTSIDE, fwd_in(SRV));
    assert_eq!((p.dst, p.dport), (ip(SRV), 53));
    let p = h.fwd(&udp(SRV, 53, R2, 1111), IN0, fwd_out());
    assert_eq!((p.src, p.sport), (ip(POOL), 5353));
    // The server's own outbound flows from the forwarded port use the static mapping too.
    let p = h.fwd(&udp(SRV, 53, R1, 53), IN0, fwd_out());
    assert_eq!((p.src, p.sport), (ip(POOL), 5353));
    // Statically reserved ports are not given to dynamic mappings.
    let p = h.fwd(&udp(A, 5353, R1, 53), IN0, fwd_out());
    assert_ne!(p.sport, 5353);
    // A non-SYN segment opens nothing.
    h.drop(
        &tcp(R2, 40000, POOL, 8080, ACK),
        OUTSIDE,
        DropReason::TcpInvalid,
    );
    h.e.check_invariants();
}

#[test]
fn one_to_one_mapping() {
    let mut h = H::new(&conf(STATICS, "", ""));
    const EXT: [u8; 4] = [192, 168, 1, 50];
    const HOST: [u8; 4] = [10, 0, 0, 25];
    let p = h.fwd(&udp(R1, 3333, EXT, 7777), OUTSIDE, fwd_in(HOST));
    assert_eq!((p.dst, p.dport), (ip(HOST), 7777));
    let p = h.fwd(&udp(HOST, 7777, R1, 3333), IN0, fwd_out());
    assert_eq!((p.src, p.sport), (ip(EXT), 7777));
    let p = h.fwd(&tcp(HOST, 1234, R2, 25, SYN), IN0, fwd_out());
    assert_eq!((p.src, p.sport), (ip(EXT), 1234));
    let p = h.fwd(&tcp(R1, 5555, EXT, 25, SYN), OUTSIDE, fwd_in(HOST));
    assert_eq!((p.dst, p.dport), (ip(HOST), 25));
    // Pings to a 1:1 address go to its host, which answers itself.
    let p = h.fwd(&echo(R1, EXT, 9, true), OUTSIDE, fwd_in(HOST));
    assert_eq!((p.dst, p.icmp_type), (ip(HOST), 8));
    let p = h.fwd(&echo(HOST, R1, 9, false), IN0, fwd_out());
    assert_eq!((p.src, p.icmp_type, p.sport), (ip(EXT), 0, 9));
}

#[test]
fn hairpin_through_static_mapping() {
    let mut h = H::new(&conf(STATICS, "", ""));
    let p = h.fwd(&tcp(A, 5555, POOL, 8080, SYN), IN0, fwd_in(SRV));
    assert_eq!(
        (p.src, p.sport, p.dst, p.dport),
        (ip(POOL), 5555, ip(SRV), 80)
    );
    assert_eq!(p.ttl, 63, "one hop, one decrement");
    let p = h.fwd(&tcp(SRV, 80, POOL, 5555, SYN | ACK), IN0, fwd_in(A));
    assert_eq!(
        (p.src, p.sport, p.dst, p.dport),
        (ip(POOL), 8080, ip(A), 5555)
    );
    assert_eq!(p.ttl, 63);
    let p = h.fwd(&tcp(A, 5555, POOL, 8080, ACK), IN0, fwd_in(SRV));
    assert_eq!(
        (p.src, p.sport, p.dst, p.dport),
        (ip(POOL), 5555, ip(SRV), 80)
    );
    assert_eq!(h.e.counters().hairpinned.get(), 3);
    h.e.check_invariants();
}

#[test]
fn hairpin_through_dynamic_mapping() {
    let mut h = H::std();
    // A has a mapping (talked to R1); B talks to A's external endpoint, which under
    // address-dependent filtering A has not talked to: refused.
    h.fwd(&udp(A, 5555, R1, 53), IN0, fwd_out());
    let (v, _) = h.run(&udp(B, 7000, POOL, 5555), IN0);
    assert_eq!(v, Verdict::Drop(DropReason::Filtered));
    // B's mapping exists now (its outbound half went through); A reaches B through it.
    let p = h.fwd(&udp(A, 5555, POOL, 7000), IN0, fwd_in(B));
    assert_eq!(
        (p.src, p.sport, p.dst, p.dport),
        (ip(POOL), 5555, ip(B), 7000)
    );
    let p = h.fwd(&udp(B, 7000, POOL, 5555), IN0, fwd_in(A));
    assert_eq!(
        (p.src, p.sport, p.dst, p.dport),
        (ip(POOL), 7000, ip(A), 5555)
    );
    assert_eq!(p.payload, PAYLOAD);
    h.e.check_invariants();
}

#[test]
fn hairpin_endpoint_independent_filtering() {
    let mut h = H::new(&conf("filtering = \"endpoint-independent\"", "", ""));
    h.fwd(&udp(A, 5555, R1, 53), IN0, fwd_out());
    let p = h.fwd(&udp(B, 7000, POOL, 5555), IN0, fwd_in(A));
    assert_eq!(
        (p.src, p.sport, p.dst, p.dport),
        (ip(POOL), 7000, ip(A), 5555)
    );
    let p = h.fwd(&udp(A, 5555, POOL, 7000), IN0, fwd_in(B));
    assert_eq!(
        (p.src, p.sport, p.dst, p.dport),
        (ip(POOL), 5555, ip(B), 7000)
    );
}

#[test]
fn hairpin_disabled() {
    let keys = format!("{STATICS}\nhairpinning = false");
    let mut h = H::new(&conf(&keys, "", ""));
    h.drop(
        &tcp(A, 5555, POOL, 8080, SYN),
        IN0,
        DropReason::HairpinDisabled,
    );
    h.drop(
        &udp(A, 5555, [192, 168, 1, 50], 80),
        IN0,
        DropReason::HairpinDisabled,
    );
    assert_eq!(h.e.mapping_count(), 0);
}

#[test]
fn inside_source_and_realm_checks() {
    let mut h = H::std();
    h.drop(
        &udp([10, 9, 0, 5], 5000, R1, 53),
        IN0,
        DropReason::SourceNotInside,
    );
    h.drop(
        &udp(A, 5000, R1, 53),
        crate::nat::Ingress::Inside(3),
        DropReason::UnknownRealm,
    );
    h.drop(
        &udp_full(Some(42), A, 5000, R1, 53, 64, PAYLOAD),
        IN0,
        DropReason::UnknownRealm,
    );
    let mut gre = udp(A, 5000, R1, 53);
    gre[14 + 9] = 47;
    fix_ip_checksum(&mut gre, 14);
    h.drop(&gre, IN0, DropReason::UnsupportedProtocol);
    // Traffic to natgw's own addresses other than pings is the kernel's.
    let (v, _) = h.run(&udp(A, 5000, IN_GW, 53), IN0);
    assert_eq!(v, Verdict::ToKernel);
    let (v, _) = h.run(&tcp(R1, 5000, OUT, 22, SYN), OUTSIDE);
    assert_eq!(v, Verdict::ToKernel);
}

/// With inbound refresh off, only outbound packets extend a UDP session. They refresh the
/// inside slot; a reply arriving after the outside slot's own deadline must still find the
/// session alive (and must not extend it).
#[test]
fn reply_after_outbound_only_refresh_is_translated_not_refreshing() {
    let mut h = H::new(&conf(
        "inbound_refresh = false",
        "[realm.timeouts]\nudp = 120",
        "",
    ));
    h.fwd(&udp(A, 5000, R1, 53), IN0, fwd_out());
    h.at(T0 + 100.0);
    h.fwd(&udp(A, 5000, R1, 53), IN0, fwd_out());
    h.at(T0 + 150.0);
    h.fwd(&udp(R1, 53, POOL, 5000), OUTSIDE, fwd_in(A));
    h.fwd(&udp(R1, 53, POOL, 5000), OUTSIDE, fwd_in(A));
    assert_eq!(h.expiries(), vec![T0 as u32 + 220]);
    h.e.check_invariants();
    h.tick(T0 + 219.0);
    assert_eq!(h.e.session_count(), 1);
    h.tick(T0 + 221.0);
    assert_eq!(h.e.session_count(), 0);
    h.drop(&udp(R1, 53, POOL, 5000), OUTSIDE, DropReason::Unsolicited);
}

/// Address-dependent filtering counts one remote inline in the mapping and the others in the
/// filter table; sessions to each come and go in any order and the filter stays exact.
#[test]
fn address_filter_counts_survive_any_expiry_order() {
    let mut h = H::new(&conf("", "[realm.timeouts]\nudp = 120", ""));
    const R3: [u8; 4] = [198, 51, 100, 30];
    h.fwd(&udp(A, 5000, R1, 53), IN0, fwd_out());
    h.at(T0 + 50.0);
    h.fwd(&udp(A, 5000, R2, 53), IN0, fwd_out());
    h.at(T0 + 60.0);
    h.fwd(&udp(A, 5000, R1, 54), IN0, fwd_out());
    h.tick(T0 + 130.0);
    assert_eq!(h.e.session_count(), 2);
    h.e.check_invariants();
    h.tick(T0 + 175.0);
    assert_eq!(h.e.session_count(), 1, "only R1:54 is left");
    h.drop(&udp(R2, 53, POOL, 5000), OUTSIDE, DropReason::Filtered);
    h.fwd(&udp(R1, 7, POOL, 5000), OUTSIDE, fwd_in(A));
    h.e.check_invariants();
    h.tick(T0 + 185.0);
    h.at(T0 + 185.0);
    h.fwd(&udp(A, 5000, R3, 53), IN0, fwd_out());
    h.e.check_invariants();
    h.tick(T0 + 300.0);
    assert_eq!(h.e.session_count(), 1, "only R3:53 is left");
    h.drop(&udp(R1, 7, POOL, 5000), OUTSIDE, DropReason::Filtered);
    h.fwd(&udp(R3, 9, POOL, 5000), OUTSIDE, fwd_in(A));
    h.e.check_invariants();
}
