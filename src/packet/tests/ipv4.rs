//! IPv4 header view and `Ipv4Repr`: fields, setters, truncation, malformed headers, round trips.

use std::net::Ipv4Addr;

use crate::packet::Error;
use crate::packet::ipv4::*;

/// 20-byte header + 4 bytes option (NOP x3 + EOL) + 8 bytes payload.
fn sample() -> Vec<u8> {
    let mut b = vec![
        0x46, 0xB8, 0x00, 32, 0x12, 0x34, 0x40, 0x00, 64, 17, 0, 0, 10, 0, 0, 1, 192, 168, 1, 2, 1,
        1, 1, 0,
    ];
    b.extend_from_slice(&[1, 2, 3, 4, 5, 6, 7, 8]);
    let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
    p.fill_checksum();
    b
}

#[test]
fn fields() {
    let b = sample();
    let p = Ipv4Packet::new_checked(&b[..]).unwrap();
    assert_eq!(p.version(), 4);
    assert_eq!(p.header_len(), 24);
    assert_eq!(p.tos(), 0xB8);
    assert_eq!(p.total_len(), 32);
    assert_eq!(p.ident(), 0x1234);
    assert!(p.dont_frag());
    assert!(!p.more_frags());
    assert_eq!(p.frag_offset(), 0);
    assert!(!p.is_fragment());
    assert_eq!(p.ttl(), 64);
    assert_eq!(p.protocol(), Protocol::UDP);
    assert_eq!(p.src_addr(), Ipv4Addr::new(10, 0, 0, 1));
    assert_eq!(p.dst_addr(), Ipv4Addr::new(192, 168, 1, 2));
    assert_eq!(p.src_u32(), 0x0A00_0001);
    assert_eq!(p.dst_u32(), 0xC0A8_0102);
    assert_eq!(p.options(), &[1, 1, 1, 0]);
    assert_eq!(p.header().len(), 24);
    assert_eq!(p.payload(), &[1, 2, 3, 4, 5, 6, 7, 8]);
    assert!(p.verify_checksum());
}

#[test]
fn setters_round_trip() {
    let mut b = sample();
    let mut p = Ipv4Packet::new_checked(&mut b[..]).unwrap();
    p.set_ttl(1);
    p.set_src_addr(Ipv4Addr::new(255, 255, 255, 255));
    p.set_dst_addr(Ipv4Addr::new(0, 0, 0, 0));
    p.set_ident(0xFFFF);
    p.set_protocol(Protocol::TCP);
    p.set_tos(3);
    p.set_frag_fields(false, true, 1480);
    assert!(!p.verify_checksum());
    p.fill_checksum();
    assert!(p.verify_checksum());
    p.set_total_len(30);
    p.payload_mut()[0] = 0xEE;
    assert_eq!(p.ttl(), 1);
    assert_eq!(p.src_u32(), 0xFFFF_FFFF);
    assert_eq!(p.dst_u32(), 0);
    assert_eq!(p.ident(), 0xFFFF);
    assert_eq!(p.protocol(), Protocol::TCP);
    assert_eq!(p.tos(), 3);
    assert!(!p.dont_frag());
    assert!(p.more_frags());
    assert_eq!(p.frag_offset(), 1480);
    assert!(p.is_fragment());
    assert_eq!(p.payload(), &[0xEE, 2, 3, 4, 5, 6]);
    p.set_checksum(0xABCD);
    assert_eq!(p.checksum(), 0xABCD);
    assert_eq!(&b[4..12], &[0xFF, 0xFF, 0x20, 0xB9, 1, 6, 0xAB, 0xCD]);
}

#[test]
fn offset_only_is_fragment() {
    let mut b = sample();
    let mut p = Ipv4Packet::new_checked(&mut b[..]).unwrap();
    p.set_frag_fields(false, false, 8);
    assert!(p.is_fragment());
    assert!(!p.more_frags());
    assert_eq!(p.frag_offset(), 8);
    p.set_frag_fields(false, false, 0xFFFF);
    assert_eq!(p.frag_offset(), 0x1FFF * 8);
}

