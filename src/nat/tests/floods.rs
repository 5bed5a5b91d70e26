//! State floods (issue 10 part 2): the per-host session limit, the inbound limit of static
//! and 1:1 mappings, and eviction from a full table (transitory TCP first, then the most
//! idle UDP/ICMP, never an established TCP connection).

use super::limits::established;
use super::util::*;
use crate::nat::DropReason;

fn host(i: u32) -> [u8; 4] {
    [10, 0, 0, 10 + (i % 200) as u8]
}

fn remote(i: u32) -> [u8; 4] {
    [198, 51, 100, (i % 250) as u8 + 1]
}

#[test]
fn per_host_session_limit_counts_sessions_not_mappings() {
    let mut h = H::new(&conf("", "[realm.limits]\nper_host_sessions = 4", ""));
    // One socket (one endpoint-independent mapping) to many remotes: one mapping, many
    // sessions. The port limit never sees them; the session limit does.
    for i in 0..4u16 {
        h.fwd(&udp(A, 5000, R1, 1000 + i), IN0, fwd_out());
    }
    assert_eq!(h.e.mapping_count(), 1);
    h.drop(&udp(A, 5000, R1, 2000), IN0, DropReason::PerHostSessions);
    // A new mapping is refused before it takes a port.
    h.drop(&udp(A, 5001, R1, 53), IN0, DropReason::PerHostSessions);
    h.drop(&tcp(A, 5002, R1, 80, SYN), IN0, DropReason::PerHostSessions);
    assert_eq!(h.e.mapping_count(), 1);
    // The host's existing sessions keep working, other hosts are not affected.
    h.fwd(&udp(A, 5000, R1, 1000), IN0, fwd_out());
    h.fwd(&udp(B, 5000, R1, 2000), IN0, fwd_out());
    h.e.check_invariants();
    // Once the sessions expire the host may open new ones.
    h.tick(T0 + 301.0);
    h.fwd(&udp(A, 5000, R1, 2000), IN0, fwd_out());
    h.e.check_invariants();
}

#[test]
fn per_host_session_limit_covers_one_to_one_hosts() {
    let toml = conf(
        "one_to_one = [{ external = \"192.168.1.50\", internal = \"10.0.0.5\" }]",
        "[realm.limits]\nper_host_sessions = 3",
        "",
    );
    let mut h = H::new(&toml);
    for i in 0..3u16 {
        h.fwd(&udp(A, 5000 + i, R1, 53), IN0, fwd_out());
    }
    h.drop(&udp(A, 6000, R1, 53), IN0, DropReason::PerHostSessions);
    h.e.check_invariants();
    // A dynamic host next to it: its pool address is still paired as before.
    let p = h.fwd(&udp(B, 5000, R1, 53), IN0, fwd_out());
    assert_eq!(p.src, ip(POOL));
    h.tick(T0 + 301.0);
    assert_eq!(h.e.session_count(), 0);
    h.e.check_invariants();
}

/// A port forward to SRV:80 and a UDP one to SRV:53, with a small inbound limit.
fn forward(limit: u32) -> H {
    H::new(&conf(
        "static = [{ protocol = \"tcp\", external = \"192.168.1.10:8080\", internal = \"10.0.0.7:80\" }, \
         { protocol = \"udp\", external = \"192.168.1.10:5353\", internal = \"10.0.0.7:53\" }]",
        &format!("[realm.limits]\ninbound_per_mapping = {limit}"),
        "",
    ))
}

#[test]
fn syn_flood_at_a_port_forward_stays_within_its_limit() {
    let mut h = forward(8);
    let evicted = |h: &H| h.e.counters().sessions_evicted_transitory.get();
    // Spoofed SYNs from many sources: at most 8 half-open sessions. A new SYN pushes out an
    // older half-open one of the same forward when the bounded search finds one, else it
    // is refused; either way the table does not grow.
    for i in 0..200u32 {
        let src = remote(i);
        let (v, _) = h.run(&tcp(src, 40000 + i as u16, POOL, 8080, SYN), OUTSIDE);
        assert!(
            v == fwd_in(SRV) || v == crate::nat::Verdict::Drop(DropReason::InboundLimit),
            "{v:?}"
        );
        assert!(
            h.e.session_count() <= 8,
            "flood grew to {}",
            h.e.session_count()
        );
    }
    let refused = h.drops(DropReason::InboundLimit);
    assert_eq!(
        evicted(&h) + refused,
        192,
        "every SYN past the limit decided and counted"
    );
    assert!(evicted(&h) > 0);
    h.e.check_invariants();
    // A real client gets through within a few retransmissions, and so does everything
    // from inside.
    let ok = (0..64).any(|_| h.run(&tcp(R2, 999, POOL, 8080, SYN), OUTSIDE).0 == fwd_in(SRV));
    assert!(ok, "the forward stayed closed to a real client");
    h.fwd(&tcp(SRV, 80, R2, 999, SYN | ACK), IN0, fwd_out());
    h.fwd(&tcp(R2, 999, POOL, 8080, ACK), OUTSIDE, fwd_in(SRV));
    established(&mut h, B, 3000);
    h.e.check_invariants();
}

