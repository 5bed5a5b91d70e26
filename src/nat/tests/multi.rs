//! Realms told apart by VLAN, and several cores with handoff.

use super::util::*;
use crate::nat::{DropReason, Egress, Ingress, Verdict};

const PA: [u8; 4] = [192, 168, 1, 16];
const PB: [u8; 4] = [192, 168, 1, 24];

fn two_realms() -> String {
    "[outside]\ninterface = \"eth1\"\naddress = \"192.168.1.2\"\ngateway = \"192.168.1.1\"\n\
     [[inside]]\ninterface = \"eth0\"\n[sessions]\ncapacity_per_core = 1024\n\
     [[realm]]\nname = \"a\"\ninterface = \"eth0\"\nvlan = 100\nprefixes = [\"10.0.0.0/24\"]\n\
     gateway = \"10.0.0.1\"\npool = [\"192.168.1.16\"]\nfiltering = \"endpoint-independent\"\n\
     [[realm]]\nname = \"b\"\ninterface = \"eth0\"\nvlan = 200\nprefixes = [\"10.0.0.0/24\"]\n\
     gateway = \"10.0.0.1\"\npool = [\"192.168.1.24\"]\nfiltering = \"endpoint-independent\"\n"
        .to_string()
}

fn tagged(vlan: u16, src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
    udp_full(Some(vlan), src, sport, dst, dport, 64, PAYLOAD)
}

#[test]
fn realms_with_identical_prefixes() {
    let mut h = H::new(&two_realms());
    let pa = h.fwd(&tagged(100, A, 5000, R1, 53), IN0, fwd_out());
    assert_eq!((pa.src, pa.sport, pa.vlan), (ip(PA), 5000, None));
    let pb = h.fwd(&tagged(200, A, 5000, R1, 53), IN0, fwd_out());
    assert_eq!((pb.src, pb.sport, pb.vlan), (ip(PB), 5000, None));
    assert_eq!(h.e.session_count(), 2);
    let p = h.fwd(&udp(R1, 53, PA, 5000), OUTSIDE, fwd_in(A));
    assert_eq!((p.vlan, p.dst, p.dport), (Some(100), ip(A), 5000));
    let p = h.fwd(&udp(R1, 53, PB, 5000), OUTSIDE, fwd_in(A));
    assert_eq!((p.vlan, p.dst, p.dport), (Some(200), ip(A), 5000));
    // Replies to a tagged frame keep the tag (no headroom problem on a retag).
    let p = h.fwd(&tagged(200, A, 5000, R1, 53), IN0, fwd_out());
    assert_eq!(p.src, ip(PB));
    // Pings to the realm gateway are answered on the realm's VLAN.
    let mut e = Vec::new();
    etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
        .single_vlan(200u16.try_into().unwrap())
        .ipv4(B, IN_GW, 64)
        .icmpv4_echo_request(3, 4)
        .write(&mut e, b"x")
        .unwrap();
    let (v, out) = h.run(&e, IN0);
    assert_eq!(
        v,
        Verdict::Reply {
            egress: Egress::Inside(0),
            next_hop: ip(B)
        }
    );
    assert_eq!(check(&out).vlan, Some(200));
    // Untagged or unknown VLAN: no realm.
    h.drop(&udp(A, 5000, R1, 53), IN0, DropReason::UnknownRealm);
    h.drop(&tagged(300, A, 5000, R1, 53), IN0, DropReason::UnknownRealm);
    // An error from realm b's host about realm a's flow finds nothing.
    let delivered = l3(&udp(R1, 53, A, 5001)).to_vec();
    let mut err = Vec::new();
    etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
        .single_vlan(200u16.try_into().unwrap())
        .ipv4(A, R1, 64)
        .icmpv4_raw(3, 3, [0; 4])
        .write(&mut err, &delivered)
        .unwrap();
    h.drop(&err, IN0, DropReason::IcmpNoSession);
    h.e.check_invariants();
}

#[test]
fn realm_pools_never_cross() {
    let mut h = H::new(&two_realms());
    h.fwd(&tagged(100, A, 5000, R1, 53), IN0, fwd_out());
    // Realm b has no mapping on port 5000 of its own address.
    h.drop(&udp(R1, 53, PB, 5000), OUTSIDE, DropReason::Unsolicited);
    let p = h.fwd(&udp(R2, 53, PA, 5000), OUTSIDE, fwd_in(A));
    assert_eq!(p.vlan, Some(100));
}

/// Two engines sharing rules, as two workers.
fn pair(toml: &str) -> Vec<H> {
    let r = rules(toml, 2);
    vec![H::on_core(r.clone(), 0), H::on_core(r, 1)]
}

fn frame_owner(h: &H, f: &[u8], ing: Ingress) -> Option<usize> {
    let mut b = f.to_vec();
    h.e.owner(&crate::nat::Frame::whole(&mut b), ing)
}

