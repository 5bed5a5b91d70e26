//! Scalar values: malformed addresses, prefixes, ranges and socket addresses; interface and realm
//! names.

use super::util::*;
use crate::config::*;
use std::net::Ipv4Addr;

#[test]
fn malformed_addresses() {
    rejects(
        &doc("", "").replace("192.168.1.2\"", "192.168.1\""),
        "outside.address",
        "not an IPv4 address",
    );
    rejects(
        &doc("", "").replace("192.168.1.1\"", "192.168.1.256\""),
        "outside.gateway",
        "not an IPv4 address",
    );
    rejects(
        &doc("", "").replace("192.168.1.2\"", "224.0.0.1\""),
        "outside.address",
        "not a unicast",
    );
    rejects(
        &doc("gateway = \"10.0.0\"", ""),
        "realm[0].gateway",
        "not an IPv4",
    );
    rejects(
        &doc("prefixes = [\"10.0.0.1/24\"]", "").replace("prefixes = [\"10.0.0.0/24\"]\n", ""),
        "realm[0].prefixes[0]",
        "host bits set (did you mean 10.0.0.0/24?)",
    );
    rejects(
        &doc("prefixes = [\"10.0.0.0/33\"]", "").replace("prefixes = [\"10.0.0.0/24\"]\n", ""),
        "realm[0].prefixes[0]",
        "0..=32",
    );
    rejects(
        &doc("prefixes = [\"10.0.0.0\"]", "").replace("prefixes = [\"10.0.0.0/24\"]\n", ""),
        "realm[0].prefixes[0]",
        "not a prefix",
    );
    for (pool, reason) in [
        ("192.168.1.300", "not an IPv4 address"),
        ("192.168.1.20-192.168.1.10", "is after last"),
        ("192.168.1.20-", "not an IPv4 address"),
        ("198.51.100.1/30", "host bits set"),
        ("127.0.0.1", "loopback"),
        ("0.0.0.0/0", "this network"),
        ("255.255.255.255", "broadcast"),
    ] {
        rejects(
            &doc(&format!("pool = [\"192.168.1.10\", \"{pool}\"]"), "")
                .replace("pool = [\"192.168.1.10\"]\n", ""),
            "realm[0].pool[1]",
            reason,
        );
    }
    rejects(
        &doc(
            "static = [{ protocol = \"tcp\", external = \"192.168.1.10\", internal = \"10.0.0.2:80\" }]",
            "",
        ),
        "realm[0].static[0].external",
        "address and port",
    );
    rejects(
        &doc(
            "static = [{ protocol = \"tcp\", external = \"192.168.1.10:0\", internal = \"10.0.0.2:80\" }]",
            "",
        ),
        "realm[0].static[0].external",
        "port 0",
    );
    rejects(
        &doc(
            "static = [{ protocol = \"sctp\", external = \"192.168.1.10:1\", internal = \"10.0.0.2:80\" }]",
            "",
        ),
        "realm[0].static[0].protocol",
        "expected one of: tcp, udp",
    );
    rejects(
        &doc("", "[control]\nlisten = \"localhost\""),
        "control.listen",
        "not an address",
    );
    rejects(
        &doc("", "[control]\nlisten = \"127.0.0.1:0\""),
        "control.listen",
        "port 0",
    );
}

#[test]
fn names() {
    rejects(
        &doc("", "").replace("interface = \"eth1\"", "interface = \"\""),
        "outside.interface",
        "not a valid interface name",
    );
    rejects(
        &doc("", "").replace(
            "interface = \"eth1\"",
            "interface = \"averyveryverylongname\"",
        ),
        "outside.interface",
        "1-15 bytes",
    );
    rejects(
        &doc("", "").replace("name = \"a\"", "name = \"a b\""),
        "realm[0].name",
        "not a valid realm name",
    );
    rejects(
        &doc("", "").replace("name = \"a\"", "name = \"\""),
        "realm[0].name",
        "not a valid realm name",
    );
}

#[test]
fn addr_range_from_str() {
    let r: AddrRange = " 10.0.0.1 - 10.0.0.3 ".parse().unwrap();
    assert_eq!(r.len(), 3);
    let r: AddrRange = "10.0.0.0/31".parse().unwrap();
    assert_eq!(
        (r.first, r.last),
        (Ipv4Addr::new(10, 0, 0, 0), Ipv4Addr::new(10, 0, 0, 1))
    );
    assert!("10.0.0.3-10.0.0.1".parse::<AddrRange>().is_err());
    assert!("10.0.0.1-10.0.0.2-10.0.0.3".parse::<AddrRange>().is_err());
    let n: Ipv4Net = "0.0.0.0/0".parse().unwrap();
    assert_eq!(n.len, 0);
    assert!("10.0.0.0/-1".parse::<Ipv4Net>().is_err());
}
