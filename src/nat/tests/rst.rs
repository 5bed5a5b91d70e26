//! Blind TCP resets (issue 10 part 3): inbound RST and FIN change a session only when their
//! sequence number is acceptable to the inside host (`tcp::inbound_acceptable`).

use super::util::*;
use crate::nat::session::{InKey, slot};
use crate::nat::{DropReason, Verdict};
use crate::packet::ipv4::Protocol;
use etherparse::{PacketBuilder, TcpHeader, TcpOptionElement};
use proptest::prelude::*;

/// The inside host's and the remote's initial sequence numbers.
const ISN_IN: u32 = 0x1000_0000;
const ISN_OUT: u32 = 0x7000_0000;
/// What the inside host acknowledges after the handshake: its RCV.NXT.
const RCV: u32 = ISN_OUT + 1;
const EST: u32 = T0 as u32 + 7440;

#[allow(clippy::too_many_arguments)]
fn seg_data(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    flags: u8,
    seq: u32,
    ack: u32,
    ws: Option<u8>,
    data: &[u8],
) -> Vec<u8> {
    let mut h = TcpHeader::new(sport, dport, seq, 8192);
    h.syn = flags & SYN != 0;
    h.fin = flags & FIN != 0;
    h.rst = flags & RST != 0;
    h.ack = flags & ACK != 0;
    h.acknowledgment_number = ack;
    if let Some(w) = ws {
        h.set_options(&[TcpOptionElement::Noop, TcpOptionElement::WindowScale(w)])
            .unwrap();
    }
    let mut v = Vec::new();
    PacketBuilder::ethernet2([2, 0, 0, 0, 0, 1], [2, 0, 0, 0, 0, 2])
        .ipv4(src, dst, 64)
        .tcp_header(h)
        .write(&mut v, data)
        .unwrap();
    v
}

#[allow(clippy::too_many_arguments)]
fn seg(
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    flags: u8,
    seq: u32,
    ack: u32,
    ws: Option<u8>,
) -> Vec<u8> {
    seg_data(src, sport, dst, dport, flags, seq, ack, ws, b"")
}

/// A:`port` opens a connection to R1:80, announcing window scale `ws`; the external port.
fn open_port(h: &mut H, port: u16, ws: Option<u8>) -> u16 {
    let p = h.fwd(&seg(A, port, R1, 80, SYN, ISN_IN, 0, ws), IN0, fwd_out());
    let syn_ack = seg(
        R1,
        80,
        POOL,
        p.sport,
        SYN | ACK,
        ISN_OUT,
        ISN_IN + 1,
        Some(7),
    );
    h.fwd(&syn_ack, OUTSIDE, fwd_in(A));
    let ack = seg(A, port, R1, 80, ACK, ISN_IN + 1, RCV, None);
    h.fwd(&ack, IN0, fwd_out());
    p.sport
}

fn open(h: &mut H, ws: Option<u8>) -> u16 {
    open_port(h, 4000, ws)
}

/// An inbound segment from R1:80 to the connection's external port.
fn from_remote(port: u16, flags: u8, seq: u32) -> Vec<u8> {
    seg(R1, 80, POOL, port, flags, seq, ISN_IN + 1, None)
}

fn key(port: u16) -> InKey {
    InKey {
        in_addr: u32::from(ip(A)),
        rem_addr: u32::from(ip(R1)),
        in_port: port,
        rem_port: 80,
        realm: 0,
        proto: Protocol::TCP,
    }
}

/// Sends `frame` from outside and expects it dropped as out of window, with nothing changed.
fn refused(h: &mut H, frame: &[u8]) {
    let before = h.expiries();
    h.drop(frame, OUTSIDE, DropReason::TcpOutOfWindow);
    assert_eq!(
        h.expiries(),
        before,
        "a refused segment refreshed or changed the session"
    );
}

