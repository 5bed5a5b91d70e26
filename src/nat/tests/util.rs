//! Test harness: frames built and checked with `etherparse` (an independent parser), checksums
//! verified by full recomputation, an engine wrapper with a controllable clock.

use crate::nat::ports::BlockPartition;
use crate::nat::{Counters, DropReason, Engine, Frame, Ingress, Pkt, Rules, Verdict};
use crate::packet::checksum;
use etherparse::{Ipv4Header, PacketBuilder, TcpHeader};
use std::net::Ipv4Addr;
use std::sync::Arc;

pub const OUT: [u8; 4] = [192, 168, 1, 2];
pub const GW: [u8; 4] = [192, 168, 1, 1];
pub const POOL: [u8; 4] = [192, 168, 1, 10];
pub const IN_GW: [u8; 4] = [10, 0, 0, 1];
pub const A: [u8; 4] = [10, 0, 0, 5];
pub const B: [u8; 4] = [10, 0, 0, 6];
pub const SRV: [u8; 4] = [10, 0, 0, 7];
pub const R1: [u8; 4] = [198, 51, 100, 7];
pub const R2: [u8; 4] = [198, 51, 100, 8];
pub const ROUTER: [u8; 4] = [198, 51, 100, 99];
pub const PAYLOAD: &[u8] = b"hello natgw";

pub const SYN: u8 = 0x02;
pub const ACK: u8 = 0x10;
pub const FIN: u8 = 0x01;
pub const RST: u8 = 0x04;

pub fn ip(a: [u8; 4]) -> Ipv4Addr {
    Ipv4Addr::from(a)
}

pub const IN0: Ingress = Ingress::Inside(0);
pub const OUTSIDE: Ingress = Ingress::Outside;

pub fn fwd_out() -> Verdict {
    Verdict::Forward {
        egress: crate::nat::Egress::Outside,
        next_hop: ip(GW),
    }
}

pub fn fwd_in(nh: [u8; 4]) -> Verdict {
    Verdict::Forward {
        egress: crate::nat::Egress::Inside(0),
        next_hop: ip(nh),
    }
}

/// Default realm keys; a key given in `extra` replaces the default one.
const REALM_DEFAULTS: &[&str] = &[
    "name = \"r\"",
    "interface = \"eth0\"",
    "prefixes = [\"10.0.0.0/24\"]",
    "gateway = \"10.0.0.1\"",
    "pool = [\"192.168.1.10\"]",
];

/// A one-realm config. `keys` are extra realm keys (one per line); `tables` follow them
/// (`[realm.ports]`, `[realm.timeouts]`); `top` may set `[sessions]` / `[fragments]`.
pub fn conf(keys: &str, tables: &str, top: &str) -> String {
    let mut realm = String::new();
    for d in REALM_DEFAULTS {
        let k = d.split('=').next().unwrap().trim();
        if !keys
            .lines()
            .any(|l| l.split('=').next().unwrap().trim() == k)
        {
            realm.push_str(d);
            realm.push('\n');
        }
    }
    let top = if top.contains("[sessions]") {
        top.to_string()
    } else {
        format!("{top}\n[sessions]\ncapacity_per_core = 1024\n")
    };
    format!(
        "[outside]\ninterface = \"eth1\"\naddress = \"192.168.1.2\"\ngateway = \"192.168.1.1\"\n\
         [[inside]]\ninterface = \"eth0\"\n{top}\n[[realm]]\n{realm}{keys}\n{tables}\n"
    )
}

pub fn rules(toml: &str, cores: usize) -> Arc<Rules> {
    let cfg = crate::config::parse(toml).unwrap_or_else(|e| panic!("config: {e}\n{toml}"));
    Arc::new(Rules::new(&cfg, Arc::new(BlockPartition::new(cores))))
}

/// One engine and its clock (seconds; the engine sees nanoseconds).
pub struct H {
    pub e: Engine,
    pub t: f64,
    pub frames: u64,
}

pub const T0: f64 = 1000.0;

