//! The management plane: the API on `control.listen` (HTTP) and on `control.socket` (the
//! CLI's Unix socket) serving Prometheus metrics, health, counters, the session list, the
//! mappings, configuration reload and session clearing. `http.rs` is the server (limits,
//! authentication, routing), `listen.rs` opens its listeners; this file and `sessions.rs`
//! have what each endpoint does. It reads the workers' single-writer counters and talks to
//! the workers only over their control channels.

pub mod eventlog;
mod http;
mod listen;
pub mod mappings;
pub mod metrics;
pub mod sessions;

pub use http::Api;
pub use listen::{ListenError, SocketFile};

use crate::config::{Config, ConfigError};
use crate::dataplane::run::{self, Handle};
use crate::dataplane::worker::Control;
use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A worker whose loop has not stamped its heartbeat for this long is not ready (as for
/// `natgw_ready`).
const HEARTBEAT_STALE: Duration = Duration::from_secs(2);

pub struct State {
    pub handle: Mutex<Handle>,
    pub config_path: PathBuf,
    pub metrics: metrics::Metrics,
    /// Held by each reload and mapping edit: one at a time (`mappings` module docs).
    pub edits: Mutex<()>,
}

impl State {
    /// The management state of a running gateway: the API and SIGHUP share it, so both
    /// reload through the same [`reload`].
    pub fn new(handle: Handle, config_path: PathBuf) -> Arc<State> {
        Arc::new(State {
            handle: Mutex::new(handle),
            config_path,
            metrics: metrics::Metrics::new(),
            edits: Mutex::new(()),
        })
    }
}

impl State {
    /// A copy of the handle (its fields are shared: counters, channels), so that no request
    /// holds the lock while it works.
    pub fn handle(&self) -> Option<Handle> {
        self.handle.lock().ok().map(|h| h.clone())
    }
}

/// Why a reload did not happen. The running configuration stays in force.
#[derive(Debug)]
pub enum ReloadError {
    /// The file could not be read or is not a valid configuration.
    Config(ConfigError),
    /// The management state's lock was poisoned by a panic.
    Poisoned,
    /// The running gateway refused the configuration.
    Gateway(run::ReloadError),
}

impl fmt::Display for ReloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReloadError::Config(e) => write!(f, "{e}"),
            ReloadError::Poisoned => f.write_str("internal: poisoned lock"),
            ReloadError::Gateway(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for ReloadError {}

/// An applied reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reloaded {
    /// The configuration generation now in force (1 at start).
    pub generation: u64,
    pub message: String,
}

/// Loads, validates and applies the configuration file (SIGHUP and `POST /reload`): the
/// answer comes once every worker has applied it. The running configuration stays in force
/// on any error; keys that need a restart are refused by name (`run::restart_only`).
/// Every attempt is counted in the metrics (`natgw_reloads_total{result}`).
pub fn reload(state: &State) -> Result<Reloaded, ReloadError> {
    let r = apply_reload(state);
    eventlog::reopen();
    state.metrics.reloads.record(r.is_ok());
    // The gateway numbers the generations (`natgw_config_generation`); one that some
    // workers did not acknowledge is in force all the same.
    match &r {
        Ok(done) => state.metrics.reloads.set_generation(done.generation),
        Err(ReloadError::Gateway(run::ReloadError::NotApplied { generation, .. })) => {
            state.metrics.reloads.set_generation(*generation)
        }
        Err(_) => {}
    }
    r
}

fn apply_reload(state: &State) -> Result<Reloaded, ReloadError> {
    let _one_at_a_time = state.edits.lock().map_err(|_| ReloadError::Poisoned)?;
    let cfg = crate::config::load(&state.config_path).map_err(ReloadError::Config)?;
    let mut h = state.handle.lock().map_err(|_| ReloadError::Poisoned)?;
    let generation = h.reload(&cfg).map_err(ReloadError::Gateway)?;
    eventlog::configure(&cfg, &h.rules);
    Ok(Reloaded {
        generation,
        message: format!(
            "reloaded {} realm(s), configuration generation {generation}",
            cfg.realms.len()
        ),
    })
}

pub fn clear_sessions(h: &Handle) {
    for tx in &h.control {
        let _ = tx.send(Control::ClearSessions);
    }
}

/// `/readyz`: every worker's loop running (its heartbeat fresh), XDP attached to every
/// interface, every interface up. Err: each reason it is not ready.
pub fn readiness(h: &Handle) -> Result<(), Vec<String>> {
    let mut why = Vec::new();
    let now_ns = h.started.elapsed().as_nanos() as u64;
    for (i, d) in h.dp.iter().enumerate() {
        let hb = d.stats.heartbeat_ns.get();
        if !d.stats.running.load(Ordering::Relaxed) {
            why.push(format!("worker {i} is not running"));
        } else if hb == 0 || now_ns.saturating_sub(hb) >= HEARTBEAT_STALE.as_nanos() as u64 {
            why.push(format!(
                "worker {i} has not gone round its loop for {} s",
                HEARTBEAT_STALE.as_secs()
            ));
        }
    }
    if h.dp.is_empty() {
        why.push("no worker runs".to_string());
    }
    for name in &h.interfaces {
        if !h.xdp_modes.iter().any(|(n, _)| n == name) {
            why.push(format!("XDP is not attached to {name}"));
        }
    }
    for (name, up) in &h.health.link_up {
        if !up.load(Ordering::Relaxed) {
            why.push(format!("interface {name} is down"));
        }
    }
    if why.is_empty() { Ok(()) } else { Err(why) }
}

/// `GET /status`: what `natgw status` shows besides the counters of `/stats`.
pub fn status_json(h: &Handle) -> String {
    let ifaces: Vec<String> = h
        .interfaces
        .iter()
        .map(|name| {
            let mode = h
                .xdp_modes
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, m)| json_str(&format!("{m:?}").to_lowercase()))
                .unwrap_or_else(|| "null".into());
            let up = h
                .health
                .link_up
                .iter()
                .find(|(n, _)| n == name)
                .is_some_and(|(_, u)| u.load(Ordering::Relaxed));
            format!(
                "{{\"name\":{},\"xdp_mode\":{mode},\"up\":{up}}}",
                json_str(name)
            )
        })
        .collect();
    let (ready, reasons) = match readiness(h) {
        Ok(()) => (true, Vec::new()),
        Err(r) => (false, r),
    };
    let reasons: Vec<String> = reasons.iter().map(|r| json_str(r)).collect();
    let alive =
        h.dp.iter()
            .filter(|d| d.stats.running.load(Ordering::Relaxed))
            .count();
    format!(
        "{{\"version\":{},\"uptime_secs\":{},\"generation\":{},\"workers\":{},\
         \"workers_alive\":{alive},\"copy_fallbacks\":{},\"interfaces\":[{}],\"ready\":{ready},\
         \"not_ready\":[{}]}}",
        json_str(env!("CARGO_PKG_VERSION")),
        h.started.elapsed().as_secs(),
        h.generation,
        h.control.len(),
        h.copy_fallbacks,
        ifaces.join(","),
        reasons.join(",")
    )
}

