//! TCP state tracking as seen through session expiry.

use super::util::*;
use crate::nat::DropReason;

fn open(h: &mut H) -> u16 {
    let p = h.fwd(&tcp(A, 4000, R1, 80, SYN), IN0, fwd_out());
    h.fwd(&tcp(R1, 80, POOL, p.sport, SYN | ACK), OUTSIDE, fwd_in(A));
    h.fwd(&tcp(A, 4000, R1, 80, ACK), IN0, fwd_out());
    p.sport
}

fn alive_at(h: &mut H, t: f64) -> bool {
    h.tick(t);
    h.e.session_count() == 1
}

#[test]
fn established_survives_long_idle() {
    let mut h = H::std();
    open(&mut h);
    assert_eq!(h.expiries(), vec![T0 as u32 + 7440]);
    assert!(alive_at(&mut h, T0 + 7000.0));
    assert!(!alive_at(&mut h, T0 + 7441.0));
    assert_eq!(h.e.mapping_count(), 0);
    h.e.check_invariants();
}

#[test]
fn syn_only_is_transitory() {
    let mut h = H::std();
    h.fwd(&tcp(A, 4000, R1, 80, SYN), IN0, fwd_out());
    assert!(alive_at(&mut h, T0 + 239.0));
    assert!(!alive_at(&mut h, T0 + 241.0));
}

#[test]
fn fin_both_ways_is_transitory() {
    let mut h = H::std();
    let port = open(&mut h);
    h.at(T0 + 10.0);
    h.fwd(&tcp(A, 4000, R1, 80, FIN | ACK), IN0, fwd_out());
    assert_eq!(
        h.expiries(),
        vec![T0 as u32 + 10 + 7440],
        "half close stays open"
    );
    h.fwd(&tcp(R1, 80, POOL, port, FIN | ACK), OUTSIDE, fwd_in(A));
    h.fwd(&tcp(A, 4000, R1, 80, ACK), IN0, fwd_out());
    assert!(alive_at(&mut h, T0 + 10.0 + 239.0));
    assert!(!alive_at(&mut h, T0 + 10.0 + 241.0));
}

#[test]
fn rst_keeps_session_for_transitory_timeout() {
    for from_inside in [false, true] {
        let mut h = H::std();
        let port = open(&mut h);
        h.at(T0 + 5.0);
        if from_inside {
            h.fwd(&tcp(A, 4000, R1, 80, RST), IN0, fwd_out());
        } else {
            h.fwd(&tcp(R1, 80, POOL, port, RST), OUTSIDE, fwd_in(A));
        }
        // Still there: a retransmission after the RST is still translated.
        h.at(T0 + 6.0);
        h.fwd(&tcp(R1, 80, POOL, port, ACK), OUTSIDE, fwd_in(A));
        assert!(alive_at(&mut h, T0 + 6.0 + 239.0));
        assert!(!alive_at(&mut h, T0 + 6.0 + 241.0));
    }
}

#[test]
fn simultaneous_open() {
    let mut h = H::std();
    let p = h.fwd(&tcp(A, 4000, R1, 80, SYN), IN0, fwd_out());
    let q = h.fwd(&tcp(R1, 80, POOL, p.sport, SYN), OUTSIDE, fwd_in(A));
    assert_eq!((q.dst, q.dport, q.tcp_flags), (ip(A), 4000, SYN));
    h.fwd(&tcp(A, 4000, R1, 80, SYN | ACK), IN0, fwd_out());
    h.fwd(&tcp(R1, 80, POOL, p.sport, SYN | ACK), OUTSIDE, fwd_in(A));
    assert!(alive_at(&mut h, T0 + 7000.0));
}

#[test]
fn inbound_non_syn_without_session_refused() {
    let mut h = H::new(&conf("filtering = \"endpoint-independent\"", "", ""));
    let p = h.fwd(&tcp(A, 4000, R1, 80, SYN), IN0, fwd_out());
    // EIF lets a new remote open a connection to the mapping, but only with a SYN.
    h.drop(
        &tcp(R2, 80, POOL, p.sport, ACK),
        OUTSIDE,
        DropReason::TcpInvalid,
    );
    h.drop(
        &tcp(R2, 80, POOL, p.sport, SYN | ACK),
        OUTSIDE,
        DropReason::TcpInvalid,
    );
    h.fwd(&tcp(R2, 80, POOL, p.sport, SYN), OUTSIDE, fwd_in(A));
    assert_eq!(h.e.session_count(), 2);
}

#[test]
fn icmp_error_does_not_end_tcp() {
    let mut h = H::std();
    let port = open(&mut h);
    let before = h.expiries();
    let seen = l3(&tcp(POOL, port, R1, 80, ACK)).to_vec();
    h.at(T0 + 100.0);
    let p = h.fwd(&icmp_err(ROUTER, POOL, 3, 4, &seen), OUTSIDE, fwd_in(A));
    let q = p.quoted.unwrap();
    assert_eq!((q.src, q.sport, q.proto), (ip(A), 4000, 6));
    assert_eq!(h.expiries(), before);
}

/// Established segments take the fast path, which refreshes only its own direction's slot;
/// the sweep must find the refreshed deadline, and a RST must still cut it short.
#[test]
fn fast_path_refresh_is_seen_by_the_sweep_and_cut_by_rst() {
    let mut h = H::std();
    let port = open(&mut h);
    h.at(T0 + 7000.0);
    h.fwd(&tcp(A, 4000, R1, 80, ACK), IN0, fwd_out());
    assert!(
        alive_at(&mut h, T0 + 7441.0),
        "refreshed by the ACK at 7000"
    );
    assert_eq!(h.expiries(), vec![T0 as u32 + 7000 + 7440]);
    h.e.check_invariants();
    assert!(alive_at(&mut h, T0 + 14000.0));
    h.fwd(&tcp(R1, 80, POOL, port, RST), OUTSIDE, fwd_in(A));
    assert_eq!(h.expiries(), vec![T0 as u32 + 14000 + 240]);
    // A later ACK refreshes with the transitory timeout only.
    h.at(T0 + 14001.0);
    h.fwd(&tcp(A, 4000, R1, 80, ACK), IN0, fwd_out());
    assert_eq!(h.expiries(), vec![T0 as u32 + 14001 + 240]);
    assert!(alive_at(&mut h, T0 + 14240.0));
    assert!(!alive_at(&mut h, T0 + 14242.0));
    h.e.check_invariants();
}
