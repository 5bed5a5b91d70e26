//! Session listing and deletion for the API and the CLI: filters, pages, and a streamed
//! answer built from the workers' bounded steps (see [`crate::nat::listing`]).
//!
//! The management thread asks one worker for one step at a time and writes each chunk out
//! before it asks for the next, so neither a worker nor natgw's memory carries the whole
//! table: a worker spends one step (at most a few thousand slots) between two batches per
//! request, and the answer is written as it is made.
//!
//! Query parameters (all optional): `realm` (name), `protocol` (tcp, udp, icmp), `inside`,
//! `external`, `remote` (an address, or address:port), `limit` (sessions in this page),
//! `cursor` (the `next` of the previous page).

use super::json_str;
use crate::dataplane::run::Handle;
use crate::dataplane::worker::{Control, DeleteStep, ListStep, SessionInfo};
use crate::nat::listing::{Endpoint, Filter, STEP_LIVE};
use crate::packet::ipv4::Protocol;
use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// How long a worker may take to answer one step before the listing gives up.
const STEP_TIMEOUT: Duration = Duration::from_secs(2);

/// A parsed listing or deletion request.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Query {
    pub filter: Filter,
    /// Sessions to list at most (a page); None: all.
    pub limit: Option<u64>,
    /// Where this page starts: (core, slot).
    pub cursor: Option<(usize, u32)>,
}

/// A request parameter that was refused, and why.
#[derive(Debug, PartialEq, Eq)]
pub struct QueryError {
    pub field: String,
    pub reason: String,
}

impl fmt::Display for QueryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for QueryError {}

fn refuse(field: &str, reason: impl Into<String>) -> QueryError {
    QueryError {
        field: field.to_string(),
        reason: reason.into(),
    }
}

/// `a.b.c.d` or `a.b.c.d:port`.
fn endpoint(field: &str, v: &str) -> Result<Endpoint, QueryError> {
    let (a, p) = match v.rsplit_once(':') {
        Some((a, p)) => (a, Some(p)),
        None => (v, None),
    };
    let addr: Ipv4Addr = a
        .parse()
        .map_err(|_| refuse(field, format!("{v:?} is not an IPv4 address[:port]")))?;
    let port = match p {
        Some(p) => Some(
            p.parse::<u16>()
                .map_err(|_| refuse(field, format!("{p:?} is not a port (0-65535)")))?,
        ),
        None => None,
    };
    Ok(Endpoint {
        addr: u32::from(addr),
        port,
    })
}

/// Undoes the percent-encoding of a query value (`%3A` for `:`); `+` is a space.
pub(super) fn unescape(field: &str, v: &str) -> Result<String, QueryError> {
    let b = v.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' => {
                let hex = b
                    .get(i + 1..i + 3)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u8::from_str_radix(h, 16).ok())
                    .ok_or_else(|| refuse(field, "bad percent-encoding"))?;
                out.push(hex);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| refuse(field, "not UTF-8"))
}

impl Query {
    /// Parses a URL query string; realm names are looked up in `h`'s running rules.
    pub fn parse(query: &str, h: &Handle) -> Result<Query, QueryError> {
        let mut q = Query::default();
        for kv in query.split('&').filter(|kv| !kv.is_empty()) {
            let (k, v) = kv.split_once('=').unwrap_or((kv, ""));
            let v = unescape(k, v)?;
            match k {
                "realm" => {
                    let r = h
                        .rules
                        .realms
                        .iter()
                        .find(|r| !r.retired && r.name == v)
                        .ok_or_else(|| refuse(k, format!("no realm named {v:?}")))?;
                    q.filter.realm = Some(r.id);
                }
                "protocol" | "proto" => {
                    q.filter.proto = Some(match v.to_ascii_lowercase().as_str() {
                        "tcp" => Protocol::TCP,
                        "udp" => Protocol::UDP,
                        "icmp" => Protocol::ICMP,
                        _ => return Err(refuse(k, format!("{v:?} is not tcp, udp or icmp"))),
                    })
                }
                "inside" => q.filter.inside = Some(endpoint(k, &v)?),
                "external" => q.filter.external = Some(endpoint(k, &v)?),
                "remote" => q.filter.remote = Some(endpoint(k, &v)?),
                "limit" => {
                    q.limit = Some(
                        v.parse()
                            .map_err(|_| refuse(k, format!("{v:?} is not a number")))?,
                    )
                }
                "cursor" => {
                    let c = v
                        .split_once('.')
                        .and_then(|(c, s)| Some((c.parse().ok()?, s.parse().ok()?)))
                        .ok_or_else(|| refuse(k, format!("{v:?} is not a cursor (core.slot)")))?;
                    if c.0 >= h.control.len() {
                        return Err(refuse(k, format!("no worker {}", c.0)));
                    }
                    q.cursor = Some(c);
                }
                _ => return Err(refuse(k, "unknown parameter")),
            }
        }
        Ok(q)
    }
}

