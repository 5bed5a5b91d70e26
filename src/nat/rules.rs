//! The configuration compiled into lookup tables. Built once per (re)load by the management
//! thread and shared read-only (behind an `Arc`) by every worker; a reload swaps the `Arc`.

use super::ports::Partition;
use super::table::{FlowTable, Key, hash_words};
use crate::config::{self, Config, Filtering, Ipv4Net, Mapping, PortPolicy, Timeouts};
use crate::packet::ipv4::Protocol;
use std::net::Ipv4Addr;
use std::sync::Arc;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct AddrKey(pub u32);
impl Key for AddrKey {
    /// The limited broadcast address is never one of natgw's addresses.
    const EMPTY: AddrKey = AddrKey(u32::MAX);
    fn hash(&self) -> u64 {
        hash_words(&[self.0 as u64])
    }
}

/// (realm, protocol, address, port): a static mapping's inside endpoint, or with realm
/// `u16::MAX` its outside endpoint.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct EndpointKey {
    pub realm: u16,
    pub proto: Protocol,
    pub port: u16,
    pub addr: u32,
}
impl Key for EndpointKey {
    /// Static mappings are TCP or UDP.
    const EMPTY: EndpointKey = EndpointKey {
        realm: 0,
        proto: Protocol(0),
        port: 0,
        addr: 0,
    };
    fn hash(&self) -> u64 {
        hash_words(&[
            (self.realm as u64) << 32 | (self.proto.0 as u64) << 16 | self.port as u64,
            self.addr as u64,
        ])
    }
}

/// (realm, inside address).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct HostKey {
    pub realm: u16,
    pub addr: u32,
}
impl Key for HostKey {
    /// No realm has this id (`NO_REALM`).
    const EMPTY: HostKey = HostKey {
        realm: u16::MAX,
        addr: 0,
    };
    fn hash(&self) -> u64 {
        hash_words(&[(self.realm as u64) << 32 | self.addr as u64])
    }
}

/// What an external (outside-facing) address of natgw is.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum ExtAddr {
    /// Address `index` of realm `realm`'s dynamic pool.
    Pool { realm: u16, index: u16 },
    /// The external side of 1:1 mapping `index`.
    OneToOne { index: u32 },
    /// Used only by static mappings (not in the dynamic pool).
    StaticOnly { realm: u16 },
    /// natgw's own outside address.
    Own,
}

