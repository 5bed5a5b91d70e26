//! The configuration compiled into lookup tables. Built once per (re)load by the management
//! thread and shared read-only (behind an `Arc`) by every worker; a reload swaps the `Arc`.

mod compile;
mod delta;
mod own;

pub use compile::{MAX_REALM_ID, realm_ids};
pub use delta::Delta;
pub(crate) use delta::{has_static, removes_anything};
pub use own::{KernelAddrs, LIMITED_BROADCAST};

use super::ports::Partition;
use super::table::{FlowTable, Key, hash_words};
use crate::config::{Filtering, Ipv4Net, Mapping, MssClamp, PortPolicy, Timeouts};
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
    pub(super) fn encode(self) -> u32 {
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
    /// Sessions per inside host (`[realm.limits]`), per core.
    pub per_host_sessions: u32,
    /// Sessions opened from outside per static or 1:1 mapping, per core.
    pub inbound_per_mapping: u32,
    /// Source addresses that are never an inside host's: the gateway and the broadcast
    /// address of every on-link prefix that has one (length <= 30).
    pub martian_sources: Vec<u32>,
    pub mapping: Mapping,
    pub filtering: Filtering,
    pub inbound_refresh: bool,
    pub hairpinning: bool,
    pub timeouts: Timeouts,
    pub mss_clamp: MssClamp,
    /// The MTU of the link towards this realm's hosts (its interface's, see
    /// [`Rules::set_mtus`]): the fast path's one compare for inbound packets.
    pub mtu: usize,
}

/// An MTU natgw was not told: no limit (the engine without a dataplane, as in its tests).
pub const NO_MTU: usize = usize::MAX;

/// An address no host may use as its own: this network (0/8), loopback (127/8), multicast
/// (224/4) or reserved (240/4, the limited broadcast included). As a source it is spoofed or
/// broken; it never creates a session.
#[inline]
pub fn martian(a: u32) -> bool {
    matches!(a >> 24, 0 | 127) || a >> 28 >= 0xe
}

/// A destination an inside host may not reach through the NAT: `martian`, except the
/// limited broadcast, which keeps the path it has (the router's business, not the NAT's).
#[inline]
pub fn martian_destination(a: u32) -> bool {
    martian(a) && a != u32::MAX
}

impl RealmRules {
    /// A source no inside host of this realm may send from: `martian`, the realm's gateway
    /// (natgw itself) or a subnet broadcast address.
    #[inline]
    pub fn martian_source(&self, a: u32) -> bool {
        martian(a) || self.martian_sources.contains(&a)
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
    /// The MSS a SYN or SYN-ACK through this realm may carry at most (None: no clamping).
    /// "auto" is the smaller of the outside link's and the realm link's MTU less 40 bytes
    /// (at least 536).
    #[inline]
    pub fn mss_limit(&self, outside_mtu: usize) -> Option<u16> {
        match self.mss_clamp {
            MssClamp::Off => None,
            MssClamp::Value(v) => Some(v),
            MssClamp::Auto => {
                let mtu = self.mtu.min(outside_mtu);
                // Never below what every IPv4 host must accept (the config's minimum).
                (mtu != NO_MTU).then(|| mtu.saturating_sub(40).clamp(536, 65495) as u16)
            }
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

/// Untagged frames use slot 4096 of the per-interface VLAN table.
pub(super) const UNTAGGED: usize = 4096;
pub(super) const NO_REALM: u16 = u16::MAX;

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
    pub(super) ext: FlowTable<AddrKey>,
    pub(super) static_out: FlowTable<EndpointKey>,
    pub(super) static_in: FlowTable<EndpointKey>,
    pub(super) one_in: FlowTable<HostKey>,
    /// Per inside interface: realm for each VLAN id (and untagged).
    pub(super) ingress: Vec<Box<[u16]>>,
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
    /// Egress MTUs, from the kernel at start ([`Rules::set_mtus`]; [`NO_MTU`] until then):
    /// the outside link's, and each inside interface's in config order.
    pub outside_mtu: usize,
    pub inside_mtu: Vec<usize>,
    /// The smallest of them: a datagram no larger fits every link.
    pub min_mtu: usize,
    /// This compilation's number (unique in the process): what a [`Delta`] names.
    pub serial: u64,
    /// With rules compiled against running ones (`Rules::reload`): what changed, for the
    /// workers to apply without comparing the tables themselves.
    pub delta: Option<Delta>,
}

impl Rules {
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

    /// Sets the egress MTUs: the outside link's and each inside interface's (config order),
    /// which is also each realm's (a realm on a VLAN whose VLAN device has a smaller MTU
    /// gets that through [`Rules::set_realm_mtu`]).
    pub fn set_mtus(&mut self, outside: usize, inside: &[usize]) {
        self.outside_mtu = outside;
        self.inside_mtu = inside.to_vec();
        self.min_mtu = inside.iter().fold(outside, |a, &b| a.min(b));
        for r in &mut self.realms {
            r.mtu = inside.get(r.iface as usize).copied().unwrap_or(NO_MTU);
        }
    }

    /// Lowers realm `id`'s MTU to `mtu` (its VLAN device's, when that is smaller).
    pub fn set_realm_mtu(&mut self, id: u16, mtu: usize) {
        if let Some(r) = self.realms.get_mut(id as usize) {
            r.mtu = r.mtu.min(mtu);
            self.min_mtu = self.min_mtu.min(r.mtu);
        }
    }

    /// The MTU of the link a frame leaves by: the outside link's, or that of the realm its
    /// inside interface and VLAN tag name (else the interface's).
    #[inline]
    pub fn egress_mtu(&self, e: super::types::Egress, vlan: Option<u16>) -> usize {
        match e {
            super::types::Egress::Outside => self.outside_mtu,
            super::types::Egress::Inside(i) => match self.realm_for(i, vlan) {
                Some(r) => r.mtu,
                None => self.inside_mtu.get(i as usize).copied().unwrap_or(NO_MTU),
            },
        }
    }
}
