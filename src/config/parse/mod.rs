//! TOML text to a validated [`Config`].
//!
//! Two stages: serde reads the text into private `Raw*` structs that mirror the file (every key
//! optional, every value in its loosest TOML type, unknown keys rejected), then `build` converts
//! and validates them, so every semantic error carries the exact key path of the offending value
//! (`realm[1].static[0].external`), and required-key errors use the same paths as the others.
//!
//! - `raw`: the file as serde reads it;
//! - `toml_error`: serde's errors, with the key path found from their spans;
//! - `values`: scalar values (addresses, prefixes, ranges, ports, names, bounded integers);
//! - `interfaces`, `dataplane`, `limits`, `control`, `realm`: one builder per section;
//! - `checks`: what needs more than one section or realm.

mod checks;
mod control;
mod dataplane;
mod eventlog;
mod interfaces;
mod limits;
mod raw;
mod realm;
mod toml_error;
mod values;

use super::ConfigError;
use super::model::Config;
use raw::RawConfig;
use values::required;

/// Where realms' `mappings_file`s are read from: relative names are resolved against `base`
/// (the configuration file's directory), and `read` returns a file's text (the file system at
/// start and on reload; the API's edited tables when it validates an edit).
pub(crate) struct Files<'a> {
    pub(crate) base: &'a std::path::Path,
    pub(crate) read: &'a mut dyn FnMut(&std::path::Path) -> std::io::Result<String>,
}

pub(super) fn parse(text: &str, files: &mut Files<'_>) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| toml_error::serde_error(text, &e))?;
    build(raw, files)
}

/// A mappings file's text as its `static` and `one_to_one` lists; errors name the file
/// (`mappings-office.toml: static[3].protocol`).
fn parse_mappings_file(name: &str, text: &str) -> Result<raw::RawMappingsFile, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let e = toml_error::serde_error(text, &e);
        err(format!("{name}: {}", e.field), e.reason)
    })
}

/// Inside interfaces are numbered in a byte (`Ingress::Inside`).
pub(super) const MAX_INSIDE: usize = 256;
/// Realms: far more than (interface, VLAN) pairs anyone uses; ids stay well inside u16.
pub(super) const MAX_REALMS: usize = 4096;
/// Pool addresses per realm: indexed in 16 bits (`ExtAddr::Pool`, host pairing); each costs
/// about 48 KiB of port allocator per core.
pub(super) const MAX_POOL: u64 = 65_536;
/// Static mappings and 1:1 mappings, each counted over all realms: a mappings file holds
/// large tables (100k port forwards are measured in bench/README.md); each costs a rule and
/// an inbound-limit slot per core.
pub(super) const MAX_MAPPINGS: usize = 262_144;

fn err(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        reason: reason.into(),
    }
}

/// Section by section (outside, inside, dataplane, sessions, fragments, control, realms), then
/// the checks across them; the first error wins.
fn build(raw: RawConfig, files: &mut Files<'_>) -> Result<Config, ConfigError> {
    let outside = interfaces::build_outside(required(raw.outside, "outside")?)?;
    let inside = interfaces::build_inside(&raw.inside, &outside)?;
    let dataplane = dataplane::build_dataplane(raw.dataplane.unwrap_or_default())?;
    let sessions = limits::build_sessions(raw.sessions.unwrap_or_default())?;
    let fragments = limits::build_fragments(raw.fragments.unwrap_or_default())?;
    let control = control::build_control(raw.control.unwrap_or_default())?;
    let eventlog = eventlog::build_eventlog(raw.eventlog.unwrap_or_default())?;

    if raw.realm.is_empty() {
        return Err(err("realm", "at least one [[realm]] is required"));
    }
    if raw.realm.len() > MAX_REALMS {
        return Err(err(
            "realm",
            format!(
                "{} realms; at most {MAX_REALMS} are supported",
                raw.realm.len()
            ),
        ));
    }
    let mut realms = Vec::with_capacity(raw.realm.len());
    for (i, r) in raw.realm.into_iter().enumerate() {
        let realm = realm::build_realm(i, r, &inside, files)?;
        checks::check_against_earlier(i, &realm, &realms)?;
        realms.push(realm);
    }
    checks::check_externals(&outside, &realms)?;
    checks::check_statics(&realms)?;
    checks::check_mapping_counts(&realms)?;
    eventlog::check_outputs(&eventlog, &realms)?;

    Ok(Config {
        outside,
        inside,
        dataplane,
        sessions,
        fragments,
        control,
        eventlog,
        realms,
    })
}
