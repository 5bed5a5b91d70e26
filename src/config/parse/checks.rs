//! Checks across sections and realms: a realm's name and (interface, VLAN) are unique, every
//! external address belongs to one realm and is none of natgw's own outside addresses, and an
//! external (protocol, address, port) forwards to one inside endpoint.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4};

use super::err;
use crate::config::ConfigError;
use crate::config::model::{AddrRange, MappingsFile, OutsideInterface, Protocol, Realm};

/// Checks that need the realms before this one: names and (interface, VLAN) must be unique.
pub(super) fn check_against_earlier(
    i: usize,
    r: &Realm,
    earlier: &[Realm],
) -> Result<(), ConfigError> {
    if let Some(k) = earlier.iter().position(|o| o.name == r.name) {
        return Err(err(
            format!("realm[{i}].name"),
            format!("duplicate realm name {:?} (also realm[{k}])", r.name),
        ));
    }
    if let Some(k) = earlier
        .iter()
        .position(|o| o.interface == r.interface && o.vlan == r.vlan)
    {
        let (field, what) = match r.vlan {
            Some(v) => (format!("realm[{i}].vlan"), format!("VLAN {v}")),
            None => (format!("realm[{i}].interface"), "untagged".to_string()),
        };
        return Err(err(
            field,
            format!(
                "realm[{k}] ({:?}) already uses interface {:?} {what}: a realm is identified by its (interface, vlan) pair",
                earlier[k].name, r.interface
            ),
        ));
    }
    Ok(())
}

struct External {
    realm: usize,
    field: String,
    range: AddrRange,
}

fn externals(realms: &[Realm]) -> Vec<External> {
    let mut out = Vec::new();
    for (i, r) in realms.iter().enumerate() {
        for (j, range) in r.pool.iter().enumerate() {
            out.push(External {
                realm: i,
                field: format!("realm[{i}].pool[{j}]"),
                range: *range,
            });
        }
        for (j, m) in r.one_to_one.iter().enumerate() {
            out.push(External {
                realm: i,
                field: format!(
                    "{}.external",
                    MappingsFile::field(r.mappings_file.as_ref(), i, "one_to_one", j)
                ),
                range: AddrRange {
                    first: m.external,
                    last: m.external,
                },
            });
        }
    }
    out
}

/// Inbound traffic is steered to a realm by its destination address, so every external address
/// belongs to exactly one realm and never to natgw itself.
pub(super) fn check_externals(
    outside: &OutsideInterface,
    realms: &[Realm],
) -> Result<(), ConfigError> {
    let mut ext = externals(realms);
    // Sorted by first address, any overlap shows up against the entry reaching furthest so far.
    // Report the later entry in document order so the message points at what was added last.
    ext.sort_by_key(|e| u32::from(e.range.first));
    let mut reach: Option<usize> = None;
    for (n, e) in ext.iter().enumerate() {
        if let Some(m) = reach {
            let o = &ext[m];
            if o.range.last >= e.range.first {
                // Within one realm the per-realm checks already caught overlaps.
                let (a, b) = if (o.realm, &o.field) < (e.realm, &e.field) {
                    (o, e)
                } else {
                    (e, o)
                };
                return Err(err(
                    &b.field,
                    format!(
                        "{} overlaps {} ({}): an external address may belong to only one realm",
                        b.range, a.field, a.range
                    ),
                ));
            }
            if e.range.last > o.range.last {
                reach = Some(n);
            }
        } else {
            reach = Some(n);
        }
    }
    let owner = |a: Ipv4Addr| ext.iter().find(|e| e.range.contains(a));
    for (field, a) in [
        ("outside.address".to_string(), outside.address),
        ("outside.gateway".to_string(), outside.gateway),
    ]
    .into_iter()
    .chain(
        outside
            .management
            .iter()
            .enumerate()
            .map(|(j, a)| (format!("outside.management[{j}]"), *a)),
    ) {
        if let Some(e) = owner(a) {
            return Err(err(
                field,
                format!("{a} is also a NAT external address ({})", e.field),
            ));
        }
    }
    Ok(())
}

/// One external (protocol, address, port) forwards to one inside endpoint, whatever the realm.
pub(super) fn check_statics(realms: &[Realm]) -> Result<(), ConfigError> {
    let total = realms.iter().map(|r| r.static_mappings.len()).sum();
    // (realm, entry) of the first forward of each key; key paths are written only for an error.
    let mut seen: HashMap<(Protocol, SocketAddrV4), (usize, usize)> = HashMap::with_capacity(total);
    let name =
        |i: usize, j: usize| MappingsFile::field(realms[i].mappings_file.as_ref(), i, "static", j);
    for (i, r) in realms.iter().enumerate() {
        for (j, s) in r.static_mappings.iter().enumerate() {
            if let Some(&(pi, pj)) = seen.get(&(s.protocol, s.external)) {
                return Err(err(
                    format!("{}.external", name(i, j)),
                    format!(
                        "{} {} is already forwarded by {}",
                        s.protocol,
                        s.external,
                        name(pi, pj)
                    ),
                ));
            }
            seen.insert((s.protocol, s.external), (i, j));
        }
    }
    Ok(())
}

/// Static and 1:1 mappings are indexed and counted per core: bounded over all realms.
pub(super) fn check_mapping_counts(realms: &[Realm]) -> Result<(), ConfigError> {
    let (mut statics, mut ones) = (0usize, 0usize);
    for (i, r) in realms.iter().enumerate() {
        statics += r.static_mappings.len();
        ones += r.one_to_one.len();
        for (n, key) in [(statics, "static"), (ones, "one_to_one")] {
            if n > super::MAX_MAPPINGS {
                return Err(err(
                    format!("realm[{i}].{key}"),
                    format!(
                        "{n} {key} mappings over all realms; at most {} are supported",
                        super::MAX_MAPPINGS
                    ),
                ));
            }
        }
    }
    Ok(())
}
