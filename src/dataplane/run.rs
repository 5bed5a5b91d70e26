//! `natgw run`: checks the machine against the configuration, attaches the XDP programs,
//! binds one AF_XDP socket per (worker, interface), starts the pinned workers and keeps the
//! neighbour table current until SIGTERM/SIGINT, then drains and detaches.

use super::neigh::NeighTable;
use super::rss::rss_steering;
use super::worker::{
    Control, DpCounters, HANDOFF_MTU, HandoffFrame, Pool, Port, Worker, WorkerShared,
};
use super::xdp::XdpProgram;
use crate::config::{Config, Ipv4Net, PollMode, XdpMode};
use crate::nat::ports::BlockPartition;
use crate::nat::{Counters, Engine, Ingress, Rules};
use crossbeam::queue::ArrayQueue;
use natgw_kernel::bpf::AttachMode;
use natgw_kernel::netlink::{self, LinkInfo, NeighSocket};
use natgw_kernel::xsk::{Umem, XskConfig, XskSocket};
use natgw_kernel::{ethtool, sys};
use std::fmt;
use std::io;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// UMEM chunk size: one Ethernet frame up to 1792 bytes after the kernel's 256-byte headroom.
pub const FRAME_SIZE: u32 = 2048;

pub use natgw_kernel::signal::{install_signal_handlers, signalled};

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