#[test]
fn an_in_window_rst_ends_the_connection() {
    for seq in [RCV, RCV + 1000, RCV + 65535] {
        let mut h = H::std();
        let port = open(&mut h, None);
        assert_eq!(h.expiries(), vec![EST]);
        h.at(T0 + 10.0);
        h.fwd(&from_remote(port, RST, seq), OUTSIDE, fwd_in(A));
        assert_eq!(
            h.expiries(),
            vec![T0 as u32 + 10 + 240],
            "seq {seq:#x}: transitory"
        );
        h.e.check_invariants();
    }
}

#[test]
fn an_out_of_window_rst_or_fin_is_dropped_counted_and_changes_nothing() {
    let mut h = H::std();
    let port = open(&mut h, None);
    // Later, so that a refresh would show in the deadline.
    h.at(T0 + 100.0);
    for seq in [
        RCV + (1 << 31),
        RCV + 65536,
        RCV.wrapping_sub(1),
        RCV - 70_000,
        0,
    ] {
        refused(&mut h, &from_remote(port, RST, seq));
        refused(&mut h, &from_remote(port, RST | ACK, seq));
        refused(
            &mut h,
            &from_remote(port, FIN | ACK, seq.wrapping_add(1 << 30)),
        );
    }
    assert_eq!(h.drops(DropReason::TcpOutOfWindow), 15);
    assert_eq!(h.expiries(), vec![EST], "still established, not refreshed");
    // The connection still works, and a real RST still ends it.
    h.fwd(&from_remote(port, ACK, RCV), OUTSIDE, fwd_in(A));
    assert_eq!(h.expiries(), vec![T0 as u32 + 100 + 7440]);
    h.fwd(&from_remote(port, RST, RCV), OUTSIDE, fwd_in(A));
    assert_eq!(h.expiries(), vec![T0 as u32 + 100 + 240]);
    h.e.check_invariants();
}

#[test]
fn the_window_scale_of_the_inside_hosts_syn_bounds_the_window() {
    // (announced scale, largest accepted offset from RCV)
    for (ws, max) in [
        (None, 65535u32),
        (Some(0), 65535),
        (Some(7), 65535 << 7),
        (Some(14), 65535 << 14),
        // RFC 7323: more than 14 is taken as 14.
        (Some(15), 65535 << 14),
    ] {
        let mut h = H::std();
        let port = open(&mut h, ws);
        refused(&mut h, &from_remote(port, RST, RCV.wrapping_add(max + 1)));
        h.fwd(
            &from_remote(port, RST, RCV.wrapping_add(max)),
            OUTSIDE,
            fwd_in(A),
        );
        assert_eq!(h.expiries(), vec![T0 as u32 + 240], "{ws:?}");
    }
}

#[test]
fn a_session_picked_up_mid_stream_assumes_the_largest_scale() {
    let mut h = H::std();
    let p = h.fwd(
        &seg(A, 4000, R1, 80, ACK, ISN_IN, RCV, None),
        IN0,
        fwd_out(),
    );
    h.fwd(&from_remote(p.sport, ACK, RCV), OUTSIDE, fwd_in(A));
    assert_eq!(h.expiries(), vec![EST]);
    refused(&mut h, &from_remote(p.sport, RST, RCV + (65535 << 14) + 1));
    refused(&mut h, &from_remote(p.sport, RST, RCV + (1 << 31)));
    h.fwd(
        &from_remote(p.sport, RST, RCV + (65535 << 14)),
        OUTSIDE,
        fwd_in(A),
    );
    assert_eq!(h.expiries(), vec![T0 as u32 + 240]);
}