/// `GET /mappings`: the static forwards and 1:1 mappings of the configuration in force, per
/// realm.
pub fn mappings_json(cfg: &Config) -> String {
    mappings_json_of(cfg, None)
}

/// `GET /mappings?realm=R`: one realm's (None: every realm's), with the realm's mappings
/// file (`"mappings_file"`, null without one) and how many of its entries are inline (the
/// first `inline_static` and `inline_one_to_one`; the API edits only the others).
pub fn mappings_json_of(cfg: &Config, realm: Option<&str>) -> String {
    let realms: Vec<String> = cfg
        .realms
        .iter()
        .filter(|r| realm.is_none_or(|n| n == r.name))
        .map(|r| {
            let st: Vec<String> = r
                .static_mappings
                .iter()
                .map(|m| {
                    format!(
                        "{{\"protocol\":\"{}\",\"external\":\"{}\",\"internal\":\"{}\"}}",
                        m.protocol.name(),
                        m.external,
                        m.internal
                    )
                })
                .collect();
            let one: Vec<String> = r
                .one_to_one
                .iter()
                .map(|m| {
                    format!(
                        "{{\"external\":\"{}\",\"internal\":\"{}\"}}",
                        m.external, m.internal
                    )
                })
                .collect();
            let (file, inline_st, inline_one) = match &r.mappings_file {
                Some(m) => (
                    json_str(&m.path.display().to_string()),
                    m.statics_from,
                    m.one_to_one_from,
                ),
                None => ("null".into(), r.static_mappings.len(), r.one_to_one.len()),
            };
            format!(
                "{{\"realm\":{},\"mappings_file\":{file},\"inline_static\":{inline_st},\
                 \"inline_one_to_one\":{inline_one},\"static\":[{}],\"one_to_one\":[{}]}}",
                json_str(&r.name),
                st.join(","),
                one.join(",")
            )
        })
        .collect();
    format!("{{\"realms\":[{}]}}", realms.join(","))
}