/// The workers `Gateway::start` has spawned so far: stopped and joined if it fails later.
struct Started {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Drop for Started {
    fn drop(&mut self) {
        if self.threads.is_empty() {
            return;
        }
        self.stop.store(true, Ordering::SeqCst);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// Why the gateway did not start. Whatever it had set up is undone: started workers stop,
/// sockets close and the XDP programs detach.
#[derive(Debug)]
pub enum StartError {
    /// Not running as root.
    NotRoot,
    /// A configured interface does not exist; `role` is "outside" or "inside".
    NoInterface { role: &'static str, name: String },
    /// A configured interface could not be queried.
    Interface {
        role: &'static str,
        name: String,
        err: io::Error,
    },
    /// A worker's core does not exist or natgw may not run on it.
    NoCore { core: usize, usable: Vec<usize> },
    /// A worker's queue does not exist on an interface that has `queues` receive queues.
    NoQueue {
        queue: u32,
        ifname: String,
        queues: u32,
    },
    /// The XDP program or its maps could not be loaded.
    XdpLoad { ifname: String, err: io::Error },
    /// A management address could not be put into the program's pass map.
    PassAddr {
        addr: Ipv4Addr,
        ifname: String,
        err: io::Error,
    },
    /// The kernel refused to attach the program in `mode`.
    XdpAttach {
        mode: XdpMode,
        ifname: String,
        err: io::Error,
    },
    /// The rtnetlink neighbour socket could not be opened.
    NeighSocket(io::Error),
    /// A worker's packet buffer area could not be mapped.
    Umem { worker: usize, err: io::Error },
    /// An AF_XDP socket could not be created or bound.
    Socket {
        ifname: String,
        queue: u32,
        err: io::Error,
    },
    /// A socket could not be put into its interface's redirect map.
    Register {
        ifname: String,
        queue: u32,
        err: io::Error,
    },
    /// A worker thread could not be started.
    Thread { worker: usize, err: io::Error },
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::NotRoot => f.write_str(
                "natgw run needs root (CAP_NET_ADMIN, CAP_BPF and CAP_NET_RAW) to attach XDP \
                 programs and open AF_XDP sockets",
            ),
            StartError::NoInterface { role, name } => {
                write!(f, "{role} interface '{name}' does not exist")
            }
            StartError::Interface { role, name, err } => {
                write!(f, "{role} interface '{name}': {err}")
            }
            StartError::NoCore { core, usable } => write!(
                f,
                "dataplane.workers: core {core} does not exist or is not usable by natgw (usable: {usable:?})"
            ),
            StartError::NoQueue {
                queue,
                ifname,
                queues,
            } => write!(
                f,
                "dataplane.workers: queue {queue} does not exist on {ifname} ({queues} rx queue{}); \
                 queues and workers must match",
                if *queues == 1 { "" } else { "s" }
            ),
            StartError::XdpLoad { ifname, err } => {
                write!(f, "loading the XDP program for {ifname}: {err}")
            }
            StartError::PassAddr { addr, ifname, err } => {
                write!(f, "XDP pass address {addr} on {ifname}: {err}")
            }
            StartError::XdpAttach { mode, ifname, err } => write!(
                f,
                "the kernel refused to attach XDP ({mode:?} mode) to {ifname}: {err}"
            ),
            StartError::NeighSocket(err) => write!(f, "netlink neighbour socket: {err}"),
            StartError::Umem { worker, err } => write!(f, "UMEM for worker {worker}: {err}"),
            StartError::Socket { ifname, queue, err } => {
                write!(f, "AF_XDP socket on {ifname} queue {queue}: {err}")
            }
            StartError::Register { ifname, queue, err } => {
                write!(f, "registering the socket of {ifname} queue {queue}: {err}")
            }
            StartError::Thread { worker, err } => write!(f, "starting worker {worker}: {err}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Why a reload was refused. The running configuration stays in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReloadError {
    /// The new configuration has another number of workers.
    WorkerCount,
    /// The new configuration binds other interfaces (or orders them differently).
    Interfaces {
        running: Vec<String>,
        new: Vec<String>,
    },
    /// A worker no longer takes control messages.
    WorkerGone,
}

impl fmt::Display for ReloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReloadError::WorkerCount => {
                f.write_str("dataplane.workers: changing the worker count needs a restart")
            }
            ReloadError::Interfaces { running, new } => write!(
                f,
                "outside/inside interfaces: changing them ({} -> {}) needs a restart",
                running.join(","),
                new.join(",")
            ),
            ReloadError::WorkerGone => f.write_str("a worker is gone"),
        }
    }
}

impl std::error::Error for ReloadError {}

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
        // Realms keep their ids (by name), so sessions keep meaning the same realm.
        let mut rules = rules_for(cfg, Some(&self.rules));
        rules.cores = self.rules.cores;
        // Read from the NIC at start; without it port choice would stop steering replies to
        // the allocating worker's queue and most traffic would need a handoff.
        rules.rss = self.rules.rss.clone();
        let rules = Arc::new(rules);
        for tx in &self.control {
            tx.send(Control::SetRules(Arc::clone(&rules)))
                .map_err(|_| ReloadError::WorkerGone)?;
        }
        self.rules = rules;
        Ok(())
    }
}

/// Builds the rules for `cfg` on this machine: the partition matches the worker count and
/// the outside link's own prefixes are on-link.
fn rules_for(cfg: &Config, running: Option<&Rules>) -> Rules {
    let partition = Arc::new(BlockPartition::new(cfg.dataplane.workers.len().max(1)));
    let mut rules = match running {
        Some(prev) => Rules::reload(cfg, partition, prev),
        None => Rules::new(cfg, partition),
    };
    if let Ok(l) = netlink::link_by_name(&cfg.outside.name)
        && let Ok(addrs) = netlink::addresses(l.ifindex)
    {
        for (a, len) in addrs {
            let mask = if len == 0 {
                0
            } else {
                u32::MAX << (32 - len as u32)
            };
            rules.outside_onlink.push(Ipv4Net {
                addr: Ipv4Addr::from(u32::from(a) & mask),
                len,
            });
        }
    }
    rules
}

/// The kernel's VLAN devices `<interface>.<vid>` for the tagged realms on `interface`. The
/// hosts of a VLAN are the kernel's neighbours on that device (it answers their ARP for the
/// realm gateway there and can resolve them), never on the untagged parent, and two VLANs
/// may hold the same address. A VLAN without such a device keeps the parent's ifindex.
fn vlan_devices(cfg: &Config, interface: &str) -> Vec<(u16, u32)> {
    cfg.realms
        .iter()
        .filter(|r| r.interface == interface)
        .filter_map(|r| r.vlan)
        .filter_map(|v| {
            let l = netlink::link_by_name(&format!("{interface}.{v}")).ok()?;
            Some((v, l.ifindex))
        })
        .collect()
}