#[test]
fn after_the_syn_only_a_rst_acking_isn_plus_one_is_accepted() {
    let mut h = H::std();
    let p = h.fwd(&seg(A, 4000, R1, 80, SYN, ISN_IN, 0, None), IN0, fwd_out());
    let rst = |flags, ack| seg(R1, 80, POOL, p.sport, flags, 0, ack, None);
    refused(&mut h, &rst(RST, ISN_IN + 1));
    for ack in [ISN_IN, ISN_IN + 2, 0, ISN_IN + (1 << 31)] {
        refused(&mut h, &rst(RST | ACK, ack));
    }
    refused(&mut h, &rst(FIN | ACK, ISN_IN + 7));
    // A retransmitted SYN keeps the same ISN.
    h.fwd(&seg(A, 4000, R1, 80, SYN, ISN_IN, 0, None), IN0, fwd_out());
    // Connection refused: the remote answers the SYN with RST|ACK, ack ISN + 1.
    h.at(T0 + 3.0);
    h.fwd(&rst(RST | ACK, ISN_IN + 1), OUTSIDE, fwd_in(A));
    assert_eq!(h.expiries(), vec![T0 as u32 + 3 + 240]);
    h.e.check_invariants();
}

#[test]
fn a_new_syn_on_a_synchronised_session_starts_over_from_its_isn() {
    let mut h = H::std();
    let port = open(&mut h, None);
    // The inside host reuses the ports for a new connection (natgw saw no close).
    let isn = ISN_IN + 0x0100_0000;
    h.fwd(&seg(A, 4000, R1, 80, SYN, isn, 0, None), IN0, fwd_out());
    assert_eq!(h.e.in_val(&key(4000)).unwrap().ack, isn + 1);
    refused(&mut h, &from_remote(port, RST, RCV));
    // The remote refuses it: the inside host hears of it.
    let refusal = seg(R1, 80, POOL, port, RST | ACK, 0, isn + 1, None);
    h.fwd(&refusal, OUTSIDE, fwd_in(A));
    h.e.check_invariants();
}

#[test]
fn sequence_numbers_wrap_around_2_32() {
    let mut h = H::std();
    let port = open(&mut h, None);
    // The inside host acknowledges data up to just below 2^32, then past the wrap (the fast
    // path records both).
    let high = 0xffff_ff00u32;
    let a = |h: &mut H, ack: u32| {
        h.fwd(
            &seg(A, 4000, R1, 80, ACK, ISN_IN + 1, ack, None),
            IN0,
            fwd_out(),
        );
    };
    a(&mut h, RCV + 0x4000_0000);
    a(&mut h, RCV + 0x8000_0000);
    a(&mut h, high);
    assert_eq!(h.e.in_val(&key(4000)).unwrap().ack, high);
    // In the window across the wrap: accepted offsets 0..=65535 from 0xffffff00.
    refused(&mut h, &from_remote(port, RST, high - 1));
    refused(&mut h, &from_remote(port, RST, high.wrapping_add(65536)));
    a(&mut h, 0x10);
    assert_eq!(h.e.in_val(&key(4000)).unwrap().ack, 0x10, "past the wrap");
    // An older ACK (reordered) does not pull it back.
    a(&mut h, high);
    assert_eq!(h.e.in_val(&key(4000)).unwrap().ack, 0x10);
    refused(&mut h, &from_remote(port, RST, high));
    h.fwd(&from_remote(port, RST, 0x10 + 65535), OUTSIDE, fwd_in(A));
    assert_eq!(h.expiries(), vec![T0 as u32 + 240]);
}

#[test]
fn the_fast_path_keeps_the_receive_point_current() {
    let mut h = H::std();
    let port = open(&mut h, None);
    let v = h.e.in_val(&key(4000)).unwrap();
    assert_ne!(
        v.sess & slot::FAST,
        0,
        "established outbound takes the fast path"
    );
    assert_eq!(v.ack, RCV);
    // The inside host received a megabyte: the old receive point is far behind its window.
    let now = RCV + 1_000_000;
    let p = h.fwd(
        &seg(A, 4000, R1, 80, ACK, ISN_IN + 1, now, None),
        IN0,
        fwd_out(),
    );
    assert_eq!(p.tcp_flags, ACK);
    assert_eq!(h.e.in_val(&key(4000)).unwrap().ack, now);
    // A segment without ACK leaves it.
    h.fwd(
        &seg(A, 4000, R1, 80, 0, ISN_IN + 1, 5, None),
        IN0,
        fwd_out(),
    );
    assert_eq!(h.e.in_val(&key(4000)).unwrap().ack, now);
    refused(&mut h, &from_remote(port, RST, RCV));
    h.fwd(&from_remote(port, RST, now), OUTSIDE, fwd_in(A));
    assert_eq!(h.expiries(), vec![T0 as u32 + 240]);
}

