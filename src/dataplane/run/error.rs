//! Why `natgw run` did not start, and why a reload was refused.

use crate::config::XdpMode;
use std::fmt;
use std::io;
use std::net::Ipv4Addr;

/// Why the gateway did not start. Whatever it had set up is undone: started workers stop,
/// sockets close and the XDP programs detach.
#[derive(Debug)]
pub enum StartError {
    /// The process lacks capabilities `natgw run` needs (their names).
    MissingCapabilities(Vec<String>),
    /// Memory could not be locked (mlockall).
    LockMemory(io::Error),
    /// The capabilities natgw no longer needs after set-up could not be dropped.
    DropCapabilities(io::Error),
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
    /// The kernel refused to pin a worker to its core (sched_setaffinity).
    Pin {
        worker: usize,
        core: usize,
        err: std::io::Error,
    },
    /// A worker's queue does not exist on an interface that has `queues` receive queues.
    NoQueue {
        queue: u32,
        ifname: String,
        queues: u32,
    },
    /// Receive queues of an interface have no worker (frames on them would be dropped).
    UnservedQueues {
        ifname: String,
        queues: u32,
        unserved: Vec<u32>,
        workers: usize,
        /// `combined` or `rx`: the `ethtool -L` channel type of this NIC.
        knob: &'static str,
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
    /// The rtnetlink link notification socket could not be opened.
    LinkSocket(io::Error),
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
    /// The engines' tables would not fit in the memory available.
    Memory(crate::nat::memory::MemoryError),
}

impl fmt::Display for StartError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StartError::MissingCapabilities(missing) => write!(
                f,
                "natgw run needs CAP_NET_ADMIN, CAP_NET_RAW and CAP_BPF to attach XDP programs \
                 and open AF_XDP sockets; missing: {} (run it as root, or as its own user with \
                 these capabilities: see deploy/natgw.service)",
                missing.join(", ")
            ),
            StartError::LockMemory(err) => write!(
                f,
                "locking natgw's memory (mlockall) failed: {err}; give it CAP_IPC_LOCK or raise \
                 its locked-memory limit (systemd: LimitMEMLOCK=infinity; shell: ulimit -l \
                 unlimited)"
            ),
            StartError::DropCapabilities(err) => {
                write!(f, "dropping capabilities after set-up failed: {err}")
            }
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
            StartError::Pin { worker, core, err } => write!(
                f,
                "dataplane.workers[{worker}]: cannot pin the worker to core {core}: {err} (a cpuset or container that leaves the core out?)"
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
            StartError::UnservedQueues {
                ifname,
                queues,
                unserved,
                workers,
                knob,
            } => write!(
                f,
                "dataplane.workers: {ifname} has {queues} receive queues but no worker serves \
                 queue{} {}; frames on an unserved queue would be dropped. Reduce the queues to \
                 the workers' ({workers}): `ethtool -L {ifname} {knob} {workers}`, or add a \
                 worker for every queue",
                if unserved.len() == 1 { "" } else { "s" },
                unserved
                    .iter()
                    .map(|q| q.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
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
            StartError::LinkSocket(err) => write!(f, "netlink link socket: {err}"),
            StartError::Umem { worker, err } => write!(f, "UMEM for worker {worker}: {err}"),
            StartError::Socket { ifname, queue, err } => {
                write!(f, "AF_XDP socket on {ifname} queue {queue}: {err}")
            }
            StartError::Register { ifname, queue, err } => {
                write!(f, "registering the socket of {ifname} queue {queue}: {err}")
            }
            StartError::Thread { worker, err } => write!(f, "starting worker {worker}: {err}"),
            StartError::Memory(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for StartError {}

/// Why a reload was refused. The running configuration stays in force.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReloadError {
    /// A key changed that only a restart can apply (`reload::restart_only`): its path and
    /// why. Nothing was changed.
    NeedsRestart { key: String, reason: &'static str },
    /// The new configuration binds other interfaces (or orders them differently).
    Interfaces {
        running: Vec<String>,
        new: Vec<String>,
    },
    /// A worker did not take or acknowledge configuration `generation` in time (it is
    /// stuck or gone; natgw ends on a dead worker). The other workers may have applied it.
    NotApplied { worker: usize, generation: u64 },
    /// The new port allocators would not fit in the memory available.
    Memory(crate::nat::memory::MemoryError),
    /// An interface's XDP pass maps refused one of the box's addresses (the maps were put
    /// back as they were).
    PassAddr {
        addr: Ipv4Addr,
        ifname: String,
        err: String,
    },
}

impl fmt::Display for ReloadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ReloadError::NeedsRestart { key, reason } => write!(
                f,
                "{key}: changing it needs a restart ({reason}); nothing was changed"
            ),
            ReloadError::Interfaces { running, new } => write!(
                f,
                "outside/inside interfaces: changing them ({} -> {}) needs a restart",
                running.join(","),
                new.join(",")
            ),
            ReloadError::NotApplied { worker, generation } => write!(
                f,
                "worker {worker} did not apply configuration generation {generation} within \
                 2 s (stuck or gone; the other workers may have applied it)"
            ),
            ReloadError::Memory(e) => write!(f, "{e}"),
            ReloadError::PassAddr { addr, ifname, err } => write!(
                f,
                "cannot pass {addr} to the kernel on {ifname} (at most {} addresses per interface): {err}",
                crate::dataplane::xdp::PASS_MAP_MAX_ENTRIES
            ),
        }
    }
}

impl std::error::Error for ReloadError {}
