//! The event log's hooks in the store: what a worker's ring holds after mappings and
//! sessions come and go, and after a port search fails (`nat::eventlog`).

use super::util::*;
use crate::nat::DropReason;
use crate::nat::eventlog::{Kind, Record, mask};

fn drain(h: &H) -> Vec<Record> {
    std::iter::from_fn(|| h.e.counters().eventlog.pop()).collect()
}

#[test]
fn mappings_sessions_and_exhaustion_reach_the_ring() {
    // One pool address with 4 ports: the host's fifth mapping finds none.
    let mut h = H::new(&conf("", "[realm.ports]\nrange = \"2000-2003\"", ""));
    let all = mask::MAPPINGS | mask::SESSIONS | mask::DESTINATIONS | mask::EXHAUSTION;
    h.e.counters().eventlog.configure(64, &[all]);

    let p = h.fwd(&udp(A, 3000, R1, 53), IN0, fwd_out());
    let r = drain(&h);
    assert_eq!(
        r.iter().map(|r| r.kind).collect::<Vec<_>>(),
        [Kind::MappingAdd, Kind::SessionAdd]
    );
    for x in &r {
        assert_eq!(
            (
                x.in_addr, x.in_port, x.ext_addr, x.ext_port, x.proto, x.realm
            ),
            (u32::from(ip(A)), 3000, u32::from(p.src), p.sport, 17, 0)
        );
    }
    assert_eq!(
        (r[0].flags, r[0].rem_addr),
        (0, 0),
        "mappings have no destination"
    );
    assert_eq!(
        (r[1].flags, r[1].rem_addr, r[1].rem_port),
        (Record::DEST, u32::from(ip(R1)), 53)
    );

    for port in 3001..3004 {
        h.fwd(&udp(A, port, R1, 53), IN0, fwd_out());
    }
    drain(&h);
    // The paired address is out of ports: one PEXH per address and second, the rest counted.
    for _ in 0..3 {
        h.drop(&udp(A, 4000, R1, 53), IN0, DropReason::PortsExhausted);
    }
    // A new host tries every pool address: AEXH.
    h.drop(&udp(B, 4000, R1, 53), IN0, DropReason::PortsExhausted);
    let r = drain(&h);
    assert_eq!(
        r.iter().map(|r| r.kind).collect::<Vec<_>>(),
        [Kind::PortsExhausted, Kind::AddressesExhausted]
    );
    assert_eq!(
        (r[0].in_addr, r[0].ext_addr),
        (u32::from(ip(A)), u32::from(ip(POOL)))
    );
    assert_eq!((r[1].in_addr, r[1].ext_addr), (u32::from(ip(B)), 0));
    assert_eq!(h.e.counters().eventlog.suppressed.get(), 2);

    // Expiry: the sessions go first, then their mappings.
    h.tick(T0 + 400.0);
    h.tick(T0 + 401.0);
    let r = drain(&h);
    assert_eq!(r.len(), 8, "{r:?}");
    assert_eq!(r.iter().filter(|r| r.kind == Kind::SessionDel).count(), 4);
    assert_eq!(r.iter().filter(|r| r.kind == Kind::MappingDel).count(), 4);
    let first_del = r.iter().position(|r| r.kind == Kind::MappingDel).unwrap();
    assert_eq!(r[first_del - 1].kind, Kind::SessionDel);
    assert_eq!(r[first_del - 1].in_port, r[first_del].in_port);
    assert_eq!(h.e.counters().eventlog.lost.get(), 0);
    h.e.check_invariants();
}

#[test]
fn logging_off_records_nothing() {
    let mut h = H::std();
    h.fwd(&udp(A, 3000, R1, 53), IN0, fwd_out());
    assert!(drain(&h).is_empty());
    assert_eq!(h.e.counters().eventlog.lost.get(), 0);
}
