//! Configuration reload and forward-only mode.

use super::util::*;
use crate::nat::{DropReason, Egress, Verdict};

fn two_realm_conf() -> String {
    let mut c = conf("", "", "");
    c.push_str(
        "[[realm]]\nname = \"r2\"\ninterface = \"eth0\"\nvlan = 7\nprefixes = [\"10.0.0.0/24\"]\n\
         pool = [\"192.168.1.30\"]\n",
    );
    c
}

#[test]
fn reload_adding_a_realm() {
    let mut h = H::std();
    h.fwd(&udp(A, 5000, R1, 53), IN0, fwd_out());
    h.e.set_rules(rules(&two_realm_conf(), 1));
    let p = h.fwd(
        &udp_full(Some(7), A, 5000, R1, 53, 64, PAYLOAD),
        IN0,
        fwd_out(),
    );
    assert_eq!(p.src, ip([192, 168, 1, 30]));
    let q = h.fwd(&udp(R1, 53, [192, 168, 1, 30], p.sport), OUTSIDE, fwd_in(A));
    assert_eq!(q.vlan, Some(7));
    h.e.check_invariants();
}

#[test]
fn reload_removing_a_realm() {
    let mut h = H::new(&two_realm_conf());
    let p = h.fwd(
        &udp_full(Some(7), A, 5000, R1, 53, 64, PAYLOAD),
        IN0,
        fwd_out(),
    );
    h.e.set_rules(rules(&conf("", "", ""), 1));
    h.drop(
        &udp(R1, 53, [192, 168, 1, 30], p.sport),
        OUTSIDE,
        DropReason::NotForUs,
    );
    h.drop(
        &udp_full(Some(7), A, 5000, R1, 53, 64, PAYLOAD),
        IN0,
        DropReason::UnknownRealm,
    );
    h.tick(T0 + 1000.0);
    h.e.check_invariants();
}

#[test]
fn reload_growing_the_pool() {
    let mut h = H::std();
    h.fwd(&udp(A, 5000, R1, 53), IN0, fwd_out());
    h.e.set_rules(rules(
        &conf("pool = [\"192.168.1.10-192.168.1.13\"]", "", ""),
        1,
    ));
    let mut used = std::collections::HashSet::new();
    for i in 0..32u8 {
        let p = h.fwd(&udp([10, 0, 0, 20 + i], 5000, R1, 53), IN0, fwd_out());
        used.insert(p.src);
    }
    assert_eq!(used.len(), 4, "new pool addresses used: {used:?}");
    h.e.check_invariants();
}

#[test]
fn reload_renumbering_realms() {
    let mut h = H::new(&two_realm_conf());
    let p = h.fwd(
        &udp_full(Some(7), A, 5000, R1, 53, 64, PAYLOAD),
        IN0,
        fwd_out(),
    );
    // Realm 0 goes away; the old realm 1 is now realm 0.
    let only_r2 = "[outside]\ninterface = \"eth1\"\naddress = \"192.168.1.2\"\ngateway = \"192.168.1.1\"\n\
         [[inside]]\ninterface = \"eth0\"\n[sessions]\ncapacity_per_core = 1024\n\
         [[realm]]\nname = \"r2\"\ninterface = \"eth0\"\nvlan = 7\nprefixes = [\"10.0.0.0/24\"]\n\
         pool = [\"192.168.1.30\"]\n";
    h.e.set_rules(rules(only_r2, 1));
    let (v, _) = h.run(&udp(R1, 53, [192, 168, 1, 30], p.sport), OUTSIDE);
    assert!(
        matches!(v, Verdict::Forward { .. } | Verdict::Drop(_)),
        "{v:?}"
    );
    let p = h.fwd(
        &udp_full(Some(7), A, 5000, R1, 53, 64, PAYLOAD),
        IN0,
        fwd_out(),
    );
    let q = h.fwd(&udp(R1, 53, [192, 168, 1, 30], p.sport), OUTSIDE, fwd_in(A));
    assert_eq!(q.vlan, Some(7));
    h.e.check_invariants();
}

#[test]
fn forward_only_routes_without_translation() {
    let mut h = H::new(&conf("", "", "[dataplane]\nforward_only = true"));
    let p = h.fwd(&udp(A, 5000, R1, 53), IN0, fwd_out());
    assert_eq!((p.src, p.sport, p.ttl), (ip(A), 5000, 63));
    let (v, out) = h.run(&udp(R1, 53, A, 5000), OUTSIDE);
    assert_eq!(
        v,
        Verdict::Forward {
            egress: Egress::Inside(0),
            next_hop: ip(A)
        }
    );
    assert_eq!(check(&out).dst, ip(A));
    h.drop(
        &udp_full(None, A, 5000, R1, 53, 1, PAYLOAD),
        IN0,
        DropReason::TtlExceeded,
    );
    assert_eq!(h.e.session_count(), 0);
}

