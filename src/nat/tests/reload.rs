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
