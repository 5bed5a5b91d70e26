//! The shipped example files and the example in docs/config.md parse, and round-trip through
//! `to_toml`.

use super::util::*;
use crate::config::*;
use std::path::Path;

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
