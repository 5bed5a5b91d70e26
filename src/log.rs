//! The daemon's log: `tracing` events written to stderr, one line each, in a form that
//! suits both a terminal and journald.
//!
//! Under systemd (`JOURNAL_STREAM` set, stderr connected to the journal) each line starts
//! with its syslog priority, `<3>` for an error up to `<7>` for trace (sd-daemon(3)): the
//! journal files it at that priority and adds its own timestamp, so the line has none.
//! Anywhere else a line starts with an RFC 3339 UTC timestamp and the level. The message
//! always reads `natgw: <message>`, followed by the event's fields as `key=value`.
//!
//! `NATGW_LOG` sets the most verbose level written (`error`, `warn`, `info`, the default,
//! `debug`, `trace`).

use std::fmt;
use std::time::{SystemTime, UNIX_EPOCH};
use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// Installs the subscriber (once per process; later calls change nothing). A bad
/// `NATGW_LOG` value is reported and the default used.
pub fn init() {
    let (level, bad) = match std::env::var("NATGW_LOG") {
        Ok(v) => match parse_level(&v) {
            Some(l) => (l, None),
            None => (Level::INFO, Some(v)),
        },
        Err(_) => (Level::INFO, None),
    };
    let fmt = LineFormat {
        journal: std::env::var_os("JOURNAL_STREAM").is_some(),
    };
    let installed = tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .event_format(fmt)
        .try_init()
        .is_ok();
    if installed && let Some(v) = bad {
        tracing::warn!("NATGW_LOG={v:?} is not error, warn, info, debug or trace; using info");
    }
}

fn parse_level(v: &str) -> Option<Level> {
    Some(match v.trim().to_ascii_lowercase().as_str() {
        "error" => Level::ERROR,
        "warn" | "warning" => Level::WARN,
        "info" => Level::INFO,
        "debug" => Level::DEBUG,
        "trace" => Level::TRACE,
        _ => return None,
    })
}

/// The syslog priority of a level (sd-daemon(3) prefixes).
fn priority(l: &Level) -> u8 {
    match *l {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        _ => 7,
    }
}

/// `<prio>natgw: message k=v` for the journal, `timestamp LEVEL natgw: message k=v`
/// elsewhere.
struct LineFormat {
    journal: bool,
}

impl<S, N> FormatEvent<S, N> for LineFormat
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        _ctx: &FmtContext<'_, S, N>,
        mut w: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let level = event.metadata().level();
        if self.journal {
            write!(w, "<{}>", priority(level))?;
        } else {
            let now = SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default();
            write!(w, "{} {:<5} ", Rfc3339(now.as_millis() as u64), level)?;
        }
        let mut v = Fields::default();
        event.record(&mut v);
        writeln!(w, "natgw: {}{}", v.message, v.rest)
    }
}

/// An event's message and its other fields as ` key=value`.
#[derive(Default)]
struct Fields {
    message: String,
    rest: String,
}

impl Visit for Fields {
    fn record_debug(&mut self, f: &Field, v: &dyn fmt::Debug) {
        use std::fmt::Write;
        if f.name() == "message" {
            let _ = write!(self.message, "{v:?}");
        } else {
            let _ = write!(self.rest, " {}={v:?}", f.name());
        }
    }
    fn record_str(&mut self, f: &Field, v: &str) {
        use std::fmt::Write;
        if f.name() == "message" {
            self.message.push_str(v);
        } else {
            let _ = write!(self.rest, " {}={v:?}", f.name());
        }
    }
}

/// Milliseconds since the Unix epoch as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub struct Rfc3339(pub u64);

impl fmt::Display for Rfc3339 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (secs, ms) = (self.0 / 1000, self.0 % 1000);
        let (days, s) = (secs / 86_400, secs % 86_400);
        let (y, m, d) = civil_from_days(days as i64);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{ms:03}Z",
            s / 3600,
            s / 60 % 60,
            s % 60
        )
    }
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps() {
        assert_eq!(Rfc3339(0).to_string(), "1970-01-01T00:00:00.000Z");
        // 2026-12-02T02:20:00.123Z
        assert_eq!(
            Rfc3339(1_796_178_000_123).to_string(),
            "2026-12-02T02:20:00.123Z"
        );
        // A leap day.
        assert_eq!(
            Rfc3339(951_782_400_000).to_string(),
            "2000-02-29T00:00:00.000Z"
        );
    }

    /// The lines `f` logs, formatted for the journal or not.
    fn lines(journal: bool, f: impl FnOnce()) -> String {
        use std::sync::{Arc, Mutex};
        #[derive(Clone, Default)]
        struct Buf(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Buf {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(b);
                Ok(b.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let buf = Buf::default();
        let out = buf.clone();
        let sub = tracing_subscriber::fmt()
            .with_max_level(Level::DEBUG)
            .with_writer(move || buf.clone())
            .event_format(LineFormat { journal })
            .finish();
        tracing::subscriber::with_default(sub, f);
        String::from_utf8(out.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn journal_lines_carry_the_priority_and_no_timestamp() {
        let out = lines(true, || {
            tracing::info!(workers = 2, "running with {} worker(s)", 2);
            tracing::error!("stopping: {}", "worker 0 died");
        });
        assert_eq!(
            out,
            "<6>natgw: running with 2 worker(s) workers=2\n<3>natgw: stopping: worker 0 died\n"
        );
    }

    #[test]
    fn terminal_lines_carry_time_and_level() {
        let out = lines(false, || tracing::warn!(interface = "eth0", "link down"));
        let (stamp, rest) = out.split_once(' ').unwrap();
        assert_eq!(stamp.len(), "2026-12-02T02:20:00.123Z".len(), "{out}");
        assert!(
            stamp.ends_with('Z') && stamp.as_bytes()[10] == b'T',
            "{out}"
        );
        assert_eq!(rest, "WARN  natgw: link down interface=\"eth0\"\n");
    }

    #[test]
    fn levels_and_priorities() {
        assert_eq!(parse_level("WARN"), Some(Level::WARN));
        assert_eq!(parse_level(" debug "), Some(Level::DEBUG));
        assert_eq!(parse_level("loud"), None);
        assert_eq!(priority(&Level::ERROR), 3);
        assert_eq!(priority(&Level::INFO), 6);
        assert_eq!(priority(&Level::TRACE), 7);
    }
}
