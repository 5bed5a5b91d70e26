//! The management plane: a small HTTP API on `control.listen` serving Prometheus metrics,
//! counters, the session list, configuration reload and session clearing. It reads the
//! workers' single-writer counters and talks to the workers only over their control channels.

mod http;
pub mod metrics;

use crate::dataplane::run::Handle;
use crate::dataplane::worker::{Control, SessionInfo};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

pub struct State {
    pub handle: Mutex<Handle>,
    pub config_path: PathBuf,
    pub metrics: metrics::Metrics,
}

/// Starts the HTTP API on its own thread. Fails only if the address cannot be bound.
pub fn serve(listen: SocketAddr, handle: Handle, config_path: PathBuf) -> std::io::Result<()> {
    let listener = std::net::TcpListener::bind(listen)?;
    let state = Arc::new(State {
        handle: Mutex::new(handle),
        config_path,
        metrics: metrics::Metrics::new(),
    });
    std::thread::Builder::new()
        .name("natgw-api".into())
        .spawn(move || http::serve(listener, state))?;
    Ok(())
}

/// Sessions of every worker (each worker answers between two batches).
pub fn sessions(h: &Handle) -> Vec<SessionInfo> {
    let mut all = Vec::new();
    for tx in &h.control {
        let (rtx, rrx) = crossbeam::channel::bounded(1);
        if tx.send(Control::Sessions(rtx)).is_ok()
            && let Ok(mut v) = rrx.recv_timeout(Duration::from_secs(2))
        {
            all.append(&mut v);
        }
    }
    all
}

/// Loads, validates and applies the configuration file. The running configuration stays in
/// force on any error. Changes that need new sockets (interfaces, workers) need a restart.
pub fn reload(state: &State) -> Result<String, String> {
    let cfg = crate::config::load(&state.config_path).map_err(|e| e.to_string())?;
    let mut h = state
        .handle
        .lock()
        .map_err(|_| "internal: poisoned lock".to_string())?;
    if cfg.dataplane.workers.len() != h.control.len() {
        return Err("dataplane.workers: changing the worker count needs a restart".into());
    }
    let mut rules = crate::dataplane::run::rules_for(&cfg)?;
    rules.cores = h.rules.cores;
    let rules = Arc::new(rules);
    for tx in &h.control {
        tx.send(Control::SetRules(Arc::clone(&rules)))
            .map_err(|_| "a worker is gone".to_string())?;
    }
    h.rules = rules;
    Ok(format!("reloaded {} realm(s)", cfg.realms.len()))
}

pub fn clear_sessions(h: &Handle) {
    for tx in &h.control {
        let _ = tx.send(Control::ClearSessions);
    }
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

pub fn session_json(s: &SessionInfo) -> String {
    let proto = match s.proto {
        6 => "tcp",
        17 => "udp",
        1 => "icmp",
        _ => "other",
    };
    format!(
        "{{\"core\":{},\"realm\":{},\"protocol\":\"{}\",\"inside\":\"{}:{}\",\"external\":\"{}:{}\",\"remote\":\"{}:{}\",\
         \"tcp_established\":{},\"age_secs\":{},\"expires_in_secs\":{},\"packets_out\":{},\"packets_in\":{},\"inbound\":{}}}",
        s.core,
        json_str(&s.realm),
        proto,
        s.inside.0,
        s.inside.1,
        s.external.0,
        s.external.1,
        s.remote.0,
        s.remote.1,
        s.tcp_established,
        s.age_secs,
        s.expires_in_secs,
        s.pkts_out,
        s.pkts_in,
        s.inbound
    )
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
    let body: Vec<String> = fields
        .iter()
        .map(|(n, v)| format!("{}:{v}", json_str(n)))
        .collect();
    format!(
        "{{\"workers\":{},\"uptime_secs\":{},{}}}",
        h.control.len(),
        h.started.elapsed().as_secs(),
        body.join(",")
    )
}