#[test]
fn udp_flood_at_a_port_forward_is_refused_at_its_limit() {
    let mut h = forward(8);
    for i in 0..8u32 {
        h.fwd(&udp(remote(i), 1000, POOL, 5353), OUTSIDE, fwd_in(SRV));
    }
    h.drop(
        &udp(remote(9), 1000, POOL, 5353),
        OUTSIDE,
        DropReason::InboundLimit,
    );
    // The limit is per mapping: the TCP forward next to it still opens.
    h.fwd(&tcp(R2, 999, POOL, 8080, SYN), OUTSIDE, fwd_in(SRV));
    // And the forward's host itself is not limited by its inbound sessions.
    h.fwd(&udp(SRV, 7000, R1, 53), IN0, fwd_out());
    h.e.check_invariants();
    h.tick(T0 + 301.0);
    h.fwd(&udp(remote(9), 1000, POOL, 5353), OUTSIDE, fwd_in(SRV));
    h.e.check_invariants();
}

#[test]
fn one_to_one_inbound_limit() {
    let toml = conf(
        "one_to_one = [{ external = \"192.168.1.50\", internal = \"10.0.0.7\" }]",
        "[realm.limits]\ninbound_per_mapping = 5",
        "",
    );
    let mut h = H::new(&toml);
    let one = [192, 168, 1, 50];
    for i in 0..5u32 {
        h.fwd(
            &udp(remote(i), 1000, one, 2000 + i as u16),
            OUTSIDE,
            fwd_in(SRV),
        );
    }
    h.drop(&udp(R1, 1000, one, 3000), OUTSIDE, DropReason::InboundLimit);
    h.e.check_invariants();
}

#[test]
fn full_table_evicts_the_most_idle_udp_for_a_new_flow() {
    let mut h = H::new(&conf("", "", "[sessions]\ncapacity_per_core = 1024"));
    // One host, many remotes: a full table of UDP sessions, the first ones the most idle.
    for i in 0..1024u32 {
        h.at(T0 + (i / 64) as f64);
        h.fwd(
            &udp(A, 5000, remote(i), 1000 + (i / 250) as u16),
            IN0,
            fwd_out(),
        );
    }
    assert_eq!(h.e.session_count(), 1024);
    h.at(T0 + 20.0);
    // Another host's new TCP connection gets a slot: an idle UDP session goes.
    established(&mut h, B, 3000);
    assert_eq!(h.e.session_count(), 1024);
    assert_eq!(h.e.counters().sessions_evicted_idle.get(), 1);
    // The session evicted was among the most idle of the slots looked at: from the first
    // half of the filling (the scan looks at 32 slots from where it left off).
    h.e.check_invariants();
    for i in 0..100u16 {
        established(&mut h, B, 4000 + i);
    }
    assert_eq!(h.e.counters().sessions_evicted_idle.get(), 101);
    h.e.check_invariants();
}

fn count(h: &H, proto: crate::packet::ipv4::Protocol) -> usize {
    let mut n = 0;
    h.e.for_each_session(|s| n += usize::from(s.proto == proto));
    n
}

#[test]
fn established_tcp_is_never_evicted() {
    use crate::packet::ipv4::Protocol;
    let mut h = H::new(&conf("", "", "[sessions]\ncapacity_per_core = 1024"));
    for i in 0..1000u32 {
        established(&mut h, host(i), 2000 + (i / 200) as u16);
    }
    for i in 0..24u16 {
        h.fwd(&udp(A, 6000 + i, R2, 53), IN0, fwd_out());
    }
    assert_eq!(h.e.session_count(), 1024);
    // New flows take UDP sessions' slots, the most idle in each bounded search that finds
    // any (refused otherwise, counted); established TCP is never touched.
    let mut taken = 0u64;
    for i in 0..200u16 {
        match h.run(&udp(B, 7000 + i, R2, 53), IN0).0 {
            v if v == fwd_out() => taken += 1,
            v => assert_eq!(v, crate::nat::Verdict::Drop(DropReason::SessionTableFull)),
        }
        assert_eq!(
            count(&h, Protocol::TCP),
            1000,
            "an established connection was evicted"
        );
    }
    assert!(taken > 0);
    assert_eq!(h.e.counters().sessions_evicted_idle.get(), taken);
    assert_eq!(h.drops(DropReason::SessionTableFull), 200 - taken);
    assert_eq!(count(&h, Protocol::UDP), 24);
    h.e.check_invariants();
}

