//! TOML text to a validated [`Config`].
//!
//! Two stages: serde reads the text into private `Raw*` structs that mirror the file (every key
//! optional, every value in its loosest TOML type, unknown keys rejected), then `build` converts
//! and validates them, so every semantic error carries the exact key path of the offending value
//! (`realm[1].static[0].external`), and required-key errors use the same paths as the others.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::ops::Range;
use std::str::FromStr;

use serde::Deserialize;
use toml::de::{DeTable, DeValue};

use super::ConfigError;
use super::display::{FILTERINGS, MAPPINGS, POLL_MODES, PORT_POLICIES, PROTOCOLS, XDP_MODES};
use super::model::*;

pub(super) const DEFAULT_BATCH_SIZE: i64 = 64;
pub(super) const DEFAULT_RING_SIZE: i64 = 2048;
pub(super) const DEFAULT_UMEM_FRAMES: i64 = 8192;
pub(super) const DEFAULT_HANDOFF_QUEUE: i64 = 4096;
pub(super) const DEFAULT_SESSIONS_PER_CORE: i64 = 262_144;
pub(super) const DEFAULT_FRAG_DATAGRAMS: i64 = 4096;
pub(super) const DEFAULT_FRAG_HELD: i64 = 1024;
pub(super) const DEFAULT_FRAG_TIMEOUT: i64 = 2;
pub(super) const DEFAULT_LISTEN: &str = "127.0.0.1:9180";
pub(super) const DEFAULT_PORT_RANGE: PortRange = PortRange {
    first: 1024,
    last: 65535,
};
pub(super) const DEFAULT_PER_HOST_LIMIT: i64 = 4096;

