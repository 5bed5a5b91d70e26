//! The NAT event log's logger (docs/eventlog.md): one management thread, off the worker
//! cores, drains every worker's ring (`nat::eventlog::Sink`), stamps each record with the
//! wall clock and writes it as a JSON line to `eventlog.file` and as an RFC 5424 message to
//! the syslog socket `eventlog.syslog`. The workers never wait for it: when it is slow (a
//! full disk, a syslog daemon that does not read) their rings fill and records are dropped
//! there, counted in `natgw_eventlog_lost_total{worker}`.

use crate::config::{Config, EventLog};
use crate::dataplane::run::Handle;
use crate::nat::Counters;
use crate::nat::Rules;
use crate::nat::eventlog::{Kind, Record, mask};
use std::fmt::Write as _;
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::net::Ipv4Addr;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The outputs, in `natgw_eventlog_*_total{output}` label order.
pub const OUTPUTS: [&str; 2] = ["file", "syslog"];
const FILE: usize = 0;
const SYSLOG: usize = 1;

/// RFC 5424 PRI: facility local0 (16, as VPP's NAT syslog), severity informational (6).
const PRI: u8 = 16 * 8 + 6;
const APP_NAME: &str = "natgw";
/// A syslog daemon that takes no datagram for this long is stuck: the record is counted as
/// a write error and the logger goes on (slowly, so that the rings fill and count).
const SYSLOG_TIMEOUT: Duration = Duration::from_secs(1);
/// Records taken from one ring per round, so that one busy worker does not starve the others.
const ROUND: usize = 4096;
/// How long the logger sleeps when the rings were empty.
const IDLE: Duration = Duration::from_millis(10);
/// How long it sleeps when no realm logs anything (no record can come; a reload that turns
/// logging on wakes it at once): idle, it wakes once a second instead of a hundred times
/// (0.4-0.8 % of a core on these VMs, a third of an idle natgw's CPU).
const IDLE_OFF: Duration = Duration::from_secs(1);

/// What the logger did, for the metrics; counted even while no logger runs (all zero).
#[derive(Debug, Default)]
pub struct Stats {
    pub records: [AtomicU64; 2],
    pub errors: [AtomicU64; 2],
}

pub static STATS: Stats = Stats {
    records: [AtomicU64::new(0), AtomicU64::new(0)],
    errors: [AtomicU64::new(0), AtomicU64::new(0)],
};

/// What the logger writes with, replaced on reload.
struct Settings {
    outputs: EventLog,
    /// Realm names by realm id (the records carry the id).
    names: Vec<String>,
}

struct Shared {
    counters: Vec<Arc<Counters>>,
    settings: Mutex<Settings>,
    /// Set by SIGHUP and reloads: the logger reopens its outputs (logrotate).
    reopen: AtomicBool,
    /// Whether some realm logs some event (else the logger sleeps [`IDLE_OFF`]).
    active: AtomicBool,
    /// The logger thread, unparked when the configuration changes.
    thread: OnceLock<std::thread::Thread>,
}

static LOGGER: OnceLock<Arc<Shared>> = OnceLock::new();

/// Per realm id, the event mask the configuration asks for.
fn masks(cfg: &Config, rules: &Rules) -> Vec<u8> {
    rules
        .realms
        .iter()
        .map(|rr| {
            let Some(r) = cfg.realms.iter().find(|r| !rr.retired && r.name == rr.name) else {
                return 0;
            };
            let l = r.log;
            (if l.mappings { mask::MAPPINGS } else { 0 })
                | (if l.sessions { mask::SESSIONS } else { 0 })
                | (if l.destinations {
                    mask::DESTINATIONS
                } else {
                    0
                })
                | (if l.exhaustion { mask::EXHAUSTION } else { 0 })
        })
        .collect()
}

fn settings(cfg: &Config, rules: &Rules) -> Settings {
    Settings {
        outputs: cfg.eventlog.clone(),
        names: rules.realms.iter().map(|r| r.name.clone()).collect(),
    }
}

