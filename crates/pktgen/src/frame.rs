//! Frame templates: Ethernet + IPv4 + UDP / TCP SYN / ICMP echo + the bench header, built
//! once with every checksum's constant part summed in advance, so that a packet costs a
//! handful of stores and additions: the source address and port of its flow, the flow id,
//! sequence number and timestamp, and the checksums finished from the precomputed sums.
//!
//! The bench header (18 bytes, big-endian, right after the L4 header):
//!
//! ```text
//! 0  magic   u16  0x4e42 ("NB")
//! 2  flow    u32  flow id (0 .. flows)
//! 6  seq     u32  per-flow sequence number, from 0
//! 10 ts      u64  CLOCK_MONOTONIC at send, ns
//! ```
//!
//! Every field lies on an even offset from the L4 header, which is itself at an even
//! offset, so each one adds whole 16-bit words to the ones' complement sums.

use std::fmt;
use std::net::Ipv4Addr;

pub const ETH_HLEN: usize = 14;
pub const IPV4_HLEN: usize = 20;
pub const UDP_HLEN: usize = 8;
pub const TCP_HLEN: usize = 20;
pub const ICMP_HLEN: usize = 8;
/// Length of the bench header in the payload.
pub const BENCH_HLEN: usize = 18;
pub const MAGIC: u16 = 0x4e42;
/// Frame check sequence: counted in a frame size on the wire (RFC 2544's 64 bytes), never
/// in the buffer.
pub const FCS_LEN: usize = 4;

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;

/// What the generator sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Proto {
    Udp,
    /// TCP SYN (each packet of a flow: the same ports, a new SYN).
    TcpSyn,
    /// ICMP echo request; the flow's "port" is the echo identifier.
    Icmp,
}

impl Proto {
    pub fn l4_hlen(self) -> usize {
        match self {
            Proto::Udp => UDP_HLEN,
            Proto::TcpSyn => TCP_HLEN,
            Proto::Icmp => ICMP_HLEN,
        }
    }

    pub fn ip_proto(self) -> u8 {
        match self {
            Proto::Udp => PROTO_UDP,
            Proto::TcpSyn => PROTO_TCP,
            Proto::Icmp => PROTO_ICMP,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Proto::Udp => "udp",
            Proto::TcpSyn => "tcp-syn",
            Proto::Icmp => "icmp",
        }
    }

    /// The smallest frame on the wire (with FCS) that holds the headers and the bench
    /// header: 64 for UDP and ICMP, 76 for TCP.
    pub fn min_wire_size(self) -> usize {
        ETH_HLEN + IPV4_HLEN + self.l4_hlen() + BENCH_HLEN + FCS_LEN
    }
}

impl std::str::FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "udp" => Ok(Proto::Udp),
            "tcp" | "tcp-syn" | "syn" => Ok(Proto::TcpSyn),
            "icmp" => Ok(Proto::Icmp),
            _ => Err(format!("{s:?}: one of udp, tcp-syn, icmp")),
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The fixed part of every frame of a run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateSpec {
    pub proto: Proto,
    /// On the wire, with FCS (the buffer is 4 bytes shorter).
    pub wire_size: usize,
    pub src_mac: [u8; 6],
    pub dst_mac: [u8; 6],
    pub dst_ip: Ipv4Addr,
    /// UDP/TCP destination port (unused for ICMP).
    pub dst_port: u16,
    pub ttl: u8,
}

/// Ones' complement sum of big-endian 16-bit words (odd tail padded with zero), unfolded.
pub fn sum16(data: &[u8]) -> u32 {
    let mut s = 0u32;
    let mut c = data.chunks_exact(2);
    for w in &mut c {
        s += u16::from_be_bytes([w[0], w[1]]) as u32;
    }
    if let [b] = c.remainder() {
        s += (*b as u32) << 8;
    }
    s
}

/// Folds a 32-bit sum to 16 bits (the checksum is its complement).
#[inline]
pub fn fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// RFC 1624 eqn. 3: the checksum after one 16-bit word of the covered data changed.
#[inline]
pub fn csum_replace16(csum: u16, old: u16, new: u16) -> u16 {
    !fold((!csum) as u32 + (!old) as u32 + new as u32)
}

#[inline]
fn add32(v: u32) -> u32 {
    (v >> 16) + (v & 0xffff)
}

#[inline]
fn add64(v: u64) -> u32 {
    add32((v >> 32) as u32) + add32(v as u32)
}

