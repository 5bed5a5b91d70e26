//! `[[realm]]`: one inside network behind one (interface, VLAN), with its on-link prefixes,
//! gateway and routes, its external addresses (pool, static port forwards, 1:1 mappings), its port
//! allocation, behaviour and timeouts. Checks that need other realms are in `checks`.

use std::net::Ipv4Addr;
use std::str::FromStr;

use super::err;
use super::raw::{
    RawLimits, RawMss, RawOneToOne, RawPorts, RawRealm, RawRoute, RawStatic, RawTimeouts,
};
use super::values::{choice, ifname, int_in, net, port_range, required, socket, unicast};
use crate::config::ConfigError;
use crate::config::display::{FILTERINGS, MAPPINGS, PORT_POLICIES, PROTOCOLS};
use crate::config::model::{
    AddrRange, Filtering, InsideInterface, Ipv4Net, Limits, Mapping, MappingsFile, MssClamp,
    OneToOne, PortPolicy, PortRange, Ports, Realm, Route, StaticMapping, Timeouts,
};

const DEFAULT_PORT_RANGE: PortRange = PortRange {
    first: 1024,
    last: 65535,
};
const DEFAULT_PER_HOST_LIMIT: i64 = 4096;
/// Per core. Generous for one subscriber (a browser opens a few hundred), small against the
/// default table of 262,144: sixteen hosts cannot fill a core.
const DEFAULT_PER_HOST_SESSIONS: i64 = 16_384;
const DEFAULT_INBOUND_PER_MAPPING: i64 = 16_384;
/// The largest session table (`sessions.capacity_per_core`).
const MAX_SESSIONS: i64 = 1 << 26;

/// RFC 4787 REQ-5, RFC 5382 REQ-5, RFC 5508 REQ-1: (key, minimum, default).
const TIMEOUTS: [(&str, i64, i64); 4] = [
    ("udp", 120, 300),
    ("tcp_established", 7440, 7440),
    ("tcp_transitory", 240, 240),
    ("icmp", 60, 60),
];
/// A week: longer idle timeouts are typos, and would pin session slots forever.
const MAX_TIMEOUT: i64 = 604_800;

