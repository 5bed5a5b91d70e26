//! `[control]`: defaults, the token rule for listeners reachable from elsewhere, the socket
//! path and group, and the limits' bounds.

use super::util::{doc, ok, rejects};
use crate::config::parse;
use std::path::PathBuf;

fn control(keys: &str) -> String {
    doc("", &format!("[control]\n{keys}"))
}

#[test]
fn defaults() {
    let c = ok(&doc("", "")).control;
    assert_eq!(c.listen, "127.0.0.1:9180".parse().unwrap());
    assert_eq!(c.socket, PathBuf::from("/run/natgw/natgw.sock"));
    assert_eq!((c.socket_group, c.token_file), (None, None));
    assert_eq!(c.max_connections, 64);
    assert_eq!((c.max_header_bytes, c.max_body_bytes), (16384, 1 << 20));
    assert_eq!((c.request_timeout, c.idle_timeout), (10, 30));
}

#[test]
fn every_key_round_trips() {
    let c = ok(&control(
        "listen = \"0.0.0.0:9180\"\nsocket = \"/var/run/gw/api.sock\"\n\
         socket_group = \"natgw\"\ntoken_file = \"/etc/natgw/token\"\nmax_connections = 8\n\
         max_header_bytes = 8192\nmax_body_bytes = 1024\nrequest_timeout = 3\nidle_timeout = 5",
    ));
    let ct = &c.control;
    assert_eq!(ct.socket_group.as_deref(), Some("natgw"));
    assert_eq!(ct.token_file, Some(PathBuf::from("/etc/natgw/token")));
    assert_eq!((ct.max_connections, ct.request_timeout), (8, 3));
    assert_eq!(parse(&c.to_toml()), Ok(c));
}

#[test]
fn non_loopback_listen_needs_a_token_file() {
    for addr in ["0.0.0.0:9180", "192.168.1.2:9180", "[::]:9180"] {
        rejects(
            &control(&format!("listen = \"{addr}\"")),
            "control.listen",
            "not a loopback address: set control.token_file",
        );
    }
    ok(&control("listen = \"127.0.0.2:9180\""));
    ok(&control("listen = \"[::1]:9180\""));
    ok(&control(
        "listen = \"0.0.0.0:9180\"\ntoken_file = \"/etc/natgw/token\"",
    ));
}

#[test]
fn paths_and_group() {
    rejects(
        &control("token_file = \"token\""),
        "control.token_file",
        "not an absolute path",
    );
    rejects(
        &control("token_file = \"\""),
        "control.token_file",
        "must not be empty",
    );
    rejects(
        &control("socket = \"natgw.sock\""),
        "control.socket",
        "not an absolute file path",
    );
    rejects(
        &control(&format!("socket = \"/{}\"", "s".repeat(120))),
        "control.socket",
        "at most 107",
    );
    rejects(
        &control("socket_group = \"a b\""),
        "control.socket_group",
        "not a group name",
    );
    ok(&control("socket_group = \"1001\""));
}

#[test]
fn limits() {
    for (key, bad, reason) in [
        ("max_connections", "0", "out of range 1..=4096"),
        ("max_header_bytes", "4096", "out of range 8192..=1048576"),
        ("max_body_bytes", "100", "out of range 1024..=67108864"),
        ("request_timeout", "0", "out of range 1..=300"),
        ("idle_timeout", "0", "out of range 1..=3600"),
    ] {
        rejects(
            &control(&format!("{key} = {bad}")),
            &format!("control.{key}"),
            reason,
        );
    }
    rejects(
        &control("max_conections = 1"),
        "control.max_conections",
        "unknown",
    );
}