/// A frame of one run with its constant checksum parts; [`write`](Self::write) patches a
/// copy of [`bytes`](Self::bytes) into one packet.
#[derive(Clone, Debug)]
pub struct Template {
    bytes: Vec<u8>,
    proto: Proto,
    l4_off: usize,
    bench_off: usize,
    /// IPv4 header sum without the source address and the checksum.
    ip_base: u32,
    /// L4 sum (with the pseudo-header for UDP/TCP) without the source address, source
    /// port / echo id, the bench fields and the checksum.
    l4_base: u32,
}

impl Template {
    pub fn new(spec: &TemplateSpec) -> Result<Template, String> {
        let min = spec.proto.min_wire_size();
        if spec.wire_size < min {
            return Err(format!(
                "frame size {}: {} needs at least {min} bytes on the wire",
                spec.wire_size, spec.proto
            ));
        }
        let len = spec.wire_size - FCS_LEN;
        if len > 9000 {
            return Err(format!("frame size {}: at most 9004", spec.wire_size));
        }
        let mut b = vec![0u8; len];
        b[0..6].copy_from_slice(&spec.dst_mac);
        b[6..12].copy_from_slice(&spec.src_mac);
        b[12..14].copy_from_slice(&0x0800u16.to_be_bytes());
        let ip = ETH_HLEN;
        let ip_len = (len - ETH_HLEN) as u16;
        b[ip] = 0x45;
        b[ip + 2..ip + 4].copy_from_slice(&ip_len.to_be_bytes());
        // DF: nothing on the path should fragment a bench frame.
        b[ip + 6] = 0x40;
        b[ip + 8] = spec.ttl;
        b[ip + 9] = spec.proto.ip_proto();
        b[ip + 16..ip + 20].copy_from_slice(&spec.dst_ip.octets());
        let ip_base = sum16(&b[ip..ip + IPV4_HLEN]);

        let l4 = ip + IPV4_HLEN;
        let l4_len = (len - l4) as u16;
        let bench = l4 + spec.proto.l4_hlen();
        match spec.proto {
            Proto::Udp => {
                b[l4 + 2..l4 + 4].copy_from_slice(&spec.dst_port.to_be_bytes());
                b[l4 + 4..l4 + 6].copy_from_slice(&l4_len.to_be_bytes());
            }
            Proto::TcpSyn => {
                b[l4 + 2..l4 + 4].copy_from_slice(&spec.dst_port.to_be_bytes());
                b[l4 + 4..l4 + 8].copy_from_slice(&1u32.to_be_bytes());
                b[l4 + 12] = 5 << 4;
                b[l4 + 13] = 0x02; // SYN
                b[l4 + 14..l4 + 16].copy_from_slice(&64240u16.to_be_bytes());
            }
            Proto::Icmp => b[l4] = 8, // echo request, code 0
        }
        b[bench..bench + 2].copy_from_slice(&MAGIC.to_be_bytes());
        let mut l4_base = sum16(&b[l4..]);
        if spec.proto != Proto::Icmp {
            // Pseudo-header: source (per packet), destination, protocol, L4 length.
            l4_base += sum16(&spec.dst_ip.octets()) + spec.proto.ip_proto() as u32;
            l4_base += l4_len as u32;
        }
        Ok(Template {
            bytes: b,
            proto: spec.proto,
            l4_off: l4,
            bench_off: bench,
            ip_base,
            l4_base,
        })
    }

