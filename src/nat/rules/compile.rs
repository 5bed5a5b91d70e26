//! Building `Rules` from a validated configuration: realm ids kept stable across reloads,
//! the realms indexed by id, the static and 1:1 mappings, and the lookup tables the paths
//! use (external addresses, static endpoints, 1:1 hosts, ingress by interface and VLAN).

use super::*;
use crate::config::Config;

impl RealmRules {
    /// The placeholder at a retired id: no prefixes, no pool, on no interface's ingress.
    pub(super) fn retired(id: u16) -> RealmRules {
        RealmRules {
            id,
            retired: true,
            name: String::new(),
            iface: 0,
            vlan: None,
            prefixes: Vec::new(),
            gateway: None,
            pool: Vec::new(),
            routes: Vec::new(),
            policy: PortPolicy::PreserveThenRandom,
            port_first: 1024,
            port_last: 65535,
            per_host_limit: 0,
            per_host_sessions: 0,
            inbound_per_mapping: 0,
            martian_sources: Vec::new(),
            mapping: Mapping::EndpointIndependent,
            filtering: Filtering::EndpointIndependent,
            inbound_refresh: false,
            hairpinning: false,
            timeouts: Timeouts {
                udp: 0,
                tcp_established: 0,
                tcp_transitory: 0,
                icmp: 0,
            },
            mss_clamp: crate::config::MssClamp::Off,
            mtu: NO_MTU,
        }
    }
}

impl Rules {
    /// Compiles a validated config. `partition` decides which core owns each external port.
    /// Realm ids are the realms' positions in the file.
    pub fn new(cfg: &Config, partition: Arc<dyn Partition>) -> Rules {
        Self::compile(cfg, partition, None)
    }

    /// Compiles a reloaded config: every realm that `prev` had (by name) keeps its id, so
    /// sessions and mappings, which name their realm by id, still mean the same realm
    /// wherever it now stands in the file (see [`realm_ids`]).
    pub fn reload(cfg: &Config, partition: Arc<dyn Partition>, prev: &Rules) -> Rules {
        Self::compile(cfg, partition, Some(prev))
    }

    fn compile(cfg: &Config, partition: Arc<dyn Partition>, prev: Option<&Rules>) -> Rules {
        let ids = realm_ids(cfg, prev);
        let realms = compile_realms(cfg, &ids);
        let (statics, ones) = mapping_rules(cfg, &ids);
        let outside_addr = u32::from(cfg.outside.address);
        let mut rules = Rules {
            ext: ext_table(&realms, &ones, &statics, outside_addr),
            static_out: static_table(&statics, |s| (NO_REALM, s.ext_addr, s.ext_port)),
            static_in: static_table(&statics, |s| (s.realm, s.in_addr, s.in_port)),
            one_in: one_to_one_table(&ones),
            ingress: ingress_table(cfg.inside.len(), &realms),
            realms,
            statics,
            one_to_one: ones,
            outside_addr,
            gateway: u32::from(cfg.outside.gateway),
            outside_onlink: Vec::new(),
            cores: partition.cores().max(1),
            partition,
            rss: None,
            forward_only: cfg.dataplane.forward_only,
            session_capacity: cfg.sessions.capacity_per_core,
            frag_max_datagrams: cfg.fragments.max_datagrams,
            frag_max_held: cfg.fragments.max_held,
            frag_timeout: cfg.fragments.timeout,
            outside_mtu: NO_MTU,
            inside_mtu: vec![NO_MTU; cfg.inside.len()],
            min_mtu: NO_MTU,
            serial: super::delta::next_serial(),
            delta: None,
        };
        // Here, on the management thread, not on every worker between two batches.
        rules.delta = prev.map(|p| Delta::between(p, &rules));
        rules
    }
}

/// Realm ids stay below the ids the fragment table uses as scopes and `NO_REALM`.
pub const MAX_REALM_ID: u16 = u16::MAX - 16;

/// The id of each of `cfg`'s realms, in file order. Without `prev`, a realm's position.
/// Reloading, a realm `prev` had (matched by name, which the config keeps unique) keeps its
/// id; a new realm takes the lowest id that no realm of `prev` and no kept realm holds, so a
/// removed realm's id is not given to a new realm in the same reload (its sessions may
/// still be about). Bounded: realms are few and ids stay below `MAX_REALM_ID`.
pub fn realm_ids(cfg: &Config, prev: Option<&Rules>) -> Vec<u16> {
    let Some(prev) = prev else {
        return (0..cfg.realms.len() as u16).collect();
    };
    let old = |name: &str| {
        prev.realms
            .iter()
            .find(|r| !r.retired && r.name == name)
            .map(|r| r.id)
    };
    let mut taken: Vec<u16> = prev
        .realms
        .iter()
        .filter(|r| !r.retired)
        .map(|r| r.id)
        .collect();
    cfg.realms
        .iter()
        .map(|r| {
            old(&r.name).unwrap_or_else(|| {
                let id = (0..MAX_REALM_ID)
                    .find(|i| !taken.contains(i))
                    .expect("fewer realms than ids");
                taken.push(id);
                id
            })
        })
        .collect()
}