#[test]
fn a_retransmitted_fin_below_the_receive_point_still_passes() {
    let mut h = H::std();
    let port = open(&mut h, None);
    // The remote closes after 100 bytes; the inside host acknowledges the FIN.
    let fin = seg_data(
        R1,
        80,
        POOL,
        port,
        FIN | ACK,
        RCV,
        ISN_IN + 1,
        None,
        &[7; 100],
    );
    h.fwd(&fin, OUTSIDE, fwd_in(A));
    let acked = RCV + 101;
    h.fwd(
        &seg(A, 4000, R1, 80, ACK, ISN_IN + 1, acked, None),
        IN0,
        fwd_out(),
    );
    // That ACK is lost: the remote retransmits its FIN, now below the receive point.
    h.fwd(&fin, OUTSIDE, fwd_in(A));
    h.fwd(&from_remote(port, FIN | ACK, acked - 1), OUTSIDE, fwd_in(A));
    // A RST is not let through from below, nor a FIN from far below.
    refused(&mut h, &from_remote(port, RST, acked - 1));
    refused(&mut h, &from_remote(port, FIN | ACK, acked - 70_000));
}

#[test]
fn port_forwards_check_against_the_inside_servers_window() {
    let statics = "static = [{ protocol = \"tcp\", external = \"192.168.1.10:8080\", \
                   internal = \"10.0.0.7:80\" }]";
    let mut h = H::new(&conf(statics, "", ""));
    let syn = seg(R1, 5555, POOL, 8080, SYN, ISN_OUT, 0, None);
    // Before the server answers there is no window to check against: a RST is let through
    // (a listening host ignores it; the session is transitory anyway).
    h.fwd(&syn, OUTSIDE, fwd_in(SRV));
    h.fwd(
        &seg(R1, 5555, POOL, 8080, RST, 12345, 0, None),
        OUTSIDE,
        fwd_in(SRV),
    );
    // A new SYN re-opens; the server answers, scale 2.
    h.fwd(&syn, OUTSIDE, fwd_in(SRV));
    let syn_ack = seg(SRV, 80, R1, 5555, SYN | ACK, ISN_IN, ISN_OUT + 1, Some(2));
    h.fwd(&syn_ack, IN0, fwd_out());
    h.fwd(
        &seg(R1, 5555, POOL, 8080, ACK, RCV, ISN_IN + 1, None),
        OUTSIDE,
        fwd_in(SRV),
    );
    assert_eq!(h.expiries(), vec![EST]);
    let rst = |seq| seg(R1, 5555, POOL, 8080, RST, seq, 0, None);
    refused(&mut h, &rst(RCV + (65535 << 2) + 1));
    refused(&mut h, &rst(RCV + (1 << 31)));
    h.fwd(&rst(RCV + (65535 << 2)), OUTSIDE, fwd_in(SRV));
    assert_eq!(h.expiries(), vec![T0 as u32 + 240]);
    h.e.check_invariants();
}