#[test]
fn half_open_from_outside_goes_first_and_never_pushes_out_udp() {
    let toml = conf(
        "static = [{ protocol = \"tcp\", external = \"192.168.1.10:8080\", internal = \"10.0.0.7:80\" }]",
        "",
        "[sessions]\ncapacity_per_core = 1024",
    );
    let mut h = H::new(&toml);
    // 24 spoofed SYNs (half-open from outside), then inside UDP fills the table.
    for i in 0..24u32 {
        h.fwd(
            &tcp(remote(i), 40000, POOL, 8080, SYN),
            OUTSIDE,
            fwd_in(SRV),
        );
    }
    for i in 0..1000u32 {
        h.fwd(
            &udp(host(i), 5000 + (i / 200) as u16, R1, 53),
            IN0,
            fwd_out(),
        );
    }
    assert_eq!(h.e.session_count(), 1024);
    // A flood SYN finds no room: it may evict only half-open TCP, and takes one of those.
    h.fwd(&tcp(R2, 40001, POOL, 8080, SYN), OUTSIDE, fwd_in(SRV));
    let udp_count = |h: &H| count(h, crate::packet::ipv4::Protocol::UDP);
    assert_eq!(udp_count(&h), 1000);
    // Inside flows push the (other) half-open ones out before any UDP session.
    for i in 0..23u16 {
        established(&mut h, B, 3000 + i);
    }
    assert_eq!(udp_count(&h), 1000);
    assert_eq!(h.e.counters().sessions_evicted_idle.get(), 0);
    // Where the search now looks there are only inside UDP and established TCP: a flood SYN
    // is refused.
    h.drop(
        &tcp(R2, 40002, POOL, 8080, SYN),
        OUTSIDE,
        DropReason::SessionTableFull,
    );
    h.e.check_invariants();
}

#[test]
fn a_fresh_outbound_syn_is_not_evicted_before_its_answer() {
    let mut h = H::new(&conf("", "", "[sessions]\ncapacity_per_core = 1024"));
    for i in 0..1023u32 {
        h.fwd(
            &udp(host(i), 5000 + (i / 200) as u16, R1, 53),
            IN0,
            fwd_out(),
        );
    }
    // B's SYN takes the last slot; a burst of new flows right after it must not evict it.
    let p = h.fwd(&tcp(B, 3000, R1, 80, SYN), IN0, fwd_out());
    for i in 0..64u16 {
        h.fwd(&udp(SRV, 6000 + i, R2, 53), IN0, fwd_out());
    }
    h.fwd(&tcp(R1, 80, POOL, p.sport, SYN | ACK), OUTSIDE, fwd_in(B));
    h.e.check_invariants();
}

/// A spoofed SYN at a port forward whose inside server is listening: the server's SYN-ACK
/// (and its retransmissions) do not make the session established, so it keeps the
/// transitory timeout and stays evictable; the forward's limit is not held for hours.
#[test]
fn a_spoofed_syn_answered_by_the_server_stays_transitory() {
    let mut h = forward(8);
    for i in 0..8u32 {
        let src = remote(i);
        let sport = 40000 + i as u16;
        h.fwd(&tcp(src, sport, POOL, 8080, SYN), OUTSIDE, fwd_in(SRV));
        for _ in 0..3 {
            h.fwd(&tcp(SRV, 80, src, sport, SYN | ACK), IN0, fwd_out());
        }
    }
    let transitory = T0 as u32 + 240;
    assert!(
        h.expiries().iter().all(|&e| e <= transitory),
        "a half-open connection got the established timeout: {:?}",
        h.expiries()
    );
    // The limit is reached, yet a real client gets in by replacing a half-open session.
    let ok = (0..64).any(|_| h.run(&tcp(R2, 999, POOL, 8080, SYN), OUTSIDE).0 == fwd_in(SRV));
    assert!(ok, "the forward stayed closed to a real client");
    h.e.check_invariants();
}