/// What a listing found.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Listed {
    /// Sessions written.
    pub sent: u64,
    /// Matching sessions from the cursor on (written or not).
    pub matched: u64,
    /// Where the next page starts, when the limit cut this one.
    pub next: Option<(usize, u32)>,
}

/// Lists the sessions `q` asks for, writing the JSON answer piece by piece to `out`:
/// `{"sessions":[...],"total":N,"next":"core.slot"|null}`. `total` counts every matching
/// session from the cursor on, also those beyond the page.
pub fn list(
    h: &Handle,
    q: &Query,
    out: &mut dyn FnMut(&str) -> io::Result<()>,
) -> io::Result<Listed> {
    let wall = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    out("{\"sessions\":[")?;
    let mut listed = Listed::default();
    let (first_core, first_slot) = q.cursor.unwrap_or((0, 0));
    let mut buf = String::new();
    for core in first_core..h.control.len() {
        let mut from = Some(if core == first_core { first_slot } else { 0 });
        while let Some(slot) = from {
            let left = q.limit.map_or(u64::MAX, |l| l.saturating_sub(listed.sent));
            let (rtx, rrx) = crossbeam::channel::bounded(1);
            let step = ListStep {
                from: slot,
                filter: q.filter,
                emit: left.min(STEP_LIVE as u64) as u32,
                reply: rtx,
            };
            if h.control[core].send(Control::Sessions(step)).is_err() {
                return Err(io::Error::other(format!("worker {core} is gone")));
            }
            let chunk = rrx
                .recv_timeout(STEP_TIMEOUT)
                .map_err(|_| io::Error::other(format!("worker {core} did not answer")))?;
            buf.clear();
            for s in &chunk.sessions {
                if listed.sent > 0 || !buf.is_empty() {
                    buf.push(',');
                }
                session_json(&mut buf, h, s, wall);
            }
            listed.sent += chunk.sessions.len() as u64;
            listed.matched += u64::from(chunk.matched);
            if listed.next.is_none()
                && let Some(s) = chunk.first_unsent
            {
                listed.next = Some((core, s));
            }
            if !buf.is_empty() {
                out(&buf)?;
            }
            from = chunk.next;
        }
    }
    let next = match listed.next {
        Some((c, s)) => json_str(&format!("{c}.{s}")),
        None => "null".to_string(),
    };
    out(&format!("],\"total\":{},\"next\":{next}}}", listed.matched))?;
    Ok(listed)
}

/// Removes the sessions `q`'s filter matches (every worker, in bounded steps); returns how
/// many. `limit` and `cursor` do not apply.
pub fn delete(h: &Handle, q: &Query) -> io::Result<u64> {
    let mut removed = 0u64;
    for (core, tx) in h.control.iter().enumerate() {
        let mut from = Some(0);
        while let Some(slot) = from {
            let (rtx, rrx) = crossbeam::channel::bounded(1);
            let step = DeleteStep {
                from: slot,
                filter: q.filter,
                reply: rtx,
            };
            if tx.send(Control::DeleteSessions(step)).is_err() {
                return Err(io::Error::other(format!("worker {core} is gone")));
            }
            let (n, next) = rrx
                .recv_timeout(STEP_TIMEOUT)
                .map_err(|_| io::Error::other(format!("worker {core} did not answer")))?;
            removed += u64::from(n);
            from = next;
        }
    }
    Ok(removed)
}

/// One session as a JSON object: the fields of Windows NAT's `Get-NetNatSession` (inside
/// source and destination, external source and destination, creation time) plus state,
/// idle time, expiry, owning core; NAT44 translates the source only, so both destinations
/// are the remote end.
pub fn session_json(o: &mut String, h: &Handle, s: &SessionInfo, wall_now: u64) {
    use std::fmt::Write;
    let realm = h
        .rules
        .realms
        .get(s.realm as usize)
        .map_or("", |r| r.name.as_str());
    let _ = write!(
        o,
        "{{\"core\":{},\"realm\":{},\"protocol\":\"{}\",\"inside\":\"{}:{}\",\"external\":\"{}:{}\",\
         \"remote\":\"{}:{}\",\"inside_destination\":\"{}:{}\",\"external_destination\":\"{}:{}\",\
         \"state\":\"{}\",\"tcp_established\":{},\"created_unix\":{},\"age_secs\":{},\"idle_secs\":{},\
         \"expires_in_secs\":{},\"inbound\":{}}}",
        s.core,
        json_str(realm),
        s.proto.name(),
        s.inside.0,
        s.inside.1,
        s.external.0,
        s.external.1,
        s.remote.0,
        s.remote.1,
        s.remote.0,
        s.remote.1,
        s.remote.0,
        s.remote.1,
        s.state,
        s.tcp_established,
        wall_now.saturating_sub(u64::from(s.age_secs)),
        s.age_secs,
        s.idle_secs,
        s.expires_in_secs,
        s.inbound
    );
}
