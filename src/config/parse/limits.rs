//! `[sessions]` and `[fragments]`: how much state a worker may hold.

use super::raw::{RawFragments, RawSessions};
use super::values::int_in;
use crate::config::ConfigError;
use crate::config::model::{Fragments, Sessions};

const DEFAULT_SESSIONS_PER_CORE: i64 = 262_144;
const DEFAULT_FRAG_DATAGRAMS: i64 = 4096;
const DEFAULT_FRAG_HELD: i64 = 1024;
const DEFAULT_FRAG_TIMEOUT: i64 = 2;

pub(super) fn build_sessions(r: RawSessions) -> Result<Sessions, ConfigError> {
    let f = "sessions.capacity_per_core";
    let v = int_in(
        r.capacity_per_core.unwrap_or(DEFAULT_SESSIONS_PER_CORE),
        f,
        1024,
        1 << 26,
    )?;
    Ok(Sessions {
        capacity_per_core: v as u32,
    })
}

pub(super) fn build_fragments(r: RawFragments) -> Result<Fragments, ConfigError> {
    let max_datagrams = int_in(
        r.max_datagrams.unwrap_or(DEFAULT_FRAG_DATAGRAMS),
        "fragments.max_datagrams",
        1,
        1 << 20,
    )? as u32;
    let max_held = int_in(
        r.max_held.unwrap_or(DEFAULT_FRAG_HELD),
        "fragments.max_held",
        0,
        1 << 16,
    )? as u32;
    let timeout = int_in(
        r.timeout.unwrap_or(DEFAULT_FRAG_TIMEOUT),
        "fragments.timeout",
        1,
        60,
    )? as u32;
    Ok(Fragments {
        max_datagrams,
        max_held,
        timeout,
    })
}