/// Builds realm `i` (its keys are reported as `realm[i]. ...`). The parts run in order of
/// dependence: the on-link prefixes and routes say which inside addresses are reachable, the pool
/// says which external addresses static mappings may use and 1:1 mappings may not.
pub(super) fn build_realm(
    i: usize,
    r: RawRealm,
    inside: &[InsideInterface],
    files: &mut super::Files<'_>,
) -> Result<Realm, ConfigError> {
    let p = format!("realm[{i}]");
    let f = format!("{p}.name");
    let name = realm_name(required(r.name.as_deref(), &f)?, &f)?;
    let interface = interface(r.interface.as_deref(), inside, &p)?;
    let vlan = match r.vlan {
        None => None,
        Some(v) => Some(int_in(v, &format!("{p}.vlan"), 1, 4094)? as u16),
    };
    let prefixes = prefixes(&r.prefixes, &p)?;
    let gateway = match r.gateway.as_deref() {
        None => None,
        Some(s) => Some(gateway(s, &prefixes, &p)?),
    };
    let routes = routes(&r.routes, &prefixes, &p)?;
    let inside_net = InsideNet {
        prefixes: &prefixes,
        routes: &routes,
    };
    let pool = pool(&r.pool, &p)?;
    let (mut raw_statics, mut raw_ones) = (r.statics, r.one_to_one);
    let mappings_file = match r.mappings_file.as_deref() {
        None => None,
        Some(name) => {
            let f = format!("{p}.mappings_file");
            if name.trim().is_empty() {
                return Err(err(f, "must name a file"));
            }
            let path = files.base.join(name);
            let text = (files.read)(&path)
                .map_err(|e| err(&f, format!("cannot read {}: {e}", path.display())))?;
            let file = super::parse_mappings_file(name, &text)?;
            let m = MappingsFile {
                name: name.to_string(),
                path,
                statics_from: raw_statics.len(),
                one_to_one_from: raw_ones.len(),
            };
            raw_statics.extend(file.statics);
            raw_ones.extend(file.one_to_one);
            Some(m)
        }
    };
    let name_of = |key: &str, j: usize| MappingsFile::field(mappings_file.as_ref(), i, key, j);
    let one_to_one = one_to_one(&raw_ones, &pool, &inside_net, &name_of)?;
    if pool.is_empty() && one_to_one.is_empty() {
        return Err(err(
            format!("{p}.pool"),
            "at least one pool entry is required (a realm may have an empty pool only if it has one_to_one mappings)",
        ));
    }
    let static_mappings = static_mappings(&raw_statics, &pool, &inside_net, &name_of)?;
    let ports = build_ports(r.ports.unwrap_or_default(), &p)?;
    let limits = build_limits(r.limits.unwrap_or_default(), &p)?;
    let mapping = match r.mapping.as_deref() {
        None => Mapping::EndpointIndependent,
        Some(s) => choice(s, &format!("{p}.mapping"), &MAPPINGS)?,
    };
    let filtering = match r.filtering.as_deref() {
        None => Filtering::AddressDependent,
        Some(s) => choice(s, &format!("{p}.filtering"), &FILTERINGS)?,
    };
    let timeouts = build_timeouts(r.timeouts.unwrap_or_default(), &p)?;
    let mss_clamp = mss_clamp(r.mss_clamp, &format!("{p}.mss_clamp"))?;

    Ok(Realm {
        name,
        interface,
        vlan,
        prefixes,
        gateway,
        pool,
        static_mappings,
        one_to_one,
        mappings_file,
        routes,
        ports,
        limits,
        mapping,
        filtering,
        inbound_refresh: r.inbound_refresh.unwrap_or(false),
        hairpinning: r.hairpinning.unwrap_or(true),
        mss_clamp,
        timeouts,
        log: super::eventlog::build_realm_log(r.log, &p)?,
    })
}

/// The smallest MSS `mss_clamp` may set: 576-byte datagrams (RFC 791), which every IPv4
/// link carries, less 40 bytes of headers (RFC 9293 3.7.1's default send MSS).
pub(crate) const MIN_MSS: i64 = 536;
/// The largest: a 65535-byte datagram less 40 bytes of headers.
pub(crate) const MAX_MSS: i64 = 65495;

fn mss_clamp(v: Option<RawMss>, field: &str) -> Result<MssClamp, ConfigError> {
    match v {
        None => Ok(MssClamp::Off),
        Some(RawMss::Bytes(n)) => Ok(MssClamp::Value(int_in(n, field, MIN_MSS, MAX_MSS)? as u16)),
        Some(RawMss::Keyword(s)) => match s.as_str() {
            "auto" => Ok(MssClamp::Auto),
            "off" => Ok(MssClamp::Off),
            _ => Err(err(
                field,
                format!(
                    "{s:?} is neither \"auto\", \"off\" nor a number of bytes ({MIN_MSS}..={MAX_MSS})"
                ),
            )),
        },
    }
}

fn realm_name(s: &str, field: &str) -> Result<String, ConfigError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(err(
            field,
            format!("{s:?} is not a valid realm name (1-63 characters from A-Z a-z 0-9 - _ .)"),
        ))
    }
}

/// The realm's inside addresses: on its links (`prefixes`) or behind an inside router (`routes`).
struct InsideNet<'a> {
    prefixes: &'a [Ipv4Net],
    routes: &'a [Route],
}

impl InsideNet<'_> {
    /// An internal address of a 1:1 or static mapping must be reachable.
    fn check_reachable(&self, a: Ipv4Addr, field: &str) -> Result<(), ConfigError> {
        if on_link(self.prefixes, a) || self.routes.iter().any(|rt| rt.prefix.contains(a)) {
            Ok(())
        } else {
            Err(err(
                field,
                format!("internal address {a} is not inside the realm's prefixes or routes"),
            ))
        }
    }
}

