//! External addresses: each belongs to one realm, within a realm to one pool entry or 1:1 mapping,
//! and is none of natgw's own outside addresses.

use super::util::*;

#[test]
fn external_addresses_within_a_realm() {
    rejects(
        &doc("", "").replace(
            "pool = [\"192.168.1.10\"]",
            "pool = [\"192.168.1.8/29\", \"192.168.1.10-192.168.1.20\"]",
        ),
        "realm[0].pool[1]",
        "overlaps pool[0] (192.168.1.8/29)",
    );
    rejects(
        &doc(
            "one_to_one = [{ external = \"192.168.1.10\", internal = \"10.0.0.5\" }]",
            "",
        ),
        "realm[0].one_to_one[0].external",
        "overlaps pool[0]",
    );
    rejects(
        &doc(
            "one_to_one = [{ external = \"192.168.1.50\", internal = \"10.0.0.5\" }, { external = \"192.168.1.50\", internal = \"10.0.0.6\" }]",
            "",
        ),
        "realm[0].one_to_one[1].external",
        "already used by realm[0].one_to_one[0]",
    );
    rejects(
        &doc(
            "one_to_one = [{ external = \"192.168.1.50\", internal = \"10.0.0.5\" }, { external = \"192.168.1.51\", internal = \"10.0.0.5\" }]",
            "",
        ),
        "realm[0].one_to_one[1].internal",
        "already mapped by realm[0].one_to_one[0]",
    );
}

#[test]
fn external_addresses_across_realms() {
    let second = |pool: &str, extra: &str| {
        format!(
            "[[realm]]\nname = \"b\"\ninterface = \"eth2\"\nprefixes = [\"10.0.0.0/24\"]\npool = [{pool}]\n{extra}"
        )
    };
    rejects(
        &doc("", &second("\"192.168.1.8/29\"", "")),
        "realm[1].pool[0]",
        "overlaps realm[0].pool[0] (192.168.1.10): an external address may belong to only one realm",
    );
    rejects(
        &doc(
            "pool = [\"192.168.1.9-192.168.1.20\"]",
            &second("\"192.168.1.11\"", ""),
        )
        .replace("pool = [\"192.168.1.10\"]\n", ""),
        "realm[1].pool[0]",
        "only one realm",
    );
    // Overlap found via a range that starts earlier but reaches further than its neighbour.
    rejects(
        &doc(
            "",
            &second(
                "\"192.168.1.0-192.168.1.5\", \"192.168.1.9-192.168.1.10\"",
                "",
            ),
        ),
        "realm[1].pool[1]",
        "overlaps realm[0].pool[0]",
    );
    rejects(
        &doc(
            "",
            &second(
                "\"192.168.1.11\"",
                "one_to_one = [{ external = \"192.168.1.10\", internal = \"10.0.0.9\" }]",
            ),
        ),
        "realm[1].one_to_one[0].external",
        "overlaps realm[0].pool[0]",
    );
    ok(&doc("", &second("\"192.168.1.11\"", "")));
}

#[test]
fn outside_addresses_are_not_external() {
    rejects(
        &doc("", "").replace("pool = [\"192.168.1.10\"]", "pool = [\"192.168.1.0/28\"]"),
        "outside.address",
        "also a NAT external address (realm[0].pool[0])",
    );
    rejects(
        &doc("", "").replace("gateway = \"192.168.1.1\"", "gateway = \"192.168.1.10\""),
        "outside.gateway",
        "also a NAT external address",
    );
    rejects(
        &doc("", "").replace("[[inside]]", "management = [\"192.168.1.10\"]\n[[inside]]"),
        "outside.management[0]",
        "also a NAT external address",
    );
    rejects(
        &doc("", "").replace("gateway = \"192.168.1.1\"", "gateway = \"192.168.1.2\""),
        "outside.gateway",
        "natgw's own outside address",
    );
    rejects(
        &doc("", "").replace(
            "[[inside]]",
            "management = [\"192.168.1.3\", \"192.168.1.3\"]\n[[inside]]",
        ),
        "outside.management[1]",
        "listed twice",
    );
}
