//! Static port forwards: where their external and internal endpoints may be, one mapping per
//! endpoint.

use super::util::*;

#[test]
fn static_mappings() {
    let st = |m: &str| {
        doc(
            &format!(
                "routes = [{{ prefix = \"10.1.0.0/16\", via = \"10.0.0.254\" }}]\nstatic = [{m}]"
            ),
            "",
        )
    };
    rejects(
        &st("{ protocol = \"tcp\", external = \"192.168.1.11:80\", internal = \"10.0.0.2:80\" }"),
        "realm[0].static[0].external",
        "192.168.1.11 is not one of the realm's pool addresses",
    );
    rejects(
        &st("{ protocol = \"tcp\", external = \"192.168.1.10:80\", internal = \"10.2.0.2:80\" }"),
        "realm[0].static[0].internal",
        "internal address 10.2.0.2 is not inside the realm's prefixes or routes",
    );
    // Hosts behind an inside router are reachable, so they can be forwarded to.
    ok(&st(
        "{ protocol = \"tcp\", external = \"192.168.1.10:80\", internal = \"10.1.0.2:80\" }",
    ));
    rejects(
        &st(
            "{ protocol = \"tcp\", external = \"192.168.1.10:80\", internal = \"10.0.0.2:80\" }, { protocol = \"tcp\", external = \"192.168.1.10:80\", internal = \"10.0.0.3:80\" }",
        ),
        "realm[0].static[1].external",
        "tcp 192.168.1.10:80 is already forwarded by realm[0].static[0]",
    );
    rejects(
        &st(
            "{ protocol = \"udp\", external = \"192.168.1.10:80\", internal = \"10.0.0.2:80\" }, { protocol = \"udp\", external = \"192.168.1.10:81\", internal = \"10.0.0.2:80\" }",
        ),
        "realm[0].static[1].internal",
        "already mapped by realm[0].static[0]",
    );
    rejects(
        &doc(
            "one_to_one = [{ external = \"192.168.1.50\", internal = \"10.3.0.5\" }]",
            "",
        ),
        "realm[0].one_to_one[0].internal",
        "not inside the realm's prefixes or routes",
    );
}

#[test]
fn static_mappings_as_array_of_tables() {
    let c = ok(&doc(
        "",
        r#"[[realm.static]]
protocol = "tcp"
external = "192.168.1.10:22"
internal = "10.0.0.2:22""#,
    ));
    assert_eq!(c.realms[0].static_mappings[0].external.port(), 22);
    rejects(
        &doc("", "[[realm.static]]\nprotocol = \"tcp\"\nextrnal = \"x\""),
        "realm[0].static[0].extrnal",
        "unknown field `extrnal`",
    );
}

#[test]
fn same_port_different_protocol_is_allowed() {
    let c = ok(&doc(
        r#"static = [
  { protocol = "tcp", external = "192.168.1.10:53", internal = "10.0.0.2:53" },
  { protocol = "udp", external = "192.168.1.10:53", internal = "10.0.0.2:53" },
]"#,
        "",
    ));
    assert_eq!(c.realms[0].static_mappings.len(), 2);
}
