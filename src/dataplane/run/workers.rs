//! The workers: what they share, and starting them pinned to their cores.

use super::checks::Links;
use super::sockets::create_sockets;
use super::{Handle, StartError};
use crate::config::{Config, PollMode};
use crate::dataplane::neigh::NeighTable;
use crate::dataplane::worker::stats::{PortStats, WorkerStats};
use crate::dataplane::worker::{
    DpCounters, HANDOFF_MTU, HandoffFrame, Polling, Worker, WorkerShared,
};
use crate::dataplane::xdp::XdpProgram;
use crate::nat::{Counters, Engine, Ingress};
use crossbeam::queue::ArrayQueue;
use natgw_kernel::wake::EventFd;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;

/// Workers started so far: stopped and joined if a later step fails (while they are being
/// spawned, and in `Gateway::start` until it has succeeded).
pub(super) struct Started {
    pub(super) stop: Arc<AtomicBool>,
    pub(super) threads: Vec<JoinHandle<()>>,
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

/// Moves the calling thread off the workers' cores when the machine has others: every
/// management thread (API, metrics, event log, the main thread's netlink work) is spawned
/// from it afterwards and inherits the mask. Their wake-ups would otherwise land on a
/// worker's core now and then and take the CPU from it while it polls. Returns the cores
/// chosen (None: every usable core has a worker, so the management threads share them).
pub(super) fn pin_off_workers(cfg: &Config) -> Option<Vec<usize>> {
    let cores = natgw_kernel::sched::affinity().ok()?;
    let free: Vec<usize> = cores
        .into_iter()
        .filter(|id| !cfg.dataplane.workers.iter().any(|w| w.core == *id))
        .collect();
    if free.is_empty() {
        return None;
    }
    match natgw_kernel::sched::set_affinity(&free) {
        Ok(()) => Some(free),
        Err(e) => {
            tracing::warn!("management threads stay on every core: {e}");
            None
        }
    }
}

/// What every worker shares with the others and with the management thread.
pub(super) struct Shared {
    neigh: Arc<NeighTable>,
    pub(super) resolve: Arc<ArrayQueue<(u32, Ipv4Addr)>>,
    handoff: Vec<Arc<ArrayQueue<Box<HandoffFrame>>>>,
    handoff_free: Arc<ArrayQueue<Box<HandoffFrame>>>,
    pub(super) stop: Arc<AtomicBool>,
    /// The management thread sleeps on it (and its netlink sockets): workers signal it
    /// after queueing a resolution request.
    pub(super) mgmt_wake: Arc<EventFd>,
}

impl Shared {
    /// Handoff queues for `workers` workers and their preallocated frames (none for one
    /// worker, which never hands off).
    pub(super) fn new(
        neigh: Arc<NeighTable>,
        workers: usize,
        handoff_queue: usize,
        mgmt_wake: EventFd,
    ) -> Shared {
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
            mgmt_wake: Arc::new(mgmt_wake),
        }
    }

    fn for_worker(&self) -> WorkerShared {
        WorkerShared {
            neigh: Arc::clone(&self.neigh),
            resolve: Arc::clone(&self.resolve),
            handoff: self.handoff.clone(),
            handoff_free: Arc::clone(&self.handoff_free),
            stop: Arc::clone(&self.stop),
            mgmt_wake: Arc::clone(&self.mgmt_wake),
        }
    }
}

/// Creates every worker's sockets and starts the workers pinned to their cores, recording
/// their counters and control channels in `handle`. On an error the workers already
/// started are stopped and joined before it returns.
pub(super) fn spawn_workers(
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
        // Each socket's traffic counters and a reader of its XDP_STATISTICS for the metrics.
        // Port i serves interface i (egress_ports).
        let port_stats = socks
            .ports
            .iter()
            .enumerate()
            .map(|(i, p)| PortStats::new(i, w.queue, p.sock.stats_reader().ok()))
            .collect();
        let dpc = Arc::new(DpCounters {
            stats: WorkerStats::new(port_stats),
            ..DpCounters::default()
        });
        let engine = Engine::new(wi, Arc::clone(&handle.rules), Arc::clone(&counters));
        let (tx, rx) = crate::dataplane::worker::control::channel(16)
            .map_err(|err| StartError::Thread { worker: wi, err })?;
        let worker = Worker::new(
            engine,
            socks.ports,
            socks.pools,
            shared.for_worker(),
            rx,
            Arc::clone(&dpc),
            dp.batch_size,
            match dp.poll {
                PollMode::Busy => Polling::Busy,
                PollMode::Adaptive => Polling::Adaptive {
                    spin_max_ns: u64::from(dp.spin_max_us) * 1000,
                },
            },
            egress_ports,
            handle.started,
        );
        let core = w.core;
        // The worker says whether it runs on its core before it polls: a worker the kernel
        // will not pin (a cpuset without that core) is a refused start, not a worker that
        // polls on whatever core it was given.
        let (pinned_tx, pinned) = std::sync::mpsc::sync_channel(1);
        let t = std::thread::Builder::new()
            .name(format!("natgw-w{wi}"))
            .spawn(move || {
                super::privileges::worker_drops_all();
                let pin = natgw_kernel::sched::set_affinity(&[core]);
                let ok = pin.is_ok();
                let _ = pinned_tx.send(pin);
                if !ok {
                    return;
                }
                #[cfg(debug_assertions)]
                crate::dataplane::fault::arm(wi);
                worker.run()
            })
            .map_err(|err| StartError::Thread { worker: wi, err })?;
        workers.threads.push(t);
        match pinned.recv() {
            Ok(Ok(())) => {}
            Ok(Err(err)) => {
                return Err(StartError::Pin {
                    worker: wi,
                    core,
                    err,
                });
            }
            Err(_) => {
                return Err(StartError::Thread {
                    worker: wi,
                    err: std::io::Error::other("the worker ended before it was pinned"),
                });
            }
        }
        handle.counters.push(counters);
        handle.dp.push(dpc);
        handle.control.push(tx);
    }
    Ok(std::mem::take(&mut workers.threads))
}
