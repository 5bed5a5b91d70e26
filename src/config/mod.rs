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

/// Parses and validates a configuration from TOML text.
pub fn parse(text: &str) -> Result<Config, ConfigError> {
    parse::parse(text)
}

/// Reads and parses a configuration file. A file that cannot be read is reported with the field
/// `file`.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
        field: "file".to_string(),
        reason: format!("{}: {e}", path.display()),
    })?;
    parse(&text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn examples() -> Vec<PathBuf> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
        let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "toml"))
            .collect();
        files.sort();
        files
    }

    #[test]
    fn every_example_parses_and_round_trips() {
        let files = examples();
        let names: Vec<String> = files
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        for want in [
            "lab.toml",
            "minimal.toml",
            "multi-tenant.toml",
            "port-forward.toml",
        ] {
            assert!(names.iter().any(|n| n == want), "missing example {want}");
        }
        for f in &files {
            let c = load(f).unwrap_or_else(|e| panic!("{}: {e}", f.display()));
            let text = c.to_toml();
            assert_eq!(parse(&text), Ok(c), "{} round trip:\n{text}", f.display());
        }
    }

    #[test]
    fn multi_tenant_example_shares_prefixes() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples/multi-tenant.toml");
        let c = load(&path).unwrap();
        assert_eq!(c.realms.len(), 2);
        assert_eq!(c.realms[0].prefixes, c.realms[1].prefixes);
        assert_eq!(c.realms[0].interface, c.realms[1].interface);
        assert_ne!(c.realms[0].vlan, c.realms[1].vlan);
    }

    #[test]
    fn docs_example_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/config.md");
        let md = std::fs::read_to_string(path).unwrap();
        let start = md
            .find("```toml\n")
            .expect("a toml block in docs/config.md")
            + 8;
        let len = md[start..].find("```").unwrap();
        let c = parse(&md[start..start + len]).unwrap_or_else(|e| panic!("docs example: {e}"));
        assert_eq!(c.realms[0].timeouts.udp, 600);
        assert_eq!(parse(&c.to_toml()), Ok(c));
    }

    #[test]
    fn load_missing_file() {
        let e = load(Path::new("/nonexistent/natgw.toml")).unwrap_err();
        assert_eq!(e.field, "file");
        assert!(e.reason.contains("/nonexistent/natgw.toml"), "{e}");
    }

    #[test]
    fn error_display() {
        let e = ConfigError {
            field: "realm[0].pool[1]".into(),
            reason: "bad".into(),
        };
        assert_eq!(e.to_string(), "realm[0].pool[1]: bad");
    }
}