/// Minimal JSON string escaping for the API's hand-written JSON.
pub fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// All counters summed over workers, as a JSON object.
pub fn stats_json(h: &Handle) -> String {
    let mut fields: Vec<(String, u64)> = Vec::new();
    let mut add = |name: &str, v: u64| match fields.iter_mut().find(|(n, _)| n == name) {
        Some(f) => f.1 += v,
        None => fields.push((name.to_string(), v)),
    };
    for c in &h.counters {
        c.each(|n, _, v| add(n, v));
        for r in crate::nat::DropReason::ALL {
            add(&format!("drop_{}", r.label()), c.drops_of(*r));
        }
    }
    for d in &h.dp {
        d.each(|n, _, v| add(n, v));
    }
    for (_, drops) in &h.health.xdp_drops {
        for (slot, label, _) in crate::dataplane::xdp::XDP_DROP_REASONS {
            add(&format!("xdp_drop_{label}"), drops.get(*slot).unwrap_or(0));
        }
    }
    let body: Vec<String> = fields
        .iter()
        .map(|(n, v)| format!("{}:{v}", json_str(n)))
        .collect();
    format!(
        "{{\"workers\":{},\"uptime_secs\":{},\"generation\":{},{}}}",
        h.control.len(),
        h.started.elapsed().as_secs(),
        h.generation,
        body.join(",")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::rss::{DEFAULT_KEY, Rss};
    use crate::nat::rules::{RssSteering, Rules};
    use std::time::Duration;

    const CONF: &str = "[outside]\ninterface = \"eth1\"\naddress = \"192.168.1.2\"\n\
        gateway = \"192.168.1.1\"\n[[inside]]\ninterface = \"eth0\"\n\
        [dataplane]\nworkers = [{ core = 0, queue = 0 }, { core = 1, queue = 1 }]\n\
        [[realm]]\nname = \"r\"\ninterface = \"eth0\"\nprefixes = [\"10.0.0.0/24\"]\n\
        gateway = \"10.0.0.1\"\npool = [\"192.168.1.10\"]\n";

    /// A running gateway of two workers on eth1/eth0 (the test holds the workers' ends).
    fn state(path: PathBuf) -> (State, Vec<crate::dataplane::worker::ControlRx>) {
        let cfg = crate::config::parse(CONF).unwrap();
        let mut rules = Rules::new(&cfg, Arc::new(crate::nat::ports::BlockPartition::new(2)));
        rules.rss = Some(RssSteering {
            rss: Rss::new(&DEFAULT_KEY, (0..128).map(|i| i % 2).collect()).unwrap(),
            tcp_ports: true,
            udp_ports: true,
            queue_of_core: vec![0, 1],
        });
        let (txs, rxs): (Vec<_>, Vec<_>) = (0..2)
            .map(|_| crate::dataplane::worker::control::channel(4).unwrap())
            .unzip();
        let handle = Handle {
            counters: (0..2).map(|_| Arc::default()).collect(),
            dp: (0..2).map(|_| Arc::default()).collect(),
            control: txs,
            rules: Arc::new(rules),
            neigh: Arc::new(crate::dataplane::neigh::NeighTable::new(16)),
            started: std::time::Instant::now(),
            xdp_modes: Vec::new(),
            copy_fallbacks: 0,
            interfaces: vec!["eth1".into(), "eth0".into()],
            health: Arc::default(),
            pass: Vec::new(),
            config: Arc::new(cfg),
            generation: 1,
        };
        let st = State {
            handle: Mutex::new(handle),
            config_path: path,
            metrics: metrics::Metrics::new(),
            edits: Mutex::new(()),
        };
        (st, rxs)
    }

    #[test]
    fn mappings_of_the_config() {
        let cfg = crate::config::parse(&CONF.replace(
            "pool = [\"192.168.1.10\"]\n",
            "pool = [\"192.168.1.10\"]\n\
             static = [{ protocol = \"tcp\", external = \"192.168.1.10:80\", internal = \"10.0.0.5:8080\" }]\n\
             one_to_one = [{ external = \"192.168.1.11\", internal = \"10.0.0.9\" }]\n",
        ))
        .unwrap();
        assert_eq!(
            mappings_json(&cfg),
            "{\"realms\":[{\"realm\":\"r\",\"mappings_file\":null,\"inline_static\":1,\
             \"inline_one_to_one\":1,\"static\":[{\"protocol\":\"tcp\",\
             \"external\":\"192.168.1.10:80\",\"internal\":\"10.0.0.5:8080\"}],\
             \"one_to_one\":[{\"external\":\"192.168.1.11\",\"internal\":\"10.0.0.9\"}]}]}"
        );
    }

    #[test]
    fn readiness_names_what_is_missing() {
        let (st, _rxs) = state(std::env::temp_dir().join("natgw-ready-unused.toml"));
        let mut h = st.handle.lock().unwrap().clone();
        let why = readiness(&h).unwrap_err();
        assert!(
            why.iter().any(|w| w == "worker 0 is not running"),
            "{why:?}"
        );
        assert!(
            why.iter().any(|w| w == "XDP is not attached to eth0"),
            "{why:?}"
        );
        h.xdp_modes = vec![
            ("eth1".into(), natgw_kernel::bpf::AttachMode::Native),
            ("eth0".into(), natgw_kernel::bpf::AttachMode::Generic),
        ];
        let now = h.started.elapsed().as_nanos() as u64;
        for d in &h.dp {
            d.stats.running.store(true, Ordering::Relaxed);
            d.stats.heartbeat_ns.set(now.max(1));
        }
        h.dp[1].stats.running.store(false, Ordering::Relaxed);
        assert_eq!(readiness(&h).unwrap_err(), vec!["worker 1 is not running"]);
        h.dp[1].stats.running.store(true, Ordering::Relaxed);
        assert_eq!(readiness(&h), Ok(()));
        let s = status_json(&h);
        assert!(
            s.contains("{\"name\":\"eth0\",\"xdp_mode\":\"generic\",\"up\":false}"),
            "{s}"
        );
        assert!(
            s.contains("\"ready\":true") && s.contains("\"generation\":1"),
            "{s}"
        );
    }

    #[test]
    fn reload_keeps_interfaces_and_rss() {
        let path = std::env::temp_dir().join(format!("natgw-reload-{}.toml", std::process::id()));
        let (st, rxs) = state(path.clone());
        let before = Arc::clone(&st.handle.lock().unwrap().rules);

        // A second inside interface (its realm would be Inside(1), a port no worker has).
        let added = CONF.replace(
            "[dataplane]",
            "[[inside]]\ninterface = \"eth2\"\n[dataplane]",
        );
        std::fs::write(&path, &added).unwrap();
        let e = reload(&st).unwrap_err().to_string();
        assert!(e.contains("needs a restart"), "{e}");
        assert!(Arc::ptr_eq(&st.handle.lock().unwrap().rules, &before));
        assert!(
            rxs.iter().all(|r| r.is_empty()),
            "nothing sent to the workers"
        );

        // Keys only a restart applies: refused by path, nothing sent, nothing changed.
        for (from, to, key) in [
            (
                "[dataplane]",
                "[sessions]\ncapacity_per_core = 4096\n[dataplane]",
                "sessions.capacity_per_core",
            ),
            (
                "[dataplane]",
                "[fragments]\ntimeout = 9\n[dataplane]",
                "fragments.timeout",
            ),
            (
                "[dataplane]",
                "[control]\nlisten = \"127.0.0.1:9999\"\n[dataplane]",
                "control.listen",
            ),
            (
                "[dataplane]\n",
                "[dataplane]\npoll = \"busy\"\n",
                "dataplane.poll",
            ),
            ("core = 1,", "core = 3,", "dataplane.workers"),
            (
                "pool = [",
                "ports = { range = \"2000-3000\" }\npool = [",
                "realm[0].ports.range",
            ),
        ] {
            std::fs::write(&path, CONF.replace(from, to)).unwrap();
            let e = reload(&st).unwrap_err().to_string();
            assert!(
                e.starts_with(key) && e.contains("needs a restart"),
                "{key}: {e}"
            );
            assert!(Arc::ptr_eq(&st.handle.lock().unwrap().rules, &before));
            assert_eq!(st.handle.lock().unwrap().generation, 1);
            assert!(
                rxs.iter().all(|r| r.is_empty()),
                "{key}: sent to the workers"
            );
        }

        // The same interfaces: applied once every worker has acknowledged, with the NIC's
        // RSS steering kept and the next generation.
        std::fs::write(&path, format!("{CONF}hairpinning = false\n")).unwrap();
        let (done, got) = std::thread::scope(|sc| {
            let workers: Vec<_> = rxs
                .iter()
                .map(|r| {
                    sc.spawn(move || {
                        let deadline = std::time::Instant::now() + Duration::from_secs(5);
                        loop {
                            match r.try_recv() {
                                Ok(Control::SetRules {
                                    rules,
                                    generation,
                                    ack,
                                }) => {
                                    ack.send(generation).unwrap();
                                    return rules;
                                }
                                Ok(_) => panic!("another message than the new rules"),
                                Err(_) => {
                                    assert!(std::time::Instant::now() < deadline, "no rules");
                                    std::thread::sleep(Duration::from_millis(1));
                                }
                            }
                        }
                    })
                })
                .collect();
            let done = reload(&st).unwrap();
            let got: Vec<_> = workers.into_iter().map(|w| w.join().unwrap()).collect();
            (done, got)
        });
        assert_eq!(done.generation, 2);
        assert!(done.message.contains("generation 2"), "{}", done.message);
        let after = Arc::clone(&st.handle.lock().unwrap().rules);
        assert!(!Arc::ptr_eq(&after, &before));
        assert!(after.rss.is_some(), "RSS steering lost on reload");
        for w in got {
            assert!(Arc::ptr_eq(&w, &after));
        }
        assert!(stats_json(&st.handle.lock().unwrap()).contains("\"generation\":2,"));

        // A worker that never answers: an error naming it and the generation.
        let e = reload(&st).unwrap_err().to_string();
        assert!(
            e.contains("worker 0 did not apply configuration generation 3"),
            "{e}"
        );
        let _ = std::fs::remove_file(&path);
    }
}