#[test]
fn reload_changing_only_behaviour_keeps_sessions() {
    let mut h = H::std();
    let p = h.fwd(&udp(A, 5000, R1, 53), IN0, fwd_out());
    h.e.set_rules(rules(
        &conf(
            "filtering = \"endpoint-independent\"",
            "[realm.timeouts]\nudp = 600",
            "",
        ),
        1,
    ));
    assert_eq!(h.e.session_count(), 1);
    // The new filtering applies to the kept mapping.
    h.fwd(&udp(R2, 53, POOL, p.sport), OUTSIDE, fwd_in(A));
    h.e.check_invariants();
}

/// A config with one realm per `(name, vlan, pool address)`, all on eth0.
fn realms_conf(realms: &[(&str, u16, u8)]) -> crate::config::Config {
    let mut c = String::from(
        "[outside]\ninterface = \"eth1\"\naddress = \"192.168.1.2\"\ngateway = \"192.168.1.1\"\n\
         [[inside]]\ninterface = \"eth0\"\n[sessions]\ncapacity_per_core = 1024\n",
    );
    for (name, vlan, a) in realms {
        c.push_str(&format!(
            "[[realm]]\nname = \"{name}\"\ninterface = \"eth0\"\nvlan = {vlan}\n\
             prefixes = [\"10.0.0.0/24\"]\npool = [\"192.168.1.{a}\"]\n"
        ));
    }
    crate::config::parse(&c).unwrap_or_else(|e| panic!("config: {e}\n{c}"))
}

/// Sessions and mappings name their realm by id: a reload keeps each realm's id wherever
/// the realm moved in the file, leaves a removed realm's id unused for one reload, and
/// gives new realms ids no realm held.
#[test]
fn realm_ids_follow_the_realm_not_its_position() {
    use crate::nat::Rules;
    use crate::nat::ports::BlockPartition;
    use std::sync::Arc;
    let part = || Arc::new(BlockPartition::new(1));
    let ids = |r: &Rules| -> Vec<(String, u16)> {
        r.realms
            .iter()
            .filter(|x| !x.retired)
            .map(|x| (x.name.clone(), x.id))
            .collect()
    };
    let named = |v: &[(&str, u16)]| -> Vec<(String, u16)> {
        v.iter().map(|(n, i)| (n.to_string(), *i)).collect()
    };
    let first = Rules::new(
        &realms_conf(&[("a", 1, 10), ("b", 2, 11), ("c", 3, 12)]),
        part(),
    );
    assert_eq!(ids(&first), named(&[("a", 0), ("b", 1), ("c", 2)]));

    // b removed, c moved first: c keeps 2, a keeps 0; 1 is a hole that matches nothing.
    let second = Rules::reload(&realms_conf(&[("c", 3, 12), ("a", 1, 10)]), part(), &first);
    assert_eq!(ids(&second), named(&[("a", 0), ("c", 2)]));
    assert!(second.realms[1].retired);
    assert_eq!(
        second.realm_id_for(0, Some(2)),
        None,
        "b's VLAN has no realm"
    );
    assert_eq!(second.realm_id_for(0, Some(3)), Some(2));
    assert_eq!(second.realm_for(0, Some(1)).map(|r| r.id), Some(0));

    // A realm added in the same reload that removes one does not take the removed id.
    let added = Rules::reload(&realms_conf(&[("a", 1, 10), ("d", 4, 13)]), part(), &first);
    assert_eq!(ids(&added), named(&[("a", 0), ("d", 3)]));

    // One reload later the hole is free again.
    let third = Rules::reload(
        &realms_conf(&[("c", 3, 12), ("a", 1, 10), ("d", 4, 13)]),
        part(),
        &second,
    );
    assert_eq!(ids(&third), named(&[("a", 0), ("d", 1), ("c", 2)]));
    assert!(third.realms.iter().all(|r| !r.retired));
}

/// Moving a realm in the file is no change of layout: its sessions stay.
#[test]
fn reload_reordering_realms_keeps_sessions() {
    use crate::nat::Rules;
    use crate::nat::ports::BlockPartition;
    use std::sync::Arc;
    let part = || Arc::new(BlockPartition::new(1));
    let two = realms_conf(&[("a", 1, 10), ("b", 2, 11)]);
    let mut h = H::on_core(Arc::new(Rules::new(&two, part())), 0);
    let p = h.fwd(
        &udp_full(Some(2), A, 5000, R1, 53, 64, PAYLOAD),
        IN0,
        fwd_out(),
    );
    assert_eq!(p.src, ip([192, 168, 1, 11]));
    let swapped = realms_conf(&[("b", 2, 11), ("a", 1, 10)]);
    let r = Rules::reload(&swapped, part(), h.e.rules());
    h.e.set_rules(Arc::new(r));
    assert_eq!(h.sessions(), 1);
    let q = h.fwd(&udp(R1, 53, [192, 168, 1, 11], p.sport), OUTSIDE, fwd_in(A));
    assert_eq!(q.vlan, Some(2));
    h.e.check_invariants();
}

// ---- reloads that keep sessions (issue 11) ----------------------------------------------