fn on_link(prefixes: &[Ipv4Net], a: Ipv4Addr) -> bool {
    prefixes.iter().any(|n| n.contains(a))
}

/// The inside interface the realm is on: one declared as `[[inside]]`.
fn interface(s: Option<&str>, inside: &[InsideInterface], p: &str) -> Result<String, ConfigError> {
    let f = format!("{p}.interface");
    let interface = ifname(required(s, &f)?, &f)?;
    if !inside.iter().any(|x| x.name == interface) {
        return Err(err(
            f,
            format!("{interface:?} is not declared as an [[inside]] interface"),
        ));
    }
    Ok(interface)
}

/// The on-link prefixes: at least one, none overlapping another.
fn prefixes(raw: &[String], p: &str) -> Result<Vec<Ipv4Net>, ConfigError> {
    if raw.is_empty() {
        return Err(err(
            format!("{p}.prefixes"),
            "at least one prefix is required",
        ));
    }
    let mut prefixes: Vec<Ipv4Net> = Vec::with_capacity(raw.len());
    for (j, s) in raw.iter().enumerate() {
        let f = format!("{p}.prefixes[{j}]");
        let n = net(s, &f)?;
        if let Some(k) = prefixes.iter().position(|o| o.overlaps(&n)) {
            return Err(err(
                f,
                format!("{n} overlaps prefixes[{k}] ({})", prefixes[k]),
            ));
        }
        prefixes.push(n);
    }
    Ok(prefixes)
}

/// The inside gateway: on-link.
fn gateway(s: &str, prefixes: &[Ipv4Net], p: &str) -> Result<Ipv4Addr, ConfigError> {
    let f = format!("{p}.gateway");
    let g = unicast(s, &f)?;
    if !on_link(prefixes, g) {
        return Err(err(
            f,
            format!("{g} is not inside any of the realm's prefixes"),
        ));
    }
    Ok(g)
}

/// Routes to networks behind inside routers: off-link, not overlapping each other, via an
/// on-link next hop.
fn routes(raw: &[RawRoute], prefixes: &[Ipv4Net], p: &str) -> Result<Vec<Route>, ConfigError> {
    let mut routes: Vec<Route> = Vec::with_capacity(raw.len());
    for (j, rt) in raw.iter().enumerate() {
        let rp = format!("{p}.routes[{j}]");
        let f = format!("{rp}.prefix");
        let prefix = net(required(rt.prefix.as_deref(), &f)?, &f)?;
        if let Some(k) = prefixes.iter().position(|o| o.overlaps(&prefix)) {
            return Err(err(
                f,
                format!(
                    "{prefix} overlaps the on-link prefixes[{k}] ({})",
                    prefixes[k]
                ),
            ));
        }
        if let Some(k) = routes.iter().position(|o| o.prefix.overlaps(&prefix)) {
            return Err(err(
                f,
                format!("{prefix} overlaps routes[{k}] ({})", routes[k].prefix),
            ));
        }
        let f = format!("{rp}.via");
        let via = unicast(required(rt.via.as_deref(), &f)?, &f)?;
        if !on_link(prefixes, via) {
            return Err(err(
                f,
                format!(
                    "{via} is not inside any of the realm's prefixes (a next hop must be on-link)"
                ),
            ));
        }
        routes.push(Route { prefix, via });
    }
    Ok(routes)
}