/// The realms indexed by id (`ids[i]` is `cfg.realms[i]`'s); ids no realm has are retired.
fn compile_realms(cfg: &Config, ids: &[u16]) -> Vec<RealmRules> {
    let slots = ids.iter().map(|&i| i as usize + 1).max().unwrap_or(0);
    let mut realms: Vec<RealmRules> = (0..slots).map(|i| RealmRules::retired(i as u16)).collect();
    for (r, &id) in cfg.realms.iter().zip(ids) {
        let iface = cfg
            .inside
            .iter()
            .position(|i| i.name == r.interface)
            .unwrap_or(0) as u8;
        realms[id as usize] = RealmRules {
            id,
            retired: false,
            name: r.name.clone(),
            iface,
            vlan: r.vlan,
            prefixes: r.prefixes.clone(),
            gateway: r.gateway.map(u32::from),
            pool: r
                .pool
                .iter()
                .flat_map(|p| p.iter())
                .map(u32::from)
                .collect(),
            routes: r
                .routes
                .iter()
                .map(|rt| (rt.prefix, u32::from(rt.via)))
                .collect(),
            policy: r.ports.policy,
            port_first: r.ports.range.first,
            port_last: r.ports.range.last,
            per_host_limit: r.ports.per_host_limit,
            per_host_sessions: r.limits.per_host_sessions,
            inbound_per_mapping: r.limits.inbound_per_mapping,
            martian_sources: r
                .gateway
                .map(u32::from)
                .into_iter()
                .chain(r.prefixes.iter().filter(|p| p.len <= 30).map(|p| p.last()))
                .collect(),
            mapping: r.mapping,
            filtering: r.filtering,
            inbound_refresh: r.inbound_refresh,
            hairpinning: r.hairpinning,
            timeouts: r.timeouts,
            mss_clamp: r.mss_clamp,
            mtu: NO_MTU,
        };
    }
    realms
}

/// Every realm's static and 1:1 mappings, in file order, each naming its realm by id.
fn mapping_rules(cfg: &Config, ids: &[u16]) -> (Vec<StaticRule>, Vec<OneToOneRule>) {
    let mut statics = Vec::new();
    let mut ones = Vec::new();
    for (r, &realm) in cfg.realms.iter().zip(ids) {
        for s in &r.static_mappings {
            statics.push(StaticRule {
                realm,
                proto: s.protocol,
                ext_addr: u32::from(*s.external.ip()),
                ext_port: s.external.port(),
                in_addr: u32::from(*s.internal.ip()),
                in_port: s.internal.port(),
            });
        }
        for o in &r.one_to_one {
            ones.push(OneToOneRule {
                realm,
                ext_addr: u32::from(o.external),
                in_addr: u32::from(o.internal),
            });
        }
    }
    (statics, ones)
}

/// What each of natgw's external addresses is: pool, 1:1, static-only, or its own.
fn ext_table(
    realms: &[RealmRules],
    ones: &[OneToOneRule],
    statics: &[StaticRule],
    outside_addr: u32,
) -> FlowTable<AddrKey> {
    let n_ext: usize =
        realms.iter().map(|r| r.pool.len()).sum::<usize>() + ones.len() + statics.len() + 1;
    let mut ext = FlowTable::with_capacity(n_ext);
    for r in realms {
        for (i, a) in r.pool.iter().enumerate() {
            let pool = ExtAddr::Pool {
                realm: r.id,
                index: i as u16,
            };
            let _ = ext.insert(AddrKey(*a), pool.encode());
        }
    }
    for (i, o) in ones.iter().enumerate() {
        let one = ExtAddr::OneToOne { index: i as u32 };
        let _ = ext.insert(AddrKey(o.ext_addr), one.encode());
    }
    for s in statics {
        // Static-only external addresses; pool addresses are already known.
        let only = ExtAddr::StaticOnly { realm: s.realm };
        let _ = ext.insert(AddrKey(s.ext_addr), only.encode());
    }
    let _ = ext.insert(AddrKey(outside_addr), ExtAddr::Own.encode());
    ext
}

/// Static mappings by one of their endpoints: `end` gives (realm or `NO_REALM`, address,
/// port); the value is the mapping's index in `statics`.
fn static_table(
    statics: &[StaticRule],
    end: impl Fn(&StaticRule) -> (u16, u32, u16),
) -> FlowTable<EndpointKey> {
    let mut t = FlowTable::with_capacity(statics.len().max(1));
    for (i, s) in statics.iter().enumerate() {
        let (realm, addr, port) = end(s);
        let k = EndpointKey {
            realm,
            proto: s.proto,
            addr,
            port,
        };
        let _ = t.insert(k, i as u32);
    }
    t
}

/// 1:1 mappings by (realm, inside address).
fn one_to_one_table(ones: &[OneToOneRule]) -> FlowTable<HostKey> {
    let mut t = FlowTable::with_capacity(ones.len().max(1));
    for (i, o) in ones.iter().enumerate() {
        let k = HostKey {
            realm: o.realm,
            addr: o.in_addr,
        };
        let _ = t.insert(k, i as u32);
    }
    t
}

/// Per inside interface, the realm of each VLAN id (and of untagged frames).
fn ingress_table(interfaces: usize, realms: &[RealmRules]) -> Vec<Box<[u16]>> {
    let mut ingress: Vec<Box<[u16]>> = (0..interfaces.max(1))
        .map(|_| vec![NO_REALM; UNTAGGED + 1].into_boxed_slice())
        .collect();
    for r in realms.iter().filter(|r| !r.retired) {
        ingress[r.iface as usize][r.vlan.map_or(UNTAGGED, |v| v as usize)] = r.id;
    }
    ingress
}
