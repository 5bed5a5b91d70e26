//! `natgw run`: checks the machine against the configuration, attaches the XDP programs,
//! binds one AF_XDP socket per (worker, interface), starts the pinned workers and keeps the
//! neighbour table current until SIGTERM/SIGINT, then drains and detaches.
//!
//! [`Gateway::start`] runs the steps in order, each in the file named for it: `checks.rs`
//! (privileges, interfaces, cores and queues), `attach.rs` (the XDP programs), `rules.rs`
//! (the rules for this machine), the neighbour table (here), `sockets.rs` and `workers.rs`.
//! `reload.rs` applies a new configuration to the running gateway; `error.rs` says why
//! either failed.

mod attach;
mod checks;
mod error;
mod reload;
mod rules;
mod sockets;
mod workers;

pub use error::{ReloadError, StartError};
pub use natgw_kernel::signal::{install_signal_handlers, signalled};

use super::neigh::NeighTable;
use super::worker::{Control, DpCounters};
use super::xdp::XdpProgram;
use crate::config::{Config, XdpMode};
use crate::nat::{Counters, Rules};
use attach::load_and_attach_xdp;
use checks::{check_privileges, check_workers, resolve_links};
use crossbeam::queue::ArrayQueue;
use natgw_kernel::bpf::AttachMode;
use natgw_kernel::netlink::{self, LinkInfo, NeighSocket};
use rules::start_rules;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};
use workers::{Shared, spawn_workers};

/// UMEM chunk size: one Ethernet frame up to 1792 bytes after the kernel's 256-byte headroom.
pub const FRAME_SIZE: u32 = 2048;

/// Overrides from the command line.
#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    pub xdp_mode: Option<XdpMode>,
}

/// What the management plane can see and do while the gateway runs.
#[derive(Clone)]
pub struct Handle {
    pub counters: Vec<Arc<Counters>>,
    pub dp: Vec<Arc<DpCounters>>,
    pub control: Vec<crossbeam::channel::Sender<Control>>,
    pub rules: Arc<Rules>,
    pub neigh: Arc<NeighTable>,
    pub started: Instant,
    pub xdp_modes: Vec<(String, AttachMode)>,
    pub copy_fallbacks: usize,
    /// The interfaces the sockets are bound to: outside first, then inside in config order
    /// (the engine's `Inside(i)` numbering). A reload cannot change them.
    pub interfaces: Vec<String>,
}

/// A running gateway.
pub struct Gateway {
    pub handle: Handle,
    workers: Vec<JoinHandle<()>>,
    stop: Arc<AtomicBool>,
    resolve: Arc<ArrayQueue<(u32, Ipv4Addr)>>,
    neigh_sock: NeighSocket,
    _progs: Vec<XdpProgram>,
}

/// The neighbour table filled from a first dump, and the socket that keeps it current.
/// Resolution of the outside gateway starts at once, so the first packets find it.
fn open_neighbours(
    cfg: &Config,
    outside: &LinkInfo,
) -> Result<(Arc<NeighTable>, NeighSocket), StartError> {
    let neigh = Arc::new(NeighTable::new(8192));
    let mut neigh_sock = NeighSocket::open().map_err(StartError::NeighSocket)?;
    if let Ok(d) = neigh_sock.dump() {
        let _ = neigh.sync(&d);
    }
    if neigh.lookup(outside.ifindex, cfg.outside.gateway).is_none() {
        let _ = netlink::resolve(outside.ifindex, cfg.outside.gateway);
    }
    Ok((neigh, neigh_sock))
}

impl Gateway {
    /// Checks the machine against `cfg`, attaches XDP, binds the sockets and starts the
    /// workers.
    pub fn start(cfg: &Config, opts: &RunOptions) -> Result<Gateway, StartError> {
        check_privileges()?;
        let dp = &cfg.dataplane;
        let links = resolve_links(cfg)?;
        check_workers(cfg, &links)?;
        if let Some(avail) = crate::nat::memory::available() {
            let need = crate::nat::memory::MemoryEstimate::of(cfg);
            need.check_fits(avail).map_err(StartError::Memory)?;
        }
        let mode = opts.xdp_mode.unwrap_or(dp.xdp_mode);
        // Dropped last on an error below: workers already started stop before their XDP
        // programs detach.
        let (progs, xdp_modes) = load_and_attach_xdp(cfg, &links, mode)?;
        let rules = Arc::new(start_rules(cfg, &links.outside));
        let (neigh, neigh_sock) = open_neighbours(cfg, &links.outside)?;
        let shared = Shared::new(
            Arc::clone(&neigh),
            dp.workers.len().max(1),
            dp.handoff_queue,
        );
        let mut handle = Handle {
            counters: Vec::new(),
            dp: Vec::new(),
            control: Vec::new(),
            rules,
            neigh,
            started: Instant::now(),
            xdp_modes,
            copy_fallbacks: 0,
            interfaces: links.all().map(|l| l.name.clone()).collect(),
        };
        let workers = spawn_workers(cfg, &links, &progs, &shared, &mut handle)?;
        Ok(Gateway {
            handle,
            workers,
            stop: shared.stop,
            resolve: shared.resolve,
            neigh_sock,
            _progs: progs,
        })
    }

    /// One round of management work: neighbour events and resolution requests.
    pub fn poll_management(&mut self) {
        let mut evs = Vec::new();
        match self.neigh_sock.poll_events(&mut evs) {
            Ok(_) => {
                for e in &evs {
                    let _ = self.handle.neigh.apply(e);
                }
            }
            Err(_) => {
                // Notifications were lost (ENOBUFS): resynchronise from a dump.
                if let Ok(d) = self.neigh_sock.dump() {
                    let _ = self.handle.neigh.sync(&d);
                }
            }
        }
        while let Some((ifindex, addr)) = self.resolve.pop() {
            let _ = netlink::resolve(ifindex, addr);
        }
    }

    /// Runs management until `stop()` returns true, then shuts down.
    pub fn run_until(mut self, stop: impl Fn() -> bool) {
        while !stop() {
            self.poll_management();
            std::thread::sleep(Duration::from_millis(5));
        }
        self.shutdown();
    }

    /// Stops the workers (they drain their transmit rings) and detaches XDP.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.workers.drain(..) {
            let _ = t.join();
        }
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }
}
