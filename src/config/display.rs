//! Text forms of configuration values and the effective configuration as TOML.
//!
//! The keyword tables here are the single source of truth for both directions: `parse` reads
//! them to accept values, this file writes them, so the two cannot drift apart.

use std::fmt::{self, Display, Formatter, Write as _};

use super::model::*;

pub(super) const XDP_MODES: [(&str, XdpMode); 3] = [
    ("auto", XdpMode::Auto),
    ("native", XdpMode::Native),
    ("generic", XdpMode::Generic),
];

pub(super) const POLL_MODES: [(&str, PollMode); 2] =
    [("adaptive", PollMode::Adaptive), ("busy", PollMode::Busy)];

pub(super) const PORT_POLICIES: [(&str, PortPolicy); 2] = [
    ("preserve-then-random", PortPolicy::PreserveThenRandom),
    ("random", PortPolicy::Random),
];

pub(super) const MAPPINGS: [(&str, Mapping); 3] = [
    ("endpoint-independent", Mapping::EndpointIndependent),
    ("address-dependent", Mapping::AddressDependent),
    (
        "address-and-port-dependent",
        Mapping::AddressAndPortDependent,
    ),
];

pub(super) const FILTERINGS: [(&str, Filtering); 3] = [
    ("endpoint-independent", Filtering::EndpointIndependent),
    ("address-dependent", Filtering::AddressDependent),
    (
        "address-and-port-dependent",
        Filtering::AddressAndPortDependent,
    ),
];

pub(super) const PROTOCOLS: [(&str, Protocol); 2] =
    [("tcp", Protocol::TCP), ("udp", Protocol::UDP)];

fn keyword<T: PartialEq + Copy>(table: &[(&'static str, T)], v: T) -> &'static str {
    // Every variant is listed in its table; the fallback only guards against a variant added to
    // the model but forgotten here (a test checks each table is complete).
    table.iter().find(|(_, t)| *t == v).map_or("?", |(s, _)| s)
}

impl Display for XdpMode {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(keyword(&XDP_MODES, *self))
    }
}

impl Display for PollMode {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(keyword(&POLL_MODES, *self))
    }
}

impl Display for PortPolicy {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(keyword(&PORT_POLICIES, *self))
    }
}

impl Display for Mapping {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(keyword(&MAPPINGS, *self))
    }
}

impl Display for Filtering {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        f.write_str(keyword(&FILTERINGS, *self))
    }
}

impl Display for Ipv4Net {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

/// One address, a CIDR block when the range is exactly one, else `first-last`: the same forms
/// the pool syntax accepts, so the output can be pasted back into a configuration.
impl Display for AddrRange {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        let (first, last) = (u32::from(self.first), u32::from(self.last));
        if first == last {
            return write!(f, "{}", self.first);
        }
        if first > last {
            // Only a hand-built, invalid range; print it rather than underflow below.
            return write!(f, "{}-{}", self.first, self.last);
        }
        let span = u64::from(last - first) + 1;
        if span.is_power_of_two() && u64::from(first) % span == 0 {
            let len = 32 - span.trailing_zeros();
            return write!(f, "{}/{}", self.first, len);
        }
        write!(f, "{}-{}", self.first, self.last)
    }
}

impl Display for PortRange {
    fn fmt(&self, f: &mut Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.first, self.last)
    }
}

/// A TOML basic string. Names are validated to plain characters, but escaping everything keeps
/// the output valid TOML even for a hand-built `Config`.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn list<T: Display>(items: &[T]) -> String {
    let inner: Vec<String> = items.iter().map(|i| quote(&i.to_string())).collect();
    format!("[{}]", inner.join(", "))
}

/// Arrays of inline tables, one element per line so diffs of the effective configuration stay
/// readable.
fn table_list(out: &mut String, key: &str, rows: &[String]) {
    if rows.is_empty() {
        let _ = writeln!(out, "{key} = []");
        return;
    }
    let _ = writeln!(out, "{key} = [");
    for r in rows {
        let _ = writeln!(out, "    {{ {r} }},");
    }
    let _ = writeln!(out, "]");
}

