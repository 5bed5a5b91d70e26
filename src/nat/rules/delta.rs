//! What a reload changes in the mappings, computed once by the management thread when it
//! compiles the new rules against the running ones (`Rules::reload`), so that a worker
//! applying them does work in proportion to the changes, not to the size of the tables.
//!
//! At 100k static port forwards the comparison of the two lists (a lookup of every forward
//! of each list in the other rules) is tens of milliseconds: done by a worker between two
//! batches it was a forwarding gap long enough to overflow the receive ring
//! (bench/README.md, "Mapping tables at scale"). The rules are shared by every worker, and
//! so is this: the changes are the same for all of them.

use super::{ExtAddr, Rules, StaticRule};
use std::sync::atomic::{AtomicU64, Ordering};

/// Every compiled `Rules` gets the next serial, so a delta names the exact rules it was
/// computed against (two compilations of one file are two rules).
static SERIAL: AtomicU64 = AtomicU64::new(1);

pub(super) fn next_serial() -> u64 {
    SERIAL.fetch_add(1, Ordering::Relaxed)
}

/// The changes from the rules with serial `from` to the rules that hold this.
#[derive(Debug, Default)]
pub struct Delta {
    /// The serial of the rules this was computed against. A worker whose running rules are
    /// other ones (it missed a reload that failed half-way) compares the lists itself.
    pub from: u64,
    /// Indexes in the new `statics` of the forwards the old rules do not have (the same
    /// forward: both ends and the realm).
    pub added: Vec<u32>,
    /// The old rules' forwards the new ones do not have.
    pub removed: Vec<StaticRule>,
    /// Whether a session or mapping may have lost what it was made through
    /// ([`removes_anything`]): the store then walks its table.
    pub removes_anything: bool,
}

impl Delta {
    /// Compares `old` with `new`: O(static and 1:1 mappings + realms * (prefixes + pool)),
    /// on the management thread.
    pub fn between(old: &Rules, new: &Rules) -> Delta {
        let added: Vec<u32> = new
            .statics
            .iter()
            .enumerate()
            .filter(|(_, s)| !has_static(old, s))
            .map(|(i, _)| i as u32)
            .collect();
        let removed: Vec<StaticRule> = old
            .statics
            .iter()
            .filter(|s| !has_static(new, s))
            .cloned()
            .collect();
        let removes_anything = !removed.is_empty()
            || added
                .iter()
                .any(|&i| on_pool_address(new, &new.statics[i as usize]))
            || realm_or_one_to_one_lost(old, new);
        Delta {
            from: old.serial,
            added,
            removed,
            removes_anything,
        }
    }

    /// Changes of the static forwards (added plus removed).
    pub fn static_changes(&self) -> usize {
        self.added.len() + self.removed.len()
    }
}

/// Whether `rules` has static mapping `s` (the same forward: both ends and the realm).
pub(crate) fn has_static(rules: &Rules, s: &StaticRule) -> bool {
    rules
        .static_by_ext(s.proto, s.ext_addr, s.ext_port)
        .is_some_and(|n| n == s)
}

/// A new forward on a pool address: a dynamic mapping may hold its port.
fn on_pool_address(rules: &Rules, s: &StaticRule) -> bool {
    matches!(rules.ext_addr(s.ext_addr), Some(ExtAddr::Pool { .. }))
}

/// Whether going from `old` to `new` may leave a session or mapping without what it was
/// made through (see `Store::belongs`), so that the table must be walked. Additions never
/// do, except a port forward on a pool address (a dynamic mapping may hold its port).
/// O(realms * (prefixes + pool) + static and 1:1 mappings).
pub(crate) fn removes_anything(old: &Rules, new: &Rules) -> bool {
    realm_or_one_to_one_lost(old, new)
        || old.statics.iter().any(|s| !has_static(new, s))
        || new
            .statics
            .iter()
            .any(|s| !has_static(old, s) && on_pool_address(new, s))
}

/// A realm, a realm's prefix or pool address, or a 1:1 mapping that `new` lost.
fn realm_or_one_to_one_lost(old: &Rules, new: &Rules) -> bool {
    let realm_lost = old.realms.iter().filter(|o| !o.retired).any(|o| {
        let Some(n) = new
            .realms
            .get(o.id as usize)
            .filter(|n| !n.retired && n.name == o.name)
        else {
            return true;
        };
        o.prefixes.iter().any(|p| !n.prefixes.contains(p))
            || o.pool.iter().any(
                |a| !matches!(new.ext_addr(*a), Some(ExtAddr::Pool { realm, .. }) if realm == o.id),
            )
    });
    realm_lost
        || old.one_to_one.iter().any(|o| {
            new.one_to_one_by_in(o.realm, o.in_addr)
                .is_none_or(|n| n.ext_addr != o.ext_addr)
        })
}