impl H {
    pub fn new(toml: &str) -> H {
        Self::on_core(rules(toml, 1), 0)
    }
    pub fn on_core(r: Arc<Rules>, core: usize) -> H {
        H {
            e: Engine::new(core, r, Arc::new(Counters::default())),
            t: T0,
            frames: 0,
        }
    }
    pub fn std() -> H {
        H::new(&conf("", "", ""))
    }
    fn ns(&self) -> u64 {
        (self.t * 1e9) as u64
    }
    pub fn at(&mut self, t: f64) -> &mut Self {
        self.t = t;
        self
    }
    pub fn tick(&mut self, t: f64) {
        self.t = t;
        let ns = self.ns();
        self.e.tick(ns);
    }
    /// Runs one frame (4 bytes headroom, 80 bytes tailroom) and returns the verdict and the
    /// frame as the engine left it.
    pub fn run(&mut self, frame: &[u8], ingress: Ingress) -> (Verdict, Vec<u8>) {
        let mut buf = vec![0u8; frame.len() + 84];
        buf[4..4 + frame.len()].copy_from_slice(frame);
        let (v, out) = self.run_buf(&mut buf, 4, frame.len(), ingress);
        (v, out)
    }
    pub fn run_buf(
        &mut self,
        buf: &mut [u8],
        off: usize,
        len: usize,
        ingress: Ingress,
    ) -> (Verdict, Vec<u8>) {
        let ns = self.ns();
        let mut pkts = [Pkt {
            frame: Frame::new(buf, off, len),
            ingress,
        }];
        let mut v = [Verdict::ToKernel];
        self.e.process(ns, &mut pkts, &mut v);
        self.frames += 1;
        (v[0], pkts[0].frame.data().to_vec())
    }
    /// Runs a frame that must be forwarded, returning the checked output.
    pub fn fwd(&mut self, frame: &[u8], ingress: Ingress, want: Verdict) -> P {
        let (v, out) = self.run(frame, ingress);
        assert_eq!(v, want, "verdict");
        check(&out)
    }
    pub fn drop(&mut self, frame: &[u8], ingress: Ingress, r: DropReason) {
        let before = self.e.counters().drops_of(r);
        let sessions = self.e.session_count();
        let (v, _) = self.run(frame, ingress);
        assert_eq!(v, Verdict::Drop(r));
        assert_eq!(self.e.counters().drops_of(r), before + 1, "{r:?} counted");
        if r != DropReason::TtlExceeded {
            // Not more: the batch's housekeeping may remove sessions (expiry, a reload's
            // reconciliation walk).
            assert!(self.e.session_count() <= sessions, "a drop created state");
        }
    }
    pub fn drops(&self, r: DropReason) -> u64 {
        self.e.counters().drops_of(r)
    }
    pub fn sessions(&mut self) -> usize {
        let mut n = 0;
        self.e.for_each_session(|_| n += 1);
        n
    }
    /// Expiry times of all live sessions, sorted.
    pub fn expiries(&self) -> Vec<u32> {
        let mut v = Vec::new();
        self.e.for_each_session(|s| v.push(s.expires));
        v.sort();
        v
    }
    pub fn drain(&mut self) -> Vec<(Verdict, Vec<u8>)> {
        let mut v = Vec::new();
        self.e.drain_ready(|b, vd| v.push((vd, b.to_vec())));
        v
    }
}

// ---- frame builders -----------------------------------------------------------------------

const SMAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const DMAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

fn eth() -> etherparse::PacketBuilderStep<etherparse::Ethernet2Header> {
    PacketBuilder::ethernet2(SMAC, DMAC)
}

pub fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    udp_full(None, src, sport, dst, dport, 64, PAYLOAD)
}

pub fn udp_full(
    vlan: Option<u16>,
    src: [u8; 4],
    sport: u16,
    dst: [u8; 4],
    dport: u16,
    ttl: u8,
    payload: &[u8],
) -> Vec<u8> {
    let mut v = Vec::new();
    match vlan {
        Some(id) => eth()
            .single_vlan(id.try_into().unwrap())
            .ipv4(src, dst, ttl)
            .udp(sport, dport)
            .write(&mut v, payload)
            .unwrap(),
        None => eth()
            .ipv4(src, dst, ttl)
            .udp(sport, dport)
            .write(&mut v, payload)
            .unwrap(),
    }
    v
}