/// The realm of `rich`: pool .10-.11, a TCP port forward .10:8080 -> SRV:80, a 1:1
/// mapping .12 <-> 10.0.0.9, and, with `r2`, a second realm on VLAN 7 with pool .30.
fn rich(pool: &str, statics: &[&str], one: bool, r2: bool, udp_timeout: u32) -> String {
    let mut keys = format!("pool = [{pool}]\n");
    if !statics.is_empty() {
        keys.push_str(&format!("static = [{}]\n", statics.join(", ")));
    }
    if one {
        keys.push_str("one_to_one = [{ external = \"192.168.1.12\", internal = \"10.0.0.9\" }]\n");
    }
    let mut c = conf(&keys, &format!("[realm.timeouts]\nudp = {udp_timeout}"), "");
    if r2 {
        c.push_str(
            "[[realm]]\nname = \"r2\"\ninterface = \"eth0\"\nvlan = 7\n\
             prefixes = [\"10.0.0.0/24\"]\npool = [\"192.168.1.30\"]\n",
        );
    }
    c
}

const FWD_TCP: &str =
    "{ protocol = \"tcp\", external = \"192.168.1.10:8080\", internal = \"10.0.0.7:80\" }";
const FWD_UDP: &str =
    "{ protocol = \"udp\", external = \"192.168.1.10:5353\", internal = \"10.0.0.7:53\" }";
const ONE_IN: [u8; 4] = [10, 0, 0, 9];
const ONE_EXT: [u8; 4] = [192, 168, 1, 12];
const POOL2: [u8; 4] = [192, 168, 1, 11];

/// Reloads `toml` the way the dataplane does (realm ids kept by name).
fn reload(h: &mut H, toml: &str) {
    use crate::nat::Rules;
    use crate::nat::ports::BlockPartition;
    let cfg = crate::config::parse(toml).unwrap_or_else(|e| panic!("config: {e}\n{toml}"));
    let r = Rules::reload(
        &cfg,
        std::sync::Arc::new(BlockPartition::new(1)),
        h.e.rules(),
    );
    h.e.set_rules(std::sync::Arc::new(r));
}

/// Every live session, as its full record (ports, timers, TCP state, flags, mapping).
fn snap(h: &H) -> Vec<String> {
    let mut v = Vec::new();
    h.e.for_each_session(|s| v.push(format!("{s:?}")));
    v.sort();
    v
}

fn removed(h: &H) -> u64 {
    h.e.counters().sessions_removed_by_reload.get()
}

/// The sessions of `rich(.., true, true, ..)`: (dynamic UDP of A on .10, established
/// dynamic TCP of B, inbound TCP through the port forward, 1:1 UDP, UDP in realm r2),
/// each with its external port.
struct Flows {
    a_host: [u8; 4],
    a: u16,
    b_tcp: u16,
    b_addr: Ipv4Addr,
    r2: u16,
}

use std::net::Ipv4Addr;

fn open_flows(h: &mut H) -> Flows {
    let p = h.fwd(&udp(A, 5000, R1, 53), IN0, fwd_out());
    let a = p.sport;
    // B: a whole handshake, so its session is established.
    let p = h.fwd(&tcp(B, 6000, R2, 443, SYN), IN0, fwd_out());
    let (b_addr, b_tcp) = (p.src, p.sport);
    h.fwd(
        &tcp(R2, 443, b_addr.octets(), b_tcp, SYN | ACK),
        OUTSIDE,
        fwd_in(B),
    );
    h.fwd(&tcp(B, 6000, R2, 443, ACK), IN0, fwd_out());
    // From outside through the port forward, to its end.
    h.fwd(&tcp(R1, 7000, POOL, 8080, SYN), OUTSIDE, fwd_in(SRV));
    h.fwd(&tcp(SRV, 80, R1, 7000, SYN | ACK), IN0, fwd_out());
    h.fwd(&tcp(R1, 7000, POOL, 8080, ACK), OUTSIDE, fwd_in(SRV));
    let p = h.fwd(&udp(ONE_IN, 4000, R1, 53), IN0, fwd_out());
    assert_eq!(p.src, ip(ONE_EXT));
    let p = h.fwd(
        &udp_full(Some(7), A, 5001, R1, 53, 64, PAYLOAD),
        IN0,
        fwd_out(),
    );
    assert_eq!(p.src, ip([192, 168, 1, 30]));
    Flows {
        a_host: A,
        a,
        b_tcp,
        b_addr,
        r2: p.sport,
    }
}

