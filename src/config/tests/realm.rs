//! A realm's structure: identity, prefixes, gateway, routes, pool, port allocation and timeouts.

use super::util::*;
use crate::config::*;

#[test]
fn realm_structure() {
    rejects(HEAD, "realm", "at least one [[realm]]");
    rejects(
        &format!(
            "{HEAD}{REALM_A}{}",
            REALM_A
                .replace("192.168.1.10", "192.168.1.11")
                .replace("eth0", "eth2")
        ),
        "realm[1].name",
        "duplicate realm name \"a\" (also realm[0])",
    );
    rejects(
        &doc("", "").replace(
            "interface = \"eth0\"\nprefixes",
            "interface = \"eth9\"\nprefixes",
        ),
        "realm[0].interface",
        "not declared as an [[inside]] interface",
    );
    let second = "[[realm]]\nname = \"b\"\ninterface = \"eth0\"\nprefixes = [\"10.0.0.0/24\"]\npool = [\"192.168.1.11\"]\n";
    rejects(
        &doc("", second),
        "realm[1].interface",
        "realm[0] (\"a\") already uses interface \"eth0\" untagged",
    );
    rejects(
        &doc("vlan = 5", &format!("{second}vlan = 5")),
        "realm[1].vlan",
        "already uses interface \"eth0\" VLAN 5",
    );
    // The same VLAN on different interfaces is a different realm.
    ok(&doc(
        "vlan = 5",
        &format!("{second}vlan = 5").replace("\"eth0\"", "\"eth2\""),
    ));
    rejects(
        &doc("vlan = 0", ""),
        "realm[0].vlan",
        "out of range 1..=4094",
    );
    rejects(
        &doc("vlan = 4095", ""),
        "realm[0].vlan",
        "out of range 1..=4094",
    );
    rejects(
        &doc("", "").replace("prefixes = [\"10.0.0.0/24\"]\n", ""),
        "realm[0].prefixes",
        "at least one prefix",
    );
    rejects(
        &doc("", "").replace(
            "prefixes = [\"10.0.0.0/24\"]",
            "prefixes = [\"10.0.0.0/16\", \"10.0.5.0/24\"]",
        ),
        "realm[0].prefixes[1]",
        "10.0.5.0/24 overlaps prefixes[0] (10.0.0.0/16)",
    );
    rejects(
        &doc("gateway = \"10.0.1.1\"", ""),
        "realm[0].gateway",
        "not inside any of the realm's prefixes",
    );
    rejects(
        &doc("", "").replace("pool = [\"192.168.1.10\"]", "pool = []"),
        "realm[0].pool",
        "at least one pool entry",
    );
}

#[test]
fn realms_may_share_inside_prefixes() {
    let c = ok(&format!(
        r#"{HEAD}
[[realm]]
name = "a"
interface = "eth0"
vlan = 100
prefixes = ["10.0.0.0/24", "10.9.0.0/16"]
gateway = "10.0.0.1"
pool = ["192.168.1.10"]
static = [{{ protocol = "tcp", external = "192.168.1.10:80", internal = "10.0.0.2:80" }}]
[[realm]]
name = "b"
interface = "eth0"
vlan = 200
prefixes = ["10.0.0.0/24", "10.9.0.0/16"]
gateway = "10.0.0.1"
pool = ["192.168.1.11"]
static = [{{ protocol = "tcp", external = "192.168.1.11:80", internal = "10.0.0.2:80" }}]
[[realm]]
name = "c"
interface = "eth2"
prefixes = ["10.0.0.0/24"]
pool = ["192.168.1.12"]
"#
    ));
    assert_eq!(c.realms.len(), 3);
    assert_eq!(c.realms[0].prefixes, c.realms[1].prefixes);
    assert_eq!(parse(&c.to_toml()), Ok(c));
}

#[test]
fn one_to_one_only_realm_needs_no_pool() {
    let c = ok(&doc(
        r#"one_to_one = [{ external = "192.168.1.50", internal = "10.0.0.50" }]"#,
        "",
    )
    .replace("pool = [\"192.168.1.10\"]", "pool = []"));
    assert!(c.realms[0].pool.is_empty());
}

#[test]
fn routes() {
    rejects(
        &doc(
            "routes = [{ prefix = \"10.1.0.0/16\", via = \"10.2.0.1\" }]",
            "",
        ),
        "realm[0].routes[0].via",
        "must be on-link",
    );
    rejects(
        &doc(
            "routes = [{ prefix = \"10.0.0.128/25\", via = \"10.0.0.1\" }]",
            "",
        ),
        "realm[0].routes[0].prefix",
        "overlaps the on-link prefixes[0]",
    );
    rejects(
        &doc(
            "routes = [{ prefix = \"10.1.0.0/16\", via = \"10.0.0.1\" }, { prefix = \"10.1.2.0/24\", via = \"10.0.0.2\" }]",
            "",
        ),
        "realm[0].routes[1].prefix",
        "overlaps routes[0]",
    );
    rejects(
        &doc(
            "routes = [{ prefix = \"10.1.0.1/16\", via = \"10.0.0.1\" }]",
            "",
        ),
        "realm[0].routes[0].prefix",
        "host bits set",
    );
}