/// The shared external addresses: no reserved block, no overlap within the realm.
fn pool(raw: &[String], p: &str) -> Result<Vec<AddrRange>, ConfigError> {
    let mut pool: Vec<AddrRange> = Vec::with_capacity(raw.len());
    let mut addrs = 0u64;
    for (j, s) in raw.iter().enumerate() {
        let f = format!("{p}.pool[{j}]");
        let range = AddrRange::from_str(s).map_err(|e| err(&f, e))?;
        if let Some(bad) = reserved_overlap(&range) {
            return Err(err(f, format!("{range} includes {bad} addresses")));
        }
        if let Some(k) = pool.iter().position(|o| ranges_overlap(o, &range)) {
            return Err(err(f, format!("{range} overlaps pool[{k}] ({})", pool[k])));
        }
        addrs += u64::from(range.len());
        if addrs > super::MAX_POOL {
            return Err(err(
                f,
                format!(
                    "{range} makes the pool {addrs} addresses; at most {} per realm (each \
                     needs about 48 KiB of port state per worker)",
                    super::MAX_POOL
                ),
            ));
        }
        pool.push(range);
    }
    Ok(pool)
}

/// 1:1 mappings: an external address outside the pool, to a reachable inside address, each used
/// once on either side. `name(key, j)` is entry j's key path (inline or in the mappings file).
fn one_to_one(
    raw: &[RawOneToOne],
    pool: &[AddrRange],
    inside_net: &InsideNet<'_>,
    name: &dyn Fn(&str, usize) -> String,
) -> Result<Vec<OneToOne>, ConfigError> {
    let mut one_to_one: Vec<OneToOne> = Vec::with_capacity(raw.len());
    // Lookups, not scans: a mappings file may hold many thousands.
    let mut by_ext = std::collections::HashMap::with_capacity(raw.len());
    let mut by_int = std::collections::HashMap::with_capacity(raw.len());
    for (j, m) in raw.iter().enumerate() {
        let mp = name("one_to_one", j);
        let f = format!("{mp}.external");
        let external = unicast(required(m.external.as_deref(), &f)?, &f)?;
        if let Some(k) = pool.iter().position(|o| o.contains(external)) {
            return Err(err(
                f,
                format!(
                    "{external} overlaps pool[{k}] ({}): a 1:1 address owns all its ports and cannot also be shared",
                    pool[k]
                ),
            ));
        }
        if let Some(k) = by_ext.insert(external, j) {
            return Err(err(
                f,
                format!("{external} is already used by {}", name("one_to_one", k)),
            ));
        }
        let f = format!("{mp}.internal");
        let internal = unicast(required(m.internal.as_deref(), &f)?, &f)?;
        inside_net.check_reachable(internal, &f)?;
        if let Some(k) = by_int.insert(internal, j) {
            return Err(err(
                f,
                format!("{internal} is already mapped by {}", name("one_to_one", k)),
            ));
        }
        one_to_one.push(OneToOne { external, internal });
    }
    Ok(one_to_one)
}

/// Static port forwards: from a pool address to a reachable inside endpoint, one mapping per
/// (protocol, inside endpoint).
fn static_mappings(
    raw: &[RawStatic],
    pool: &[AddrRange],
    inside_net: &InsideNet<'_>,
    name: &dyn Fn(&str, usize) -> String,
) -> Result<Vec<StaticMapping>, ConfigError> {
    let mut static_mappings: Vec<StaticMapping> = Vec::with_capacity(raw.len());
    // By (protocol, internal endpoint): a lookup, not a scan, so large tables check fast.
    let mut seen = std::collections::HashMap::with_capacity(raw.len());
    for (j, s) in raw.iter().enumerate() {
        let sp = name("static", j);
        let f = format!("{sp}.protocol");
        let protocol = choice(required(s.protocol.as_deref(), &f)?, &f, &PROTOCOLS)?;
        let f = format!("{sp}.external");
        let external = socket(required(s.external.as_deref(), &f)?, &f)?;
        if !pool.iter().any(|o| o.contains(*external.ip())) {
            return Err(err(
                f,
                format!("{} is not one of the realm's pool addresses", external.ip()),
            ));
        }
        let f = format!("{sp}.internal");
        let internal = socket(required(s.internal.as_deref(), &f)?, &f)?;
        inside_net.check_reachable(*internal.ip(), &f)?;
        // Outbound packets from a statically mapped endpoint use its mapping; two mappings for
        // one internal endpoint would make that choice ambiguous.
        if let Some(k) = seen.insert((protocol, internal), j) {
            return Err(err(
                f,
                format!(
                    "{protocol} {internal} is already mapped by {}",
                    name("static", k)
                ),
            ));
        }
        static_mappings.push(StaticMapping {
            protocol,
            external,
            internal,
        });
    }
    Ok(static_mappings)
}

