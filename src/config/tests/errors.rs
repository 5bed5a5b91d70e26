//! How errors are reported: syntax errors and unknown keys with the key path they concern, missing
//! required keys, the realm an error names, unreadable files, `Display`.

use super::util::*;
use crate::config::*;
use std::path::Path;

#[test]
fn syntax_and_unknown_keys() {
    rejects("[outside\n", "outside", "unclosed table");
    rejects("x = [1,\n", "x", "line");
    rejects("= 1", "syntax", "line 1");
    rejects("[outside]\nfoo = ", "outside.foo", "line 2");
    rejects(&doc("pool = []", ""), "realm[0].pool", "duplicate key");
    rejects(
        &format!("{HEAD}{REALM_A}{REALM_A}\nname = \"c\""),
        "realm[1].name",
        "duplicate key",
    );
    rejects(&doc("", "[outside]"), "outside", "duplicate key");
    rejects(
        &doc("", "bogus = 1"),
        "realm[0].bogus",
        "unknown field `bogus`",
    );
    rejects(
        &format!("top = 1\n{HEAD}{REALM_A}"),
        "top",
        "unknown field `top`",
    );
    rejects(
        &doc("", "[outside2]"),
        "outside2",
        "unknown field `outside2`",
    );
    rejects(
        &doc(
            "",
            "[dataplane]\nworkers = [{ core = 1, queue = 0, bogus = 2 }]",
        ),
        "dataplane.workers[0].bogus",
        "unknown field `bogus`",
    );
    rejects(
        &doc("", "[realm.ports]\npolicyx = 1"),
        "realm[0].ports.policyx",
        "unknown field `policyx`",
    );
    rejects(
        &doc("", "[realm.timeouts]\ntcp = 7440"),
        "realm[0].timeouts.tcp",
        "unknown field `tcp`",
    );
    rejects(
        &format!("{HEAD}{REALM_A}{REALM_A}\nfoo = 1"),
        "realm[1].foo",
        "unknown field `foo`",
    );
    rejects(
        &doc(
            "routes = [{ prefix = \"10.1.0.0/16\", gw = \"10.0.0.9\" }]",
            "",
        ),
        "realm[0].routes[0].gw",
        "unknown field `gw`",
    );
    rejects(&doc("vlan = \"x\"", ""), "realm[0].vlan", "invalid type");
    rejects(&doc("vlan = 1.5", ""), "realm[0].vlan", "invalid type");
    rejects(
        &doc("hairpinning = 1", ""),
        "realm[0].hairpinning",
        "invalid type",
    );
    rejects(
        &doc("", "[inside]\ninterface = \"eth0\""),
        "inside",
        "duplicate key",
    );
}

#[test]
fn missing_required_keys() {
    rejects(REALM_A, "outside", "required");
    rejects(
        &doc("", "").replace("address = \"192.168.1.2\"\n", ""),
        "outside.address",
        "required",
    );
    rejects(
        &doc("", "").replace("gateway = \"192.168.1.1\"\n", ""),
        "outside.gateway",
        "required",
    );
    rejects(
        &doc("", "").replace("name = \"a\"\n", ""),
        "realm[0].name",
        "required",
    );
    rejects(&doc("", "[[inside]]"), "inside[2].interface", "required");
    rejects(
        &doc(
            "static = [{ external = \"192.168.1.10:1\", internal = \"10.0.0.2:1\" }]",
            "",
        ),
        "realm[0].static[0].protocol",
        "required",
    );
    rejects(
        &doc("", "[dataplane]\nworkers = [{ core = 1 }]"),
        "dataplane.workers[0].queue",
        "required",
    );
}

#[test]
fn errors_name_the_right_realm() {
    let text = format!(
        "{HEAD}{REALM_A}[[realm]]\nname = \"b\"\ninterface = \"eth2\"\nprefixes = [\"10.0.0.0/24\"]\npool = [\"192.168.1.11\"]\n[realm.timeouts]\nudp = 30\n"
    );
    rejects(&text, "realm[1].timeouts.udp", "RFC 4787");
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