/// Starts the logger thread for a running gateway (once; later calls reconfigure).
pub fn start(cfg: &Config, h: &Handle) -> std::io::Result<()> {
    if LOGGER.get().is_some() {
        configure(cfg, &h.rules);
        return Ok(());
    }
    let shared = Arc::new(Shared {
        counters: h.counters.clone(),
        settings: Mutex::new(settings(cfg, &h.rules)),
        reopen: AtomicBool::new(true),
        active: AtomicBool::new(true),
        thread: OnceLock::new(),
    });
    let s = Arc::clone(&shared);
    let t = std::thread::Builder::new()
        .name("natgw-eventlog".into())
        .spawn(move || run(&s))?;
    let _ = shared.thread.set(t.thread().clone());
    let _ = LOGGER.set(shared);
    configure(cfg, &h.rules);
    Ok(())
}

/// Applies a (re)loaded configuration: the realms' masks in every worker's sink, the
/// outputs and realm names for the logger. Reopens the outputs.
pub fn configure(cfg: &Config, rules: &Rules) {
    let Some(sh) = LOGGER.get() else { return };
    if let Ok(mut s) = sh.settings.lock() {
        *s = settings(cfg, rules);
    }
    let m = masks(cfg, rules);
    for c in &sh.counters {
        c.eventlog.configure(cfg.eventlog.ring as usize, &m);
    }
    sh.active.store(m.iter().any(|&m| m != 0), Relaxed);
    reopen();
    if let Some(t) = sh.thread.get() {
        t.unpark();
    }
}

/// Makes the logger reopen its file and syslog socket before its next write (SIGHUP, after
/// logrotate has moved the file away). Without a logger, nothing to do.
pub fn reopen() {
    if let Some(sh) = LOGGER.get() {
        sh.reopen.store(true, Relaxed);
    }
}

/// The open outputs.
struct Out {
    file: Option<BufWriter<File>>,
    syslog: Option<(UnixDatagram, PathBuf)>,
    /// When an output that failed to open is tried again.
    retry: Instant,
}

fn open(e: &EventLog) -> Out {
    let file =
        e.file.as_ref().and_then(
            |p| match OpenOptions::new().create(true).append(true).open(p) {
                Ok(f) => Some(BufWriter::with_capacity(64 * 1024, f)),
                Err(err) => {
                    tracing::warn!("eventlog: {}: {err}", p.display());
                    None
                }
            },
        );
    let syslog = e.syslog.as_ref().and_then(|p| {
        let s = UnixDatagram::unbound().ok()?;
        s.set_write_timeout(Some(SYSLOG_TIMEOUT)).ok()?;
        Some((s, p.clone()))
    });
    Out {
        file,
        syslog,
        retry: Instant::now() + Duration::from_secs(1),
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic()))
        .unwrap_or_else(|| "-".into())
}

fn run(sh: &Shared) {
    let host = hostname();
    let pid = std::process::id();
    let mut out = open(&EventLog::default());
    let mut line = String::with_capacity(512);
    let mut names: Vec<String> = Vec::new();
    loop {
        let want_file;
        let want_syslog;
        {
            let Ok(s) = sh.settings.lock() else { return };
            let reopen = sh.reopen.swap(false, Relaxed);
            if reopen {
                // `configure` sets the flag too: the names may have changed.
                names.clone_from(&s.names);
            }
            let missing = (out.file.is_none() && s.outputs.file.is_some())
                || (out.syslog.is_none() && s.outputs.syslog.is_some());
            if reopen || (missing && Instant::now() >= out.retry) {
                if let Some(f) = out.file.as_mut() {
                    let _ = f.flush();
                }
                out = open(&s.outputs);
            }
            want_file = s.outputs.file.is_some();
            want_syslog = s.outputs.syslog.is_some();
        }
        let mut n = 0;
        let mut pending = 0u64;
        for (w, c) in sh.counters.iter().enumerate() {
            for _ in 0..ROUND {
                let Some(r) = c.eventlog.pop() else { break };
                n += 1;
                let t = SystemTime::now();
                let realm = names.get(usize::from(r.realm)).map_or("", String::as_str);
                if want_file {
                    line.clear();
                    json(&mut line, &r, t, realm, w);
                    line.push('\n');
                    match out.file.as_mut().map(|f| f.write_all(line.as_bytes())) {
                        Some(Ok(())) => pending += 1,
                        _ => {
                            STATS.errors[FILE].fetch_add(1, Relaxed);
                        }
                    }
                }
                if want_syslog {
                    line.clear();
                    syslog(&mut line, &r, t, realm, &host, pid);
                    match out
                        .syslog
                        .as_ref()
                        .map(|(s, p)| s.send_to(line.as_bytes(), p))
                    {
                        Some(Ok(_)) => {
                            STATS.records[SYSLOG].fetch_add(1, Relaxed);
                        }
                        _ => {
                            STATS.errors[SYSLOG].fetch_add(1, Relaxed);
                        }
                    }
                }
            }
        }
        if pending > 0 {
            match out.file.as_mut().map(BufWriter::flush) {
                Some(Ok(())) => STATS.records[FILE].fetch_add(pending, Relaxed),
                _ => STATS.errors[FILE].fetch_add(pending, Relaxed),
            };
        }
        if n == 0 {
            if sh.active.load(Relaxed) {
                std::thread::sleep(IDLE);
            } else {
                // Records logged before logging was turned off were drained above.
                std::thread::park_timeout(IDLE_OFF);
            }
        }
    }
}