/// Every flow of `open_flows` still translates as before, both ways.
fn flows_work(h: &mut H, f: &Flows, skip_b: bool) {
    let p = h.fwd(&udp(f.a_host, 5000, R1, 53), IN0, fwd_out());
    assert_eq!((p.src, p.sport), (ip(POOL), f.a));
    h.fwd(&udp(R1, 53, POOL, f.a), OUTSIDE, fwd_in(f.a_host));
    if !skip_b {
        let p = h.fwd(&tcp(B, 6000, R2, 443, ACK), IN0, fwd_out());
        assert_eq!((p.src, p.sport), (f.b_addr, f.b_tcp));
        h.fwd(
            &tcp(R2, 443, f.b_addr.octets(), f.b_tcp, ACK),
            OUTSIDE,
            fwd_in(B),
        );
    }
    h.fwd(&tcp(R1, 7000, POOL, 8080, ACK), OUTSIDE, fwd_in(SRV));
    let p = h.fwd(&tcp(SRV, 80, R1, 7000, ACK), IN0, fwd_out());
    assert_eq!((p.src, p.sport), (ip(POOL), 8080));
    h.fwd(&udp(R1, 53, ONE_EXT, 4000), OUTSIDE, fwd_in(ONE_IN));
    let q = h.fwd(&udp(R1, 53, [192, 168, 1, 30], f.r2), OUTSIDE, fwd_in(A));
    assert_eq!(q.vlan, Some(7));
}

/// Adding a pool address, a port forward, a 1:1 mapping, a realm, and changing timeouts:
/// every session stays exactly as it was (ports, timers, TCP state), and the additions
/// work at once.
#[test]
fn reload_adding_keeps_every_session_bit_for_bit() {
    let base = rich("\"192.168.1.10\"", &[FWD_TCP], false, false, 300);
    let mut h = H::new(&base);
    // Without the 1:1 mapping and r2 the flows are those of the first three.
    let p = h.fwd(&udp(A, 5000, R1, 53), IN0, fwd_out());
    let a = p.sport;
    let p = h.fwd(&tcp(B, 6000, R2, 443, SYN), IN0, fwd_out());
    let b = p.sport;
    h.fwd(&tcp(R2, 443, POOL, b, SYN | ACK), OUTSIDE, fwd_in(B));
    h.fwd(&tcp(B, 6000, R2, 443, ACK), IN0, fwd_out());
    h.fwd(&tcp(R1, 7000, POOL, 8080, SYN), OUTSIDE, fwd_in(SRV));
    h.fwd(&tcp(SRV, 80, R1, 7000, SYN | ACK), IN0, fwd_out());
    h.fwd(&tcp(R1, 7000, POOL, 8080, ACK), OUTSIDE, fwd_in(SRV));
    h.e.check_invariants();
    let before = snap(&h);
    assert_eq!(before.len(), 3);
    let steps = [
        rich(
            "\"192.168.1.10-192.168.1.11\"",
            &[FWD_TCP],
            false,
            false,
            300,
        ),
        rich(
            "\"192.168.1.10-192.168.1.11\"",
            &[FWD_TCP, FWD_UDP],
            false,
            false,
            300,
        ),
        rich(
            "\"192.168.1.10-192.168.1.11\"",
            &[FWD_TCP, FWD_UDP],
            true,
            false,
            300,
        ),
        rich(
            "\"192.168.1.10-192.168.1.11\"",
            &[FWD_TCP, FWD_UDP],
            true,
            true,
            300,
        ),
        rich(
            "\"192.168.1.10-192.168.1.11\"",
            &[FWD_TCP, FWD_UDP],
            true,
            true,
            900,
        ),
    ];
    for (n, c) in steps.iter().enumerate() {
        reload(&mut h, c);
        assert_eq!(snap(&h), before, "step {n}: a session changed");
        h.tick(T0);
        assert!(!h.e.reconciling());
        assert_eq!(
            snap(&h),
            before,
            "step {n}: a session changed after the walk"
        );
        assert_eq!(removed(&h), 0);
        h.e.check_invariants();
    }
    // The old sessions translate as before.
    let p = h.fwd(&udp(A, 5000, R1, 53), IN0, fwd_out());
    assert_eq!((p.src, p.sport), (ip(POOL), a));
    h.fwd(&udp(R1, 53, POOL, a), OUTSIDE, fwd_in(A));
    let p = h.fwd(&tcp(B, 6000, R2, 443, ACK), IN0, fwd_out());
    assert_eq!((p.src, p.sport), (ip(POOL), b));
    h.fwd(&tcp(R1, 7000, POOL, 8080, ACK), OUTSIDE, fwd_in(SRV));
    // The additions work: the new forward, the 1:1 mapping, the new realm, the new pool
    // address (some host lands on it), the new UDP timeout for a new session.
    let q = h.fwd(&udp(R1, 999, POOL, 5353), OUTSIDE, fwd_in(SRV));
    assert_eq!(q.dport, 53);
    h.fwd(&udp(R1, 53, ONE_EXT, 4000), OUTSIDE, fwd_in(ONE_IN));
    let p = h.fwd(
        &udp_full(Some(7), A, 5001, R1, 53, 64, PAYLOAD),
        IN0,
        fwd_out(),
    );
    assert_eq!(p.src, ip([192, 168, 1, 30]));
    let on_new = (20..60u8)
        .any(|i| h.fwd(&udp([10, 0, 0, i], 5000, R1, 53), IN0, fwd_out()).src == ip(POOL2));
    assert!(on_new, "no host got the added pool address");
    let mut fresh = Vec::new();
    h.e.for_each_session(|s| {
        if s.in_addr == u32::from_be_bytes([10, 0, 0, 20]) {
            fresh.push(s.expires)
        }
    });
    assert_eq!(
        fresh,
        vec![T0 as u32 + 900],
        "new timeout for a new session"
    );
    // The kept UDP session keeps its deadline until its next packet, then takes the new one.
    h.e.check_invariants();
}