pub fn tcp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8) -> Vec<u8> {
    tcp_ttl(src, sport, dst, dport, flags, 64)
}

pub fn tcp_ttl(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16, flags: u8, ttl: u8) -> Vec<u8> {
    let mut h = TcpHeader::new(sport, dport, 1000, 8192);
    h.syn = flags & SYN != 0;
    h.fin = flags & FIN != 0;
    h.rst = flags & RST != 0;
    if flags & ACK != 0 {
        h.ack = true;
        h.acknowledgment_number = 77;
    }
    let mut v = Vec::new();
    eth()
        .ipv4(src, dst, ttl)
        .tcp_header(h)
        .write(&mut v, PAYLOAD)
        .unwrap();
    v
}

pub fn echo(src: [u8; 4], dst: [u8; 4], id: u16, request: bool) -> Vec<u8> {
    let mut v = Vec::new();
    let b = eth().ipv4(src, dst, 64);
    if request {
        b.icmpv4_echo_request(id, 9).write(&mut v, PAYLOAD).unwrap();
    } else {
        b.icmpv4_echo_reply(id, 9).write(&mut v, PAYLOAD).unwrap();
    }
    v
}

/// An ICMP error from `src` to `dst` quoting `quoted` (an IP packet, e.g. `&frame[14..]`).
pub fn icmp_err(src: [u8; 4], dst: [u8; 4], typ: u8, code: u8, quoted: &[u8]) -> Vec<u8> {
    let mut v = Vec::new();
    eth()
        .ipv4(src, dst, 64)
        .icmpv4_raw(typ, code, [0; 4])
        .write(&mut v, quoted)
        .unwrap();
    v
}

/// The IPv4 packet of an untagged frame.
pub fn l3(frame: &[u8]) -> &[u8] {
    &frame[14..]
}

/// Splits an untagged IPv4 frame into fragments of at most `chunk` payload bytes (multiple
/// of 8), all with identification `id`.
pub fn fragment(frame: &[u8], chunk: usize, id: u16) -> Vec<Vec<u8>> {
    assert_eq!(chunk % 8, 0);
    let (h, rest) = Ipv4Header::from_slice(&frame[14..]).unwrap();
    let mut out = Vec::new();
    let mut off = 0;
    while off < rest.len() {
        let end = (off + chunk).min(rest.len());
        let mut fh = h.clone();
        fh.identification = id;
        fh.dont_fragment = false;
        fh.more_fragments = end < rest.len();
        fh.fragment_offset = ((off / 8) as u16).try_into().unwrap();
        fh.set_payload_len(end - off).unwrap();
        fh.header_checksum = fh.calc_header_checksum();
        let mut f = frame[..14].to_vec();
        f.extend_from_slice(&fh.to_bytes());
        f.extend_from_slice(&rest[off..end]);
        out.push(f);
        off = end;
    }
    out
}

/// Recomputes the IPv4 header checksum of an untagged frame (after a test edited it).
pub fn fix_ip_checksum(frame: &mut [u8], l3: usize) {
    let ihl = (frame[l3] & 0xf) as usize * 4;
    frame[l3 + 10] = 0;
    frame[l3 + 11] = 0;
    let c = checksum::checksum(&frame[l3..l3 + ihl]);
    frame[l3 + 10..l3 + 12].copy_from_slice(&c.to_be_bytes());
}

// ---- output checks ------------------------------------------------------------------------

/// A quoted packet inside an ICMP error.
#[derive(Debug, Clone, PartialEq)]
pub struct Quoted {
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub proto: u8,
    pub ttl: u8,
    /// Ports, or (id, id) for an ICMP query.
    pub sport: u16,
    pub dport: u16,
    pub bytes: Vec<u8>,
}

