//! `[eventlog]` (the NAT event log's outputs) and `[realm.log]` (which events a realm logs),
//! docs/eventlog.md.

use super::err;
use super::values::{choice, pow2_in};
use crate::config::ConfigError;
use crate::config::model::{EventLog, Realm, RealmLog};
use serde::Deserialize;
use std::path::PathBuf;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawEventLog {
    pub(super) file: Option<String>,
    pub(super) syslog: Option<String>,
    pub(super) ring: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRealmLog {
    #[serde(default)]
    pub(super) events: Vec<String>,
    pub(super) destinations: Option<bool>,
}

/// Records per worker ring: 16 Ki records (384 KiB) hold several seconds of a busy
/// worker's mappings while the logger writes.
const DEFAULT_RING: i64 = 16384;

fn path(v: Option<String>, field: &str) -> Result<Option<PathBuf>, ConfigError> {
    match v {
        None => Ok(None),
        Some(s) if !s.starts_with('/') => Err(err(field, format!("{s:?} is not an absolute path"))),
        Some(s) => Ok(Some(PathBuf::from(s))),
    }
}

pub(super) fn build_eventlog(r: RawEventLog) -> Result<EventLog, ConfigError> {
    Ok(EventLog {
        file: path(r.file, "eventlog.file")?,
        syslog: path(r.syslog, "eventlog.syslog")?,
        ring: pow2_in(r.ring.unwrap_or(DEFAULT_RING), "eventlog.ring", 16, 1 << 22)? as u32,
    })
}

#[derive(Clone, Copy)]
enum Event {
    Mappings,
    Sessions,
    Exhaustion,
}

const EVENTS: [(&str, Event); 3] = [
    ("mappings", Event::Mappings),
    ("sessions", Event::Sessions),
    ("exhaustion", Event::Exhaustion),
];

pub(super) fn build_realm_log(r: Option<RawRealmLog>, p: &str) -> Result<RealmLog, ConfigError> {
    let Some(r) = r else {
        return Ok(RealmLog::default());
    };
    let mut log = RealmLog::default();
    for (i, e) in r.events.iter().enumerate() {
        let f = format!("{p}.log.events[{i}]");
        let flag = match choice(e, &f, &EVENTS)? {
            Event::Mappings => &mut log.mappings,
            Event::Sessions => &mut log.sessions,
            Event::Exhaustion => &mut log.exhaustion,
        };
        if *flag {
            return Err(err(f, format!("{e:?} is listed twice")));
        }
        *flag = true;
    }
    log.destinations = r.destinations.unwrap_or(false);
    if log.destinations && !log.sessions {
        return Err(err(
            format!("{p}.log.destinations"),
            "destinations are logged in session records: add \"sessions\" to events",
        ));
    }
    Ok(log)
}

/// A realm that logs needs somewhere to log to.
pub(super) fn check_outputs(e: &EventLog, realms: &[Realm]) -> Result<(), ConfigError> {
    if e.file.is_some() || e.syslog.is_some() {
        return Ok(());
    }
    match realms.iter().position(|r| r.log != RealmLog::default()) {
        Some(i) => Err(err(
            format!("realm[{i}].log"),
            "events are logged but [eventlog] has no output: set eventlog.file or eventlog.syslog",
        )),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::parse;

    const BASE: &str = "[outside]\ninterface = \"eth1\"\naddress = \"192.168.1.2\"\n\
        gateway = \"192.168.1.1\"\n[[inside]]\ninterface = \"eth0\"\n\
        [[realm]]\nname = \"r\"\ninterface = \"eth0\"\nprefixes = [\"10.0.0.0/24\"]\n\
        gateway = \"10.0.0.1\"\npool = [\"192.168.1.10\"]\n";

    fn err_of(extra: &str) -> String {
        let e = parse(&format!("{BASE}{extra}")).unwrap_err();
        format!("{}: {}", e.field, e.reason)
    }

    #[test]
    fn off_by_default() {
        let c = parse(BASE).unwrap();
        assert_eq!(c.eventlog.file, None);
        assert_eq!(c.eventlog.syslog, None);
        assert_eq!(c.realms[0].log, Default::default());
    }

    #[test]
    fn events_and_outputs() {
        let c = parse(&format!(
            "{BASE}[realm.log]\nevents = [\"mappings\", \"sessions\"]\ndestinations = true\n\
             [eventlog]\nfile = \"/var/log/natgw/events.jsonl\"\nsyslog = \"/dev/log\"\nring = 1024\n"
        ))
        .unwrap();
        let l = c.realms[0].log;
        assert!(l.mappings && l.sessions && l.destinations && !l.exhaustion);
        assert_eq!(c.eventlog.ring, 1024);
        assert_eq!(
            c.eventlog.syslog.as_deref(),
            Some(std::path::Path::new("/dev/log"))
        );
        // `natgw check` shows it, and what it shows reads back the same.
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
        let plain = parse(BASE).unwrap();
        assert_eq!(parse(&plain.to_toml()).unwrap(), plain);
    }

    #[test]
    fn errors_name_the_key() {
        let out = "[eventlog]\nfile = \"/tmp/e.jsonl\"\n";
        let e = err_of(&format!(
            "[realm.log]\nevents = [\"mappings\", \"nat\"]\n{out}"
        ));
        assert!(e.starts_with("realm[0].log.events[1]: "), "{e}");
        let e = err_of(&format!(
            "[realm.log]\nevents = [\"mappings\", \"mappings\"]\n{out}"
        ));
        assert!(
            e.starts_with("realm[0].log.events[1]: ") && e.contains("twice"),
            "{e}"
        );
        let e = err_of(&format!(
            "[realm.log]\nevents = [\"mappings\"]\ndestinations = true\n{out}"
        ));
        assert!(e.starts_with("realm[0].log.destinations: "), "{e}");
        let e = err_of("[realm.log]\nevents = [\"mappings\"]\n");
        assert!(
            e.starts_with("realm[0].log: ") && e.contains("no output"),
            "{e}"
        );
        let e = err_of("[eventlog]\nfile = \"events.jsonl\"\n");
        assert!(
            e.starts_with("eventlog.file: ") && e.contains("absolute"),
            "{e}"
        );
        let e = err_of("[eventlog]\nring = 1000\n");
        assert!(e.starts_with("eventlog.ring: "), "{e}");
        let e = err_of("[eventlog]\nfiles = \"/x\"\n");
        assert!(e.starts_with("eventlog"), "{e}");
        let e = err_of("[realm.log]\nevent = []\n");
        assert!(e.starts_with("realm[0].log"), "{e}");
    }
}
