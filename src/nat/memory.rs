//! The memory a configuration needs, computed from it before anything is allocated: what
//! `natgw check` prints, and what start and reload compare with the memory available, so a
//! configuration that does not fit is refused with a clear error instead of aborting on an
//! allocation (the engine allocates every table up front, per worker).

use super::frag::FragTable;
use super::ports::BlockPartition;
use super::store::Store;
use crate::config::Config;
use std::fmt;

/// Bytes per worker core, and the number of workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MemoryEstimate {
    /// Session, mapping, host and filter tables (`sessions.capacity_per_core`).
    pub sessions: usize,
    /// Port allocators of every realm (about 48 KiB per pool address and core).
    pub ports: usize,
    /// Fragment table and hold buffers.
    pub fragments: usize,
    pub workers: usize,
}

impl MemoryEstimate {
    pub fn of(cfg: &Config) -> MemoryEstimate {
        let workers = cfg.dataplane.workers.len().max(1);
        let partition = BlockPartition::new(workers);
        let statics: usize = cfg.realms.iter().map(|r| r.static_mappings.len()).sum();
        let ones: usize = cfg.realms.iter().map(|r| r.one_to_one.len()).sum();
        let ports = cfg
            .realms
            .iter()
            .map(|r| {
                let pool: u64 = r.pool.iter().map(|p| u64::from(p.len())).sum();
                Store::port_bytes(
                    pool as usize,
                    (r.ports.range.first, r.ports.range.last),
                    r.static_mappings.len(),
                    &partition,
                    workers,
                )
            })
            .fold(0usize, usize::saturating_add);
        MemoryEstimate {
            sessions: Store::table_bytes(cfg.sessions.capacity_per_core, statics + ones),
            ports,
            fragments: FragTable::bytes_for(
                cfg.fragments.max_datagrams as usize,
                cfg.fragments.max_held as usize,
            ),
            workers,
        }
    }

    pub fn per_core(&self) -> usize {
        self.sessions
            .saturating_add(self.ports)
            .saturating_add(self.fragments)
    }

    pub fn total(&self) -> usize {
        self.per_core().saturating_mul(self.workers)
    }

    /// Whether the engines fit in `available` bytes; the error says what is needed.
    pub fn check_fits(&self, available: u64) -> Result<(), MemoryError> {
        self.check(self.total(), available)
    }

    /// Whether a reload fits: the running tables stay (their size is fixed at start), the
    /// port allocators are built anew beside the old ones when the layout changes.
    pub fn check_reload_fits(&self, available: u64) -> Result<(), MemoryError> {
        self.check(self.ports.saturating_mul(self.workers), available)
    }

    fn check(&self, need: usize, available: u64) -> Result<(), MemoryError> {
        if need as u64 <= available {
            return Ok(());
        }
        Err(MemoryError {
            need: *self,
            available,
        })
    }
}

fn mib(b: usize) -> f64 {
    b as f64 / (1 << 20) as f64
}

impl fmt::Display for MemoryEstimate {
    /// One line per part, as `natgw check` prints them (TOML comments).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "# memory: {:.1} MiB = {} worker(s) x {:.1} MiB",
            mib(self.total()),
            self.workers,
            mib(self.per_core())
        )?;
        writeln!(
            f,
            "#   sessions (per worker):        {:.1} MiB",
            mib(self.sessions)
        )?;
        writeln!(
            f,
            "#   port allocators (per worker): {:.1} MiB",
            mib(self.ports)
        )?;
        writeln!(
            f,
            "#   fragments (per worker):       {:.1} MiB",
            mib(self.fragments)
        )
    }
}

/// A configuration whose tables do not fit in the memory available.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemoryError {
    pub need: MemoryEstimate,
    pub available: u64,
}

impl fmt::Display for MemoryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = &self.need;
        write!(
            f,
            "the configuration needs {:.1} MiB ({} worker(s) x (sessions {:.1} + port allocators \
             {:.1} + fragments {:.1} MiB)) but {:.1} MiB are available: lower \
             sessions.capacity_per_core or the pool sizes",
            mib(n.total()),
            n.workers,
            mib(n.sessions),
            mib(n.ports),
            mib(n.fragments),
            self.available as f64 / (1 << 20) as f64
        )
    }
}

impl std::error::Error for MemoryError {}

/// `MemAvailable` of /proc/meminfo, in bytes (None if it cannot be read).
pub fn available() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::{Counters, Engine, Rules};
    use std::sync::Arc;

    fn engine_memory(c: &Config) -> usize {
        let cores = c.dataplane.workers.len();
        let rules = Arc::new(Rules::new(c, Arc::new(BlockPartition::new(cores))));
        Engine::new(0, rules, Arc::new(Counters::default())).memory_bytes()
    }

    fn cfg(extra_realm: &str, top: &str) -> Config {
        let text = format!(
            "[outside]\ninterface = \"eth1\"\naddress = \"192.168.1.2\"\ngateway = \"192.168.1.1\"\n\
             [[inside]]\ninterface = \"eth0\"\n{top}\n[[realm]]\nname = \"r\"\ninterface = \"eth0\"\n\
             prefixes = [\"10.0.0.0/24\"]\n{extra_realm}\n"
        );
        crate::config::parse(&text).unwrap_or_else(|e| panic!("{e}\n{text}"))
    }

    /// The estimate is what the engine really allocates, to the byte.
    #[test]
    fn estimate_matches_the_engine() {
        for (realm, top) in [
            (
                "pool = [\"192.168.1.10\"]",
                "[sessions]\ncapacity_per_core = 1024",
            ),
            (
                "pool = [\"192.168.1.16/28\"]\nstatic = [{ protocol = \"tcp\", external = \"192.168.1.16:80\", internal = \"10.0.0.5:80\" }, { protocol = \"udp\", external = \"192.168.1.16:53\", internal = \"10.0.0.5:53\" }]",
                "[sessions]\ncapacity_per_core = 5000\n[fragments]\nmax_held = 0",
            ),
            (
                "pool = [\"192.168.2.0/24\"]\n[realm.ports]\nrange = \"20000-30000\"",
                "[dataplane]\nworkers = [{ core = 0, queue = 0 }, { core = 1, queue = 1 }]",
            ),
        ] {
            let c = cfg(realm, top);
            let est = MemoryEstimate::of(&c);
            assert_eq!(est.per_core(), engine_memory(&c), "{realm} {top}");
        }
    }

    #[test]
    fn a_huge_pool_is_refused_before_allocation() {
        // 64 Ki pool addresses: the largest pool the parser takes, ~3 GiB per worker.
        let c = cfg("pool = [\"100.64.0.0/16\"]", "");
        let est = MemoryEstimate::of(&c);
        assert!(est.ports > 3 << 30, "{est}");
        let e = est.check_fits(1 << 30).unwrap_err();
        assert!(e.to_string().contains("port allocators"), "{e}");
        assert!(est.check_fits(u64::MAX).is_ok());
        assert!(est.check_reload_fits(1 << 30).is_err());
        assert!(est.check_reload_fits(4 << 30).is_ok());
        assert!(available().is_some_and(|a| a > 0));
    }
}
