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

fn err(msg: String) -> String {
    msg
}

fn link(name: &str, role: &str) -> Result<LinkInfo, String> {
    netlink::link_by_name(name).map_err(|e| {
        if sys::errno(&e) == Some(sys::ENODEV) {
            format!("{role} interface '{name}' does not exist")
        } else {
            format!("{role} interface '{name}': {e}")
        }
    })
}

/// Builds the rules for `cfg` on this machine: the partition matches the worker count and
/// the outside link's own prefixes are on-link.
pub fn rules_for(cfg: &Config) -> Result<Rules, String> {
    let partition = Arc::new(BlockPartition::new(cfg.dataplane.workers.len().max(1)));
    let mut rules = Rules::new(cfg, partition);
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
    Ok(rules)
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

impl Gateway {
    pub fn start(cfg: &Config, opts: &RunOptions) -> Result<Gateway, String> {
        if !sys::is_root() {
            return Err(err(
                "natgw run needs root (CAP_NET_ADMIN, CAP_BPF and CAP_NET_RAW) to attach XDP \
                            programs and open AF_XDP sockets"
                    .into(),
            ));
        }
        let dp = &cfg.dataplane;
        let outside = link(&cfg.outside.name, "outside")?;
        let inside: Vec<LinkInfo> = cfg
            .inside
            .iter()
            .map(|i| link(&i.name, "inside"))
            .collect::<Result<_, _>>()?;
        let cores = core_affinity::get_core_ids().unwrap_or_default();
        for w in &dp.workers {
            if !cores.iter().any(|c| c.id == w.core) {
                return Err(format!(
                    "dataplane.workers: core {} does not exist or is not usable by natgw (usable: {:?})",
                    w.core,
                    cores.iter().map(|c| c.id).collect::<Vec<_>>()
                ));
            }
            for l in std::iter::once(&outside).chain(inside.iter()) {
                let queues = match ethtool::channels(&l.name) {
                    Ok(Some((rx, _))) if rx > 0 => rx.min(l.num_rx_queues),
                    _ => l.num_rx_queues,
                };
                if w.queue >= queues {
                    return Err(format!(
                        "dataplane.workers: queue {} does not exist on {} ({} rx queue{}); \
                         queues and workers must match",
                        w.queue,
                        l.name,
                        queues,
                        if queues == 1 { "" } else { "s" }
                    ));
                }
            }
        }
        let mode = opts.xdp_mode.unwrap_or(dp.xdp_mode);
        let mut progs = Vec::new();
        let mut xdp_modes = Vec::new();
        let mut all_links = vec![(outside.clone(), cfg.outside.management.clone())];
        for (l, i) in inside.iter().zip(&cfg.inside) {
            all_links.push((l.clone(), i.management.clone()));
        }
        for (l, mgmt) in &all_links {
            let mut p = XdpProgram::load(l.num_rx_queues.max(1))
                .map_err(|e| format!("loading the XDP program for {}: {e}", l.name))?;
            for a in mgmt {
                p.add_pass_addr(*a)
                    .map_err(|e| format!("XDP pass address {a} on {}: {e}", l.name))?;
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
            .map_err(|e| {
                format!(
                    "the kernel refused to attach XDP ({mode:?} mode) to {}: {e}",
                    l.name
                )
            })?;
            xdp_modes.push((l.name.clone(), got));
            progs.push(p);
        }

        let mut rules = rules_for(cfg)?;
        rules.cores = dp.workers.len().max(1);
        rules.rss = rss_steering(
            &outside.name,
            &dp.workers.iter().map(|w| w.queue).collect::<Vec<_>>(),
        );
        let rules = Arc::new(rules);
        let n = dp.workers.len().max(1);
        let stop = Arc::new(AtomicBool::new(false));
        let neigh = Arc::new(NeighTable::new(8192));
        let mut neigh_sock =
            NeighSocket::open().map_err(|e| format!("netlink neighbour socket: {e}"))?;
        if let Ok(d) = neigh_sock.dump() {
            let _ = neigh.sync(&d);
        }
        // Ask for the next hops natgw will certainly need, so the first packets find them.
        if neigh.lookup(outside.ifindex, cfg.outside.gateway).is_none() {
            let _ = netlink::resolve(outside.ifindex, cfg.outside.gateway);
        }
        let resolve = Arc::new(ArrayQueue::new(1024));
        let handoff: Vec<_> = (0..n)
            .map(|_| Arc::new(ArrayQueue::new(dp.handoff_queue)))
            .collect();
        let boxes = if n > 1 {
            dp.handoff_queue * n + 64 * n
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
        let xcfg = XskConfig {
            ring_size: dp.ring_size,
            copy: None,
            need_wakeup: true,
        };
        let epoch = Instant::now();
        let mut handle = Handle {
            counters: Vec::new(),
            dp: Vec::new(),
            control: Vec::new(),
            rules: Arc::clone(&rules),
            neigh: Arc::clone(&neigh),
            started: epoch,
            xdp_modes,
            copy_fallbacks: 0,
            interfaces: all_links.iter().map(|(l, _)| l.name.clone()).collect(),
        };
        // Declared after `progs`, so dropped first: on an error below, the workers already
        // started stop before their XDP programs detach.
        let mut workers = Started {
            stop: Arc::clone(&stop),
            threads: Vec::new(),
        };
        for (wi, w) in dp.workers.iter().enumerate() {
            let umem = Umem::new(dp.umem_frames, FRAME_SIZE)
                .map_err(|e| format!("UMEM for worker {wi}: {e}"))?;
            let first = XskSocket::new(&umem, outside.ifindex, w.queue, &xcfg)
                .map_err(|e| format!("AF_XDP socket on {} queue {}: {e}", outside.name, w.queue))?;
            progs[0].register_socket(w.queue, first.fd()).map_err(|e| {
                format!(
                    "registering the socket of {} queue {}: {e}",
                    outside.name, w.queue
                )
            })?;
            let mut ports = vec![Port {
                sock: first,
                ingress: Ingress::Outside,
                mac: outside.mac,
                ifindex: outside.ifindex,
                pool: 0,
                vlan_ifindex: Vec::new(),
            }];
            let mut extra_pools = Vec::new();
            for (ii, l) in inside.iter().enumerate() {
                let shared =
                    XskSocket::new_shared(&umem, &ports[0].sock, l.ifindex, w.queue, &xcfg);
                let (sock, pool) = match shared {
                    Ok(s) => (s, 0),
                    Err(_) => {
                        // The driver cannot share a UMEM across these devices: give the socket a
                        // UMEM of its own and copy frames between them (counted).
                        let u = Umem::new(dp.umem_frames, FRAME_SIZE)
                            .map_err(|e| format!("UMEM for worker {wi}: {e}"))?;
                        let s = XskSocket::new(&u, l.ifindex, w.queue, &xcfg).map_err(|e| {
                            format!("AF_XDP socket on {} queue {}: {e}", l.name, w.queue)
                        })?;
                        extra_pools.push(Pool::new(u));
                        handle.copy_fallbacks += 1;
                        (s, extra_pools.len())
                    }
                };
                progs[1 + ii]
                    .register_socket(w.queue, sock.fd())
                    .map_err(|e| {
                        format!(
                            "registering the socket of {} queue {}: {e}",
                            l.name, w.queue
                        )
                    })?;
                ports.push(Port {
                    sock,
                    ingress: Ingress::Inside(ii as u8),
                    mac: l.mac,
                    ifindex: l.ifindex,
                    pool,
                    vlan_ifindex: vlan_devices(cfg, &l.name),
                });
            }
            let mut pools = vec![Pool::new(umem)];
            pools.extend(extra_pools);
            let egress_ports = (0..ports.len()).collect();
            let counters = Arc::new(Counters::default());
            let dpc = Arc::new(DpCounters::default());
            let engine = Engine::new(wi, Arc::clone(&rules), Arc::clone(&counters));
            let (tx, rx) = crossbeam::channel::bounded(16);
            let shared = WorkerShared {
                neigh: Arc::clone(&neigh),
                resolve: Arc::clone(&resolve),
                handoff: handoff.clone(),
                handoff_free: Arc::clone(&handoff_free),
                stop: Arc::clone(&stop),
            };
            let worker = Worker::new(
                engine,
                ports,
                pools,
                shared,
                rx,
                Arc::clone(&dpc),
                dp.batch_size,
                dp.poll == PollMode::Busy,
                egress_ports,
                epoch,
            );
            let core = w.core;
            let t = std::thread::Builder::new()
                .name(format!("natgw-w{wi}"))
                .spawn(move || {
                    core_affinity::set_for_current(core_affinity::CoreId { id: core });
                    worker.run()
                })
                .map_err(|e| format!("starting worker {wi}: {e}"))?;
            workers.threads.push(t);
            handle.counters.push(counters);
            handle.dp.push(dpc);
            handle.control.push(tx);
        }
        Ok(Gateway {
            handle,
            workers: std::mem::take(&mut workers.threads),
            stop,
            resolve,
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