/// RFC 4787 REQ-5, RFC 5382 REQ-5, RFC 5508 REQ-1: (key, minimum, default).
const TIMEOUTS: [(&str, i64, i64); 4] = [
    ("udp", 120, 300),
    ("tcp_established", 7440, 7440),
    ("tcp_transitory", 240, 240),
    ("icmp", 60, 60),
];
/// A week: longer idle timeouts are typos, and would pin session slots forever.
const MAX_TIMEOUT: i64 = 604_800;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    outside: Option<RawOutside>,
    #[serde(default)]
    inside: Vec<RawInside>,
    dataplane: Option<RawDataplane>,
    sessions: Option<RawSessions>,
    fragments: Option<RawFragments>,
    control: Option<RawControl>,
    #[serde(default)]
    realm: Vec<RawRealm>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOutside {
    interface: Option<String>,
    address: Option<String>,
    gateway: Option<String>,
    #[serde(default)]
    management: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawInside {
    interface: Option<String>,
    #[serde(default)]
    management: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawDataplane {
    workers: Option<Vec<RawWorker>>,
    xdp_mode: Option<String>,
    poll: Option<String>,
    batch_size: Option<i64>,
    ring_size: Option<i64>,
    umem_frames: Option<i64>,
    handoff_queue: Option<i64>,
    forward_only: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawWorker {
    core: Option<i64>,
    queue: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSessions {
    capacity_per_core: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawFragments {
    max_datagrams: Option<i64>,
    max_held: Option<i64>,
    timeout: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawControl {
    listen: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRealm {
    name: Option<String>,
    interface: Option<String>,
    vlan: Option<i64>,
    #[serde(default)]
    prefixes: Vec<String>,
    gateway: Option<String>,
    #[serde(default)]
    pool: Vec<String>,
    #[serde(default)]
    routes: Vec<RawRoute>,
    #[serde(default, rename = "static")]
    statics: Vec<RawStatic>,
    #[serde(default)]
    one_to_one: Vec<RawOneToOne>,
    mapping: Option<String>,
    filtering: Option<String>,
    inbound_refresh: Option<bool>,
    hairpinning: Option<bool>,
    ports: Option<RawPorts>,
    timeouts: Option<RawTimeouts>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoute {
    prefix: Option<String>,
    via: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStatic {
    protocol: Option<String>,
    external: Option<String>,
    internal: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawOneToOne {
    external: Option<String>,
    internal: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawPorts {
    policy: Option<String>,
    range: Option<String>,
    per_host_limit: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawTimeouts {
    udp: Option<i64>,
    tcp_established: Option<i64>,
    tcp_transitory: Option<i64>,
    icmp: Option<i64>,
}

pub(super) fn parse(text: &str) -> Result<Config, ConfigError> {
    let raw: RawConfig = toml::from_str(text).map_err(|e| serde_error(text, &e))?;
    build(raw)
}

fn err(field: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError {
        field: field.into(),
        reason: reason.into(),
    }
}

// ---------------------------------------------------------------------------------------------
// serde errors

/// Turns a toml/serde error into a `ConfigError` naming the key path when the error's span can be
/// traced back to a key or value in the document; pure syntax errors get the field "syntax".
fn serde_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let mut reason = e.message().trim_end().replace('\n', "; ");
    let mut field = None;
    if let Some(span) = e.span() {
        let (line, col) = line_col(text, span.start);
        reason.push_str(&format!(" (line {line}, column {col})"));
        // The recovering parser still yields the keys around a syntax error (a duplicate key, a
        // malformed value), which names the spot better than "syntax".
        let (doc, _) = DeTable::parse_recoverable(text);
        let mut best: Option<(usize, String)> = None;
        locate(doc.get_ref(), &span, "", &mut best);
        field = best.map(|(_, p)| p);
        // Recovery drops a duplicate key; its first occurrence is the nearest earlier key of
        // the same name.
        if field.is_none() && e.message().starts_with("duplicate key") {
            let name = text
                .get(span.clone())
                .unwrap_or("")
                .trim_matches(['"', '\'', ' ']);
            let mut prev: Option<(usize, String)> = None;
            find_prev_key(doc.get_ref(), name, span.start, "", &mut prev);
            field = prev.map(|(_, p)| p);
        }
    }
    err(field.unwrap_or_else(|| "syntax".to_string()), reason)
}

fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line = before.matches('\n').count() + 1;
    let col = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    (line, col)
}

fn covers(outer: &Range<usize>, inner: &Range<usize>) -> bool {
    outer.start <= inner.start && inner.end <= outer.end
}

fn key_path(prefix: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    let key = if plain {
        key.to_string()
    } else {
        format!("{key:?}")
    };
    if prefix.is_empty() {
        key
    } else {
        format!("{prefix}.{key}")
    }
}

/// Finds the key or value with the tightest span around `span`. Tables opened by headers do not
/// have spans covering their bodies, so the whole tree is searched rather than descending only
/// into covering nodes.
fn locate(
    table: &DeTable<'_>,
    span: &Range<usize>,
    prefix: &str,
    best: &mut Option<(usize, String)>,
) {
    for (k, v) in table.iter() {
        // Error recovery invents empty keys; a path through one would point nowhere.
        if k.get_ref().is_empty() {
            continue;
        }
        let path = key_path(prefix, k.get_ref());
        consider(&k.span(), span, &path, best);
        locate_value(v, span, path, best);
    }
}

fn find_prev_key(
    table: &DeTable<'_>,
    name: &str,
    before: usize,
    prefix: &str,
    prev: &mut Option<(usize, String)>,
) {
    for (k, v) in table.iter() {
        if k.get_ref().is_empty() {
            continue;
        }
        let path = key_path(prefix, k.get_ref());
        let start = k.span().start;
        if k.get_ref() == name && start < before && prev.as_ref().is_none_or(|(s, _)| start > *s) {
            *prev = Some((start, path.clone()));
        }
        match v.get_ref() {
            DeValue::Table(t) => find_prev_key(t, name, before, &path, prev),
            DeValue::Array(a) => {
                for (i, e) in a.iter().enumerate() {
                    if let DeValue::Table(t) = e.get_ref() {
                        find_prev_key(t, name, before, &format!("{path}[{i}]"), prev);
                    }
                }
            }
            _ => {}
        }
    }
}

fn locate_value(
    v: &toml::Spanned<DeValue<'_>>,
    span: &Range<usize>,
    path: String,
    best: &mut Option<(usize, String)>,
) {
    consider(&v.span(), span, &path, best);
    match v.get_ref() {
        DeValue::Table(t) => locate(t, span, &path, best),
        DeValue::Array(a) => {
            for (i, e) in a.iter().enumerate() {
                locate_value(e, span, format!("{path}[{i}]"), best);
            }
        }
        _ => {}
    }
}

fn consider(
    node: &Range<usize>,
    span: &Range<usize>,
    path: &str,
    best: &mut Option<(usize, String)>,
) {
    if !covers(node, span) {
        return;
    }
    let width = node.end - node.start;
    // `<=` so that, at equal width, the deeper node (visited later) wins.
    if best.as_ref().is_none_or(|(w, _)| width <= *w) {
        *best = Some((width, path.to_string()));
    }
}

// ---------------------------------------------------------------------------------------------
// value parsers

fn required<T>(v: Option<T>, field: &str) -> Result<T, ConfigError> {
    v.ok_or_else(|| err(field, "required key is missing"))
}

fn choice<T: Copy>(s: &str, field: &str, table: &[(&str, T)]) -> Result<T, ConfigError> {
    table
        .iter()
        .find(|(k, _)| *k == s)
        .map(|(_, v)| *v)
        .ok_or_else(|| {
            let names: Vec<&str> = table.iter().map(|(k, _)| *k).collect();
            err(
                field,
                format!("unknown value {s:?}, expected one of: {}", names.join(", ")),
            )
        })
}

fn int_in(v: i64, field: &str, lo: i64, hi: i64) -> Result<i64, ConfigError> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(err(field, format!("{v} is out of range {lo}..={hi}")))
    }
}

fn pow2_in(v: i64, field: &str, lo: i64, hi: i64) -> Result<i64, ConfigError> {
    int_in(v, field, lo, hi)?;
    if v.count_ones() == 1 {
        Ok(v)
    } else {
        Err(err(field, format!("{v} is not a power of two")))
    }
}

fn addr(s: &str, field: &str) -> Result<Ipv4Addr, ConfigError> {
    Ipv4Addr::from_str(s.trim())
        .map_err(|_| err(field, format!("{s:?} is not an IPv4 address (a.b.c.d)")))
}

/// A host address: something a packet may be sent to or from.
fn unicast(s: &str, field: &str) -> Result<Ipv4Addr, ConfigError> {
    let a = addr(s, field)?;
    if a.is_unspecified() || a.is_loopback() || a.is_multicast() || a.is_broadcast() {
        return Err(err(
            field,
            format!(
                "{a} is not a unicast host address (unspecified, loopback, multicast or broadcast)"
            ),
        ));
    }
    Ok(a)
}

impl FromStr for Ipv4Net {
    type Err = String;

    /// `a.b.c.d/len` with the host bits zero.
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a prefix (a.b.c.d/len)"))?;
        let addr = Ipv4Addr::from_str(a.trim())
            .map_err(|_| format!("{s:?}: {a:?} is not an IPv4 address"))?;
        let len = l
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("{s:?}: prefix length {l:?} is not 0..=32"))?;
        let net = Ipv4Net { addr, len };
        let base = Ipv4Addr::from(u32::from(addr) & net.mask());
        if base != addr {
            return Err(format!(
                "{s:?} has host bits set (did you mean {base}/{len}?)"
            ));
        }
        Ok(net)
    }
}

impl FromStr for AddrRange {
    type Err = String;

    /// One address `a.b.c.d`, an inclusive range `a.b.c.d-e.f.g.h`, or a prefix `a.b.c.d/len`
    /// (every address of it, network and broadcast included: pool addresses are routed to
    /// natgw, not on a link).
    fn from_str(s: &str) -> Result<Self, String> {
        let t = s.trim();
        if t.contains('/') {
            let n = Ipv4Net::from_str(t)?;
            return Ok(AddrRange {
                first: Ipv4Addr::from(n.first()),
                last: Ipv4Addr::from(n.last()),
            });
        }
        let (a, b) = t.split_once('-').unwrap_or((t, t));
        let first = Ipv4Addr::from_str(a.trim())
            .map_err(|_| format!("{s:?}: {a:?} is not an IPv4 address"))?;
        let last = Ipv4Addr::from_str(b.trim())
            .map_err(|_| format!("{s:?}: {b:?} is not an IPv4 address"))?;
        if first > last {
            return Err(format!("{s:?}: first address {first} is after last {last}"));
        }
        Ok(AddrRange { first, last })
    }
}

fn net(s: &str, field: &str) -> Result<Ipv4Net, ConfigError> {
    Ipv4Net::from_str(s).map_err(|r| err(field, r))
}

fn socket(s: &str, field: &str) -> Result<SocketAddrV4, ConfigError> {
    let sa = SocketAddrV4::from_str(s.trim()).map_err(|_| {
        err(
            field,
            format!("{s:?} is not an IPv4 address and port (a.b.c.d:port)"),
        )
    })?;
    if sa.port() == 0 {
        return Err(err(field, format!("{s:?}: port 0 is not allowed")));
    }
    unicast(&sa.ip().to_string(), field)?;
    Ok(sa)
}

fn port_range(s: &str, field: &str) -> Result<PortRange, ConfigError> {
    let (a, b) = s.split_once('-').unwrap_or((s, s));
    let bad = |p: &str| {
        err(
            field,
            format!("{s:?}: {p:?} is not a port number 1..=65535"),
        )
    };
    let first = a.trim().parse::<u16>().map_err(|_| bad(a))?;
    let last = b.trim().parse::<u16>().map_err(|_| bad(b))?;
    if first < 1024 {
        return Err(err(
            field,
            format!(
                "{s:?}: the dynamic range must start at 1024 or above (ports below 1024 are mapped within 1-1023)"
            ),
        ));
    }
    if first > last {
        return Err(err(
            field,
            format!("{s:?}: first port {first} is after last {last}"),
        ));
    }
    Ok(PortRange { first, last })
}

/// Linux `dev_valid_name`: 1..=15 bytes, not `.`/`..`, no `/`, `:` or whitespace.
fn ifname(s: &str, field: &str) -> Result<String, ConfigError> {
    let ok = !s.is_empty()
        && s.len() <= 15
        && s != "."
        && s != ".."
        && !s
            .chars()
            .any(|c| c == '/' || c == ':' || c.is_whitespace() || c.is_control());
    if ok {
        Ok(s.to_string())
    } else {
        Err(err(
            field,
            format!("{s:?} is not a valid interface name (1-15 bytes, no '/', ':' or whitespace)"),
        ))
    }
}

fn management(list: &[String], prefix: &str) -> Result<Vec<Ipv4Addr>, ConfigError> {
    let mut out: Vec<Ipv4Addr> = Vec::with_capacity(list.len());
    for (j, s) in list.iter().enumerate() {
        let f = format!("{prefix}.management[{j}]");
        let a = unicast(s, &f)?;
        if let Some(k) = out.iter().position(|b| *b == a) {
            return Err(err(
                f,
                format!("{a} is listed twice (also management[{k}])"),
            ));
        }
        out.push(a);
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// build + validate

fn build(raw: RawConfig) -> Result<Config, ConfigError> {
    let outside = build_outside(required(raw.outside, "outside")?)?;

    let mut inside: Vec<InsideInterface> = Vec::with_capacity(raw.inside.len());
    for (i, r) in raw.inside.iter().enumerate() {
        let p = format!("inside[{i}]");
        let f = format!("{p}.interface");
        let name = ifname(required(r.interface.as_deref(), &f)?, &f)?;
        if name == outside.name {
            return Err(err(f, format!("{name:?} is already the outside interface")));
        }
        if let Some(k) = inside.iter().position(|x| x.name == name) {
            return Err(err(
                f,
                format!("{name:?} is declared twice (also inside[{k}])"),
            ));
        }
        let management = management(&r.management, &p)?;
        inside.push(InsideInterface { name, management });
    }

    let dataplane = build_dataplane(raw.dataplane.unwrap_or_default())?;
    let sessions = build_sessions(raw.sessions.unwrap_or_default())?;
    let fragments = build_fragments(raw.fragments.unwrap_or_default())?;
    let control = build_control(raw.control.unwrap_or_default())?;

    if raw.realm.is_empty() {
        return Err(err("realm", "at least one [[realm]] is required"));
    }
    let mut realms: Vec<Realm> = Vec::with_capacity(raw.realm.len());
    for (i, r) in raw.realm.into_iter().enumerate() {
        let realm = build_realm(i, r, &inside)?;
        check_against_earlier(i, &realm, &realms)?;
        realms.push(realm);
    }
    check_externals(&outside, &realms)?;
    check_statics(&realms)?;

    Ok(Config {
        outside,
        inside,
        dataplane,
        sessions,
        fragments,
        control,
        realms,
    })
}

fn build_outside(r: RawOutside) -> Result<OutsideInterface, ConfigError> {
    let name = ifname(
        required(r.interface.as_deref(), "outside.interface")?,
        "outside.interface",
    )?;
    let address = unicast(
        required(r.address.as_deref(), "outside.address")?,
        "outside.address",
    )?;
    let gateway = unicast(
        required(r.gateway.as_deref(), "outside.gateway")?,
        "outside.gateway",
    )?;
    if gateway == address {
        return Err(err(
            "outside.gateway",
            format!("{gateway} is natgw's own outside address; the gateway is the upstream router"),
        ));
    }
    let management = management(&r.management, "outside")?;
    Ok(OutsideInterface {
        name,
        address,
        gateway,
        management,
    })
}

fn default_core() -> usize {
    // Core 0 usually takes interrupts and housekeeping; keep the poll loop off it when possible.
    match std::thread::available_parallelism() {
        Ok(n) if n.get() > 1 => 1,
        _ => 0,
    }
}

fn build_dataplane(r: RawDataplane) -> Result<Dataplane, ConfigError> {
    let workers = match r.workers {
        None => vec![Worker {
            core: default_core(),
            queue: 0,
        }],
        Some(ws) => {
            if ws.is_empty() {
                return Err(err("dataplane.workers", "at least one worker is required"));
            }
            let mut out: Vec<Worker> = Vec::with_capacity(ws.len());
            for (i, w) in ws.iter().enumerate() {
                let p = format!("dataplane.workers[{i}]");
                let fc = format!("{p}.core");
                let fq = format!("{p}.queue");
                let core = int_in(required(w.core, &fc)?, &fc, 0, 4095)? as usize;
                let queue = int_in(required(w.queue, &fq)?, &fq, 0, 4095)? as u32;
                if let Some(k) = out.iter().position(|o| o.core == core) {
                    return Err(err(
                        fc,
                        format!("core {core} is already used by workers[{k}]"),
                    ));
                }
                if let Some(k) = out.iter().position(|o| o.queue == queue) {
                    return Err(err(
                        fq,
                        format!("queue {queue} is already used by workers[{k}]"),
                    ));
                }
                out.push(Worker { core, queue });
            }
            out
        }
    };
    let xdp_mode = match r.xdp_mode.as_deref() {
        None => XdpMode::Auto,
        Some(s) => choice(s, "dataplane.xdp_mode", &XDP_MODES)?,
    };
    let poll = match r.poll.as_deref() {
        None => PollMode::Adaptive,
        Some(s) => choice(s, "dataplane.poll", &POLL_MODES)?,
    };
    let f = "dataplane.batch_size";
    let batch_size = int_in(r.batch_size.unwrap_or(DEFAULT_BATCH_SIZE), f, 1, 1024)? as usize;
    let f = "dataplane.ring_size";
    let ring_size = pow2_in(r.ring_size.unwrap_or(DEFAULT_RING_SIZE), f, 64, 16384)?;
    let f = "dataplane.umem_frames";
    // The default grows with a large ring so that raising ring_size alone stays valid.
    let umem_default = DEFAULT_UMEM_FRAMES.max(2 * ring_size);
    let umem_frames = pow2_in(r.umem_frames.unwrap_or(umem_default), f, 128, 1 << 20)?;
    if umem_frames < 2 * ring_size {
        return Err(err(
            f,
            format!(
                "{umem_frames} is less than 2 * ring_size ({}): the fill and tx rings could not both be full",
                2 * ring_size
            ),
        ));
    }
    let f = "dataplane.handoff_queue";
    let handoff_queue = int_in(
        r.handoff_queue.unwrap_or(DEFAULT_HANDOFF_QUEUE),
        f,
        64,
        1 << 20,
    )? as usize;
    Ok(Dataplane {
        workers,
        xdp_mode,
        poll,
        batch_size,
        ring_size: ring_size as u32,
        umem_frames: umem_frames as u32,
        handoff_queue,
        forward_only: r.forward_only.unwrap_or(false),
    })
}

fn build_sessions(r: RawSessions) -> Result<Sessions, ConfigError> {
    let f = "sessions.capacity_per_core";
    let v = int_in(
        r.capacity_per_core.unwrap_or(DEFAULT_SESSIONS_PER_CORE),
        f,
        1024,
        1 << 26,
    )?;
    Ok(Sessions {
        capacity_per_core: v as u32,
    })
}

fn build_fragments(r: RawFragments) -> Result<Fragments, ConfigError> {
    let max_datagrams = int_in(
        r.max_datagrams.unwrap_or(DEFAULT_FRAG_DATAGRAMS),
        "fragments.max_datagrams",
        1,
        1 << 20,
    )? as u32;
    let max_held = int_in(
        r.max_held.unwrap_or(DEFAULT_FRAG_HELD),
        "fragments.max_held",
        0,
        1 << 16,
    )? as u32;
    let timeout = int_in(
        r.timeout.unwrap_or(DEFAULT_FRAG_TIMEOUT),
        "fragments.timeout",
        1,
        60,
    )? as u32;
    Ok(Fragments {
        max_datagrams,
        max_held,
        timeout,
    })
}

fn build_control(r: RawControl) -> Result<Control, ConfigError> {
    let f = "control.listen";
    let s = r.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = SocketAddr::from_str(s.trim()).map_err(|_| {
        err(
            f,
            format!("{s:?} is not an address and port (a.b.c.d:port or [v6]:port)"),
        )
    })?;
    if listen.port() == 0 {
        return Err(err(f, format!("{s:?}: port 0 is not allowed")));
    }
    Ok(Control { listen })
}

fn realm_name(s: &str, field: &str) -> Result<String, ConfigError> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(s.to_string())
    } else {
        Err(err(
            field,
            format!("{s:?} is not a valid realm name (1-63 characters from A-Z a-z 0-9 - _ .)"),
        ))
    }
}

fn build_realm(i: usize, r: RawRealm, inside: &[InsideInterface]) -> Result<Realm, ConfigError> {
    let p = format!("realm[{i}]");
    let f = format!("{p}.name");
    let name = realm_name(required(r.name.as_deref(), &f)?, &f)?;

    let f = format!("{p}.interface");
    let interface = ifname(required(r.interface.as_deref(), &f)?, &f)?;
    if !inside.iter().any(|x| x.name == interface) {
        return Err(err(
            f,
            format!("{interface:?} is not declared as an [[inside]] interface"),
        ));
    }
    let vlan = match r.vlan {
        None => None,
        Some(v) => Some(int_in(v, &format!("{p}.vlan"), 1, 4094)? as u16),
    };

    if r.prefixes.is_empty() {
        return Err(err(
            format!("{p}.prefixes"),
            "at least one prefix is required",
        ));
    }
    let mut prefixes: Vec<Ipv4Net> = Vec::with_capacity(r.prefixes.len());
    for (j, s) in r.prefixes.iter().enumerate() {
        let f = format!("{p}.prefixes[{j}]");
        let n = net(s, &f)?;
        if let Some(k) = prefixes.iter().position(|o| o.overlaps(&n)) {
            return Err(err(
                f,
                format!("{n} overlaps prefixes[{k}] ({})", prefixes[k]),
            ));
        }
        prefixes.push(n);
    }
    let on_link = |a: Ipv4Addr| prefixes.iter().any(|n| n.contains(a));

    let gateway = match r.gateway.as_deref() {
        None => None,
        Some(s) => {
            let f = format!("{p}.gateway");
            let g = unicast(s, &f)?;
            if !on_link(g) {
                return Err(err(
                    f,
                    format!("{g} is not inside any of the realm's prefixes"),
                ));
            }
            Some(g)
        }
    };

    let mut routes: Vec<Route> = Vec::with_capacity(r.routes.len());
    for (j, rt) in r.routes.iter().enumerate() {
        let rp = format!("{p}.routes[{j}]");
        let f = format!("{rp}.prefix");
        let prefix = net(required(rt.prefix.as_deref(), &f)?, &f)?;
        if let Some(k) = prefixes.iter().position(|o| o.overlaps(&prefix)) {
            return Err(err(
                f,
                format!(
                    "{prefix} overlaps the on-link prefixes[{k}] ({})",
                    prefixes[k]
                ),
            ));
        }
        if let Some(k) = routes.iter().position(|o| o.prefix.overlaps(&prefix)) {
            return Err(err(
                f,
                format!("{prefix} overlaps routes[{k}] ({})", routes[k].prefix),
            ));
        }
        let f = format!("{rp}.via");
        let via = unicast(required(rt.via.as_deref(), &f)?, &f)?;
        if !on_link(via) {
            return Err(err(
                f,
                format!(
                    "{via} is not inside any of the realm's prefixes (a next hop must be on-link)"
                ),
            ));
        }
        routes.push(Route { prefix, via });
    }
    let reachable = |a: Ipv4Addr| on_link(a) || routes.iter().any(|rt| rt.prefix.contains(a));

    let mut pool: Vec<AddrRange> = Vec::with_capacity(r.pool.len());
    for (j, s) in r.pool.iter().enumerate() {
        let f = format!("{p}.pool[{j}]");
        let range = AddrRange::from_str(s).map_err(|e| err(&f, e))?;
        if let Some(bad) = reserved_overlap(&range) {
            return Err(err(f, format!("{range} includes {bad} addresses")));
        }
        if let Some(k) = pool.iter().position(|o| ranges_overlap(o, &range)) {
            return Err(err(f, format!("{range} overlaps pool[{k}] ({})", pool[k])));
        }
        pool.push(range);
    }

    let mut one_to_one: Vec<OneToOne> = Vec::with_capacity(r.one_to_one.len());
    for (j, m) in r.one_to_one.iter().enumerate() {
        let mp = format!("{p}.one_to_one[{j}]");
        let f = format!("{mp}.external");
        let external = unicast(required(m.external.as_deref(), &f)?, &f)?;
        if let Some(k) = pool.iter().position(|o| o.contains(external)) {
            return Err(err(
                f,
                format!(
                    "{external} overlaps pool[{k}] ({}): a 1:1 address owns all its ports and cannot also be shared",
                    pool[k]
                ),
            ));
        }
        if let Some(k) = one_to_one.iter().position(|o| o.external == external) {
            return Err(err(
                f,
                format!("{external} is already used by one_to_one[{k}]"),
            ));
        }
        let f = format!("{mp}.internal");
        let internal = unicast(required(m.internal.as_deref(), &f)?, &f)?;
        if !reachable(internal) {
            return Err(err(
                f,
                format!("internal address {internal} is not inside the realm's prefixes or routes"),
            ));
        }
        if let Some(k) = one_to_one.iter().position(|o| o.internal == internal) {
            return Err(err(
                f,
                format!("{internal} is already mapped by one_to_one[{k}]"),
            ));
        }
        one_to_one.push(OneToOne { external, internal });
    }

    if pool.is_empty() && one_to_one.is_empty() {
        return Err(err(
            format!("{p}.pool"),
            "at least one pool entry is required (a realm may have an empty pool only if it has one_to_one mappings)",
        ));
    }

    let mut static_mappings: Vec<StaticMapping> = Vec::with_capacity(r.statics.len());
    for (j, s) in r.statics.iter().enumerate() {
        let sp = format!("{p}.static[{j}]");
        let f = format!("{sp}.protocol");
        let protocol = choice(required(s.protocol.as_deref(), &f)?, &f, &PROTOCOLS)?;
        let f = format!("{sp}.external");
        let external = socket(required(s.external.as_deref(), &f)?, &f)?;
        if !pool.iter().any(|o| o.contains(*external.ip())) {
            return Err(err(
                f,
                format!("{} is not one of the realm's pool addresses", external.ip()),
            ));
        }
        let f = format!("{sp}.internal");
        let internal = socket(required(s.internal.as_deref(), &f)?, &f)?;
        if !reachable(*internal.ip()) {
            return Err(err(
                f,
                format!(
                    "internal address {} is not inside the realm's prefixes or routes",
                    internal.ip()
                ),
            ));
        }
        // Outbound packets from a statically mapped endpoint use its mapping; two mappings for
        // one internal endpoint would make that choice ambiguous.
        if let Some(k) = static_mappings
            .iter()
            .position(|o| o.protocol == protocol && o.internal == internal)
        {
            return Err(err(
                f,
                format!("{protocol} {internal} is already mapped by static[{k}]"),
            ));
        }
        static_mappings.push(StaticMapping {
            protocol,
            external,
            internal,
        });
    }

    let ports = build_ports(r.ports.unwrap_or_default(), &p)?;
    let mapping = match r.mapping.as_deref() {
        None => Mapping::EndpointIndependent,
        Some(s) => choice(s, &format!("{p}.mapping"), &MAPPINGS)?,
    };
    let filtering = match r.filtering.as_deref() {
        None => Filtering::AddressDependent,
        Some(s) => choice(s, &format!("{p}.filtering"), &FILTERINGS)?,
    };
    let timeouts = build_timeouts(r.timeouts.unwrap_or_default(), &p)?;

    Ok(Realm {
        name,
        interface,
        vlan,
        prefixes,
        gateway,
        pool,
        static_mappings,
        one_to_one,
        routes,
        ports,
        mapping,
        filtering,
        inbound_refresh: r.inbound_refresh.unwrap_or(false),
        hairpinning: r.hairpinning.unwrap_or(true),
        timeouts,
    })
}

fn build_ports(r: RawPorts, p: &str) -> Result<Ports, ConfigError> {
    let policy = match r.policy.as_deref() {
        None => PortPolicy::PreserveThenRandom,
        Some(s) => choice(s, &format!("{p}.ports.policy"), &PORT_POLICIES)?,
    };
    let range = match r.range.as_deref() {
        None => DEFAULT_PORT_RANGE,
        Some(s) => port_range(s, &format!("{p}.ports.range"))?,
    };
    let per_host_limit = int_in(
        r.per_host_limit.unwrap_or(DEFAULT_PER_HOST_LIMIT),
        &format!("{p}.ports.per_host_limit"),
        1,
        65535,
    )? as u32;
    Ok(Ports {
        policy,
        range,
        per_host_limit,
    })
}

fn build_timeouts(r: RawTimeouts, p: &str) -> Result<Timeouts, ConfigError> {
    let given = [r.udp, r.tcp_established, r.tcp_transitory, r.icmp];
    let rfc = [
        "RFC 4787 REQ-5",
        "RFC 5382 REQ-5",
        "RFC 5382 REQ-5",
        "RFC 5508 REQ-1",
    ];
    let mut v = [0u32; 4];
    for (j, (key, min, default)) in TIMEOUTS.iter().enumerate() {
        let f = format!("{p}.timeouts.{key}");
        let t = given[j].unwrap_or(*default);
        if t < *min {
            return Err(err(
                f,
                format!(
                    "{t} s is below the minimum of {min} s required by {}",
                    rfc[j]
                ),
            ));
        }
        v[j] = int_in(t, &f, *min, MAX_TIMEOUT)? as u32;
    }
    Ok(Timeouts {
        udp: v[0],
        tcp_established: v[1],
        tcp_transitory: v[2],
        icmp: v[3],
    })
}

fn ranges_overlap(a: &AddrRange, b: &AddrRange) -> bool {
    a.first <= b.last && b.first <= a.last
}

/// Address blocks that can never be a NAT external address.
fn reserved_overlap(r: &AddrRange) -> Option<&'static str> {
    const RESERVED: [(u32, u32, &str); 3] = [
        (0x0000_0000, 0x00FF_FFFF, "0.0.0.0/8 (this network)"),
        (0x7F00_0000, 0x7FFF_FFFF, "127.0.0.0/8 (loopback)"),
        (
            0xE000_0000,
            0xFFFF_FFFF,
            "224.0.0.0/3 (multicast, reserved or broadcast)",
        ),
    ];
    let (f, l) = (u32::from(r.first), u32::from(r.last));
    RESERVED
        .iter()
        .find(|(a, b, _)| f <= *b && *a <= l)
        .map(|(_, _, n)| *n)
}

/// Checks that need the realms before this one: names and (interface, VLAN) must be unique.
fn check_against_earlier(i: usize, r: &Realm, earlier: &[Realm]) -> Result<(), ConfigError> {
    if let Some(k) = earlier.iter().position(|o| o.name == r.name) {
        return Err(err(
            format!("realm[{i}].name"),
            format!("duplicate realm name {:?} (also realm[{k}])", r.name),
        ));
    }
    if let Some(k) = earlier
        .iter()
        .position(|o| o.interface == r.interface && o.vlan == r.vlan)
    {
        let (field, what) = match r.vlan {
            Some(v) => (format!("realm[{i}].vlan"), format!("VLAN {v}")),
            None => (format!("realm[{i}].interface"), "untagged".to_string()),
        };
        return Err(err(
            field,
            format!(
                "realm[{k}] ({:?}) already uses interface {:?} {what}: a realm is identified by its (interface, vlan) pair",
                earlier[k].name, r.interface
            ),
        ));
    }
    Ok(())
}

struct External {
    realm: usize,
    field: String,
    range: AddrRange,
}

fn externals(realms: &[Realm]) -> Vec<External> {
    let mut out = Vec::new();
    for (i, r) in realms.iter().enumerate() {
        for (j, range) in r.pool.iter().enumerate() {
            out.push(External {
                realm: i,
                field: format!("realm[{i}].pool[{j}]"),
                range: *range,
            });
        }
        for (j, m) in r.one_to_one.iter().enumerate() {
            out.push(External {
                realm: i,
                field: format!("realm[{i}].one_to_one[{j}].external"),
                range: AddrRange {
                    first: m.external,
                    last: m.external,
                },
            });
        }
    }
    out
}

/// Inbound traffic is steered to a realm by its destination address, so every external address
/// belongs to exactly one realm and never to natgw itself.
fn check_externals(outside: &OutsideInterface, realms: &[Realm]) -> Result<(), ConfigError> {
    let mut ext = externals(realms);
    // Sorted by first address, any overlap shows up against the entry reaching furthest so far.
    // Report the later entry in document order so the message points at what was added last.
    ext.sort_by_key(|e| u32::from(e.range.first));
    let mut reach: Option<usize> = None;
    for (n, e) in ext.iter().enumerate() {
        if let Some(m) = reach {
            let o = &ext[m];
            if o.range.last >= e.range.first {
                // Within one realm the per-realm checks already caught overlaps.
                let (a, b) = if (o.realm, &o.field) < (e.realm, &e.field) {
                    (o, e)
                } else {
                    (e, o)
                };
                return Err(err(
                    &b.field,
                    format!(
                        "{} overlaps {} ({}): an external address may belong to only one realm",
                        b.range, a.field, a.range
                    ),
                ));
            }
            if e.range.last > o.range.last {
                reach = Some(n);
            }
        } else {
            reach = Some(n);
        }
    }
    let owner = |a: Ipv4Addr| ext.iter().find(|e| e.range.contains(a));
    for (field, a) in [
        ("outside.address".to_string(), outside.address),
        ("outside.gateway".to_string(), outside.gateway),
    ]
    .into_iter()
    .chain(
        outside
            .management
            .iter()
            .enumerate()
            .map(|(j, a)| (format!("outside.management[{j}]"), *a)),
    ) {
        if let Some(e) = owner(a) {
            return Err(err(
                field,
                format!("{a} is also a NAT external address ({})", e.field),
            ));
        }
    }
    Ok(())
}

/// One external (protocol, address, port) forwards to one inside endpoint, whatever the realm.
fn check_statics(realms: &[Realm]) -> Result<(), ConfigError> {
    // Keyed by (is_tcp, endpoint): the model's Protocol is not Hash.
    let mut seen: std::collections::HashMap<(bool, SocketAddrV4), String> =
        std::collections::HashMap::new();
    for (i, r) in realms.iter().enumerate() {
        for (j, s) in r.static_mappings.iter().enumerate() {
            let field = format!("realm[{i}].static[{j}].external");
            let key = (s.protocol == Protocol::Tcp, s.external);
            if let Some(prev) = seen.get(&key) {
                return Err(err(
                    field,
                    format!(
                        "{} {} is already forwarded by {prev}",
                        s.protocol, s.external
                    ),
                ));
            }
            seen.insert(key, format!("realm[{i}].static[{j}]"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEAD: &str = r#"
[outside]
interface = "eth1"
address = "192.168.1.2"
gateway = "192.168.1.1"

[[inside]]
interface = "eth0"

[[inside]]
interface = "eth2"
"#;

    const REALM_A: &str = r#"
[[realm]]
name = "a"
interface = "eth0"
prefixes = ["10.0.0.0/24"]
pool = ["192.168.1.10"]
"#;

    fn ok(text: &str) -> Config {
        parse(text).unwrap_or_else(|e| panic!("rejected: {e}\n{text}"))
    }

    #[track_caller]
    fn rejects(text: &str, field: &str, reason: &str) {
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
    fn doc(extra: &str, tail: &str) -> String {
        format!("{HEAD}{REALM_A}{extra}\n{tail}")
    }

    #[test]
    fn defaults_are_filled() {
        let c = ok(&doc("", ""));
        assert_eq!(c.outside.name, "eth1");
        assert_eq!(c.outside.address, Ipv4Addr::new(192, 168, 1, 2));
        assert_eq!(c.outside.gateway, Ipv4Addr::new(192, 168, 1, 1));
        assert!(c.outside.management.is_empty());
        assert_eq!(c.inside.len(), 2);
        assert!(c.inside[0].management.is_empty());

        let d = &c.dataplane;
        assert_eq!(d.workers.len(), 1);
        assert_eq!(d.workers[0].queue, 0);
        let multi = std::thread::available_parallelism().map_or(1, |n| n.get()) > 1;
        assert_eq!(d.workers[0].core, usize::from(multi));
        assert_eq!(d.xdp_mode, XdpMode::Auto);
        assert_eq!(d.poll, PollMode::Adaptive);
        assert_eq!(d.batch_size, 64);
        assert_eq!(d.ring_size, 2048);
        assert_eq!(d.umem_frames, 8192);
        assert_eq!(d.handoff_queue, 4096);
        assert!(!d.forward_only);
        assert_eq!(c.sessions.capacity_per_core, 262_144);
        assert_eq!(
            c.fragments,
            Fragments {
                max_datagrams: 4096,
                max_held: 1024,
                timeout: 2
            }
        );
        assert_eq!(c.control.listen, "127.0.0.1:9180".parse().unwrap());

        let r = &c.realms[0];
        assert_eq!(r.name, "a");
        assert_eq!(r.vlan, None);
        assert_eq!(r.gateway, None);
        assert!(r.routes.is_empty() && r.static_mappings.is_empty() && r.one_to_one.is_empty());
        assert_eq!(r.mapping, Mapping::EndpointIndependent);
        assert_eq!(r.filtering, Filtering::AddressDependent);
        assert!(!r.inbound_refresh);
        assert!(r.hairpinning);
        assert_eq!(r.ports.policy, PortPolicy::PreserveThenRandom);
        assert_eq!(
            r.ports.range,
            PortRange {
                first: 1024,
                last: 65535
            }
        );
        assert_eq!(r.ports.per_host_limit, 4096);
        assert_eq!(
            r.timeouts,
            Timeouts {
                udp: 300,
                tcp_established: 7440,
                tcp_transitory: 240,
                icmp: 60
            }
        );
    }

    #[test]
    fn explicit_values_are_kept() {
        let c = ok(&doc(
            r#"vlan = 7
gateway = "10.0.0.1"
routes = [{ prefix = "10.1.0.0/16", via = "10.0.0.254" }]
static = [{ protocol = "udp", external = "192.168.1.21:53", internal = "10.1.2.3:5353" }]
one_to_one = [{ external = "192.168.1.50", internal = "10.0.0.50" }]
mapping = "address-dependent"
filtering = "endpoint-independent"
inbound_refresh = true
hairpinning = false
[realm.ports]
policy = "random"
range = "2000-3000"
per_host_limit = 10
[realm.timeouts]
udp = 120
tcp_established = 86400
tcp_transitory = 300
icmp = 90"#,
            r#"[dataplane]
workers = [{ core = 2, queue = 1 }, { core = 3, queue = 0 }]
xdp_mode = "native"
poll = "busy"
batch_size = 1024
ring_size = 4096
umem_frames = 16384
handoff_queue = 64
forward_only = true
[sessions]
capacity_per_core = 1024
[fragments]
max_datagrams = 1
max_held = 0
timeout = 60
[control]
listen = "[::1]:9000""#,
        )
        .replace(
            "pool = [\"192.168.1.10\"]",
            "pool = [\"192.168.1.10\", \"192.168.1.20-192.168.1.29\", \"198.51.100.0/30\"]",
        ));
        let r = &c.realms[0];
        assert_eq!(r.vlan, Some(7));
        assert_eq!(r.gateway, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(r.pool.len(), 3);
        assert_eq!(r.pool[1].len(), 10);
        assert_eq!(r.pool[2].first, Ipv4Addr::new(198, 51, 100, 0));
        assert_eq!(r.pool[2].last, Ipv4Addr::new(198, 51, 100, 3));
        assert_eq!(r.routes[0].via, Ipv4Addr::new(10, 0, 0, 254));
        assert_eq!(r.static_mappings[0].protocol, Protocol::Udp);
        assert_eq!(
            r.static_mappings[0].internal,
            "10.1.2.3:5353".parse().unwrap()
        );
        assert_eq!(r.one_to_one[0].internal, Ipv4Addr::new(10, 0, 0, 50));
        assert_eq!(r.mapping, Mapping::AddressDependent);
        assert_eq!(r.filtering, Filtering::EndpointIndependent);
        assert!(r.inbound_refresh && !r.hairpinning);
        assert_eq!(r.ports.policy, PortPolicy::Random);
        assert_eq!(
            r.ports.range,
            PortRange {
                first: 2000,
                last: 3000
            }
        );
        assert_eq!(r.ports.per_host_limit, 10);
        assert_eq!(r.timeouts.udp, 120);
        assert_eq!(r.timeouts.tcp_established, 86400);
        let d = &c.dataplane;
        assert_eq!(d.workers[1], Worker { core: 3, queue: 0 });
        assert_eq!((d.xdp_mode, d.poll), (XdpMode::Native, PollMode::Busy));
        assert_eq!(
            (d.batch_size, d.ring_size, d.umem_frames),
            (1024, 4096, 16384)
        );
        assert_eq!((d.handoff_queue, d.forward_only), (64, true));
        assert_eq!(c.sessions.capacity_per_core, 1024);
        assert_eq!(c.fragments.max_held, 0);
        assert_eq!(c.control.listen, "[::1]:9000".parse().unwrap());
        assert_eq!(parse(&c.to_toml()), Ok(c));
    }

    #[test]
    fn umem_default_follows_ring_size() {
        let c = ok(&doc("", "[dataplane]\nring_size = 8192"));
        assert_eq!(c.dataplane.umem_frames, 16384);
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
            "already used by one_to_one[0]",
        );
        rejects(
            &doc(
                "one_to_one = [{ external = \"192.168.1.50\", internal = \"10.0.0.5\" }, { external = \"192.168.1.51\", internal = \"10.0.0.5\" }]",
                "",
            ),
            "realm[0].one_to_one[1].internal",
            "already mapped by one_to_one[0]",
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
            &st(
                "{ protocol = \"tcp\", external = \"192.168.1.11:80\", internal = \"10.0.0.2:80\" }",
            ),
            "realm[0].static[0].external",
            "192.168.1.11 is not one of the realm's pool addresses",
        );
        rejects(
            &st(
                "{ protocol = \"tcp\", external = \"192.168.1.10:80\", internal = \"10.2.0.2:80\" }",
            ),
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
            "already mapped by static[0]",
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
    fn interfaces() {
        rejects(
            &doc("", "").replace("interface = \"eth2\"", "interface = \"eth0\""),
            "inside[1].interface",
            "declared twice (also inside[0])",
        );
        rejects(
            &doc("", "").replace("interface = \"eth2\"", "interface = \"eth1\""),
            "inside[1].interface",
            "already the outside interface",
        );
    }

    #[test]
    fn dataplane_bounds() {
        let dp = |s: &str| doc("", &format!("[dataplane]\n{s}"));
        rejects(
            &dp("workers = []"),
            "dataplane.workers",
            "at least one worker",
        );
        rejects(
            &dp("workers = [{ core = 1, queue = 0 }, { core = 1, queue = 1 }]"),
            "dataplane.workers[1].core",
            "core 1 is already used by workers[0]",
        );
        rejects(
            &dp("workers = [{ core = 1, queue = 0 }, { core = 2, queue = 0 }]"),
            "dataplane.workers[1].queue",
            "queue 0 is already used by workers[0]",
        );
        rejects(
            &dp("workers = [{ core = -1, queue = 0 }]"),
            "dataplane.workers[0].core",
            "out of range",
        );
        rejects(
            &dp("xdp_mode = \"fast\""),
            "dataplane.xdp_mode",
            "expected one of: auto, native, generic",
        );
        rejects(
            &dp("poll = \"spin\""),
            "dataplane.poll",
            "expected one of: adaptive, busy",
        );
        rejects(
            &dp("batch_size = 0"),
            "dataplane.batch_size",
            "out of range 1..=1024",
        );
        rejects(
            &dp("batch_size = 1025"),
            "dataplane.batch_size",
            "out of range",
        );
        rejects(
            &dp("ring_size = 1000"),
            "dataplane.ring_size",
            "not a power of two",
        );
        rejects(
            &dp("ring_size = 32"),
            "dataplane.ring_size",
            "out of range 64..=16384",
        );
        rejects(
            &dp("ring_size = 32768"),
            "dataplane.ring_size",
            "out of range",
        );
        rejects(
            &dp("ring_size = 4096\numem_frames = 4096"),
            "dataplane.umem_frames",
            "less than 2 * ring_size (8192)",
        );
        rejects(
            &dp("umem_frames = 10000"),
            "dataplane.umem_frames",
            "not a power of two",
        );
        rejects(
            &dp("handoff_queue = 63"),
            "dataplane.handoff_queue",
            "out of range 64..=",
        );
        rejects(
            &doc("", "[sessions]\ncapacity_per_core = 1023"),
            "sessions.capacity_per_core",
            "out of range 1024..=67108864",
        );
        rejects(
            &doc("", "[sessions]\ncapacity_per_core = 67108865"),
            "sessions.capacity_per_core",
            "out of range",
        );
        rejects(
            &doc("", "[fragments]\ntimeout = 0"),
            "fragments.timeout",
            "out of range 1..=60",
        );
        rejects(
            &doc("", "[fragments]\ntimeout = 61"),
            "fragments.timeout",
            "out of range 1..=60",
        );
        rejects(
            &doc("", "[fragments]\nmax_datagrams = 0"),
            "fragments.max_datagrams",
            "out of range",
        );
        rejects(
            &doc("", "[fragments]\nmax_held = -1"),
            "fragments.max_held",
            "out of range",
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
    fn errors_name_the_right_realm() {
        let text = format!(
            "{HEAD}{REALM_A}[[realm]]\nname = \"b\"\ninterface = \"eth2\"\nprefixes = [\"10.0.0.0/24\"]\npool = [\"192.168.1.11\"]\n[realm.timeouts]\nudp = 30\n"
        );
        rejects(&text, "realm[1].timeouts.udp", "RFC 4787");
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

    #[test]
    fn line_col_counts_chars() {
        assert_eq!(line_col("ab\ncd", 4), (2, 2));
        assert_eq!(line_col("é\nx", 1), (1, 1));
        assert_eq!(line_col("", 10), (1, 1));
    }

    fn example_texts() -> Vec<String> {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples");
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect();
        v.push(doc("", ""));
        v
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(512))]

        #[test]
        fn arbitrary_text_never_panics(s in "\\PC{0,400}") {
            let _ = parse(&s);
        }

        #[test]
        fn tomlish_text_never_panics(s in "([\\[\\]a-z_.\"=,{}0-9/:\\- \n]{0,200})") {
            let _ = parse(&s);
        }

        /// Small edits to valid files reach deep into validation instead of stopping at syntax.
        #[test]
        fn mutated_examples_never_panic(
            which in 0usize..16,
            at in 0usize..4096,
            cut in 0usize..8,
            insert in "[0-9a-z\\[\\]\"=./:\\- \n]{0,4}",
        ) {
            let texts = example_texts();
            let t = &texts[which % texts.len()];
            let mut at = at % (t.len() + 1);
            while !t.is_char_boundary(at) { at -= 1; }
            let mut end = (at + cut).min(t.len());
            while !t.is_char_boundary(end) { end -= 1; }
            let mutated = format!("{}{}{}", &t[..at], insert, &t[end..]);
            if let Ok(c) = parse(&mutated) {
                proptest::prop_assert_eq!(parse(&c.to_toml()), Ok(c));
            }
        }
    }
}