#[test]
fn padding_is_ignored() {
    let mut b = sample();
    b.extend_from_slice(&[0xCC; 14]);
    let p = Ipv4Packet::new_checked(&b[..]).unwrap();
    assert_eq!(p.payload(), &[1, 2, 3, 4, 5, 6, 7, 8]);
}

#[test]
fn truncation() {
    let b = sample();
    for n in 0..=b.len() {
        let r = Ipv4Packet::new_checked(&b[..n]);
        if n < b.len() {
            assert_eq!(r.err(), Some(Error::Truncated), "len {n}");
        } else {
            assert!(r.is_ok());
        }
        let e = Ipv4Packet::new_embedded(&b[..n]);
        if n < 24 + 8 {
            assert_eq!(e.err(), Some(Error::Truncated), "embedded len {n}");
        } else {
            assert_eq!(e.unwrap().payload().len(), n - 24);
        }
    }
}

#[test]
fn embedded_allows_short_total_len() {
    let mut b = sample();
    Ipv4Packet::new_unchecked(&mut b[..]).set_total_len(1500);
    assert_eq!(
        Ipv4Packet::new_checked(&b[..]).err(),
        Some(Error::Truncated)
    );
    let p = Ipv4Packet::new_embedded(&b[..]).unwrap();
    assert_eq!(p.payload(), &[1, 2, 3, 4, 5, 6, 7, 8]);
}

#[test]
fn malformed() {
    let mut b = sample();
    for v in [0u8, 5, 6, 15] {
        b[0] = (v << 4) | 6;
        assert_eq!(
            Ipv4Packet::new_checked(&b[..]).err(),
            Some(Error::Malformed)
        );
        assert_eq!(
            Ipv4Packet::new_embedded(&b[..]).err(),
            Some(Error::Malformed)
        );
    }
    for ihl in 0..5u8 {
        b[0] = 0x40 | ihl;
        assert_eq!(
            Ipv4Packet::new_checked(&b[..]).err(),
            Some(Error::Malformed)
        );
        assert_eq!(
            Ipv4Packet::new_embedded(&b[..]).err(),
            Some(Error::Malformed)
        );
    }
    // header_len (24) > total_len (23)
    let mut b = sample();
    b[3] = 23;
    assert_eq!(
        Ipv4Packet::new_checked(&b[..]).err(),
        Some(Error::Malformed)
    );
    assert_eq!(
        Ipv4Packet::new_embedded(&b[..]).err(),
        Some(Error::Malformed)
    );
    // IHL 15 (60 bytes) larger than both total_len and buffer
    let mut b = sample();
    b[0] = 0x4F;
    assert_eq!(
        Ipv4Packet::new_checked(&b[..]).err(),
        Some(Error::Malformed)
    );
    let p = Ipv4Packet::new_unchecked(&b[..]);
    assert_eq!(Ipv4Repr::parse(&p).err(), Some(Error::Malformed));
}

#[test]
fn repr_round_trip() {
    let repr = Ipv4Repr {
        src: Ipv4Addr::new(100, 64, 0, 1),
        dst: Ipv4Addr::new(8, 8, 8, 8),
        protocol: Protocol::ICMP,
        payload_len: 36,
        ttl: 63,
        ident: 0xBEEF,
        dont_frag: true,
        tos: 0x10,
    };
    let mut b = [0xFFu8; 20];
    let mut p = Ipv4Packet::new_unchecked(&mut b[..]);
    repr.emit(&mut p);
    assert!(p.verify_checksum());
    assert_eq!(p.version(), 4);
    assert_eq!(p.header_len(), 20);
    assert_eq!(p.total_len(), 56);
    assert!(!p.more_frags());
    assert_eq!(p.frag_offset(), 0);
    assert_eq!(Ipv4Repr::parse(&p).unwrap(), repr);

    let b = sample();
    let r = Ipv4Repr::parse(&Ipv4Packet::new_checked(&b[..]).unwrap()).unwrap();
    assert_eq!(r.payload_len, 8);
    assert_eq!(r.ident, 0x1234);
    assert!(r.dont_frag);
    assert_eq!(r.tos, 0xB8);
}
