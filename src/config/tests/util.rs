//! Shared fixtures: a valid head (outside and two inside interfaces), one realm, a document built
//! from them with extra keys, and the accept/reject assertions.

use crate::config::{Config, parse};
use std::path::{Path, PathBuf};

pub const HEAD: &str = r#"
[outside]
interface = "eth1"
address = "192.168.1.2"
gateway = "192.168.1.1"

[[inside]]
interface = "eth0"

[[inside]]
interface = "eth2"
"#;

pub const REALM_A: &str = r#"
[[realm]]
name = "a"
interface = "eth0"
prefixes = ["10.0.0.0/24"]
pool = ["192.168.1.10"]
"#;

pub fn ok(text: &str) -> Config {
    parse(text).unwrap_or_else(|e| panic!("rejected: {e}\n{text}"))
}

#[track_caller]
pub fn rejects(text: &str, field: &str, reason: &str) {
    match parse(text) {
        Ok(_) => panic!("accepted, expected {field}: ...{reason}...\n{text}"),
        Err(e) => {
            assert_eq!(e.field, field, "wrong field in {e}");
            assert!(
                e.reason.contains(reason),
                "reason {:?} lacks {reason:?}",
                e.reason
            );
        }
    }
}

/// HEAD, realm "a" with `extra` appended to its table, then `tail`.
pub fn doc(extra: &str, tail: &str) -> String {
    format!("{HEAD}{REALM_A}{extra}\n{tail}")
}

pub fn examples() -> Vec<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    files
}
