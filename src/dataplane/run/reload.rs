//! Reloading the configuration into a running gateway.

use super::rules::{rules_for, set_mtus};
use super::{Handle, ReloadError};
use crate::config::Config;
use crate::dataplane::worker::Control;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// How long the workers have to apply new rules. A worker answers between two batches
/// (microseconds); one that does not within this is stuck or dead, and the supervisor
/// ends natgw on a dead worker anyway.
const APPLY_DEADLINE: Duration = Duration::from_secs(2);

impl Handle {
    /// Applies `cfg` to the running gateway and returns its configuration generation
    /// (the one at start is 1). Everything that can refuse is checked before anything
    /// changes: keys that need a restart ([`restart_only`]), the memory of the new port
    /// allocators, the XDP pass maps (put back as they were if one refuses). Then every
    /// worker gets the new rules and the call returns only once each has applied them.
    /// The rules are built as at start (on-link prefixes of the outside link read again);
    /// the core count and the NIC's RSS steering read at start are kept.
    pub fn reload(&mut self, cfg: &Config) -> Result<u64, ReloadError> {
        // The workers' sockets and their Inside(i) numbering are fixed at start: a realm on an
        // interface added or moved would send frames to a port the workers do not have.
        let names: Vec<&str> = std::iter::once(cfg.outside.name.as_str())
            .chain(cfg.inside.iter().map(|i| i.name.as_str()))
            .collect();
        if names != self.interfaces {
            return Err(ReloadError::Interfaces {
                running: self.interfaces.clone(),
                new: names.iter().map(|n| n.to_string()).collect(),
            });
        }
        if let Some((key, reason)) = restart_only(&self.config, cfg) {
            return Err(ReloadError::NeedsRestart { key, reason });
        }
        if let Some(avail) = crate::nat::memory::available() {
            let need = crate::nat::memory::MemoryEstimate::of(cfg);
            need.check_reload_fits(avail).map_err(ReloadError::Memory)?;
        }
        // Realms keep their ids (by name), so sessions keep meaning the same realm.
        let mut rules = rules_for(cfg, Some(&self.rules));
        rules.cores = self.rules.cores;
        // Read from the NIC at start; without it port choice would stop steering replies to
        // the allocating worker's queue and most traffic would need a handoff.
        rules.rss = self.rules.rss.clone();
        // The interfaces cannot change on reload, and natgw ends when one's MTU changes
        // (supervise.rs): the MTUs read at start still hold.
        set_mtus(
            cfg,
            &mut rules,
            self.rules.outside_mtu,
            &self.rules.inside_mtu,
        );
        // What the kernel receives follows the new file (management addresses, gateways),
        // before the workers get their rules; a refused update puts back what was there.
        let kernel = rules.kernel_addrs(cfg);
        for (n, ((maps, old), new)) in self.pass.iter().zip(&kernel).enumerate() {
            if let Err((addr, err)) = maps.apply(old, new) {
                for ((maps, old), new) in self.pass.iter().zip(&kernel).take(n + 1) {
                    let _ = maps.apply(new, old);
                }
                return Err(ReloadError::PassAddr {
                    addr,
                    ifname: self.interfaces[n].clone(),
                    err: err.to_string(),
                });
            }
        }
        for ((_, old), new) in self.pass.iter_mut().zip(kernel) {
            *old = new;
        }
        let rules = Arc::new(rules);
        let generation = self.generation + 1;
        // From here on the new configuration is the running one: the pass maps have it,
        // and a worker that took the rules cannot be made to give them back. The previous
        // rules are held here until every worker has let go of them, so that they are
        // freed on this thread, not by the last worker between two batches.
        let _previous = std::mem::replace(&mut self.rules, Arc::clone(&rules));
        self.config = Arc::new(cfg.clone());
        self.generation = generation;
        let deadline = Instant::now() + APPLY_DEADLINE;
        let mut acks = Vec::with_capacity(self.control.len());
        for (worker, tx) in self.control.iter().enumerate() {
            let (ack, done) = crossbeam::channel::bounded(1);
            let m = Control::SetRules {
                rules: Arc::clone(&rules),
                generation,
                ack,
            };
            let left = deadline.saturating_duration_since(Instant::now());
            tx.send_timeout(m, left)
                .map_err(|_| ReloadError::NotApplied { worker, generation })?;
            acks.push(done);
        }
        for (worker, done) in acks.iter().enumerate() {
            let left = deadline.saturating_duration_since(Instant::now());
            match done.recv_timeout(left) {
                Ok(g) if g == generation => {}
                _ => return Err(ReloadError::NotApplied { worker, generation }),
            }
        }
        Ok(generation)
    }
}