#[test]
fn ports() {
    let p = |s: &str| doc("", &format!("[realm.ports]\n{s}"));
    rejects(
        &p("range = \"1000-2000\""),
        "realm[0].ports.range",
        "start at 1024 or above",
    );
    rejects(
        &p("range = \"3000-2000\""),
        "realm[0].ports.range",
        "first port 3000 is after last 2000",
    );
    rejects(
        &p("range = \"2000-70000\""),
        "realm[0].ports.range",
        "not a port number",
    );
    rejects(
        &p("range = \"x\""),
        "realm[0].ports.range",
        "not a port number",
    );
    ok(&p("range = \"5000\""));
    rejects(
        &p("policy = \"sequential\""),
        "realm[0].ports.policy",
        "preserve-then-random, random",
    );
    rejects(
        &p("per_host_limit = 0"),
        "realm[0].ports.per_host_limit",
        "out of range 1..=65535",
    );
    rejects(
        &p("per_host_limit = 65536"),
        "realm[0].ports.per_host_limit",
        "out of range",
    );
    rejects(
        &doc("mapping = \"full-cone\"", ""),
        "realm[0].mapping",
        "endpoint-independent",
    );
    rejects(
        &doc("filtering = \"none\"", ""),
        "realm[0].filtering",
        "address-and-port-dependent",
    );
}

#[test]
fn timeouts_respect_rfc_minimums() {
    let t = |s: &str| doc("", &format!("[realm.timeouts]\n{s}"));
    rejects(
        &t("udp = 119"),
        "realm[0].timeouts.udp",
        "minimum of 120 s required by RFC 4787",
    );
    rejects(
        &t("tcp_established = 7439"),
        "realm[0].timeouts.tcp_established",
        "RFC 5382",
    );
    rejects(
        &t("tcp_transitory = 239"),
        "realm[0].timeouts.tcp_transitory",
        "minimum of 240 s",
    );
    rejects(&t("icmp = 59"), "realm[0].timeouts.icmp", "RFC 5508");
    rejects(
        &t("udp = 604801"),
        "realm[0].timeouts.udp",
        "out of range 120..=604800",
    );
    let c = ok(&t(
        "udp = 120\ntcp_established = 7440\ntcp_transitory = 240\nicmp = 60",
    ));
    assert_eq!(c.realms[0].timeouts.udp, 120);
}

#[test]
fn realm_limits() {
    let c = ok(&doc("", ""));
    assert_eq!(
        c.realms[0].limits,
        Limits {
            per_host_sessions: 16384,
            inbound_per_mapping: 16384
        }
    );
    let l = |body: &str| doc("", &format!("[realm.limits]\n{body}"));
    let c = ok(&l("per_host_sessions = 100\ninbound_per_mapping = 7"));
    assert_eq!(c.realms[0].limits.per_host_sessions, 100);
    assert_eq!(c.realms[0].limits.inbound_per_mapping, 7);
    rejects(
        &l("per_host_sessions = 0"),
        "realm[0].limits.per_host_sessions",
        "out of range 1..=67108864",
    );
    rejects(
        &l("inbound_per_mapping = 67108865"),
        "realm[0].limits.inbound_per_mapping",
        "out of range",
    );
    rejects(&l("sessions = 5"), "realm[0].limits.sessions", "unknown");
}

#[test]
fn mss_clamp_off_by_default_a_number_auto_or_off() {
    assert_eq!(ok(&doc("", "")).realms[0].mss_clamp, MssClamp::Off);
    for (v, want) in [
        ("1452", MssClamp::Value(1452)),
        ("536", MssClamp::Value(536)),
        ("65495", MssClamp::Value(65495)),
        ("\"auto\"", MssClamp::Auto),
        ("\"off\"", MssClamp::Off),
    ] {
        let c = ok(&doc(&format!("mss_clamp = {v}"), ""));
        assert_eq!(c.realms[0].mss_clamp, want, "{v}");
        // What `natgw check` prints reads back the same.
        assert_eq!(parse(&c.to_toml()), Ok(c.clone()), "{v}");
    }
    rejects(
        &doc("mss_clamp = 535", ""),
        "realm[0].mss_clamp",
        "536..=65495",
    );
    rejects(
        &doc("mss_clamp = 65496", ""),
        "realm[0].mss_clamp",
        "536..=65495",
    );
    rejects(
        &doc("mss_clamp = \"pmtu\"", ""),
        "realm[0].mss_clamp",
        "auto",
    );
    rejects(&doc("mss_clamp = true", ""), "realm[0].mss_clamp", "");
}