/// Removing a pool address, a port forward, a 1:1 mapping or a realm removes exactly the
/// sessions made through it, counts them, and leaves every other session as it was.
#[test]
fn reload_removing_each_removes_exactly_its_sessions() {
    let full = |pool: &str, statics: &[&str], one, r2| rich(pool, statics, one, r2, 300);
    let both = "\"192.168.1.10-192.168.1.11\"";
    let mut h = H::new(&full(both, &[FWD_TCP], true, true));
    // "A" must sit on the first pool address (the port forward's), "B" on the second:
    // pick hosts that do (paired pooling derives a host's address from its own).
    let paired_with = |want: [u8; 4]| {
        (20..200u8)
            .find(|&i| {
                let mut t = H::new(&full(both, &[FWD_TCP], true, true));
                t.fwd(&tcp([10, 0, 0, i], 6000, R2, 443, SYN), IN0, fwd_out())
                    .src
                    == ip(want)
            })
            .expect("a host paired with it")
    };
    let a_host = [10, 0, 0, paired_with(POOL)];
    let b_host = paired_with(POOL2);
    let f = {
        let p = h.fwd(&udp(a_host, 5000, R1, 53), IN0, fwd_out());
        assert_eq!(p.src, ip(POOL), "A is paired with .10");
        let a = p.sport;
        let bh = [10, 0, 0, b_host];
        let p = h.fwd(&tcp(bh, 6000, R2, 443, SYN), IN0, fwd_out());
        let b_tcp = p.sport;
        h.fwd(&tcp(R2, 443, POOL2, b_tcp, SYN | ACK), OUTSIDE, fwd_in(bh));
        h.fwd(&tcp(bh, 6000, R2, 443, ACK), IN0, fwd_out());
        h.fwd(&tcp(R1, 7000, POOL, 8080, SYN), OUTSIDE, fwd_in(SRV));
        h.fwd(&tcp(SRV, 80, R1, 7000, SYN | ACK), IN0, fwd_out());
        h.fwd(&tcp(R1, 7000, POOL, 8080, ACK), OUTSIDE, fwd_in(SRV));
        h.fwd(&udp(ONE_IN, 4000, R1, 53), IN0, fwd_out());
        let p = h.fwd(
            &udp_full(Some(7), A, 5001, R1, 53, 64, PAYLOAD),
            IN0,
            fwd_out(),
        );
        Flows {
            a_host,
            a,
            b_tcp,
            b_addr: ip(POOL2),
            r2: p.sport,
        }
    };
    h.e.check_invariants();
    let all = snap(&h);
    assert_eq!(all.len(), 5);
    let of = |h: &H, pick: &dyn Fn(&crate::nat::session::Session) -> bool| {
        let mut v = Vec::new();
        h.e.for_each_session(|s| {
            if pick(s) {
                v.push(format!("{s:?}"))
            }
        });
        v.sort();
        v
    };
    let u = |a: [u8; 4]| u32::from_be_bytes(a);

    // 1. The pool address .11: B's session only. Before the walk has run (no batch yet)
    // B's next packet already finds its session gone and gets a new mapping on .10.
    let rest = of(&h, &|s| s.ext_addr != u(POOL2));
    reload(&mut h, &full("\"192.168.1.10\"", &[FWD_TCP], true, true));
    assert!(h.e.reconciling(), "a removal walks the table");
    h.fwd(&udp(R1, 53, POOL, f.a), OUTSIDE, fwd_in(a_host));
    assert!(!h.e.reconciling(), "1024 slots are walked in one batch");
    assert_eq!(removed(&h), 1);
    assert_eq!(snap(&h), rest);
    h.drop(
        &tcp(R2, 443, POOL2, f.b_tcp, ACK),
        OUTSIDE,
        DropReason::NotForUs,
    );
    let bh = [10, 0, 0, b_host];
    let p = h.fwd(&tcp(bh, 6000, R2, 443, SYN), IN0, fwd_out());
    assert_eq!(p.src, ip(POOL), "B moves to the remaining address");
    h.e.check_invariants();
    flows_work(&mut h, &f, true);

    // 2. The port forward: the inbound connection through it only.
    let rest = snap(&h)
        .into_iter()
        .filter(|s| !s.contains("ext_port: 8080"))
        .collect::<Vec<_>>();
    reload(&mut h, &full("\"192.168.1.10\"", &[], true, true));
    h.tick(T0);
    assert_eq!(removed(&h), 2);
    assert_eq!(snap(&h), rest);
    h.drop(
        &tcp(R1, 7000, POOL, 8080, ACK),
        OUTSIDE,
        DropReason::Unsolicited,
    );
    h.e.check_invariants();

    // 3. The 1:1 mapping: its session only.
    let rest = of(&h, &|s| s.in_addr != u(ONE_IN));
    reload(&mut h, &full("\"192.168.1.10\"", &[], false, true));
    h.tick(T0);
    assert_eq!(removed(&h), 3);
    assert_eq!(snap(&h), rest);
    h.drop(&udp(R1, 53, ONE_EXT, 4000), OUTSIDE, DropReason::NotForUs);
    h.e.check_invariants();

    // 4. The realm r2: its session only.
    let rest = of(&h, &|s| s.realm == 0);
    reload(&mut h, &full("\"192.168.1.10\"", &[], false, false));
    h.tick(T0);
    assert_eq!(removed(&h), 4);
    assert_eq!(snap(&h), rest);
    h.drop(
        &udp(R1, 53, [192, 168, 1, 30], f.r2),
        OUTSIDE,
        DropReason::NotForUs,
    );
    h.e.check_invariants();
    // A's mapping survived all of it.
    let p = h.fwd(&udp(a_host, 5000, R1, 53), IN0, fwd_out());
    assert_eq!((p.src, p.sport), (ip(POOL), f.a));
    // Once every removed thing's state is gone, the table holds nothing else of it.
    h.tick(T0 + 100_000.0);
    assert_eq!(h.e.session_count(), 0);
    assert_eq!(h.e.mapping_count(), 0);
    h.e.check_invariants();
}