#[test]
fn handoff_between_cores() {
    let mut hs = pair(&conf("", "", ""));
    let mut hosts_seen = [false; 2];
    for i in 0..40u8 {
        let src = [10, 0, 0, 10 + i];
        let f = udp(src, 5000, R1, 53);
        let o = frame_owner(&hs[0], &f, IN0).unwrap();
        assert_eq!(frame_owner(&hs[1], &f, IN0), Some(o));
        hosts_seen[o] = true;
        let other = hs[1 - o].e.session_count();
        let (v, _) = hs[1 - o].run(&f, IN0);
        assert_eq!(
            v,
            Verdict::Handoff {
                core: o as u16,
                ingress: IN0
            }
        );
        assert_eq!(
            hs[1 - o].e.session_count(),
            other,
            "no state on the wrong core"
        );
        let p = hs[o].fwd(&f, IN0, fwd_out());
        let port = p.sport;
        assert_eq!(
            (port / 64) % 2,
            o as u16,
            "external port from the owner's slice"
        );
        let reply = udp(R1, 53, POOL, port);
        assert_eq!(frame_owner(&hs[0], &reply, OUTSIDE), Some(o));
        let (v, _) = hs[1 - o].run(&reply, OUTSIDE);
        assert_eq!(
            v,
            Verdict::Handoff {
                core: o as u16,
                ingress: OUTSIDE
            }
        );
        let q = hs[o].fwd(&reply, OUTSIDE, fwd_in(src));
        assert_eq!(q.dport, 5000);
        // An ICMP error about the flow goes to the same core.
        let seen = l3(&udp(POOL, port, R1, 53)).to_vec();
        let e = icmp_err(ROUTER, POOL, 3, 1, &seen);
        assert_eq!(frame_owner(&hs[0], &e, OUTSIDE), Some(o));
        let (v, _) = hs[1 - o].run(&e, OUTSIDE);
        assert_eq!(
            v,
            Verdict::Handoff {
                core: o as u16,
                ingress: OUTSIDE
            }
        );
        hs[o].fwd(&e, OUTSIDE, fwd_in(src));
    }
    assert!(hosts_seen[0] && hosts_seen[1], "both cores own some hosts");
    // Pings to natgw itself: any core.
    let p = echo(R1, OUT, 1, true);
    assert_eq!(frame_owner(&hs[0], &p, OUTSIDE), None);
    for h in &mut hs {
        assert!(matches!(h.run(&p, OUTSIDE).0, Verdict::Reply { .. }));
        h.e.check_invariants();
    }
}

#[test]
fn hairpin_handoff_between_cores() {
    let keys = "static = [{ protocol = \"tcp\", external = \"192.168.1.10:8080\", internal = \"10.0.0.7:80\" }]";
    let mut hs = pair(&conf(keys, "", ""));
    // Find a client whose core differs from the server's.
    let srv_core = frame_owner(&hs[0], &tcp(SRV, 80, R1, 1, SYN), IN0).unwrap();
    let client = (10..200u8)
        .map(|i| [10, 0, 0, i])
        .find(|c| frame_owner(&hs[0], &tcp(*c, 1, R1, 1, SYN), IN0) != Some(srv_core))
        .unwrap();
    let cc = 1 - srv_core;
    let f = tcp(client, 5555, POOL, 8080, SYN);
    let (v, half) = hs[cc].run(&f, IN0);
    assert_eq!(
        v,
        Verdict::Handoff {
            core: srv_core as u16,
            ingress: Ingress::Hairpin
        }
    );
    let p = check(&half);
    assert_eq!(
        (p.src, p.dst, p.dport, p.ttl),
        (ip(POOL), ip(POOL), 8080, 63)
    );
    assert_eq!(frame_owner(&hs[0], &half, Ingress::Hairpin), Some(srv_core));
    let q = hs[srv_core].fwd(&half, Ingress::Hairpin, fwd_in(SRV));
    assert_eq!(
        (q.src, q.sport, q.dst, q.dport, q.ttl),
        (ip(POOL), p.sport, ip(SRV), 80, 63)
    );
    // The answer: server core translates the source, hands the rest to the client's core.
    let r = tcp(SRV, 80, POOL, p.sport, SYN | ACK);
    let (v, half) = hs[srv_core].run(&r, IN0);
    assert_eq!(
        v,
        Verdict::Handoff {
            core: cc as u16,
            ingress: Ingress::Hairpin
        }
    );
    let q = hs[cc].fwd(&half, Ingress::Hairpin, fwd_in(client));
    assert_eq!(
        (q.src, q.sport, q.dst, q.dport),
        (ip(POOL), 8080, ip(client), 5555)
    );
}
