//! Tearing a topology down: on drop, and the leftovers of a killed run.

use std::io;

use super::{Topology, TopologySpec, prefix};
use crate::netns::ip;

impl Topology {
    /// Removes every namespace `ngw-<tag>-*` (leftovers of a killed run), first killing the
    /// processes still in them. Returns the names removed.
    pub fn cleanup_stale(tag: &str) -> io::Result<Vec<String>> {
        let spec = TopologySpec::new(tag);
        spec.validate()?;
        let names = namespaces_with_prefix(&prefix(tag))?;
        for ns in &names {
            kill_netns_pids(ns);
            ip(&["netns", "del", ns])?;
        }
        Ok(names)
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.bpf_links.clear();
        for ns in self.created.iter().rev() {
            kill_netns_pids(ns);
            // Deleting the namespace destroys its interfaces (once sockets opened in it are
            // closed); the names are gone at once.
            if let Err(e) = ip(&["netns", "del", ns]) {
                eprintln!("testbed cleanup: {e}");
            }
        }
    }
}

pub(super) fn namespaces_with_prefix(p: &str) -> io::Result<Vec<String>> {
    let want = format!("{p}-");
    Ok(ip(&["netns", "list"])?
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(&want))
        .map(str::to_string)
        .collect())
}

/// SIGKILLs the processes running in `ns` (never this one): they would keep the
/// namespace, and so its interfaces, alive.
fn kill_netns_pids(ns: &str) {
    let Ok(pids) = ip(&["netns", "pids", ns]) else {
        return;
    };
    let me = std::process::id();
    for pid in pids
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
    {
        if pid != me {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}
