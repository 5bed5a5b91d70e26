//! `natgw run`: checks the machine against the configuration, loads the XDP programs,
//! binds one AF_XDP socket per (worker, interface), starts the pinned workers, attaches XDP,
//! and keeps the neighbour table current until SIGTERM/SIGINT, then drains and detaches.
//!
//! [`Gateway::start`] runs the steps in order, each in the file named for it: `checks.rs`
//! (privileges, interfaces, cores, every queue served, kernel forwarding), `attach.rs` (the
//! XDP programs: loaded first, attached last), `rules.rs` (the rules for this machine), the
//! neighbour table (here), `sockets.rs` and `workers.rs`. `supervise.rs` watches the running
//! gateway (dead workers, interface changes). `reload.rs` applies a new configuration to the
//! running gateway; `error.rs` says why either failed.

mod attach;
mod checks;
mod error;
mod privileges;
mod reload;
mod rules;
mod sockets;
mod supervise;
mod workers;

pub use checks::kernel_forwarding;
pub use error::{ReloadError, StartError};
pub use natgw_kernel::signal::{
    install_reload_handler, install_signal_handlers, signalled, take_reload_request,
};
pub use reload::restart_only;
pub use supervise::{LinkStates, RunError};

use super::neigh::NeighTable;
use super::worker::DpCounters;
use super::xdp::{PassMaps, XdpDrops, XdpProgram};
use crate::config::{Config, XdpMode};
use crate::nat::rules::KernelAddrs;
use crate::nat::{Counters, Rules};
use attach::{attach_xdp, load_xdp};
use checks::{check_privileges, check_workers, resolve_links, warn_kernel_forwarding};
use crossbeam::queue::ArrayQueue;
use natgw_kernel::bpf::AttachMode;
use natgw_kernel::netlink::{self, LinkInfo, NeighSocket};
use natgw_kernel::wake::{EventFd, wait_readable};
use rules::start_rules;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::Instant;
use supervise::{LinkWatch, dead_worker};
use workers::{Shared, spawn_workers};

/// Longest sleep of the management loop between rounds without events (ms).
const MANAGEMENT_WAIT_MS: i32 = 100;

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
    pub control: Vec<crate::dataplane::worker::ControlTx>,
    pub rules: Arc<Rules>,
    pub neigh: Arc<NeighTable>,
    pub started: Instant,
    pub xdp_modes: Vec<(String, AttachMode)>,
    pub copy_fallbacks: usize,
    /// The interfaces the sockets are bound to: outside first, then inside in config order
    /// (the engine's `Inside(i)` numbering). A reload cannot change them.
    pub interfaces: Vec<String>,
    /// Per interface: the XDP program's drop counters and whether the link is up.
    pub health: Arc<Health>,
    /// Per interface (outside first): the XDP program's pass maps and what they hold now.
    pub pass: Vec<(PassMaps, KernelAddrs)>,
    /// The running configuration: a reload compares the new file with it (keys that need a
    /// restart) and replaces it.
    pub config: Arc<Config>,
    /// The configuration generation: 1 at start, one more per applied reload.
    pub generation: u64,
}

/// What the management plane reads about the interfaces themselves.
#[derive(Debug, Default)]
pub struct Health {
    /// Each interface's XDP drop counters (outside first).
    pub xdp_drops: Vec<(String, XdpDrops)>,
    /// Each interface: up with carrier, as the link watch last saw it.
    pub link_up: LinkStates,
}

/// The checks of the machine that need no configuration (capabilities, locked memory), as
/// [`Gateway::start`] makes them first: `natgw run` makes them before it opens its API too,
/// so that their refusals come before any about the API's listeners.
pub fn preflight() -> Result<(), StartError> {
    check_privileges()?;
    privileges::check_locked_memory()
}

