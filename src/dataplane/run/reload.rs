//! Reloading the configuration into a running gateway.

use super::rules::{rules_for, set_mtus};
use super::{Handle, ReloadError};
use crate::config::Config;
use crate::dataplane::worker::Control;
use std::sync::Arc;

impl Handle {
    /// Applies `cfg` to the running gateway: its rules are built as at start (on-link
    /// prefixes of the outside link read again) and handed to every worker; the core count
    /// and the NIC's RSS steering read at start are kept. Changes that need new sockets
    /// (interfaces, workers) are refused.
    pub fn reload(&mut self, cfg: &Config) -> Result<(), ReloadError> {
        if cfg.dataplane.workers.len() != self.control.len() {
            return Err(ReloadError::WorkerCount);
        }
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
        for tx in &self.control {
            tx.send(Control::SetRules(Arc::clone(&rules)))
                .map_err(|_| ReloadError::WorkerGone)?;
        }
        self.rules = rules;
        Ok(())
    }
}
