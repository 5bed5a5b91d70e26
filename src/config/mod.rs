//! Configuration: one TOML file turned into a validated [`Config`].
//!
//! [`parse`] fills every default and rejects inconsistent input with a [`ConfigError`] naming
//! the offending key as a path (`realm[1].static[0].external`, indices counting from 0 in file
//! order). [`Config::to_toml`] writes the effective configuration back out. The format is
//! described in `docs/config.md`.

mod display;
mod model;
mod parse;

pub use model::*;

use std::fmt;
use std::path::Path;

/// Why a configuration was rejected: `field` is the key path, `reason` says what is wrong.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for ConfigError {}

/// Parses and validates a configuration from TOML text. Relative `mappings_file` names are
/// read from the current directory.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    parse_with(text, Path::new(""), &mut |p| std::fs::read_to_string(p))
}

/// Parses and validates a configuration whose relative `mappings_file` names are resolved
/// against `base`, reading each file through `read` (the API validates an edited table this
/// way, exactly as a reload of the files would).
pub fn parse_with(
    text: &str,
    base: &Path,
    read: &mut dyn FnMut(&Path) -> std::io::Result<String>,
) -> Result<Config, ConfigError> {
    parse::parse(text, &mut parse::Files { base, read })
}

/// Reads and parses a configuration file and the mappings files it names (relative to its
/// directory). A file that cannot be read is reported with the field `file`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        field: "file".to_string(),
        reason: format!("{}: {e}", path.display()),
    })?;
    parse_with(&text, base_dir(path), &mut |p| std::fs::read_to_string(p))
}

/// The directory relative `mappings_file` names of the configuration at `path` are read from.
pub fn base_dir(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new(""))
}

#[cfg(test)]
mod tests;