    /// The frame with zero source address, port, bench fields and checksums: what every
    /// buffer is initialised with once.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    pub fn proto(&self) -> Proto {
        self.proto
    }

    /// Turns `buf` (a copy of [`bytes`](Self::bytes), possibly patched before by this
    /// function) into the packet of `flow`/`seq` sent at `ts`. Only the variable fields are
    /// stored; the checksums are finished from the precomputed sums.
    #[inline]
    pub fn write(&self, buf: &mut [u8], src: u32, sport: u16, flow: u32, seq: u32, ts: u64) {
        let ip = ETH_HLEN;
        let l4 = self.l4_off;
        let bh = self.bench_off;
        buf[ip + 12..ip + 16].copy_from_slice(&src.to_be_bytes());
        let ip_sum = self.ip_base + add32(src);
        buf[ip + 10..ip + 12].copy_from_slice(&(!fold(ip_sum)).to_be_bytes());

        buf[bh + 2..bh + 6].copy_from_slice(&flow.to_be_bytes());
        buf[bh + 6..bh + 10].copy_from_slice(&seq.to_be_bytes());
        buf[bh + 10..bh + 18].copy_from_slice(&ts.to_be_bytes());
        let mut s = self.l4_base + sport as u32 + add32(flow) + add32(seq) + add64(ts);
        match self.proto {
            Proto::Udp => {
                buf[l4..l4 + 2].copy_from_slice(&sport.to_be_bytes());
                s += add32(src);
                let c = !fold(s);
                // 0 means "no checksum" in UDP over IPv4.
                let c = if c == 0 { 0xffff } else { c };
                buf[l4 + 6..l4 + 8].copy_from_slice(&c.to_be_bytes());
            }
            Proto::TcpSyn => {
                buf[l4..l4 + 2].copy_from_slice(&sport.to_be_bytes());
                s += add32(src);
                buf[l4 + 16..l4 + 18].copy_from_slice(&(!fold(s)).to_be_bytes());
            }
            Proto::Icmp => {
                // Identifier = the flow's "port", sequence = the low bits of seq.
                buf[l4 + 4..l4 + 6].copy_from_slice(&sport.to_be_bytes());
                buf[l4 + 6..l4 + 8].copy_from_slice(&(seq as u16).to_be_bytes());
                s += seq & 0xffff;
                buf[l4 + 2..l4 + 4].copy_from_slice(&(!fold(s)).to_be_bytes());
            }
        }
    }
}

/// The bench fields of a received frame.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchFields {
    pub flow: u32,
    pub seq: u32,
    pub ts: u64,
    pub proto: u8,
    /// Source address and port (ICMP: echo id) as received: after a NAT, the translated ones.
    pub src: Ipv4Addr,
    pub sport: u16,
}

/// Why a received frame carries no bench header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NotBench {
    /// Shorter than its headers, or not IPv4 at all.
    Malformed,
    /// IPv4 fragment, or a protocol the bench never sends.
    OtherProtocol,
    /// A protocol the bench sends, without the magic.
    NoMagic,
}

/// Finds the bench header in a received frame (untagged Ethernet, any IPv4 header length).
#[inline]
pub fn parse(f: &[u8]) -> Result<(BenchFields, usize), NotBench> {
    if f.len() < ETH_HLEN + IPV4_HLEN || f[12..14] != [0x08, 0x00] {
        return Err(NotBench::Malformed);
    }
    let ip = ETH_HLEN;
    if f[ip] >> 4 != 4 {
        return Err(NotBench::Malformed);
    }
    let ihl = (f[ip] & 0x0f) as usize * 4;
    if ihl < IPV4_HLEN || f.len() < ip + ihl {
        return Err(NotBench::Malformed);
    }
    // Fragment offset or more-fragments set: not a whole bench packet.
    if u16::from_be_bytes([f[ip + 6], f[ip + 7]]) & 0x3fff != 0 {
        return Err(NotBench::OtherProtocol);
    }
    let proto = f[ip + 9];
    let l4 = ip + ihl;
    let hlen = match proto {
        PROTO_UDP => UDP_HLEN,
        PROTO_ICMP => ICMP_HLEN,
        PROTO_TCP => {
            if f.len() < l4 + TCP_HLEN {
                return Err(NotBench::Malformed);
            }
            (f[l4 + 12] >> 4) as usize * 4
        }
        _ => return Err(NotBench::OtherProtocol),
    };
    let bh = l4 + hlen;
    if hlen < 8 || f.len() < bh + BENCH_HLEN {
        return Err(NotBench::NoMagic);
    }
    if f[bh..bh + 2] != MAGIC.to_be_bytes() {
        return Err(NotBench::NoMagic);
    }
    let be32 = |o: usize| u32::from_be_bytes([f[o], f[o + 1], f[o + 2], f[o + 3]]);
    let mut ts = [0u8; 8];
    ts.copy_from_slice(&f[bh + 10..bh + 18]);
    let sport = match proto {
        PROTO_ICMP => u16::from_be_bytes([f[l4 + 4], f[l4 + 5]]),
        _ => u16::from_be_bytes([f[l4], f[l4 + 1]]),
    };
    Ok((
        BenchFields {
            flow: be32(bh + 2),
            seq: be32(bh + 6),
            ts: u64::from_be_bytes(ts),
            proto,
            src: Ipv4Addr::from(be32(ip + 12)),
            sport,
        },
        l4,
    ))
}

