//! Random bytes through every constructor and accessor: errors, never panics.

use crate::packet::*;
use std::hint::black_box;
use std::net::Ipv4Addr;

struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> usize {
        (self.next() % n) as usize
    }
}

const A: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const B: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 2);

#[derive(Default, Debug)]
struct Hits {
    eth: usize,
    ip: usize,
    embedded: usize,
    udp: usize,
    tcp: usize,
    icmp: usize,
    icmp_embedded: usize,
}

fn eth_all(b: &[u8], h: &mut Hits) {
    let (mut fb, n) = copy(b);
    if let Ok(mut f) = EthernetFrame::new_checked(&mut fb[..n]) {
        h.eth += 1;
        black_box((f.dst_addr(), f.src_addr(), f.vlan_id(), f.ethertype()));
        black_box((f.header_len(), f.payload().len()));
        ip_all(f.payload(), h);
        f.set_vlan_id(0xABC);
        f.set_ethertype(ethernet::ETHERTYPE_IPV4);
        f.set_src_addr([1; 6]);
        f.set_dst_addr([2; 6]);
        f.payload_mut().fill(0);
    }
}

fn ip_read<T: AsRef<[u8]>>(p: &Ipv4Packet<T>) {
    black_box((
        p.version(),
        p.header_len(),
        p.tos(),
        p.total_len(),
        p.ident(),
    ));
    black_box((
        p.dont_frag(),
        p.more_frags(),
        p.frag_offset(),
        p.is_fragment(),
    ));
    black_box((
        p.ttl(),
        p.protocol(),
        p.checksum(),
        p.src_addr(),
        p.dst_addr(),
    ));
    black_box((p.src_u32(), p.dst_u32(), p.verify_checksum()));
    black_box((p.payload().len(), p.header().len(), p.options().len()));
    black_box(Ipv4Repr::parse(p).unwrap());
}

fn ip_all(b: &[u8], h: &mut Hits) {
    black_box(Ipv4Repr::parse(&Ipv4Packet::new_unchecked(b)).ok());
    let (mut pb, n) = copy(b);
    if let Ok(mut p) = Ipv4Packet::new_checked(&mut pb[..n]) {
        h.ip += 1;
        ip_read(&p);
        p.set_ttl(p.ttl().wrapping_sub(1));
        p.set_src_addr(A);
        p.set_dst_addr(B);
        p.fill_checksum();
        assert!(p.verify_checksum());
        l4_all(p.payload(), h);
    }
    let (mut eb, n) = copy(b);
    if let Ok(mut p) = Ipv4Packet::new_embedded(&mut eb[..n]) {
        h.embedded += 1;
        ip_read(&p);
        // Short only if the quoted datagram itself claims to be.
        let claimed = usize::from(p.total_len()) - p.header_len();
        assert!(p.payload().len() >= claimed.min(8));
        p.set_ident(1);
        p.fill_checksum();
        l4_all(p.payload(), h);
    }
}

/// Each parser gets its own copy: the setters below would otherwise
/// steer what the next parser sees.
fn copy(b: &[u8]) -> ([u8; 256], usize) {
    let mut c = [0u8; 256];
    c[..b.len()].copy_from_slice(b);
    (c, b.len())
}