/// What a checked frame holds.
#[derive(Debug, Clone)]
pub struct P {
    pub vlan: Option<u16>,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    pub ttl: u8,
    pub proto: u8,
    pub ident: u16,
    pub sport: u16,
    pub dport: u16,
    pub icmp_type: u8,
    pub icmp_code: u8,
    pub tcp_flags: u8,
    pub payload: Vec<u8>,
    pub quoted: Option<Quoted>,
    pub l4_checksum: u16,
}

fn fold_ok(sum: u32) -> bool {
    checksum::fold(sum) == 0xffff
}

/// Parses a frame with etherparse and verifies, by full recomputation, the IPv4 header
/// checksum and the TCP/UDP/ICMP checksum (for a non-fragment), and for an ICMP error the
/// quoted IP header checksum and the quoted transport checksum when the whole quoted datagram
/// is present. Panics on any mismatch.
pub fn check(d: &[u8]) -> P {
    let hdrs = etherparse::PacketHeaders::from_ethernet_slice(d)
        .unwrap_or_else(|e| panic!("etherparse rejects output: {e:?} {d:02x?}"));
    let vlan = hdrs.link_exts.first().and_then(|x| match x {
        etherparse::LinkExtHeader::Vlan(v) => Some(v.vlan_id.value()),
        _ => None,
    });
    let l3 = 14 + 4 * hdrs.link_exts.len();
    let iph = match &hdrs.net {
        Some(etherparse::NetHeaders::Ipv4(h, _)) => h.clone(),
        other => panic!("not IPv4: {other:?}"),
    };
    assert_eq!(
        iph.header_checksum,
        iph.calc_header_checksum(),
        "IPv4 header checksum"
    );
    assert_eq!(checksum::checksum(&d[l3..l3 + iph.header_len()]), 0);
    let l4 = l3 + iph.header_len();
    let end = l3 + iph.total_len as usize;
    assert!(end <= d.len(), "frame shorter than IP total length");
    let seg = &d[l4..end];
    let frag = iph.more_fragments || iph.fragment_offset.value() != 0;
    let mut p = P {
        vlan,
        src: ip(iph.source),
        dst: ip(iph.destination),
        ttl: iph.time_to_live,
        proto: iph.protocol.0,
        ident: iph.identification,
        sport: 0,
        dport: 0,
        icmp_type: 0,
        icmp_code: 0,
        tcp_flags: 0,
        payload: Vec::new(),
        quoted: None,
        l4_checksum: 0,
    };
    if iph.fragment_offset.value() != 0 {
        return p;
    }
    let pseudo = checksum::pseudo_header_sum(
        p.src,
        p.dst,
        crate::packet::ipv4::Protocol(p.proto),
        seg.len() as u16,
    );
    match p.proto {
        17 => {
            p.sport = u16::from_be_bytes([seg[0], seg[1]]);
            p.dport = u16::from_be_bytes([seg[2], seg[3]]);
            p.l4_checksum = u16::from_be_bytes([seg[6], seg[7]]);
            if !frag {
                let h = match hdrs.transport {
                    Some(etherparse::TransportHeader::Udp(h)) => h,
                    ref o => panic!("udp expected: {o:?}"),
                };
                assert_eq!((h.source_port, h.destination_port), (p.sport, p.dport));
                if h.checksum != 0 {
                    assert_eq!(
                        h.calc_checksum_ipv4(&iph, &seg[8..]).unwrap(),
                        h.checksum,
                        "UDP checksum"
                    );
                    assert!(fold_ok(pseudo + checksum::sum(seg)), "UDP checksum (sum)");
                }
            }
            p.payload = seg[8..].to_vec();
        }
        6 => {
            p.sport = u16::from_be_bytes([seg[0], seg[1]]);
            p.dport = u16::from_be_bytes([seg[2], seg[3]]);
            p.tcp_flags = seg[13];
            p.l4_checksum = u16::from_be_bytes([seg[16], seg[17]]);
            if !frag {
                let h = match hdrs.transport {
                    Some(etherparse::TransportHeader::Tcp(h)) => h,
                    ref o => panic!("tcp expected: {o:?}"),
                };
                let hl = h.header_len();
                assert_eq!(
                    h.calc_checksum_ipv4(&iph, &seg[hl..]).unwrap(),
                    h.checksum,
                    "TCP checksum"
                );
                assert!(fold_ok(pseudo + checksum::sum(seg)), "TCP checksum (sum)");
            }
        }
        1 => {
            p.icmp_type = seg[0];
            p.icmp_code = seg[1];
            p.l4_checksum = u16::from_be_bytes([seg[2], seg[3]]);
            if !frag {
                assert_eq!(checksum::checksum(seg), 0, "ICMP checksum");
                if let Some(etherparse::TransportHeader::Icmpv4(h)) = &hdrs.transport {
                    let again = etherparse::Icmpv4Header::with_checksum(
                        h.icmp_type.clone(),
                        &seg[h.header_len()..],
                    );
                    assert_eq!(again.checksum, h.checksum, "ICMP checksum (etherparse)");
                }
            }
            match p.icmp_type {
                0 | 8 => {
                    p.sport = u16::from_be_bytes([seg[4], seg[5]]);
                    p.dport = p.sport;
                    p.payload = seg[8..].to_vec();
                }
                3 | 11 | 12 => p.quoted = Some(quoted(&seg[8..])),
                _ => {}
            }
        }
        _ => {}
    }
    p
}