fn check_privileges() -> Result<(), StartError> {
    if sys::is_root() {
        Ok(())
    } else {
        Err(StartError::NotRoot)
    }
}

/// The configured interfaces: outside first, then inside in config order.
struct Links {
    outside: LinkInfo,
    inside: Vec<LinkInfo>,
}

impl Links {
    fn all(&self) -> impl Iterator<Item = &LinkInfo> {
        std::iter::once(&self.outside).chain(self.inside.iter())
    }
}

fn link(name: &str, role: &'static str) -> Result<LinkInfo, StartError> {
    netlink::link_by_name(name).map_err(|err| {
        if sys::errno(&err) == Some(sys::ENODEV) {
            StartError::NoInterface {
                role,
                name: name.to_string(),
            }
        } else {
            StartError::Interface {
                role,
                name: name.to_string(),
                err,
            }
        }
    })
}

fn resolve_links(cfg: &Config) -> Result<Links, StartError> {
    Ok(Links {
        outside: link(&cfg.outside.name, "outside")?,
        inside: cfg
            .inside
            .iter()
            .map(|i| link(&i.name, "inside"))
            .collect::<Result<_, _>>()?,
    })
}

/// Every worker's core is usable and its queue exists on every interface.
fn check_workers(cfg: &Config, links: &Links) -> Result<(), StartError> {
    let cores = core_affinity::get_core_ids().unwrap_or_default();
    for w in &cfg.dataplane.workers {
        if !cores.iter().any(|c| c.id == w.core) {
            return Err(StartError::NoCore {
                core: w.core,
                usable: cores.iter().map(|c| c.id).collect(),
            });
        }
        for l in links.all() {
            let queues = match ethtool::channels(&l.name) {
                Ok(Some((rx, _))) if rx > 0 => rx.min(l.num_rx_queues),
                _ => l.num_rx_queues,
            };
            if w.queue >= queues {
                return Err(StartError::NoQueue {
                    queue: w.queue,
                    ifname: l.name.clone(),
                    queues,
                });
            }
        }
    }
    Ok(())
}

/// The mode XDP got on each interface (for the log and the metrics).
type XdpModes = Vec<(String, AttachMode)>;