/// A port forward added on a port a dynamic mapping holds takes the port: the mapping's
/// sessions go (counted), the forward works at once, and the port is never handed out
/// again while the forward exists.
#[test]
fn reload_adding_a_forward_on_a_mapped_port_takes_it() {
    let mut h = H::std();
    let p = h.fwd(&udp(A, 5353, R1, 53), IN0, fwd_out());
    assert_eq!(p.sport, 5353, "port preserved");
    let fwd = "static = [{ protocol = \"udp\", external = \"192.168.1.10:5353\", internal = \"10.0.0.7:53\" }]";
    reload(&mut h, &conf(fwd, "", ""));
    let q = h.fwd(&udp(R1, 53, POOL, 5353), OUTSIDE, fwd_in(SRV));
    assert_eq!(q.dport, 53);
    assert_eq!(removed(&h), 1);
    let p = h.fwd(&udp(A, 5353, R1, 53), IN0, fwd_out());
    assert_ne!(p.sport, 5353, "A got another port");
    h.tick(T0 + 100_000.0);
    for i in 0..50u8 {
        let p = h.fwd(&udp([10, 0, 0, 100 + i], 5353, R1, 53), IN0, fwd_out());
        assert_ne!(p.sport, 5353, "the forward's port handed out");
    }
    h.e.check_invariants();
}

/// A second reload while a walk is still under way finishes the first walk first.
#[test]
fn reload_during_a_walk_finishes_it() {
    let both = "\"192.168.1.10-192.168.1.11\"";
    let mut h = H::new(&rich(both, &[FWD_TCP], true, true, 300));
    let _ = open_flows(&mut h);
    reload(
        &mut h,
        &rich("\"192.168.1.10\"", &[FWD_TCP], false, false, 300),
    );
    assert!(h.e.reconciling());
    reload(&mut h, &rich(both, &[FWD_TCP], true, true, 300));
    // The 1:1 session and r2's were removed by the first walk even though the second
    // configuration has them again.
    h.tick(T0);
    assert!(removed(&h) >= 2, "{}", removed(&h));
    h.e.check_invariants();
}

/// The reconciliation walk at a million sessions: how long one chunk (one batch
/// boundary's work) and the whole walk take, and what `set_rules` itself costs. Timing:
/// run with `cargo test --release --lib reconcile_a_million -- --ignored --nocapture`
/// (under the machine-wide lock).
#[test]
#[ignore = "timing: run with --release"]
fn reconcile_a_million_sessions_in_chunks() {
    use crate::nat::{Frame, Pkt};
    use std::time::Instant;
    const N: u32 = 1 << 20;
    let toml = |last: u8| {
        conf(
            &format!("prefixes = [\"10.0.0.0/8\"]\npool = [\"192.168.1.10-192.168.1.{last}\"]"),
            "",
            "[sessions]\ncapacity_per_core = 1100000",
        )
    };
    let mut h = H::new(&toml(73));
    let mut bufs: Vec<Vec<u8>> = Vec::with_capacity(64);
    let mut ns = (T0 * 1e9) as u64;
    let t = Instant::now();
    for base in (0..N).step_by(64) {
        bufs.clear();
        for i in base..base + 64 {
            let host = ((10u32 << 24) + (1 << 16) + i).to_be_bytes();
            bufs.push(udp(host, 5000, R1, 53));
        }
        let mut pkts: Vec<Pkt<'_>> = bufs
            .iter_mut()
            .map(|b| {
                let len = b.len();
                Pkt {
                    frame: Frame::new(b, 0, len),
                    ingress: IN0,
                }
            })
            .collect();
        let mut v = vec![Verdict::ToKernel; pkts.len()];
        h.e.process(ns, &mut pkts, &mut v);
        ns += 1000;
    }
    let sessions = h.e.session_count();
    eprintln!("{sessions} sessions set up in {:?}", t.elapsed());
    assert!(sessions >= N as usize * 99 / 100, "{sessions}");
    // Remove the last pool address: 1/64 of the sessions go.
    let cfg = crate::config::parse(&toml(72)).unwrap();
    let part = std::sync::Arc::new(crate::nat::ports::BlockPartition::new(1));
    let r = std::sync::Arc::new(crate::nat::Rules::reload(&cfg, part, h.e.rules()));
    let t = Instant::now();
    h.e.set_rules(r);
    let set_rules = t.elapsed();
    let (mut chunks, mut worst, t) = (0, std::time::Duration::ZERO, Instant::now());
    while h.e.reconciling() {
        let c = Instant::now();
        h.e.process(ns, &mut [], &mut []);
        worst = worst.max(c.elapsed());
        chunks += 1;
    }
    let total = t.elapsed();
    let gone = h.e.counters().sessions_removed_by_reload.get();
    eprintln!(
        "reload removing 1 of 64 pool addresses at {sessions} sessions: set_rules {set_rules:?}, \
         walk {total:?} in {chunks} chunks (worst chunk {worst:?}), {gone} sessions removed"
    );
    assert!(gone > 0 && (gone as usize) < sessions / 32, "{gone}");
    assert_eq!(h.e.session_count(), sessions - gone as usize);
    if !cfg!(debug_assertions) {
        // Typically 0.1-0.3 ms; the bound leaves room for a busy machine.
        assert!(worst.as_micros() < 5000, "a chunk took {worst:?}");
    }
}