/// At a full table, only a frame that opens a session may make room: a stray ACK from
/// outside at a port forward is refused without evicting anything.
#[test]
fn a_stray_packet_at_a_full_table_evicts_nothing() {
    let mut h = forward(2048);
    // Half-open connections from inside fill the table; past their grace they are the
    // first eviction candidates.
    for i in 0..1024u32 {
        let port = 4000 + (i / 200) as u16;
        h.fwd(&tcp(host(i), port, R1, 80, SYN), IN0, fwd_out());
    }
    assert_eq!(h.e.session_count(), 1024);
    h.at(T0 + 3.0);
    let evicted = |h: &H| h.e.counters().sessions_evicted_transitory.get();
    for p in 0..50u16 {
        h.drop(
            &tcp(R2, 1000 + p, POOL, 8080, ACK),
            OUTSIDE,
            DropReason::TcpInvalid,
        );
    }
    assert_eq!(evicted(&h), 0, "stray packets evicted live sessions");
    assert_eq!(h.e.session_count(), 1024);
    // A real SYN at the forward still gets its room.
    h.fwd(&tcp(R2, 999, POOL, 8080, SYN), OUTSIDE, fwd_in(SRV));
    assert_eq!(evicted(&h), 1);
    h.e.check_invariants();
}

/// The inbound limit's eviction takes the forward's own oldest transitory session from its
/// list, however many other sessions the table holds: a bounded scan of the table (32 live
/// sessions from a shared cursor) found none here and refused every new SYN.
#[test]
fn a_forward_at_its_limit_always_finds_its_oldest_half_open_session() {
    let mut h = forward(4);
    let evicted = |h: &H| h.e.counters().sessions_evicted_transitory.get();
    // Six hundred sessions of inside hosts first (the slots a scan would look at first).
    for i in 0..600u32 {
        h.fwd(
            &udp(host(i), 5000 + (i / 200) as u16, remote(i), 53),
            IN0,
            fwd_out(),
        );
    }
    // Four half-open connections at the forward fill its limit.
    for i in 0..4u16 {
        h.fwd(&tcp(R1, 40000 + i, POOL, 8080, SYN), OUTSIDE, fwd_in(SRV));
    }
    for round in 0..20u16 {
        // Each new SYN pushes out the oldest half-open one.
        h.fwd(
            &tcp(R2, 41000 + round, POOL, 8080, SYN),
            OUTSIDE,
            fwd_in(SRV),
        );
        assert_eq!(evicted(&h), u64::from(round) + 1);
        assert_eq!(h.e.session_count(), 604);
    }
    assert_eq!(h.drops(DropReason::InboundLimit), 0);
    // The survivors are the four newest; the oldest are gone.
    h.drop(
        &tcp(R1, 40000, POOL, 8080, ACK),
        OUTSIDE,
        DropReason::TcpInvalid,
    );
    h.fwd(&tcp(R2, 41019, POOL, 8080, ACK), OUTSIDE, fwd_in(SRV));
    h.e.check_invariants();
}

/// Established inbound connections leave the list (they are never evicted), and come back
/// to it when they close.
#[test]
fn a_forwards_established_connections_are_not_evicted_until_they_close() {
    let mut h = forward(3);
    for i in 0..3u16 {
        h.fwd(&tcp(R1, 40000 + i, POOL, 8080, SYN), OUTSIDE, fwd_in(SRV));
        h.fwd(&tcp(SRV, 80, R1, 40000 + i, SYN | ACK), IN0, fwd_out());
        h.fwd(&tcp(R1, 40000 + i, POOL, 8080, ACK), OUTSIDE, fwd_in(SRV));
    }
    h.e.check_invariants();
    h.drop(
        &tcp(R2, 999, POOL, 8080, SYN),
        OUTSIDE,
        DropReason::InboundLimit,
    );
    // The second connection closes: now it may make room.
    h.fwd(&tcp(SRV, 80, R1, 40001, FIN | ACK), IN0, fwd_out());
    h.fwd(&tcp(R1, 40001, POOL, 8080, FIN | ACK), OUTSIDE, fwd_in(SRV));
    h.e.check_invariants();
    h.fwd(&tcp(R2, 999, POOL, 8080, SYN), OUTSIDE, fwd_in(SRV));
    assert_eq!(h.e.counters().sessions_evicted_transitory.get(), 1);
    h.drop(
        &tcp(R1, 40001, POOL, 8080, ACK),
        OUTSIDE,
        DropReason::TcpInvalid,
    );
    for p in [40000, 40002] {
        h.fwd(&tcp(R1, p, POOL, 8080, ACK), OUTSIDE, fwd_in(SRV));
    }
    h.e.check_invariants();
}