/// Loads one redirect program per interface (outside first), fills its pass map with the
/// interface's management addresses and attaches it in `mode`.
fn load_and_attach_xdp(
    cfg: &Config,
    links: &Links,
    mode: XdpMode,
) -> Result<(Vec<XdpProgram>, XdpModes), StartError> {
    let management =
        std::iter::once(&cfg.outside.management).chain(cfg.inside.iter().map(|i| &i.management));
    let mut progs = Vec::new();
    let mut xdp_modes = Vec::new();
    for (l, mgmt) in links.all().zip(management) {
        let mut p =
            XdpProgram::load(l.num_rx_queues.max(1)).map_err(|err| StartError::XdpLoad {
                ifname: l.name.clone(),
                err,
            })?;
        for a in mgmt {
            p.add_pass_addr(*a).map_err(|err| StartError::PassAddr {
                addr: *a,
                ifname: l.name.clone(),
                err,
            })?;
        }
        let got = match mode {
            XdpMode::Auto => p.attach_auto(l.ifindex),
            XdpMode::Native => p
                .attach(l.ifindex, AttachMode::Native)
                .map(|_| AttachMode::Native),
            XdpMode::Generic => p
                .attach(l.ifindex, AttachMode::Generic)
                .map(|_| AttachMode::Generic),
        }
        .map_err(|err| StartError::XdpAttach {
            mode,
            ifname: l.name.clone(),
            err,
        })?;
        xdp_modes.push((l.name.clone(), got));
        progs.push(p);
    }
    Ok((progs, xdp_modes))
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

/// What every worker shares with the others and with the management thread.
struct Shared {
    neigh: Arc<NeighTable>,
    resolve: Arc<ArrayQueue<(u32, Ipv4Addr)>>,
    handoff: Vec<Arc<ArrayQueue<Box<HandoffFrame>>>>,
    handoff_free: Arc<ArrayQueue<Box<HandoffFrame>>>,
    stop: Arc<AtomicBool>,
}

impl Shared {
    /// Handoff queues for `workers` workers and their preallocated frames (none for one
    /// worker, which never hands off).
    fn new(neigh: Arc<NeighTable>, workers: usize, handoff_queue: usize) -> Shared {
        let handoff = (0..workers)
            .map(|_| Arc::new(ArrayQueue::new(handoff_queue)))
            .collect();
        let boxes = if workers > 1 {
            handoff_queue * workers + 64 * workers
        } else {
            0
        };
        let handoff_free = Arc::new(ArrayQueue::new(boxes.max(1)));
        for _ in 0..boxes {
            let _ = handoff_free.push(Box::new(HandoffFrame {
                ingress: Ingress::Outside,
                len: 0,
                data: [0; HANDOFF_MTU],
            }));
        }
        Shared {
            neigh,
            resolve: Arc::new(ArrayQueue::new(1024)),
            handoff,
            handoff_free,
            stop: Arc::new(AtomicBool::new(false)),
        }
    }

    fn for_worker(&self) -> WorkerShared {
        WorkerShared {
            neigh: Arc::clone(&self.neigh),
            resolve: Arc::clone(&self.resolve),
            handoff: self.handoff.clone(),
            handoff_free: Arc::clone(&self.handoff_free),
            stop: Arc::clone(&self.stop),
        }
    }
}

/// One worker's ports (outside first, then inside in config order) and buffer pools.
struct WorkerSockets {
    ports: Vec<Port>,
    pools: Vec<Pool>,
    /// Inside sockets that could not share the outside socket's UMEM.
    copy_fallbacks: usize,
}

fn umem(worker: usize, frames: u32) -> Result<Umem, StartError> {
    Umem::new(frames, FRAME_SIZE).map_err(|err| StartError::Umem { worker, err })
}

fn socket_error(l: &LinkInfo, queue: u32) -> impl FnOnce(io::Error) -> StartError + '_ {
    move |err| StartError::Socket {
        ifname: l.name.clone(),
        queue,
        err,
    }
}

fn register(prog: &XdpProgram, l: &LinkInfo, sock: &XskSocket) -> Result<(), StartError> {
    let queue = sock.queue();
    prog.register_socket(queue, sock.fd())
        .map_err(|err| StartError::Register {
            ifname: l.name.clone(),
            queue,
            err,
        })
}