/// RFC 3339 UTC with milliseconds: `2026-12-02T01:46:14.123Z` (the daemon log's format).
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    crate::log::Rfc3339(d.as_millis() as u64).to_string()
}

fn ip(a: u32) -> Ipv4Addr {
    Ipv4Addr::from(a)
}

/// The JSON line of a record (without the newline).
pub fn json(o: &mut String, r: &Record, t: SystemTime, realm: &str, worker: usize) {
    let _ = write!(
        o,
        "{{\"time\":\"{}\",\"event\":\"{}\",\"realm\":{},\"worker\":{worker},\"proto\":{},\"isaddr\":\"{}\",\"isport\":{}",
        rfc3339(t),
        r.kind.msgid(),
        super::json_str(realm),
        r.proto,
        ip(r.in_addr),
        r.in_port
    );
    match r.kind {
        Kind::AddressesExhausted => {}
        Kind::PortsExhausted => {
            let _ = write!(o, ",\"xsaddr\":\"{}\"", ip(r.ext_addr));
        }
        _ => {
            let _ = write!(
                o,
                ",\"xsaddr\":\"{}\",\"xsport\":{}",
                ip(r.ext_addr),
                r.ext_port
            );
        }
    }
    if r.flags & Record::DEST != 0 {
        let _ = write!(
            o,
            ",\"xdaddr\":\"{}\",\"xdport\":{}",
            ip(r.rem_addr),
            r.rem_port
        );
    }
    o.push('}');
}

/// An RFC 5424 PARAM-VALUE: `"`, `\` and `]` escaped.
fn sd_value(o: &mut String, v: &str) {
    for c in v.chars() {
        if matches!(c, '"' | '\\' | ']') {
            o.push('\\');
        }
        o.push(c);
    }
}