/// Turns a received bench frame (already [`parse`]d, L4 header at `l4`) into its reply in
/// place: MACs, addresses and ports swapped (the checksums do not change: every sum is
/// symmetric in them), an echo request becomes an echo reply and a SYN a SYN-ACK (the
/// checksums patched for the changed words).
#[inline]
pub fn reflect(f: &mut [u8], l4: usize) {
    for i in 0..6 {
        f.swap(i, 6 + i);
    }
    let ip = ETH_HLEN;
    for i in 0..4 {
        f.swap(ip + 12 + i, ip + 16 + i);
    }
    let be16 = |f: &[u8], o: usize| u16::from_be_bytes([f[o], f[o + 1]]);
    match f[ip + 9] {
        PROTO_UDP => {
            for i in 0..2 {
                f.swap(l4 + i, l4 + 2 + i);
            }
        }
        PROTO_TCP => {
            for i in 0..2 {
                f.swap(l4 + i, l4 + 2 + i);
            }
            let mut c = be16(f, l4 + 16);
            // Flags SYN -> SYN|ACK, ack = seq + 1; the reply's seq is left as is.
            let old_flags = be16(f, l4 + 12);
            let new_flags = old_flags | 0x10;
            c = csum_replace16(c, old_flags, new_flags);
            f[l4 + 12..l4 + 14].copy_from_slice(&new_flags.to_be_bytes());
            let seq = u32::from_be_bytes([f[l4 + 4], f[l4 + 5], f[l4 + 6], f[l4 + 7]]);
            let old_ack = u32::from_be_bytes([f[l4 + 8], f[l4 + 9], f[l4 + 10], f[l4 + 11]]);
            let ack = seq.wrapping_add(1);
            c = csum_replace16(c, (old_ack >> 16) as u16, (ack >> 16) as u16);
            c = csum_replace16(c, old_ack as u16, ack as u16);
            f[l4 + 8..l4 + 12].copy_from_slice(&ack.to_be_bytes());
            f[l4 + 16..l4 + 18].copy_from_slice(&c.to_be_bytes());
        }
        PROTO_ICMP => {
            let old = be16(f, l4);
            let new = old & 0x00ff; // type 8 -> 0, code kept
            let c = csum_replace16(be16(f, l4 + 2), old, new);
            f[l4..l4 + 2].copy_from_slice(&new.to_be_bytes());
            f[l4 + 2..l4 + 4].copy_from_slice(&c.to_be_bytes());
        }
        _ => {}
    }
}

/// Parses `aa:bb:cc:dd:ee:ff`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], String> {
    let mut m = [0u8; 6];
    let parts: Vec<&str> = s.split(':').collect();
    if parts.len() != 6 {
        return Err(format!("{s:?}: a MAC address is six hex bytes a:b:c:d:e:f"));
    }
    for (o, p) in m.iter_mut().zip(parts) {
        *o = u8::from_str_radix(p, 16).map_err(|_| format!("{s:?}: {p:?} is not a hex byte"))?;
    }
    Ok(m)
}

pub fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(test)]
mod tests {
    use super::*;
    use etherparse::{Icmpv4Type, LinkHeader, NetHeaders, PacketHeaders, TransportHeader};

    fn spec(proto: Proto, wire_size: usize) -> TemplateSpec {
        TemplateSpec {
            proto,
            wire_size,
            src_mac: [2, 0, 0, 0, 0, 1],
            dst_mac: [2, 0, 0, 0, 0, 2],
            dst_ip: Ipv4Addr::new(192, 168, 2, 2),
            dst_port: 9,
            ttl: 64,
        }
    }