/// A running gateway.
pub struct Gateway {
    pub handle: Handle,
    /// Taken (None) once joined.
    workers: Vec<Option<JoinHandle<()>>>,
    stop: Arc<AtomicBool>,
    resolve: Arc<ArrayQueue<(u32, Ipv4Addr)>>,
    /// Signalled by the workers after they queue a resolution request.
    mgmt_wake: Arc<EventFd>,
    neigh_sock: NeighSocket,
    links: LinkWatch,
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
    /// Checks the machine against `cfg`, loads XDP, binds and registers the sockets, starts
    /// the workers and then attaches XDP.
    pub fn start(cfg: &Config, opts: &RunOptions) -> Result<Gateway, StartError> {
        check_privileges()?;
        privileges::check_locked_memory()?;
        let dp = &cfg.dataplane;
        let links = resolve_links(cfg)?;
        check_workers(cfg, &links)?;
        warn_kernel_forwarding(&links);
        if let Some(avail) = crate::nat::memory::available() {
            let need = crate::nat::memory::MemoryEstimate::of(cfg);
            need.check_fits(avail).map_err(StartError::Memory)?;
        }
        let mode = opts.xdp_mode.unwrap_or(dp.xdp_mode);
        // Dropped last on an error below: workers already started stop before their XDP
        // programs detach.
        let rules = Arc::new(start_rules(cfg, &links));
        let (mut progs, kernel) = load_xdp(cfg, &rules, &links)?;
        let (neigh, neigh_sock) = open_neighbours(cfg, &links.outside)?;
        let (links_watch, link_up) = LinkWatch::open(&links).map_err(StartError::LinkSocket)?;
        let health = Arc::new(Health {
            xdp_drops: links
                .all()
                .zip(&progs)
                .map(|(l, p)| (l.name.clone(), p.drops()))
                .collect(),
            link_up,
        });
        let mgmt_wake = EventFd::new().map_err(StartError::NeighSocket)?;
        let shared = Shared::new(
            Arc::clone(&neigh),
            dp.workers.len().max(1),
            dp.handoff_queue,
            mgmt_wake,
        );
        let mut handle = Handle {
            counters: Vec::new(),
            dp: Vec::new(),
            control: Vec::new(),
            rules,
            neigh,
            started: Instant::now(),
            xdp_modes: Vec::new(),
            copy_fallbacks: 0,
            interfaces: links.all().map(|l| l.name.clone()).collect(),
            health,
            pass: progs.iter().map(|p| p.pass_maps()).zip(kernel).collect(),
            config: Arc::new(cfg.clone()),
            generation: 1,
        };
        // Every socket is bound and registered in its interface's redirect map before the
        // program is attached: no frame meets the program on a queue without its socket.
        let mut workers = workers::Started {
            stop: Arc::clone(&shared.stop),
            threads: spawn_workers(cfg, &links, &progs, &shared, &mut handle)?,
        };
        handle.xdp_modes = attach_xdp(&mut progs, &links, mode)?;
        if let Some(cores) = workers::pin_off_workers(cfg) {
            tracing::info!("management threads on core(s) {cores:?}, off the workers'");
        }
        // Last: nothing after this needs more than the runtime capabilities. An error stops
        // the workers (the guard) before the XDP programs detach.
        privileges::after_setup()?;
        Ok(Gateway {
            handle,
            workers: std::mem::take(&mut workers.threads)
                .into_iter()
                .map(Some)
                .collect(),
            stop: shared.stop,
            resolve: shared.resolve,
            mgmt_wake: shared.mgmt_wake,
            neigh_sock,
            links: links_watch,
            _progs: progs,
        })
    }

    /// One round of management work: neighbour events and resolution requests.
    pub fn poll_management(&mut self) {
        // Before the queue is read: a request queued after this wakes the next wait.
        self.mgmt_wake.drain();
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

    /// Runs management until `stop()` returns true, then shuts down. `reload()` runs
    /// whenever SIGHUP arrived (see [`install_reload_handler`]).
    ///
    /// Err: the gateway stopped on its own (a worker died, an interface changed in a way
    /// natgw cannot follow, see `supervise.rs`); everything is shut down as for `stop`.
    pub fn run_until(
        mut self,
        stop: impl Fn() -> bool,
        mut reload: impl FnMut(),
    ) -> Result<(), RunError> {
        let r = self.links.resync().and_then(|()| {
            while !stop() {
                if take_reload_request() {
                    reload();
                }
                self.poll_management();
                self.links.poll()?;
                if let Some(e) = dead_worker(&mut self.workers) {
                    return Err(e);
                }
                // Until a neighbour or link notification, a worker's resolution request, a
                // signal (it interrupts poll(2) in this, the main, thread) or the timeout,
                // which bounds how late a dead worker, a signal delivered to another thread
                // or a reload request is seen.
                wait_readable(
                    &[self.neigh_sock.fd(), self.links.fd(), self.mgmt_wake.fd()],
                    MANAGEMENT_WAIT_MS,
                );
            }
            Ok(())
        });
        self.shutdown();
        r
    }

    /// Stops the workers (they drain their transmit rings) and detaches XDP.
    pub fn shutdown(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        for t in self.workers.drain(..).flatten() {
            let _ = t.join();
        }
    }

    pub fn workers(&self) -> usize {
        self.workers.len()
    }
}