impl Config {
    /// The effective configuration as TOML, every default written out. For any `Config` produced
    /// by [`parse`](super::parse), `parse(&c.to_toml()) == Ok(c)`.
    pub fn to_toml(&self) -> String {
        let mut o = String::new();
        let _ = writeln!(
            o,
            "# natgw effective configuration (all defaults filled in)"
        );

        let out = &self.outside;
        let _ = writeln!(o, "\n[outside]");
        let _ = writeln!(o, "interface = {}", quote(&out.name));
        let _ = writeln!(o, "address = {}", quote(&out.address.to_string()));
        let _ = writeln!(o, "gateway = {}", quote(&out.gateway.to_string()));
        let _ = writeln!(o, "management = {}", list(&out.management));

        for i in &self.inside {
            let _ = writeln!(o, "\n[[inside]]");
            let _ = writeln!(o, "interface = {}", quote(&i.name));
            let _ = writeln!(o, "management = {}", list(&i.management));
        }

        let d = &self.dataplane;
        let _ = writeln!(o, "\n[dataplane]");
        let workers: Vec<String> = d
            .workers
            .iter()
            .map(|w| format!("core = {}, queue = {}", w.core, w.queue))
            .collect();
        table_list(&mut o, "workers", &workers);
        let _ = writeln!(o, "xdp_mode = {}", quote(&d.xdp_mode.to_string()));
        let _ = writeln!(o, "poll = {}", quote(&d.poll.to_string()));
        let _ = writeln!(o, "spin_max_us = {}", d.spin_max_us);
        let _ = writeln!(o, "batch_size = {}", d.batch_size);
        let _ = writeln!(o, "ring_size = {}", d.ring_size);
        let _ = writeln!(o, "umem_frames = {}", d.umem_frames);
        let _ = writeln!(o, "handoff_queue = {}", d.handoff_queue);
        let _ = writeln!(o, "forward_only = {}", d.forward_only);

        let _ = writeln!(o, "\n[sessions]");
        let _ = writeln!(o, "capacity_per_core = {}", self.sessions.capacity_per_core);

        let fr = &self.fragments;
        let _ = writeln!(o, "\n[fragments]");
        let _ = writeln!(o, "max_datagrams = {}", fr.max_datagrams);
        let _ = writeln!(o, "max_held = {}", fr.max_held);
        let _ = writeln!(o, "timeout = {}", fr.timeout);

        let _ = writeln!(o, "\n[control]");
        let ct = &self.control;
        let _ = writeln!(o, "listen = {}", quote(&ct.listen.to_string()));
        let _ = writeln!(o, "socket = {}", quote(&ct.socket.to_string_lossy()));
        if let Some(g) = &ct.socket_group {
            let _ = writeln!(o, "socket_group = {}", quote(g));
        }
        if let Some(t) = &ct.token_file {
            let _ = writeln!(o, "token_file = {}", quote(&t.to_string_lossy()));
        }
        let _ = writeln!(o, "max_connections = {}", ct.max_connections);
        let _ = writeln!(o, "max_header_bytes = {}", ct.max_header_bytes);
        let _ = writeln!(o, "max_body_bytes = {}", ct.max_body_bytes);
        let _ = writeln!(o, "request_timeout = {}", ct.request_timeout);
        let _ = writeln!(o, "idle_timeout = {}", ct.idle_timeout);

        let e = &self.eventlog;
        let _ = writeln!(o, "\n[eventlog]");
        for (key, p) in [("file", &e.file), ("syslog", &e.syslog)] {
            match p {
                Some(p) => {
                    let _ = writeln!(o, "{key} = {}", quote(&p.display().to_string()));
                }
                None => {
                    let _ = writeln!(o, "# {key}: none");
                }
            }
        }
        let _ = writeln!(o, "ring = {}", e.ring);

        for r in &self.realms {
            write_realm(&mut o, r);
        }
        o
    }
}

fn write_realm(o: &mut String, r: &Realm) {
    let _ = writeln!(o, "\n[[realm]]");
    let _ = writeln!(o, "name = {}", quote(&r.name));
    let _ = writeln!(o, "interface = {}", quote(&r.interface));
    if let Some(v) = r.vlan {
        let _ = writeln!(o, "vlan = {v}");
    }
    let _ = writeln!(o, "prefixes = {}", list(&r.prefixes));
    if let Some(g) = r.gateway {
        let _ = writeln!(o, "gateway = {}", quote(&g.to_string()));
    }
    let _ = writeln!(o, "pool = {}", list(&r.pool));
    let routes: Vec<String> = r
        .routes
        .iter()
        .map(|rt| {
            format!(
                "prefix = {}, via = {}",
                quote(&rt.prefix.to_string()),
                quote(&rt.via.to_string())
            )
        })
        .collect();
    table_list(o, "routes", &routes);
    let (statics_end, ones_end) = match &r.mappings_file {
        Some(m) => {
            let _ = writeln!(o, "mappings_file = {}", quote(&m.name));
            (m.statics_from, m.one_to_one_from)
        }
        None => (r.static_mappings.len(), r.one_to_one.len()),
    };
    write_mappings(
        o,
        &r.static_mappings[..statics_end],
        &r.one_to_one[..ones_end],
    );
    let _ = writeln!(o, "mapping = {}", quote(&r.mapping.to_string()));
    let _ = writeln!(o, "filtering = {}", quote(&r.filtering.to_string()));
    let _ = writeln!(o, "inbound_refresh = {}", r.inbound_refresh);
    let _ = writeln!(o, "hairpinning = {}", r.hairpinning);
    match r.mss_clamp {
        MssClamp::Off => _ = writeln!(o, "mss_clamp = \"off\""),
        MssClamp::Auto => _ = writeln!(o, "mss_clamp = \"auto\""),
        MssClamp::Value(n) => _ = writeln!(o, "mss_clamp = {n}"),
    }

    let _ = writeln!(o, "\n[realm.ports]");
    let _ = writeln!(o, "policy = {}", quote(&r.ports.policy.to_string()));
    let _ = writeln!(o, "range = {}", quote(&r.ports.range.to_string()));
    let _ = writeln!(o, "per_host_limit = {}", r.ports.per_host_limit);

    let _ = writeln!(o, "\n[realm.limits]");
    let _ = writeln!(o, "per_host_sessions = {}", r.limits.per_host_sessions);
    let _ = writeln!(o, "inbound_per_mapping = {}", r.limits.inbound_per_mapping);

    let t = &r.timeouts;
    let _ = writeln!(o, "\n[realm.timeouts]");
    let _ = writeln!(o, "udp = {}", t.udp);
    let _ = writeln!(o, "tcp_established = {}", t.tcp_established);
    let _ = writeln!(o, "tcp_transitory = {}", t.tcp_transitory);
    let _ = writeln!(o, "icmp = {}", t.icmp);

    let l = &r.log;
    let events: Vec<&str> = [
        (l.mappings, "mappings"),
        (l.sessions, "sessions"),
        (l.exhaustion, "exhaustion"),
    ]
    .iter()
    .filter(|(on, _)| *on)
    .map(|(_, n)| *n)
    .collect();
    let _ = writeln!(o, "\n[realm.log]");
    let _ = writeln!(o, "events = {}", list(&events));
    let _ = writeln!(o, "destinations = {}", l.destinations);
}