    /// Parses `f` with etherparse and checks every checksum against its own computation;
    /// returns (source, source port or echo id, payload).
    fn check(f: &[u8], proto: Proto) -> (Ipv4Addr, u16, Vec<u8>) {
        let p = PacketHeaders::from_ethernet_slice(f).expect("etherparse accepts the frame");
        let Some(LinkHeader::Ethernet2(eth)) = &p.link else {
            panic!("no Ethernet")
        };
        assert_eq!(eth.source, [2, 0, 0, 0, 0, 1]);
        assert_eq!(eth.destination, [2, 0, 0, 0, 0, 2]);
        let Some(NetHeaders::Ipv4(ip, _)) = &p.net else {
            panic!("no IPv4")
        };
        assert_eq!(
            ip.header_checksum,
            ip.calc_header_checksum(),
            "IPv4 checksum"
        );
        assert!(ip.dont_fragment);
        assert_eq!(ip.total_len as usize, f.len() - ETH_HLEN);
        assert_eq!(ip.destination, [192, 168, 2, 2]);
        let payload = p.payload.slice().to_vec();
        let sport = match (&p.transport, proto) {
            (Some(TransportHeader::Udp(u)), Proto::Udp) => {
                assert_eq!(
                    u.checksum,
                    u.calc_checksum_ipv4(ip, &payload).unwrap(),
                    "UDP"
                );
                assert_eq!(u.destination_port, 9);
                assert_eq!(u.length as usize, f.len() - ETH_HLEN - IPV4_HLEN);
                u.source_port
            }
            (Some(TransportHeader::Tcp(t)), Proto::TcpSyn) => {
                assert_eq!(
                    t.checksum,
                    t.calc_checksum_ipv4(ip, &payload).unwrap(),
                    "TCP"
                );
                assert!(t.syn && !t.ack && !t.rst && !t.fin);
                assert_eq!(t.destination_port, 9);
                t.source_port
            }
            (Some(TransportHeader::Icmpv4(i)), Proto::Icmp) => {
                assert_eq!(i.checksum, i.icmp_type.calc_checksum(&payload), "ICMP");
                let Icmpv4Type::EchoRequest(e) = i.icmp_type else {
                    panic!("not an echo request: {:?}", i.icmp_type)
                };
                e.id
            }
            (t, _) => panic!("{proto}: transport {t:?}"),
        };
        (Ipv4Addr::from(ip.source), sport, payload)
    }

    #[test]
    fn templates_are_valid_frames_with_correct_checksums() {
        for proto in [Proto::Udp, Proto::TcpSyn, Proto::Icmp] {
            for size in [proto.min_wire_size(), 128, 1518] {
                let t = Template::new(&spec(proto, size)).unwrap();
                assert_eq!(t.len(), size - FCS_LEN);
                let mut buf = t.bytes().to_vec();
                // Several packets written over the same buffer, as the UMEM frames are.
                for (src, sport, flow, seq, ts) in [
                    (0x0a00_0064u32, 1024u16, 0u32, 0u32, 1u64),
                    (0x0a00_00ff, 65535, 7, 0xffff_ffff, u64::MAX),
                    (0xffff_ffff, 1, u32::MAX, 12345, 0x0123_4567_89ab_cdef),
                    (
                        0x0000_0000,
                        0x8000,
                        0x8000_0000,
                        0x8000,
                        1_700_000_000_000_000_000,
                    ),
                ] {
                    t.write(&mut buf, src, sport, flow, seq, ts);
                    let (a, p, payload) = check(&buf, proto);
                    assert_eq!(u32::from(a), src, "{proto} {size}");
                    assert_eq!(p, sport);
                    let (b, _) = parse(&buf).unwrap();
                    assert_eq!((b.flow, b.seq, b.ts, b.sport), (flow, seq, ts, sport));
                    assert_eq!(&payload[..2], &MAGIC.to_be_bytes());
                    assert_eq!(
                        payload.len(),
                        size - FCS_LEN - (ETH_HLEN + IPV4_HLEN + proto.l4_hlen())
                    );
                }
            }
        }
    }

    #[test]
    fn exact_bytes_of_a_64_byte_udp_frame() {
        let t = Template::new(&spec(Proto::Udp, 64)).unwrap();
        let mut b = t.bytes().to_vec();
        t.write(&mut b, 0x0a00_0002, 1024, 1, 2, 3);
        let want: [u8; 60] = [
            2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x08, 0x00, // Ethernet
            0x45, 0, 0, 46, 0, 0, 0x40, 0, 64, 17, 0, 0, 10, 0, 0, 2, 192, 168, 2, 2, // IPv4
            0x04, 0x00, 0, 9, 0, 26, 0, 0, // UDP
            0x4e, 0x42, 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, // bench header
        ];
        // Checksums aside (checked by etherparse above), byte for byte.
        let mut got = b.clone();
        got[24..26].copy_from_slice(&[0, 0]);
        got[40..42].copy_from_slice(&[0, 0]);
        assert_eq!(got, want);
        check(&b, Proto::Udp);
    }

    #[test]
    fn too_small_frames_are_refused() {
        assert!(Template::new(&spec(Proto::Udp, 63)).is_err());
        let e = Template::new(&spec(Proto::TcpSyn, 64)).unwrap_err();
        assert!(e.contains("76"), "{e}");
        assert_eq!(Proto::Udp.min_wire_size(), 64);
        assert_eq!(Proto::Icmp.min_wire_size(), 64);
    }

