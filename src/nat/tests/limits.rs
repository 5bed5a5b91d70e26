//! Resource limits: session table, port hold, per-host limit, paired pooling.

use super::util::*;
use crate::nat::DropReason;

fn host(i: u32) -> [u8; 4] {
    [10, 0, 0, 10 + (i % 200) as u8]
}

/// Opens an established TCP connection from `src:sport` to R1:80; returns the external port.
pub(super) fn established(h: &mut H, src: [u8; 4], sport: u16) -> u16 {
    let p = h.fwd(&tcp(src, sport, R1, 80, SYN), IN0, fwd_out());
    h.fwd(&tcp(R1, 80, POOL, p.sport, SYN | ACK), OUTSIDE, fwd_in(src));
    h.fwd(&tcp(src, sport, R1, 80, ACK), IN0, fwd_out());
    p.sport
}

#[test]
fn session_table_full_then_recovers() {
    // Established TCP connections are never evicted: a table full of them refuses new flows.
    let mut h = H::new(&conf("", "", "[sessions]\ncapacity_per_core = 1024"));
    for i in 0..1024u32 {
        established(&mut h, host(i), 2000 + (i / 200) as u16);
    }
    assert_eq!(h.e.session_count(), 1024);
    h.drop(&udp(A, 9999, R1, 53), IN0, DropReason::SessionTableFull);
    // A new session on an existing mapping fails too, without hurting the mapping.
    h.drop(
        &tcp(host(0), 2000, R2, 80, SYN),
        IN0,
        DropReason::SessionTableFull,
    );
    // Unsolicited traffic is still called that, full table or not. The probe's port must be
    // one no mapping holds: most of the 1024 ports were picked at random.
    let mut used = std::collections::HashSet::new();
    h.e.for_each_session(|s| {
        used.insert(s.ext_port);
    });
    let free = (60000..=u16::MAX).find(|p| !used.contains(p)).unwrap();
    h.drop(&udp(R2, 53, POOL, free), OUTSIDE, DropReason::Unsolicited);
    h.at(T0 + 60.0);
    // Existing flows keep working in both directions.
    let p = h.fwd(&tcp(host(0), 2000, R1, 80, ACK), IN0, fwd_out());
    h.fwd(&tcp(R1, 80, POOL, p.sport, ACK), OUTSIDE, fwd_in(host(0)));
    h.e.check_invariants();
    // Past the timeout of the others (not of flow 0, refreshed at +60): new flows fit again,
    // even before a sweep has run.
    h.at(T0 + 7441.0);
    for i in 0..10u16 {
        h.fwd(&udp(A, 9000 + i, R1, 53), IN0, fwd_out());
    }
    h.tick(T0 + 7442.0);
    assert_eq!(h.e.session_count(), 11);
    h.e.check_invariants();
}

#[test]
fn freed_port_held_for_120_s() {
    let mut h = H::new(&conf("", "[realm.timeouts]\nudp = 120", ""));
    h.fwd(&udp(A, 5000, R1, 53), IN0, fwd_out());
    h.tick(T0 + 121.0);
    assert_eq!(h.e.mapping_count(), 0);
    h.at(T0 + 200.0);
    let p = h.fwd(&udp(B, 5000, R1, 53), IN0, fwd_out());
    assert_ne!(p.sport, 5000, "port reused within the hold time");
    h.tick(T0 + 121.0 + 121.0);
    let p = h.fwd(&udp(SRV, 5000, R1, 53), IN0, fwd_out());
    assert_eq!(p.sport, 5000, "port free again after the hold");
}

#[test]
fn per_host_port_limit() {
    let mut h = H::new(&conf("", "[realm.ports]\nper_host_limit = 3", ""));
    h.fwd(&udp(A, 1000 + 1, R1, 53), IN0, fwd_out());
    h.fwd(&tcp(A, 1000 + 2, R1, 80, SYN), IN0, fwd_out());
    h.fwd(&echo(A, R1, 3, true), IN0, fwd_out());
    h.drop(&udp(A, 1000 + 4, R1, 53), IN0, DropReason::PerHostLimit);
    // Existing mappings still take new sessions; other hosts are unaffected.
    h.fwd(&udp(A, 1000 + 1, R2, 53), IN0, fwd_out());
    h.fwd(&udp(B, 1000 + 4, R1, 53), IN0, fwd_out());
    h.e.check_invariants();
}

#[test]
fn paired_pooling() {
    let mut h = H::new(&conf("pool = [\"192.168.1.10-192.168.1.13\"]", "", ""));
    let mut used = std::collections::HashSet::new();
    for i in 0..32u32 {
        let src = host(i);
        let mut addrs = std::collections::HashSet::new();
        for j in 0..5u16 {
            let p = h.fwd(&udp(src, 3000 + j, R1, 53), IN0, fwd_out());
            addrs.insert(p.src);
            let p = h.fwd(&tcp(src, 4000 + j, R2, 80, SYN), IN0, fwd_out());
            addrs.insert(p.src);
        }
        let p = h.fwd(&echo(src, R1, 1, true), IN0, fwd_out());
        addrs.insert(p.src);
        assert_eq!(addrs.len(), 1, "host {src:?} uses one external address");
        used.extend(addrs);
    }
    assert_eq!(used.len(), 4, "all pool addresses used: {used:?}");
    h.e.check_invariants();
}

#[test]
fn ports_exhausted() {
    // One pool address, a 64-port range: the 65th high-port mapping has nowhere to go.
    let mut h = H::new(&conf("", "[realm.ports]\nrange = \"2000-2063\"", ""));
    for i in 0..64u32 {
        h.fwd(&udp(host(i), 3000, R1, 53), IN0, fwd_out());
    }
    h.drop(
        &udp(host(64), 3000, R1, 53),
        IN0,
        DropReason::PortsExhausted,
    );
    assert_eq!(h.e.mapping_count(), 64);
    h.e.check_invariants();
}

#[test]
fn full_table_reclaim_never_frees_the_mapping_in_use() {
    let mut h = H::new(&conf(
        "",
        "[realm.timeouts]\nudp = 120",
        "[sessions]\ncapacity_per_core = 1024",
    ));
    // A's mapping has one session, which expires first; every other slot is busy after it.
    h.fwd(&udp(A, 5000, R1, 53), IN0, fwd_out());
    h.at(T0 + 100.0);
    for i in 1..1024u32 {
        h.fwd(
            &udp(host(i + 1), 2000 + (i / 200) as u16, R1, 53),
            IN0,
            fwd_out(),
        );
    }
    // Past A's timeout, before any sweep removed it: a new session on A's mapping has to
    // reclaim a slot, and the only expired session is the one holding that mapping.
    h.at(T0 + 121.0);
    let p = h.fwd(&udp(A, 5000, R2, 53), IN0, fwd_out());
    h.e.check_invariants();
    let q = h.fwd(&udp(R2, 53, POOL, p.sport), OUTSIDE, fwd_in(A));
    assert_eq!(q.dport, 5000);
    h.tick(T0 + 122.0);
    h.e.check_invariants();
}

/// The memory figure tuning.md quotes: table bytes per session slot at a realistic capacity.
/// `cargo test --lib memory_per_session -- --nocapture` prints it.
#[test]
fn memory_per_session() {
    let toml = conf("", "", "[sessions]\ncapacity_per_core = 262144\n");
    let h = H::new(&toml);
    let per = h.e.memory_bytes() as f64 / 262144.0;
    println!(
        "engine memory: {} bytes for 262144 sessions = {per:.0} bytes/session",
        h.e.memory_bytes()
    );
    assert!((150.0..600.0).contains(&per), "{per} bytes per session");
}