// ---- reloads of large mapping tables (issue 11 part 2) ----------------------------------

/// A forward `ext` -> `int` of `proto`.
fn forward(
    proto: crate::packet::ipv4::Protocol,
    ext: ([u8; 4], u16),
    int: ([u8; 4], u16),
) -> crate::config::StaticMapping {
    use std::net::SocketAddrV4;
    crate::config::StaticMapping {
        protocol: proto,
        external: SocketAddrV4::new(ip(ext.0), ext.1),
        internal: SocketAddrV4::new(ip(int.0), int.1),
    }
}

/// With 100k forwards, a reload that adds one, one that changes nothing and one that
/// removes one cost the worker O(changes): counted in entries looked at
/// (`Engine::reload_steps`), not timed. The comparison of the two lists of forwards was the
/// worker's before (two passes over 100k forwards plus a new inbound-count table: some
/// 660k steps here, tens of milliseconds between two batches at 100k, bench/README.md).
#[test]
fn a_reload_at_100k_forwards_costs_the_worker_the_changes() {
    use crate::nat::Rules;
    use crate::nat::ports::BlockPartition;
    use crate::packet::ipv4::Protocol;
    use std::sync::Arc;
    let n = 100_000u32;
    let toml = conf(
        "pool = [\"192.168.1.10-192.168.1.11\"]\nprefixes = [\"10.0.0.0/8\"]",
        "",
        "",
    );
    let mut cfg = crate::config::parse(&toml).unwrap();
    cfg.realms[0].static_mappings = (0..n)
        .map(|k| {
            let ext = [192, 168, 1, 10 + (k / 50_000) as u8];
            let int = u32::from(ip([10, 1, 0, 0])) + k;
            forward(
                Protocol::TCP,
                (ext, 10_000 + (k % 50_000) as u16),
                (int.to_be_bytes(), 80),
            )
        })
        .collect();
    let part = Arc::new(BlockPartition::new(1));
    let mut h = H::on_core(Arc::new(Rules::new(&cfg, part.clone())), 0);
    // A connection from outside through the first forward, kept by every reload below.
    let inside = [10, 1, 0, 0];
    h.fwd(&tcp(R1, 40000, POOL, 10_000, SYN), OUTSIDE, fwd_in(inside));
    let kept = snap(&h);
    let apply = |h: &mut H, c: &crate::config::Config| {
        let before = h.e.reload_steps();
        let r = Rules::reload(c, part.clone(), h.e.rules());
        h.e.set_rules(Arc::new(r));
        h.tick(T0 + 1.0);
        h.e.reload_steps() - before
    };
    // PUT: a UDP forward on a pool address (as in the namespace benchmark).
    let mut put = cfg.clone();
    put.realms[0]
        .static_mappings
        .push(forward(Protocol::UDP, (POOL, 5353), (A, 53)));
    assert_eq!(apply(&mut h, &put), 1, "one forward added");
    let q = h.fwd(&udp(R1, 53, POOL, 5353), OUTSIDE, fwd_in(A));
    assert_eq!((q.dst, q.dport), (ip(A), 53));
    // The same files again: nothing to do.
    assert_eq!(apply(&mut h, &put), 0, "nothing changed");
    // DELETE: that forward again; its session goes.
    assert_eq!(apply(&mut h, &cfg), 1, "one forward removed");
    h.drop(&udp(R1, 53, POOL, 5353), OUTSIDE, DropReason::Unsolicited);
    assert_eq!(snap(&h), kept, "the other forward's connection untouched");
    h.e.check_invariants();
    // Rules not compiled against the running ones (a worker that missed a reload):
    // the worker compares the lists itself, and the count shows it.
    let fresh = Arc::new(Rules::new(&put, part.clone()));
    let before = h.e.reload_steps();
    h.e.set_rules(fresh);
    assert!(
        h.e.reload_steps() - before >= 4 * n as u64,
        "the full comparison is counted too"
    );
    h.fwd(&udp(R1, 53, POOL, 5353), OUTSIDE, fwd_in(A));
    h.e.check_invariants();
}