fn build_ports(r: RawPorts, p: &str) -> Result<Ports, ConfigError> {
    let policy = match r.policy.as_deref() {
        None => PortPolicy::PreserveThenRandom,
        Some(s) => choice(s, &format!("{p}.ports.policy"), &PORT_POLICIES)?,
    };
    let range = match r.range.as_deref() {
        None => DEFAULT_PORT_RANGE,
        Some(s) => port_range(s, &format!("{p}.ports.range"))?,
    };
    let per_host_limit = int_in(
        r.per_host_limit.unwrap_or(DEFAULT_PER_HOST_LIMIT),
        &format!("{p}.ports.per_host_limit"),
        1,
        65535,
    )? as u32;
    Ok(Ports {
        policy,
        range,
        per_host_limit,
    })
}

fn build_limits(r: RawLimits, p: &str) -> Result<Limits, ConfigError> {
    let per_host_sessions = int_in(
        r.per_host_sessions.unwrap_or(DEFAULT_PER_HOST_SESSIONS),
        &format!("{p}.limits.per_host_sessions"),
        1,
        MAX_SESSIONS,
    )? as u32;
    let inbound_per_mapping = int_in(
        r.inbound_per_mapping.unwrap_or(DEFAULT_INBOUND_PER_MAPPING),
        &format!("{p}.limits.inbound_per_mapping"),
        1,
        MAX_SESSIONS,
    )? as u32;
    Ok(Limits {
        per_host_sessions,
        inbound_per_mapping,
    })
}

fn build_timeouts(r: RawTimeouts, p: &str) -> Result<Timeouts, ConfigError> {
    let given = [r.udp, r.tcp_established, r.tcp_transitory, r.icmp];
    let rfc = [
        "RFC 4787 REQ-5",
        "RFC 5382 REQ-5",
        "RFC 5382 REQ-5",
        "RFC 5508 REQ-1",
    ];
    let mut v = [0u32; 4];
    for (j, (key, min, default)) in TIMEOUTS.iter().enumerate() {
        let f = format!("{p}.timeouts.{key}");
        let t = given[j].unwrap_or(*default);
        if t < *min {
            return Err(err(
                f,
                format!(
                    "{t} s is below the minimum of {min} s required by {}",
                    rfc[j]
                ),
            ));
        }
        v[j] = int_in(t, &f, *min, MAX_TIMEOUT)? as u32;
    }
    Ok(Timeouts {
        udp: v[0],
        tcp_established: v[1],
        tcp_transitory: v[2],
        icmp: v[3],
    })
}

fn ranges_overlap(a: &AddrRange, b: &AddrRange) -> bool {
    a.first <= b.last && b.first <= a.last
}

/// Address blocks that can never be a NAT external address.
fn reserved_overlap(r: &AddrRange) -> Option<&'static str> {
    const RESERVED: [(u32, u32, &str); 3] = [
        (0x0000_0000, 0x00FF_FFFF, "0.0.0.0/8 (this network)"),
        (0x7F00_0000, 0x7FFF_FFFF, "127.0.0.0/8 (loopback)"),
        (
            0xE000_0000,
            0xFFFF_FFFF,
            "224.0.0.0/3 (multicast, reserved or broadcast)",
        ),
    ];
    let (f, l) = (u32::from(r.first), u32::from(r.last));
    RESERVED
        .iter()
        .find(|(a, b, _)| f <= *b && *a <= l)
        .map(|(_, _, n)| *n)
}
