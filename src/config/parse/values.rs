//! Scalar values: required keys, keyword choices, bounded integers, addresses, prefixes and
//! ranges, socket addresses, port ranges, interface names. Each takes the key path it reports.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::str::FromStr;

use super::err;
use crate::config::ConfigError;
use crate::config::model::{AddrRange, Ipv4Net, PortRange};

pub(super) fn required<T>(v: Option<T>, field: &str) -> Result<T, ConfigError> {
    v.ok_or_else(|| err(field, "required key is missing"))
}

pub(super) fn choice<T: Copy>(s: &str, field: &str, table: &[(&str, T)]) -> Result<T, ConfigError> {
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

pub(super) fn int_in(v: i64, field: &str, lo: i64, hi: i64) -> Result<i64, ConfigError> {
    if (lo..=hi).contains(&v) {
        Ok(v)
    } else {
        Err(err(field, format!("{v} is out of range {lo}..={hi}")))
    }
}

pub(super) fn pow2_in(v: i64, field: &str, lo: i64, hi: i64) -> Result<i64, ConfigError> {
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
pub(super) fn unicast(s: &str, field: &str) -> Result<Ipv4Addr, ConfigError> {
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

/// Why a text is not a prefix or an address range; the parser puts it in a `ConfigError`
/// with the key path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ValueError(String);

impl ValueError {
    fn new(reason: String) -> ValueError {
        ValueError(reason)
    }
}

impl std::fmt::Display for ValueError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ValueError {}

impl From<ValueError> for String {
    fn from(e: ValueError) -> String {
        e.0
    }
}

impl FromStr for Ipv4Net {
    type Err = ValueError;

    /// `a.b.c.d/len` with the host bits zero.
    fn from_str(s: &str) -> Result<Self, ValueError> {
        let s = s.trim();
        let (a, l) = s
            .split_once('/')
            .ok_or_else(|| ValueError::new(format!("{s:?} is not a prefix (a.b.c.d/len)")))?;
        let addr = Ipv4Addr::from_str(a.trim())
            .map_err(|_| ValueError::new(format!("{s:?}: {a:?} is not an IPv4 address")))?;
        let len = l
            .trim()
            .parse::<u8>()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| ValueError::new(format!("{s:?}: prefix length {l:?} is not 0..=32")))?;
        let net = Ipv4Net { addr, len };
        let base = Ipv4Addr::from(u32::from(addr) & net.mask());
        if base != addr {
            return Err(ValueError::new(format!(
                "{s:?} has host bits set (did you mean {base}/{len}?)"
            )));
        }
        Ok(net)
    }
}

impl FromStr for AddrRange {
    type Err = ValueError;

    /// One address `a.b.c.d`, an inclusive range `a.b.c.d-e.f.g.h`, or a prefix `a.b.c.d/len`
    /// (every address of it, network and broadcast included: pool addresses are routed to
    /// natgw, not on a link).
    fn from_str(s: &str) -> Result<Self, ValueError> {
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
            .map_err(|_| ValueError::new(format!("{s:?}: {a:?} is not an IPv4 address")))?;
        let last = Ipv4Addr::from_str(b.trim())
            .map_err(|_| ValueError::new(format!("{s:?}: {b:?} is not an IPv4 address")))?;
        if first > last {
            return Err(ValueError::new(format!(
                "{s:?}: first address {first} is after last {last}"
            )));
        }
        Ok(AddrRange { first, last })
    }
}

pub(super) fn net(s: &str, field: &str) -> Result<Ipv4Net, ConfigError> {
    Ipv4Net::from_str(s).map_err(|r| err(field, r))
}

pub(super) fn socket(s: &str, field: &str) -> Result<SocketAddrV4, ConfigError> {
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

pub(super) fn port_range(s: &str, field: &str) -> Result<PortRange, ConfigError> {
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
pub(super) fn ifname(s: &str, field: &str) -> Result<String, ConfigError> {
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