/// Creates worker `wi`'s sockets on its queue of every interface and registers them with
/// the interfaces' programs. Inside sockets share the outside socket's UMEM where the
/// driver allows it; otherwise they get a UMEM of their own and frames are copied between
/// them (counted in `copy_fallbacks`).
fn create_sockets(
    cfg: &Config,
    links: &Links,
    progs: &[XdpProgram],
    wi: usize,
    queue: u32,
) -> Result<WorkerSockets, StartError> {
    let dp = &cfg.dataplane;
    let xcfg = XskConfig {
        ring_size: dp.ring_size,
        copy: None,
        need_wakeup: true,
    };
    let outside = &links.outside;
    let umem0 = umem(wi, dp.umem_frames)?;
    let first = XskSocket::new(&umem0, outside.ifindex, queue, &xcfg)
        .map_err(socket_error(outside, queue))?;
    register(&progs[0], outside, &first)?;
    let mut ports = vec![Port {
        sock: first,
        ingress: Ingress::Outside,
        mac: outside.mac,
        ifindex: outside.ifindex,
        pool: 0,
        vlan_ifindex: Vec::new(),
    }];
    let mut extra_pools = Vec::new();
    let mut copy_fallbacks = 0;
    for (ii, l) in links.inside.iter().enumerate() {
        let shared = XskSocket::new_shared(&umem0, &ports[0].sock, l.ifindex, queue, &xcfg);
        let (sock, pool) = match shared {
            Ok(s) => (s, 0),
            Err(_) => {
                let u = umem(wi, dp.umem_frames)?;
                let s =
                    XskSocket::new(&u, l.ifindex, queue, &xcfg).map_err(socket_error(l, queue))?;
                extra_pools.push(Pool::new(u));
                copy_fallbacks += 1;
                (s, extra_pools.len())
            }
        };
        register(&progs[1 + ii], l, &sock)?;
        ports.push(Port {
            sock,
            ingress: Ingress::Inside(ii as u8),
            mac: l.mac,
            ifindex: l.ifindex,
            pool,
            vlan_ifindex: vlan_devices(cfg, &l.name),
        });
    }
    let mut pools = vec![Pool::new(umem0)];
    pools.extend(extra_pools);
    Ok(WorkerSockets {
        ports,
        pools,
        copy_fallbacks,
    })
}

/// Creates every worker's sockets and starts the workers pinned to their cores, recording
/// their counters and control channels in `handle`. On an error the workers already
/// started are stopped and joined before it returns.
fn spawn_workers(
    cfg: &Config,
    links: &Links,
    progs: &[XdpProgram],
    shared: &Shared,
    handle: &mut Handle,
) -> Result<Vec<JoinHandle<()>>, StartError> {
    let dp = &cfg.dataplane;
    let mut workers = Started {
        stop: Arc::clone(&shared.stop),
        threads: Vec::new(),
    };
    for (wi, w) in dp.workers.iter().enumerate() {
        let socks = create_sockets(cfg, links, progs, wi, w.queue)?;
        handle.copy_fallbacks += socks.copy_fallbacks;
        let egress_ports = (0..socks.ports.len()).collect();
        let counters = Arc::new(Counters::default());
        let dpc = Arc::new(DpCounters::default());
        let engine = Engine::new(wi, Arc::clone(&handle.rules), Arc::clone(&counters));
        let (tx, rx) = crossbeam::channel::bounded(16);
        let worker = Worker::new(
            engine,
            socks.ports,
            socks.pools,
            shared.for_worker(),
            rx,
            Arc::clone(&dpc),
            dp.batch_size,
            dp.poll == PollMode::Busy,
            egress_ports,
            handle.started,
        );
        let core = w.core;
        let t = std::thread::Builder::new()
            .name(format!("natgw-w{wi}"))
            .spawn(move || {
                core_affinity::set_for_current(core_affinity::CoreId { id: core });
                worker.run()
            })
            .map_err(|err| StartError::Thread { worker: wi, err })?;
        workers.threads.push(t);
        handle.counters.push(counters);
        handle.dp.push(dpc);
        handle.control.push(tx);
    }
    Ok(std::mem::take(&mut workers.threads))
}

impl Gateway {
    /// Checks the machine against `cfg`, attaches XDP, binds the sockets and starts the
    /// workers.
    pub fn start(cfg: &Config, opts: &RunOptions) -> Result<Gateway, StartError> {
        check_privileges()?;
        let dp = &cfg.dataplane;
        let links = resolve_links(cfg)?;
        check_workers(cfg, &links)?;
        let mode = opts.xdp_mode.unwrap_or(dp.xdp_mode);
        // Dropped last on an error below: workers already started stop before their XDP
        // programs detach.
        let (progs, xdp_modes) = load_and_attach_xdp(cfg, &links, mode)?;

        let mut rules = rules_for(cfg, None);
        rules.cores = dp.workers.len().max(1);
        rules.rss = rss_steering(
            &links.outside.name,
            &dp.workers.iter().map(|w| w.queue).collect::<Vec<_>>(),
        );
        let rules = Arc::new(rules);
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