/// The first key (its path) whose change from `running` to `new` the running gateway
/// cannot apply, and why. Every key of the configuration is either here or applied live
/// (docs/config.md lists both); interfaces are checked by the caller.
pub fn restart_only(running: &Config, new: &Config) -> Option<(String, &'static str)> {
    let (a, b) = (&running.dataplane, &new.dataplane);
    const SOCKETS: &str = "the workers, their cores, queues and AF_XDP sockets are set up at start";
    let dataplane = [
        ("dataplane.workers", a.workers != b.workers, SOCKETS),
        (
            "dataplane.xdp_mode",
            a.xdp_mode != b.xdp_mode,
            "the XDP program is attached at start",
        ),
        (
            "dataplane.poll",
            a.poll != b.poll,
            "the workers' poll loops are started at start",
        ),
        (
            "dataplane.spin_max_us",
            a.spin_max_us != b.spin_max_us,
            "the workers' poll loops are started at start",
        ),
        (
            "dataplane.batch_size",
            a.batch_size != b.batch_size,
            SOCKETS,
        ),
        ("dataplane.ring_size", a.ring_size != b.ring_size, SOCKETS),
        (
            "dataplane.umem_frames",
            a.umem_frames != b.umem_frames,
            SOCKETS,
        ),
        (
            "dataplane.handoff_queue",
            a.handoff_queue != b.handoff_queue,
            "the handoff queues between workers are allocated at start",
        ),
        (
            "dataplane.forward_only",
            a.forward_only != b.forward_only,
            "switching between translating and forwarding would strand every session",
        ),
        (
            "sessions.capacity_per_core",
            running.sessions != new.sessions,
            "the session tables are allocated at start",
        ),
        (
            "fragments.max_datagrams",
            running.fragments.max_datagrams != new.fragments.max_datagrams,
            "the fragment tables are allocated at start",
        ),
        (
            "fragments.max_held",
            running.fragments.max_held != new.fragments.max_held,
            "the fragment tables are allocated at start",
        ),
        (
            "fragments.timeout",
            running.fragments.timeout != new.fragments.timeout,
            "the fragment tables take it at start",
        ),
        (
            "control.listen",
            running.control.listen != new.control.listen,
            "the API listener is bound at start",
        ),
        (
            "control.socket",
            running.control.socket != new.control.socket,
            "the control socket is bound at start",
        ),
        (
            "control.socket_group",
            running.control.socket_group != new.control.socket_group,
            "the control socket's group is set when it is bound, at start",
        ),
        (
            "control.token_file",
            running.control.token_file != new.control.token_file,
            "the token is read at start",
        ),
        (
            "control.max_connections",
            running.control.max_connections != new.control.max_connections,
            "the API's limits are set at start",
        ),
        (
            "control.max_header_bytes",
            running.control.max_header_bytes != new.control.max_header_bytes,
            "the API's limits are set at start",
        ),
        (
            "control.max_body_bytes",
            running.control.max_body_bytes != new.control.max_body_bytes,
            "the API's limits are set at start",
        ),
        (
            "control.request_timeout",
            running.control.request_timeout != new.control.request_timeout,
            "the API's limits are set at start",
        ),
        (
            "control.idle_timeout",
            running.control.idle_timeout != new.control.idle_timeout,
            "the API's limits are set at start",
        ),
    ];
    // Every field of [control] is named above: a new field must be added there too.
    let crate::config::Control {
        listen: _,
        socket: _,
        socket_group: _,
        token_file: _,
        max_connections: _,
        max_header_bytes: _,
        max_body_bytes: _,
        request_timeout: _,
        idle_timeout: _,
    } = &new.control;
    if let Some((key, _, why)) = dataplane.iter().find(|(_, changed, _)| *changed) {
        return Some((key.to_string(), why));
    }
    // A realm is the same realm by name (its id, and so its sessions, follow the name).
    for (i, r) in new.realms.iter().enumerate() {
        if let Some(o) = running.realms.iter().find(|o| o.name == r.name)
            && o.ports.range != r.ports.range
        {
            return Some((
                format!("realm[{i}].ports.range"),
                "the realm's ports in use are tracked in bitmaps over its range",
            ));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::restart_only;
    use crate::config::Config;

    fn cfg() -> Config {
        let p = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples/minimal.toml");
        crate::config::load(std::path::Path::new(p)).unwrap()
    }

    /// Each key of [control] that needs a restart is refused by its own name (not all of
    /// them as `control.listen`), and an unchanged section is no refusal.
    #[test]
    fn control_keys_are_refused_by_name() {
        let running = cfg();
        assert_eq!(restart_only(&running, &running.clone()), None);
        type Edit = (&'static str, fn(&mut Config));
        let edits: [Edit; 11] = [
            // The poll loop's settings are read once, when the workers start.
            ("dataplane.poll", |c| {
                c.dataplane.poll = crate::config::PollMode::Busy
            }),
            ("dataplane.spin_max_us", |c| c.dataplane.spin_max_us += 1),
            ("control.listen", |c| {
                c.control.listen = "127.0.0.1:9999".parse().unwrap()
            }),
            ("control.socket", |c| {
                c.control.socket = "/tmp/x.sock".into()
            }),
            ("control.socket_group", |c| {
                c.control.socket_group = Some("adm".into())
            }),
            ("control.token_file", |c| {
                c.control.token_file = Some("/etc/natgw/token".into())
            }),
            ("control.max_connections", |c| {
                c.control.max_connections += 1
            }),
            ("control.max_header_bytes", |c| {
                c.control.max_header_bytes += 1
            }),
            ("control.max_body_bytes", |c| c.control.max_body_bytes += 1),
            ("control.request_timeout", |c| {
                c.control.request_timeout += 1
            }),
            ("control.idle_timeout", |c| c.control.idle_timeout += 1),
        ];
        for (key, edit) in edits {
            let mut new = running.clone();
            edit(&mut new);
            let (k, why) = restart_only(&running, &new).expect(key);
            assert_eq!(k, key);
            assert!(!why.is_empty());
        }
    }
}