    #[test]
    fn reflected_frames_keep_valid_checksums_and_swap_endpoints() {
        for proto in [Proto::Udp, Proto::TcpSyn, Proto::Icmp] {
            let t = Template::new(&spec(proto, 100)).unwrap();
            let mut f = t.bytes().to_vec();
            t.write(&mut f, 0x0a00_0005, 4000, 3, 9, 77);
            let (_, l4) = parse(&f).unwrap();
            reflect(&mut f, l4);
            let p = PacketHeaders::from_ethernet_slice(&f).unwrap();
            let Some(LinkHeader::Ethernet2(eth)) = &p.link else {
                panic!()
            };
            assert_eq!(eth.destination, [2, 0, 0, 0, 0, 1]);
            let Some(NetHeaders::Ipv4(ip, _)) = &p.net else {
                panic!()
            };
            assert_eq!(ip.header_checksum, ip.calc_header_checksum());
            assert_eq!(ip.source, [192, 168, 2, 2]);
            assert_eq!(ip.destination, [10, 0, 0, 5]);
            let payload = p.payload.slice();
            match &p.transport {
                Some(TransportHeader::Udp(u)) => {
                    assert_eq!(u.checksum, u.calc_checksum_ipv4(ip, payload).unwrap());
                    assert_eq!((u.source_port, u.destination_port), (9, 4000));
                }
                Some(TransportHeader::Tcp(t)) => {
                    assert_eq!(t.checksum, t.calc_checksum_ipv4(ip, payload).unwrap());
                    assert!(t.syn && t.ack);
                    assert_eq!(t.acknowledgment_number, 2);
                    assert_eq!((t.source_port, t.destination_port), (9, 4000));
                }
                Some(TransportHeader::Icmpv4(i)) => {
                    assert_eq!(i.checksum, i.icmp_type.calc_checksum(payload));
                    assert!(matches!(i.icmp_type, Icmpv4Type::EchoReply(e) if e.id == 4000));
                }
                t => panic!("{t:?}"),
            }
            let (b, _) = parse(&f).unwrap();
            assert_eq!((b.flow, b.seq, b.ts), (3, 9, 77));
        }
    }

    #[test]
    fn parse_counts_what_is_not_a_bench_frame() {
        assert_eq!(parse(&[0u8; 10]), Err(NotBench::Malformed));
        let t = Template::new(&spec(Proto::Udp, 64)).unwrap();
        let mut f = t.bytes().to_vec();
        t.write(&mut f, 1, 2, 3, 4, 5);
        let mut arp = f.clone();
        arp[12..14].copy_from_slice(&[0x08, 0x06]);
        assert_eq!(parse(&arp), Err(NotBench::Malformed));
        let mut other = f.clone();
        other[ETH_HLEN + 9] = 47; // GRE
        assert_eq!(parse(&other), Err(NotBench::OtherProtocol));
        let mut frag = f.clone();
        frag[ETH_HLEN + 6] = 0x20; // more fragments
        assert_eq!(parse(&frag), Err(NotBench::OtherProtocol));
        let mut nomagic = f.clone();
        nomagic[42] = 0;
        assert_eq!(parse(&nomagic), Err(NotBench::NoMagic));
        assert_eq!(parse(&f[..50]), Err(NotBench::NoMagic));
        let mut badihl = f.clone();
        badihl[ETH_HLEN] = 0x4f; // 60-byte header in a 60-byte frame
        assert_eq!(parse(&badihl), Err(NotBench::Malformed));
        // Every truncation of a valid frame is refused, never a panic.
        for n in 0..f.len() {
            assert!(parse(&f[..n]).is_err());
        }
    }

    #[test]
    fn incremental_checksum_update_matches_recomputation() {
        let mut d = vec![0x12u8, 0x34, 0xab, 0xcd, 0xff, 0xff, 0x00, 0x01];
        let c = !fold(sum16(&d));
        let new = 0x0800u16;
        let c2 = csum_replace16(c, 0xabcd, new);
        d[2..4].copy_from_slice(&new.to_be_bytes());
        assert_eq!(c2, !fold(sum16(&d)));
        assert_eq!(parse_mac("02:0a:ff:00:00:01"), Ok([2, 10, 255, 0, 0, 1]));
        assert!(parse_mac("02:0a:ff:00:00").is_err());
        assert!(parse_mac("02:0a:ff:00:00:zz").is_err());
    }
}