#[test]
fn hairpinned_connections_check_each_receiver() {
    let statics = "static = [{ protocol = \"tcp\", external = \"192.168.1.10:8080\", \
                   internal = \"10.0.0.7:80\" }]";
    let mut h = H::new(&conf(statics, "", ""));
    // A connects to its neighbour SRV through the port forward.
    h.fwd(
        &seg(A, 5555, POOL, 8080, SYN, ISN_IN, 0, None),
        IN0,
        fwd_in(SRV),
    );
    let syn_ack = seg(SRV, 80, POOL, 5555, SYN | ACK, ISN_OUT, ISN_IN + 1, None);
    h.fwd(&syn_ack, IN0, fwd_in(A));
    let ack = seg(A, 5555, POOL, 8080, ACK, ISN_IN + 1, ISN_OUT + 1, None);
    h.fwd(&ack, IN0, fwd_in(SRV));
    // SRV's RST reaches A only in A's window (A acknowledged ISN_OUT + 1) ...
    let from_srv = |seq| seg(SRV, 80, POOL, 5555, RST, seq, 0, None);
    h.drop(
        &from_srv(ISN_OUT + (1 << 31)),
        IN0,
        DropReason::TcpOutOfWindow,
    );
    // ... and A's reaches SRV only in SRV's (SRV acknowledged ISN_IN + 1).
    let from_a = |seq| seg(A, 5555, POOL, 8080, RST, seq, 0, None);
    h.drop(
        &from_a(ISN_IN + 1 + (1 << 31)),
        IN0,
        DropReason::TcpOutOfWindow,
    );
    h.fwd(&from_a(ISN_IN + 1), IN0, fwd_in(SRV));
    h.fwd(&from_srv(ISN_OUT + 1), IN0, fwd_in(A));
    h.e.check_invariants();
}

/// The frame with 4 bytes of IPv4 options (NOPs, END): not plain, so the full path takes it.
fn with_ip_options(f: &[u8]) -> Vec<u8> {
    let mut v = f[..34].to_vec();
    v.extend_from_slice(&[1, 1, 1, 0]);
    v.extend_from_slice(&f[34..]);
    v[14] = 0x46;
    let tot = u16::from_be_bytes([v[16], v[17]]) + 4;
    v[16..18].copy_from_slice(&tot.to_be_bytes());
    fix_ip_checksum(&mut v, 14);
    v
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    /// The fast path and the full path record the same receive point from the same
    /// outbound segments (one connection's go through `fast::in2out`, the other's carry IP
    /// options and go through `in2out::in2out`), and so judge inbound RSTs alike.
    #[test]
    fn fast_and_full_path_record_the_same_receive_point(
        segs in proptest::collection::vec((any::<u32>(), 0u8..4), 1..12),
        rsts in proptest::collection::vec(any::<u32>(), 1..4),
        near in proptest::collection::vec(0u32..70_000, 1..4),
    ) {
        let mut h = H::std();
        let fast = open_port(&mut h, 4000, None);
        let full = open_port(&mut h, 4001, None);
        for (ack, kind) in segs {
            let flags = [ACK, ACK | 0x08, 0, 0x08][kind as usize];
            let f = seg(A, 4000, R1, 80, flags, ISN_IN + 1, ack, None);
            let v = h.e.in_val(&key(4000)).unwrap();
            prop_assert_ne!(v.sess & slot::FAST, 0);
            h.fwd(&f, IN0, fwd_out());
            let g = with_ip_options(&seg(A, 4001, R1, 80, flags, ISN_IN + 1, ack, None));
            let (verdict, _) = h.run(&g, IN0);
            prop_assert_eq!(verdict, fwd_out());
            prop_assert_eq!(h.e.in_val(&key(4000)).unwrap().ack, h.e.in_val(&key(4001)).unwrap().ack);
        }
        let rcv = h.e.in_val(&key(4000)).unwrap().ack;
        // Random numbers (almost all out of window) and some near the receive point.
        let seqs = rsts.into_iter().chain(near.into_iter().map(|d| rcv.wrapping_add(d)));
        for seq in seqs {
            let (a, _) = h.run(&from_remote(fast, RST | ACK, seq), OUTSIDE);
            let (b, _) = h.run(&from_remote(full, RST | ACK, seq), OUTSIDE);
            prop_assert_eq!(a, b);
            let want_ok = seq.wrapping_sub(rcv) <= 65535;
            prop_assert_eq!(a == Verdict::Drop(DropReason::TcpOutOfWindow), !want_ok);
        }
        h.e.check_invariants();
    }
}