/// A reload applied from the management thread's delta leaves the store as the worker's
/// own comparison of the two lists does (the path for rules compiled against other ones):
/// random forwards on pool and static-only addresses, some on ports dynamic mappings hold,
/// a second realm coming and going; the same port use, the same sessions after the walk,
/// the same answers to new flows and to every forward.
#[test]
fn a_reload_from_the_delta_equals_the_full_comparison() {
    use crate::nat::Rules;
    use crate::nat::ports::BlockPartition;
    use crate::packet::ipv4::Protocol;
    use std::sync::Arc;
    let mut seed = 0x2545_f491_4f6c_dd1d_u64;
    let mut bit = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed & 1 == 1
    };
    // Every forward that may be there: unique external endpoints.
    let mut universe = Vec::new();
    for ext in [POOL, POOL2, [192, 168, 1, 20]] {
        for port in 5000..5006u16 {
            for (proto, int) in [(Protocol::UDP, SRV), (Protocol::TCP, B)] {
                universe.push((0u8, forward(proto, (ext, port), (int, port + 100))));
            }
        }
    }
    for port in 6000..6004u16 {
        universe.push((
            1,
            forward(Protocol::UDP, ([192, 168, 1, 30], port), (B, port)),
        ));
    }
    let part = || Arc::new(BlockPartition::new(1));
    for round in 0..24 {
        let mut pick = |r2: bool| {
            let mut c =
                crate::config::parse(&rich("\"192.168.1.10-192.168.1.11\"", &[], false, r2, 300))
                    .unwrap();
            for (realm, f) in &universe {
                if bit() && (*realm == 0 || r2) {
                    c.realms[*realm as usize].static_mappings.push(f.clone());
                }
            }
            c
        };
        let (r2_old, r2_new) = (round % 3 != 0, round % 4 != 0);
        let (old, new) = (pick(r2_old), pick(r2_new));
        let r_old = Arc::new(Rules::new(&old, part()));
        let mut hs = [H::on_core(r_old.clone(), 0), H::on_core(r_old.clone(), 0)];
        for h in hs.iter_mut() {
            h.e.seed_rng(round);
        }
        // Dynamic mappings on the ports forwards may take (port preservation).
        let run = |hs: &mut [H; 2], frame: &[u8], ingress| {
            let a = hs[0].run(frame, ingress);
            let b = hs[1].run(frame, ingress);
            assert_eq!(a, b, "round {round}: the two stores answer alike");
        };
        for port in 5000..5006u16 {
            run(&mut hs, &udp(A, port, R1, 53), IN0);
            run(&mut hs, &tcp(A, port, R1, 80, SYN), IN0);
            run(&mut hs, &udp(B, port, R2, 53), IN0);
        }
        let with_delta = Rules::reload(&new, part(), &r_old);
        assert!(with_delta.delta.is_some());
        let mut without = Rules::reload(&new, part(), &r_old);
        without.delta = None;
        hs[0].e.set_rules(Arc::new(with_delta));
        hs[1].e.set_rules(Arc::new(without));
        let use_of = |h: &H| {
            let mut v = Vec::new();
            h.e.pool_port_use(0, |realm, a, p, used, share| {
                v.push((realm, a, p, used, share));
                true
            });
            v
        };
        assert_eq!(use_of(&hs[0]), use_of(&hs[1]), "round {round}: port use");
        assert_eq!(hs[0].e.reconciling(), hs[1].e.reconciling());
        for h in hs.iter_mut() {
            h.tick(T0 + 1.0);
            assert!(!h.e.reconciling());
            h.e.check_invariants();
        }
        assert_eq!(snap(&hs[0]), snap(&hs[1]), "round {round}: sessions");
        assert_eq!(use_of(&hs[0]), use_of(&hs[1]), "round {round}: port use");
        for port in 5000..5006u16 {
            run(&mut hs, &udp(A, port, R1, 54), IN0);
            run(&mut hs, &udp(SRV, port + 100, R1, 54), IN0);
            run(&mut hs, &tcp(B, port + 100, R2, 80, SYN), IN0);
        }
        for (_, f) in &universe {
            let ext = (f.external.ip().octets(), f.external.port());
            let frame = if f.protocol == Protocol::UDP {
                udp(R2, 999, ext.0, ext.1)
            } else {
                tcp(R2, 999, ext.0, ext.1, SYN)
            };
            run(&mut hs, &frame, OUTSIDE);
        }
        for h in &hs {
            h.e.check_invariants();
        }
    }
}