/// The RFC 5424 message of a record: VPP's NAT syslog layout (MSGID, SD-ID `napmap` for
/// mappings, `nsess` for sessions, the same PARAM-NAMEs), plus `REALM`; natgw's own
/// exhaustion events use SD-ID `nexh`.
pub fn syslog(o: &mut String, r: &Record, t: SystemTime, realm: &str, host: &str, pid: u32) {
    let sdid = match r.kind {
        Kind::MappingAdd | Kind::MappingDel => "napmap",
        Kind::SessionAdd | Kind::SessionDel => "nsess",
        Kind::AddressesExhausted | Kind::PortsExhausted => "nexh",
    };
    let _ = write!(
        o,
        "<{PRI}>1 {} {host} {APP_NAME} {pid} {} [{sdid} REALM=\"",
        rfc3339(t),
        r.kind.msgid()
    );
    sd_value(o, realm);
    let _ = write!(
        o,
        "\" IATYP=\"IPv4\" ISADDR=\"{}\" ISPORT=\"{}\"",
        ip(r.in_addr),
        r.in_port
    );
    match r.kind {
        Kind::AddressesExhausted => {}
        Kind::PortsExhausted => {
            let _ = write!(o, " XATYP=\"IPv4\" XSADDR=\"{}\"", ip(r.ext_addr));
        }
        _ => {
            let _ = write!(
                o,
                " XATYP=\"IPv4\" XSADDR=\"{}\" XSPORT=\"{}\"",
                ip(r.ext_addr),
                r.ext_port
            );
        }
    }
    let _ = write!(o, " PROTO=\"{}\"", r.proto);
    if r.flags & Record::DEST != 0 {
        let _ = write!(
            o,
            " XDADDR=\"{}\" XDPORT=\"{}\"",
            ip(r.rem_addr),
            r.rem_port
        );
    }
    o.push(']');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> SystemTime {
        // 2026-12-02T01:46:14.123Z
        UNIX_EPOCH + Duration::from_millis(1_796_175_974_123)
    }

    fn rec(kind: Kind) -> Record {
        Record {
            in_addr: u32::from(Ipv4Addr::new(10, 0, 0, 2)),
            ext_addr: u32::from(Ipv4Addr::new(192, 168, 1, 10)),
            rem_addr: u32::from(Ipv4Addr::new(203, 0, 113, 7)),
            in_port: 40000,
            ext_port: 1025,
            rem_port: 53,
            realm: 0,
            kind,
            proto: 17,
            flags: 0,
        }
    }

    #[test]
    fn timestamps() {
        assert_eq!(rfc3339(t()), "2026-12-02T01:46:14.123Z");
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let leap = UNIX_EPOCH + Duration::from_secs(951_782_400 + 86399) + Duration::from_millis(5);
        assert_eq!(rfc3339(leap), "2000-02-29T23:59:59.005Z");
    }

    #[test]
    fn json_lines() {
        let mut o = String::new();
        json(&mut o, &rec(Kind::MappingAdd), t(), "cust\"a", 1);
        assert_eq!(
            o,
            "{\"time\":\"2026-12-02T01:46:14.123Z\",\"event\":\"APMADD\",\"realm\":\"cust\\\"a\",\
             \"worker\":1,\"proto\":17,\"isaddr\":\"10.0.0.2\",\"isport\":40000,\
             \"xsaddr\":\"192.168.1.10\",\"xsport\":1025}"
        );
        o.clear();
        let mut r = rec(Kind::SessionDel);
        r.flags = Record::DEST;
        json(&mut o, &r, t(), "r", 0);
        assert_eq!(
            o,
            "{\"time\":\"2026-12-02T01:46:14.123Z\",\"event\":\"SDEL\",\"realm\":\"r\",\
             \"worker\":0,\"proto\":17,\"isaddr\":\"10.0.0.2\",\"isport\":40000,\
             \"xsaddr\":\"192.168.1.10\",\"xsport\":1025,\"xdaddr\":\"203.0.113.7\",\"xdport\":53}"
        );
        o.clear();
        json(&mut o, &rec(Kind::AddressesExhausted), t(), "r", 0);
        assert_eq!(
            o,
            "{\"time\":\"2026-12-02T01:46:14.123Z\",\"event\":\"AEXH\",\"realm\":\"r\",\
             \"worker\":0,\"proto\":17,\"isaddr\":\"10.0.0.2\",\"isport\":40000}"
        );
    }

    #[test]
    fn syslog_messages() {
        let mut o = String::new();
        syslog(&mut o, &rec(Kind::MappingDel), t(), "r]", "gw", 42);
        assert_eq!(
            o,
            "<134>1 2026-12-02T01:46:14.123Z gw natgw 42 APMDEL [napmap REALM=\"r\\]\" \
             IATYP=\"IPv4\" ISADDR=\"10.0.0.2\" ISPORT=\"40000\" XATYP=\"IPv4\" \
             XSADDR=\"192.168.1.10\" XSPORT=\"1025\" PROTO=\"17\"]"
        );
        o.clear();
        let mut r = rec(Kind::SessionAdd);
        r.flags = Record::DEST;
        syslog(&mut o, &r, t(), "r", "gw", 42);
        assert_eq!(
            o,
            "<134>1 2026-12-02T01:46:14.123Z gw natgw 42 SADD [nsess REALM=\"r\" \
             IATYP=\"IPv4\" ISADDR=\"10.0.0.2\" ISPORT=\"40000\" XATYP=\"IPv4\" \
             XSADDR=\"192.168.1.10\" XSPORT=\"1025\" PROTO=\"17\" XDADDR=\"203.0.113.7\" \
             XDPORT=\"53\"]"
        );
        o.clear();
        syslog(&mut o, &rec(Kind::PortsExhausted), t(), "r", "gw", 42);
        assert_eq!(
            o,
            "<134>1 2026-12-02T01:46:14.123Z gw natgw 42 PEXH [nexh REALM=\"r\" \
             IATYP=\"IPv4\" ISADDR=\"10.0.0.2\" ISPORT=\"40000\" XATYP=\"IPv4\" \
             XSADDR=\"192.168.1.10\" PROTO=\"17\"]"
        );
    }
}
