//! Every size is bounded with an error naming the key: pools, realms, inside interfaces,
//! static and 1:1 mappings (indices used to be truncated, pools unbounded).

use super::util::*;

#[test]
fn pool_size_is_bounded() {
    rejects(
        &format!(
            "{HEAD}[[realm]]\nname = \"a\"\ninterface = \"eth0\"\nprefixes = [\"10.0.0.0/24\"]\npool = [\"128.0.0.0/2\"]\n"
        ),
        "realm[0].pool[0]",
        "at most 65536 per realm",
    );
    // The bound is on the sum of the entries; 65536 addresses exactly are fine.
    let pool = |p: &str| {
        format!(
            "{HEAD}[[realm]]\nname = \"a\"\ninterface = \"eth0\"\nprefixes = [\"10.0.0.0/24\"]\npool = [{p}]\n"
        )
    };
    ok(&pool("\"100.64.0.0/16\""));
    rejects(
        &pool("\"100.64.0.0/17\", \"100.65.0.0/17\", \"100.66.0.0\""),
        "realm[0].pool[2]",
        "65537 addresses",
    );
}

#[test]
fn inside_interfaces_are_bounded() {
    let mut text = String::from(
        "[outside]\ninterface = \"eth1\"\naddress = \"192.168.1.2\"\ngateway = \"192.168.1.1\"\n",
    );
    for i in 0..300 {
        text.push_str(&format!("[[inside]]\ninterface = \"in{i}\"\n"));
    }
    text.push_str(REALM_A.replace("eth0", "in299").as_str());
    rejects(&text, "inside", "300 [[inside]] interfaces; at most 256");
}

#[test]
fn realms_are_bounded() {
    let mut text = String::from(HEAD);
    for i in 0..4097 {
        text.push_str(&format!(
            "[[realm]]\nname = \"r{i}\"\ninterface = \"eth0\"\nvlan = {}\nprefixes = [\"10.0.0.0/24\"]\npool = [\"100.{}.{}.1\"]\n",
            i % 4094 + 1,
            64 + i / 256,
            i % 256
        ));
    }
    rejects(&text, "realm", "4097 realms; at most 4096");
}

#[test]
fn static_mappings_are_bounded() {
    let mut statics = Vec::new();
    for i in 0..262_145u32 {
        let n = i / 2;
        statics.push(format!(
            "{{ protocol = \"{}\", external = \"192.168.1.{}:{}\", internal = \"10.{}.{}.{}:80\" }}",
            if i % 2 == 0 { "tcp" } else { "udp" },
            10 + n / 60000,
            1 + n % 60000,
            n / 250 / 250,
            (n / 250) % 250,
            1 + n % 250,
        ));
    }
    let text = format!(
        "{HEAD}[[realm]]\nname = \"a\"\ninterface = \"eth0\"\nprefixes = [\"10.0.0.0/8\"]\npool = [\"192.168.1.10-192.168.1.12\"]\nstatic = [{}]\n",
        statics.join(", ")
    );
    rejects(
        &text,
        "realm[0].static",
        "262145 static mappings over all realms",
    );
}