fn l4_all(b: &[u8], h: &mut Hits) {
    let (mut ub, n) = copy(b);
    if let Ok(mut u) = UdpPacket::new_checked(&mut ub[..n]) {
        h.udp += 1;
        black_box((u.src_port(), u.dst_port(), u.len(), u.checksum()));
        black_box((u.payload().len(), u.verify_checksum(A, B)));
        u.set_src_port(1);
        u.set_dst_port(2);
        u.fill_checksum(A, B);
        assert!(u.verify_checksum(A, B));
        u.payload_mut().fill(0);
    }
    let (mut tb, n) = copy(b);
    if let Ok(mut t) = TcpPacket::new_checked(&mut tb[..n]) {
        h.tcp += 1;
        black_box((t.src_port(), t.dst_port(), t.seq_number(), t.ack_number()));
        black_box((
            t.header_len(),
            t.flags(),
            t.syn(),
            t.ack(),
            t.fin(),
            t.rst(),
        ));
        black_box((t.psh(), t.window(), t.checksum(), t.urgent_pointer()));
        black_box((
            t.options().len(),
            t.payload().len(),
            t.verify_checksum(A, B),
        ));
        t.set_src_port(3);
        t.set_dst_port(4);
        t.fill_checksum(A, B);
        assert!(t.verify_checksum(A, B));
        t.payload_mut().fill(0);
    }
    let (mut cb, n) = copy(b);
    if let Ok(mut c) = IcmpPacket::new_checked(&mut cb[..n]) {
        h.icmp += 1;
        black_box((
            c.msg_type(),
            c.code(),
            c.checksum(),
            c.echo_ident(),
            c.echo_seq(),
        ));
        black_box((
            c.is_error(),
            c.is_echo(),
            c.data().len(),
            c.verify_checksum(),
        ));
        if let Ok(ip) = c.embedded() {
            h.icmp_embedded += 1;
            ip_read(&ip);
        }
        let was_valid = c.verify_checksum();
        let mut d = checksum::Delta::new();
        d.add16(c.echo_ident(), 7);
        c.set_echo_ident(7);
        c.update_checksum(d);
        assert_eq!(c.verify_checksum(), was_valid);
        c.set_msg_type(3);
        c.set_code(1);
        c.set_echo_seq(9);
        if let Ok(mut ip) = c.embedded_mut() {
            ip.set_src_addr(B);
        }
        c.data_mut().fill(0);
        c.fill_checksum();
        assert!(c.verify_checksum());
    }
}

#[test]
fn random_buffers_never_panic() {
    let mut rng = XorShift(0x9E37_79B9_7F4A_7C15);
    let mut hits = Hits::default();
    let mut buf = [0u8; 256];
    for _ in 0..100_000 {
        let len = rng.below(buf.len() as u64 + 1);
        for x in buf[..len].iter_mut() {
            *x = rng.next() as u8;
        }
        let b = &mut buf[..len];
        // Steer some inputs past the first checks so the deeper paths
        // see random data too.
        let steer = rng.below(4);
        if steer >= 1 && len > 18 {
            let eth_type: u16 = if rng.below(2) == 0 { 0x0800 } else { 0x8100 };
            write_u16(b, 12, eth_type);
            write_u16(b, 16, 0x0800);
        }
        for start in [0usize, 14, 18] {
            if steer >= 2 && len > start + 4 {
                b[start] = 0x40 | (5 + rng.below(3) as u8);
                let tl = rng.below((len - start) as u64 + 8) as u16;
                write_u16(b, start + 2, tl);
            }
            if steer == 3 && len > start + 20 {
                b[start + 9] = [1u8, 6, 17][rng.below(3)];
            }
        }
        eth_all(b, &mut hits);
        ip_all(b, &mut hits);
        l4_all(b, &mut hits);
    }
    // The steering must actually reach the parsers, or the test proves
    // nothing.
    assert!(hits.eth > 10_000, "{hits:?}");
    assert!(hits.ip > 1_000, "{hits:?}");
    assert!(hits.embedded > 1_000, "{hits:?}");
    assert!(
        hits.udp > 10_000 && hits.tcp > 10_000 && hits.icmp > 10_000,
        "{hits:?}"
    );
    assert!(hits.icmp_embedded > 100, "{hits:?}");
    eprintln!("{hits:?}");
}

/// Unchecked views over short buffers: smoltcp-style, accessors may
/// panic, but the range helpers that take lengths from header fields
/// must not slice out of bounds.
#[test]
fn unchecked_payload_ranges_clamp() {
    let mut b = [
        0x4Fu8, 0, 0xFF, 0xFF, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    assert!(Ipv4Packet::new_unchecked(&b[..]).payload().is_empty());
    b[0] = 0x45;
    b[2] = 0;
    b[3] = 10; // total_len < header_len
    assert!(Ipv4Packet::new_unchecked(&b[..]).payload().is_empty());
    let t = [
        0u8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xF0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let t = TcpPacket::new_unchecked(&t[..]);
    assert!(t.payload().is_empty() && t.options().is_empty());
    let u = [0u8, 0, 0, 0, 0, 3, 0, 0];
    assert!(UdpPacket::new_unchecked(&u[..]).payload().is_empty());
}