impl ExtAddr {
    fn encode(self) -> u32 {
        match self {
            ExtAddr::Pool { realm, index } => (realm as u32) << 16 | index as u32,
            ExtAddr::OneToOne { index } => 1 << 30 | index,
            ExtAddr::StaticOnly { realm } => 2 << 30 | realm as u32,
            ExtAddr::Own => 3 << 30,
        }
    }
    fn decode(v: u32) -> Self {
        match v >> 30 {
            0 => ExtAddr::Pool {
                realm: (v >> 16) as u16,
                index: v as u16,
            },
            1 => ExtAddr::OneToOne {
                index: v & 0x3fff_ffff,
            },
            2 => ExtAddr::StaticOnly { realm: v as u16 },
            _ => ExtAddr::Own,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StaticRule {
    pub realm: u16,
    pub proto: Protocol,
    pub ext_addr: u32,
    pub ext_port: u16,
    pub in_addr: u32,
    pub in_port: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OneToOneRule {
    pub realm: u16,
    pub ext_addr: u32,
    pub in_addr: u32,
}

#[derive(Clone, Debug)]
pub struct RealmRules {
    /// The realm's stable id and its index in `Rules::realms`: sessions, mappings, hosts and
    /// fragment scopes name their realm by it.
    pub id: u16,
    /// A hole: the id of a realm the previous configuration had and this one removed, kept
    /// for one reload so that no new realm is mistaken for it. Matches no traffic.
    pub retired: bool,
    pub name: String,
    pub iface: u8,
    pub vlan: Option<u16>,
    pub prefixes: Vec<Ipv4Net>,
    pub gateway: Option<u32>,
    /// Dynamic pool, expanded to single addresses.
    pub pool: Vec<u32>,
    pub routes: Vec<(Ipv4Net, u32)>,
    pub policy: PortPolicy,
    pub port_first: u16,
    pub port_last: u16,
    pub per_host_limit: u32,
    pub mapping: Mapping,
    pub filtering: Filtering,
    pub inbound_refresh: bool,
    pub hairpinning: bool,
    pub timeouts: Timeouts,
}

impl RealmRules {
    /// The placeholder at a retired id: no prefixes, no pool, on no interface's ingress.
    fn retired(id: u16) -> RealmRules {
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
        }
    }

    #[inline]
    pub fn contains(&self, a: u32) -> bool {
        self.prefixes.iter().any(|p| p.contains(Ipv4Addr::from(a)))
    }
    /// The timeout of a session of `proto` (for TCP: established or not).
    #[inline(always)]
    pub fn timeout(&self, proto: Protocol, established: bool) -> u32 {
        let t = &self.timeouts;
        match proto {
            Protocol::UDP => t.udp,
            Protocol::ICMP => t.icmp,
            _ if established => t.tcp_established,
            _ => t.tcp_transitory,
        }
    }
    /// Next hop towards an inside address: the longest matching inside route, else on-link.
    pub fn next_hop(&self, dst: u32) -> u32 {
        let mut best: Option<(u8, u32)> = None;
        for (net, via) in &self.routes {
            if net.contains(Ipv4Addr::from(dst)) && best.is_none_or(|(l, _)| net.len > l) {
                best = Some((net.len, *via));
            }
        }
        best.map_or(dst, |(_, via)| via)
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

/// Untagged frames use slot 4096 of the per-interface VLAN table.
const UNTAGGED: usize = 4096;
const NO_REALM: u16 = u16::MAX;

/// The outside NIC's receive-side scaling, when it hashes addresses and ports: port choice
/// then prefers external ports whose return traffic the NIC delivers to the allocating
/// worker's own queue, so steady-state traffic needs no handoff.
#[derive(Clone, Debug)]
pub struct RssSteering {
    pub rss: crate::nat::rss::Rss,
    /// Whether TCP / UDP return traffic is hashed over ports too (else only addresses count
    /// and port choice cannot steer).
    pub tcp_ports: bool,
    pub udp_ports: bool,
    /// The outside queue of each worker (engine core number).
    pub queue_of_core: Vec<u32>,
}

impl RssSteering {
    /// Port choice can steer only protocols whose ports the NIC hashes.
    #[inline]
    pub fn steers(&self, proto: Protocol) -> bool {
        match proto {
            Protocol::TCP => self.tcp_ports,
            Protocol::UDP => self.udp_ports,
            _ => false,
        }
    }

    /// Does the NIC deliver return traffic from `rem` to `ext` on `core`'s queue?
    #[inline]
    pub fn lands_on(&self, core: usize, proto: Protocol, rem: (u32, u16), ext: (u32, u16)) -> bool {
        let ports = match proto {
            Protocol::TCP => self.tcp_ports,
            Protocol::UDP => self.udp_ports,
            _ => false,
        };
        let (sp, dp) = if ports {
            (Some(rem.1), Some(ext.1))
        } else {
            (None, None)
        };
        let q = self
            .rss
            .ipv4_queue(Ipv4Addr::from(rem.0), Ipv4Addr::from(ext.0), sp, dp);
        self.queue_of_core.get(core) == Some(&q)
    }
}

pub struct Rules {
    pub realms: Vec<RealmRules>,
    pub statics: Vec<StaticRule>,
    pub one_to_one: Vec<OneToOneRule>,
    ext: FlowTable<AddrKey>,
    static_out: FlowTable<EndpointKey>,
    static_in: FlowTable<EndpointKey>,
    one_in: FlowTable<HostKey>,
    /// Per inside interface: realm for each VLAN id (and untagged).
    ingress: Vec<Box<[u16]>>,
    pub outside_addr: u32,
    pub gateway: u32,
    /// Prefixes reachable directly on the outside link (next hop = destination).
    pub outside_onlink: Vec<Ipv4Net>,
    pub cores: usize,
    pub partition: Arc<dyn Partition>,
    /// Set by the dataplane when the outside NIC's RSS can be predicted.
    pub rss: Option<RssSteering>,
    pub forward_only: bool,
    pub session_capacity: u32,
    pub frag_max_datagrams: u32,
    pub frag_max_held: u32,
    pub frag_timeout: u32,
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
        Rules {
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
        }
    }

    /// The id of `realm_for`'s realm, without touching the realm itself.
    #[inline]
    pub fn realm_id_for(&self, iface: u8, vlan: Option<u16>) -> Option<u16> {
        let t = self.ingress.get(iface as usize)?;
        let id = t[vlan.map_or(UNTAGGED, |v| (v & 0xfff) as usize)];
        (id != NO_REALM).then_some(id)
    }

    #[inline]
    pub fn realm_for(&self, iface: u8, vlan: Option<u16>) -> Option<&RealmRules> {
        self.realms.get(self.realm_id_for(iface, vlan)? as usize)
    }

    #[inline]
    pub fn ext_addr(&self, a: u32) -> Option<ExtAddr> {
        self.ext.get(&AddrKey(a)).map(ExtAddr::decode)
    }

    #[inline]
    pub fn static_by_ext(&self, proto: Protocol, addr: u32, port: u16) -> Option<&StaticRule> {
        let i = self.static_out.get(&EndpointKey {
            realm: NO_REALM,
            proto,
            addr,
            port,
        })?;
        self.statics.get(i as usize)
    }

    #[inline]
    pub fn static_by_in(
        &self,
        realm: u16,
        proto: Protocol,
        addr: u32,
        port: u16,
    ) -> Option<&StaticRule> {
        if self.statics.is_empty() {
            return None;
        }
        let i = self.static_in.get(&EndpointKey {
            realm,
            proto,
            addr,
            port,
        })?;
        self.statics.get(i as usize)
    }

    #[inline]
    pub fn one_to_one_by_in(&self, realm: u16, addr: u32) -> Option<&OneToOneRule> {
        if self.one_to_one.is_empty() {
            return None;
        }
        let i = self.one_in.get(&HostKey { realm, addr })?;
        self.one_to_one.get(i as usize)
    }

    /// Which core owns the flows of an inside host: all of a host's mappings live on one core,
    /// so its port limit and paired pooling need no coordination.
    #[inline]
    pub fn inside_owner(&self, realm: u16, addr: u32) -> usize {
        if self.cores == 1 {
            return 0;
        }
        (hash_words(&[(realm as u64) << 32 | addr as u64]) % self.cores as u64) as usize
    }

    /// Which core owns traffic arriving for external `addr:port` (port = ICMP id for queries).
    /// None: any core can handle it (natgw's own address).
    #[inline]
    pub fn outside_owner(&self, proto: Protocol, addr: u32, port: u16) -> Option<usize> {
        if self.cores == 1 {
            return Some(0);
        }
        match self.ext_addr(addr)? {
            ExtAddr::Pool { .. } | ExtAddr::StaticOnly { .. } => {
                if let Some(s) = self.static_by_ext(proto, addr, port) {
                    Some(self.inside_owner(s.realm, s.in_addr))
                } else {
                    Some(self.partition.owner(port))
                }
            }
            ExtAddr::OneToOne { index } => {
                let o = &self.one_to_one[index as usize];
                Some(self.inside_owner(o.realm, o.in_addr))
            }
            ExtAddr::Own => None,
        }
    }

    /// Next hop towards an outside address.
    #[inline]
    pub fn outside_next_hop(&self, dst: u32) -> u32 {
        if self
            .outside_onlink
            .iter()
            .any(|n| n.contains(Ipv4Addr::from(dst)))
        {
            dst
        } else {
            self.gateway
        }
    }

    /// Whether sessions and port allocations made under `self` mean the same under `o`.
    pub fn same_layout(&self, o: &Rules) -> bool {
        self.cores == o.cores
            && self.statics == o.statics
            && self.one_to_one == o.one_to_one
            && self.realms.len() == o.realms.len()
            && self.realms.iter().zip(&o.realms).all(|(a, b)| {
                (a.retired, a.iface, a.vlan, a.port_first, a.port_last)
                    == (b.retired, b.iface, b.vlan, b.port_first, b.port_last)
                    && a.prefixes == b.prefixes
                    && a.pool == b.pool
                    && a.mapping == b.mapping
            })
    }
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
            mapping: r.mapping,
            filtering: r.filtering,
            inbound_refresh: r.inbound_refresh,
            hairpinning: r.hairpinning,
            timeouts: r.timeouts,
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
                proto: match s.protocol {
                    config::Protocol::Tcp => Protocol::TCP,
                    config::Protocol::Udp => Protocol::UDP,
                },
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
