//! Bounded session listing and deletion steps (management plane).

use super::util::*;
use crate::nat::listing::{Endpoint, Filter, STEP_LIVE, STEP_SLOTS};
use std::collections::HashSet;

const HOSTS: u8 = 50;
const PORTS: u16 = 100;

/// 5,000 UDP sessions: inside hosts 10.0.0.10.. with 100 source ports each, to R1:53.
fn populated() -> H {
    let mut h = H::new(&conf("", "", "[sessions]\ncapacity_per_core = 65536"));
    for host in 0..HOSTS {
        for p in 0..PORTS {
            h.fwd(
                &udp([10, 0, 0, 10 + host], 2000 + p, R1, 53),
                IN0,
                fwd_out(),
            );
        }
    }
    assert_eq!(h.sessions(), HOSTS as usize * PORTS as usize);
    h
}

/// Walks the whole table step by step; returns (slot, inside address, port) of each
/// session listed and the number of steps.
fn walk(h: &H, filter: &Filter) -> (Vec<(u32, u32, u16)>, usize) {
    let (mut seen, mut steps) = (Vec::new(), 0);
    let mut from = Some(0);
    while let Some(slot) = from {
        let mut n = 0;
        from = h.e.list_sessions(slot, filter, |i, s| {
            n += 1;
            seen.push((i, s.in_addr, s.in_port));
        });
        assert!(n <= STEP_LIVE, "a step listed {n} sessions");
        if let Some(next) = from {
            assert!(next > slot, "the cursor moves forward");
            assert!(
                next - slot <= STEP_SLOTS,
                "a step visits {} slots",
                next - slot
            );
        }
        steps += 1;
    }
    (seen, steps)
}

#[test]
fn a_walk_lists_every_session_once_in_bounded_steps() {
    let h = populated();
    let (seen, steps) = walk(&h, &Filter::default());
    assert_eq!(seen.len(), 5000);
    let unique: HashSet<_> = seen.iter().map(|&(_, a, p)| (a, p)).collect();
    assert_eq!(unique.len(), 5000, "no session listed twice");
    // The table has 65,536 session slots: at least capacity / STEP_SLOTS steps, and more
    // when a step stops at STEP_LIVE live sessions.
    assert!(steps >= 65536 / STEP_SLOTS as usize, "{steps} steps");
}

#[test]
fn filters_select_in_the_worker() {
    let h = populated();
    let host = u32::from_be_bytes([10, 0, 0, 17]);
    let only = |port| Filter {
        inside: Some(Endpoint { addr: host, port }),
        ..Filter::default()
    };
    let (seen, _) = walk(&h, &only(None));
    assert_eq!(seen.len(), PORTS as usize);
    assert!(seen.iter().all(|&(_, a, _)| a == host));
    assert_eq!(walk(&h, &only(Some(2042))).0.len(), 1);
    let tcp = Filter {
        proto: Some(crate::packet::ipv4::Protocol::TCP),
        ..Filter::default()
    };
    assert!(walk(&h, &tcp).0.is_empty());
}

#[test]
fn expired_sessions_are_not_listed() {
    let mut h = populated();
    h.tick(T0 + 10_000.0);
    assert!(walk(&h, &Filter::default()).0.is_empty());
}

#[test]
fn delete_steps_remove_exactly_the_matching_sessions() {
    let mut h = populated();
    let host = u32::from_be_bytes([10, 0, 0, 20]);
    let f = Filter {
        inside: Some(Endpoint {
            addr: host,
            port: None,
        }),
        ..Filter::default()
    };
    let (mut removed, mut from) = (0, Some(0));
    while let Some(slot) = from {
        let (n, next) = h.e.delete_sessions(slot, &f);
        assert!(n <= STEP_LIVE);
        removed += n;
        from = next;
    }
    assert_eq!(removed, PORTS as u32);
    assert_eq!(h.sessions(), 4900);
    assert_eq!(h.e.counters().sessions_deleted.get(), 100);
    h.e.check_invariants();
    // The host's flows start again with new sessions; the others' are untouched.
    let (seen, _) = walk(&h, &Filter::default());
    assert!(seen.iter().all(|&(_, a, _)| a != host));
    h.fwd(&udp([10, 0, 0, 20], 2000, R1, 53), IN0, fwd_out());
    assert_eq!(h.sessions(), 4901);
}
