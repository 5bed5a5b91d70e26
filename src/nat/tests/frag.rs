//! Fragments: in order, out of order (held), timeouts, bounded hold pool.

use super::util::*;
use crate::nat::{DropReason, Verdict};

fn big(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    let payload: Vec<u8> = (0..200u8).collect();
    udp_full(None, src, sport, dst, dport, 64, &payload)
}

#[test]
fn fragments_in_order_both_ways() {
    let mut h = H::std();
    let frags = fragment(&big(A, 5000, R1, 53), 64, 0x1234);
    assert_eq!(frags.len(), 4);
    let mut outs = Vec::new();
    for f in &frags {
        let (v, out) = h.run(f, IN0);
        assert_eq!(v, fwd_out());
        let p = check(&out);
        assert_eq!(
            (p.src, p.dst, p.ttl, p.ident),
            (ip(POOL), ip(R1), 63, 0x1234)
        );
        outs.push(out);
    }
    assert_eq!(check(&outs[0]).sport, 5000);
    let data = reassemble_check(&outs);
    assert_eq!(&data[8..], &(0..200u8).collect::<Vec<_>>()[..]);
    assert_eq!(h.e.counters().fragments_translated.get(), 3);
    // The reply, fragmented too.
    let back = fragment(&big(R1, 53, POOL, 5000), 64, 0x4321);
    let mut outs = Vec::new();
    for f in &back {
        let (v, out) = h.run(f, OUTSIDE);
        assert_eq!(v, fwd_in(A));
        assert_eq!(check(&out).dst, ip(A));
        outs.push(out);
    }
    assert_eq!(check(&outs[0]).dport, 5000);
    reassemble_check(&outs);
    assert_eq!(h.e.session_count(), 1);
}

#[test]
fn out_of_order_fragments_held_then_released() {
    let mut h = H::std();
    let frags = fragment(&big(A, 5000, R1, 53), 64, 7);
    for f in [&frags[2], &frags[1]] {
        let (v, _) = h.run(f, IN0);
        assert_eq!(v, Verdict::Held);
    }
    assert!(h.drain().is_empty());
    let (v, first) = h.run(&frags[0], IN0);
    assert_eq!(v, fwd_out());
    let mut released = h.drain();
    assert_eq!(released.len(), 2);
    assert!(released.iter().all(|(v, _)| *v == fwd_out()));
    let (v, last) = h.run(&frags[3], IN0);
    assert_eq!(v, fwd_out());
    released.sort_by_key(|(_, b)| u16::from_be_bytes([b[20], b[21]]) & 0x1fff);
    let all = vec![first, released[0].1.clone(), released[1].1.clone(), last];
    for f in &all {
        let p = check(f);
        assert_eq!((p.src, p.ttl), (ip(POOL), 63));
    }
    reassemble_check(&all);
    assert_eq!(h.e.counters().fragments_held.get(), 2);
    assert_eq!(h.drops(DropReason::FragmentTimeout), 0);
    h.tick(T0 + 10.0);
    assert_eq!(
        h.drops(DropReason::FragmentTimeout),
        0,
        "released ones do not time out"
    );
}

#[test]
fn out_of_order_inbound_fragments() {
    let mut h = H::std();
    h.fwd(&udp(A, 5000, R1, 53), IN0, fwd_out());
    let frags = fragment(&big(R1, 53, POOL, 5000), 64, 99);
    let (v, _) = h.run(&frags[3], OUTSIDE);
    assert_eq!(v, Verdict::Held);
    let mut outs = Vec::new();
    for f in &frags[..3] {
        let (v, out) = h.run(f, OUTSIDE);
        assert_eq!(v, fwd_in(A));
        outs.push(out);
    }
    let rel = h.drain();
    assert_eq!(rel.len(), 1);
    assert_eq!(rel[0].0, fwd_in(A));
    outs.push(rel[0].1.clone());
    reassemble_check(&outs);
}

#[test]
fn held_fragment_times_out() {
    let mut h = H::std();
    let frags = fragment(&big(A, 5000, R1, 53), 64, 5);
    let (v, _) = h.run(&frags[1], IN0);
    assert_eq!(v, Verdict::Held);
    h.tick(T0 + 1.0);
    assert_eq!(h.drops(DropReason::FragmentTimeout), 0);
    h.tick(T0 + 3.0);
    assert_eq!(h.drops(DropReason::FragmentTimeout), 1);
    // The first fragment arriving late releases nothing.
    h.fwd(&frags[0], IN0, fwd_out());
    assert!(h.drain().is_empty());
}

#[test]
fn hold_pool_is_bounded() {
    let mut h = H::new(&conf("", "", "[fragments]\nmax_held = 2"));
    for id in 0..2 {
        let frags = fragment(&big(A, 5000, R1, 53), 64, id);
        assert_eq!(h.run(&frags[1], IN0).0, Verdict::Held);
    }
    let frags = fragment(&big(A, 5000, R1, 53), 64, 2);
    h.drop(&frags[1], IN0, DropReason::FragmentBufferFull);
    // Slots come back after the timeout.
    h.tick(T0 + 3.0);
    assert_eq!(h.drops(DropReason::FragmentTimeout), 2);
    assert_eq!(h.run(&frags[1], IN0).0, Verdict::Held);
}

#[test]
fn oversized_out_of_order_fragment() {
    let mut h = H::std();
    let payload = vec![7u8; 5000];
    let f = udp_full(None, A, 5000, R1, 53, 64, &payload);
    let frags = fragment(&f, 2400, 11);
    h.drop(&frags[1], IN0, DropReason::FragmentTooLarge);
}

#[test]
fn fragment_released_in_its_expiry_second_is_not_also_timed_out() {
    let mut h = H::new(&conf("", "", "[fragments]\nmax_held = 2\ntimeout = 2"));
    let frags = fragment(&big(A, 5000, R1, 53), 64, 1);
    assert_eq!(h.run(&frags[1], IN0).0, Verdict::Held);
    let orphan = fragment(&big(A, 5000, R1, 53), 64, 50);
    assert_eq!(h.run(&orphan[1], IN0).0, Verdict::Held);
    // The first fragment comes in the very second the held one expires: it is released
    // (and the end-of-batch expiry must not free its slot a second time).
    h.at(T0 + 2.0);
    h.fwd(&frags[0], IN0, fwd_out());
    assert_eq!(h.drops(DropReason::FragmentTimeout), 1, "only the orphan");
    assert_eq!(h.drain().len(), 1);
    // Exactly two hold slots exist, no more.
    for id in 10..12 {
        let f = fragment(&big(A, 5000, R1, 53), 64, id);
        assert_eq!(h.run(&f[1], IN0).0, Verdict::Held);
    }
    let f = fragment(&big(A, 5000, R1, 53), 64, 12);
    h.drop(&f[1], IN0, DropReason::FragmentBufferFull);
}