fn quoted(q: &[u8]) -> Quoted {
    let (h, _) = Ipv4Header::from_slice(q).expect("quoted IPv4 header");
    assert_eq!(
        h.header_checksum,
        h.calc_header_checksum(),
        "quoted IP checksum"
    );
    let l4 = h.header_len();
    let t = &q[l4..];
    let proto = h.protocol.0;
    let (sport, dport) = match proto {
        6 | 17 => (
            u16::from_be_bytes([t[0], t[1]]),
            u16::from_be_bytes([t[2], t[3]]),
        ),
        1 => {
            let id = u16::from_be_bytes([t[4], t[5]]);
            (id, id)
        }
        _ => (0, 0),
    };
    // The whole quoted datagram is there: its transport checksum must still be right.
    if h.total_len as usize == q.len() {
        let src = ip(h.source);
        let dst = ip(h.destination);
        match proto {
            6 => {
                let s = checksum::pseudo_header_sum(
                    src,
                    dst,
                    crate::packet::ipv4::Protocol::TCP,
                    t.len() as u16,
                );
                assert!(fold_ok(s + checksum::sum(t)), "quoted TCP checksum");
            }
            17 if u16::from_be_bytes([t[6], t[7]]) != 0 => {
                let s = checksum::pseudo_header_sum(
                    src,
                    dst,
                    crate::packet::ipv4::Protocol::UDP,
                    t.len() as u16,
                );
                assert!(fold_ok(s + checksum::sum(t)), "quoted UDP checksum");
            }
            1 => assert_eq!(checksum::checksum(t), 0, "quoted ICMP checksum"),
            _ => {}
        }
    }
    Quoted {
        src: ip(h.source),
        dst: ip(h.destination),
        proto,
        ttl: h.time_to_live,
        sport,
        dport,
        bytes: q.to_vec(),
    }
}

/// Reassembles the payloads of an ordered list of checked fragment frames (untagged or
/// tagged) and verifies the transport checksum of the whole datagram.
pub fn reassemble_check(frags: &[Vec<u8>]) -> Vec<u8> {
    let mut data = Vec::new();
    let mut first: Option<P> = None;
    for f in frags {
        let p = check(f);
        let l3 = 14 + if f[12..14] == [0x81, 0x00] { 4 } else { 0 };
        let (h, rest) = Ipv4Header::from_slice(&f[l3..]).unwrap();
        assert_eq!(
            h.fragment_offset.value() as usize * 8,
            data.len(),
            "fragment order"
        );
        data.extend_from_slice(&rest[..h.payload_len().unwrap() as usize]);
        if first.is_none() {
            first = Some(p);
        }
    }
    let p = first.unwrap();
    let s = checksum::pseudo_header_sum(
        p.src,
        p.dst,
        crate::packet::ipv4::Protocol(p.proto),
        data.len() as u16,
    );
    assert!(
        fold_ok(s + checksum::sum(&data)),
        "reassembled transport checksum"
    );
    data
}