/// `static` and `one_to_one` lists, as in a realm or a mappings file.
fn write_mappings(o: &mut String, statics: &[StaticMapping], ones: &[OneToOne]) {
    let statics: Vec<String> = statics
        .iter()
        .map(|s| {
            format!(
                "protocol = {}, external = {}, internal = {}",
                quote(&s.protocol.to_string()),
                quote(&s.external.to_string()),
                quote(&s.internal.to_string())
            )
        })
        .collect();
    table_list(o, "static", &statics);
    let one: Vec<String> = ones
        .iter()
        .map(|m| {
            format!(
                "external = {}, internal = {}",
                quote(&m.external.to_string()),
                quote(&m.internal.to_string())
            )
        })
        .collect();
    table_list(o, "one_to_one", &one);
}

impl Realm {
    /// The realm's mappings file as it is written back after an API edit: its own entries
    /// (not the inline ones), one per line. Empty lists when the realm has no mappings file.
    pub fn mappings_toml(&self) -> String {
        let mut o = String::from(
            "# natgw mappings file: static port forwards and 1:1 mappings (written by natgw)\n",
        );
        let (s, n) = match &self.mappings_file {
            Some(m) => (m.statics_from, m.one_to_one_from),
            None => (self.static_mappings.len(), self.one_to_one.len()),
        };
        write_mappings(&mut o, &self.static_mappings[s..], &self.one_to_one[n..]);
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn range(a: &str, b: &str) -> AddrRange {
        AddrRange {
            first: a.parse().unwrap(),
            last: b.parse().unwrap(),
        }
    }

    #[test]
    fn addr_range_forms() {
        assert_eq!(range("10.0.0.1", "10.0.0.1").to_string(), "10.0.0.1");
        assert_eq!(range("10.0.0.4", "10.0.0.7").to_string(), "10.0.0.4/30");
        // Power-of-two length but misaligned: not a CIDR block.
        assert_eq!(
            range("10.0.0.2", "10.0.0.5").to_string(),
            "10.0.0.2-10.0.0.5"
        );
        assert_eq!(
            range("10.0.0.1", "10.0.0.3").to_string(),
            "10.0.0.1-10.0.0.3"
        );
        assert_eq!(range("0.0.0.0", "255.255.255.255").to_string(), "0.0.0.0/0");
    }

    #[test]
    fn keyword_tables_are_complete() {
        // Display must never reach the "?" fallback for any variant.
        for m in [XdpMode::Auto, XdpMode::Native, XdpMode::Generic] {
            assert_ne!(m.to_string(), "?");
        }
        for m in [PollMode::Busy, PollMode::Adaptive] {
            assert_ne!(m.to_string(), "?");
        }
        for m in [PortPolicy::PreserveThenRandom, PortPolicy::Random] {
            assert_ne!(m.to_string(), "?");
        }
        for m in [
            Mapping::EndpointIndependent,
            Mapping::AddressDependent,
            Mapping::AddressAndPortDependent,
        ] {
            assert_ne!(m.to_string(), "?");
        }
        for m in [
            Filtering::EndpointIndependent,
            Filtering::AddressDependent,
            Filtering::AddressAndPortDependent,
        ] {
            assert_ne!(m.to_string(), "?");
        }
        for m in [Protocol::TCP, Protocol::UDP] {
            assert_ne!(m.to_string(), "?");
        }
    }

    #[test]
    fn quote_escapes() {
        assert_eq!(quote("a\"b\\c\n"), "\"a\\\"b\\\\c\\u000A\"");
        let v: toml::Value = toml::from_str(&format!("k = {}", quote("x\"\\\u{1}y"))).unwrap();
        assert_eq!(v["k"].as_str(), Some("x\"\\\u{1}y"));
    }

    #[test]
    fn net_display() {
        let n = Ipv4Net {
            addr: Ipv4Addr::new(10, 1, 0, 0),
            len: 16,
        };
        assert_eq!(n.to_string(), "10.1.0.0/16");
    }
}
