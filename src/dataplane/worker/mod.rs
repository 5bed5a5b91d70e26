//! One pinned poll loop per core: receive a batch from each of its AF_XDP sockets, run the
//! engine, fill in link-layer addresses, transmit, recycle frames. The hot path takes no lock,
//! makes no allocation and makes syscalls only per batch (tx kick, rx wakeup, idle poll).

pub mod control;
mod handoff;
mod held;
pub mod stats;
mod tx;

use super::hold::{Held, HoldLimits, HoldQueue, Push};
use super::neigh::{NeighState, NeighTable};
use crate::nat::counters::Counter;
use crate::nat::{Counters, DropReason, Egress, Engine, Frame, Ingress, Pkt, Rules, Verdict};
use crossbeam::queue::ArrayQueue;
use natgw_kernel::sched::{RunDelay, involuntary_switches};
use natgw_kernel::wake::{EventFd, MAX_WAIT_FDS, wait_readable};
use natgw_kernel::xsk::{BadDesc, Desc, Umem, XskSocket};
use stats::{Meter, WorkerStats};
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Largest frame that crosses cores (jumbo frames are not handed off).
pub const HANDOFF_MTU: usize = 2048;
/// Where received data starts in a UMEM frame we fill ourselves (matches the kernel's
/// XDP_PACKET_HEADROOM, leaving room to push a VLAN tag without moving the payload).
const TX_HEADROOM: usize = 256;

/// A frame travelling to the core that owns its flow.
pub struct HandoffFrame {
    pub ingress: Ingress,
    pub len: u16,
    pub data: [u8; HANDOFF_MTU],
}

pub use control::{ControlRx, ControlTx, DeleteStep, ListChunk, ListStep, SessionInfo};

/// Messages from the management thread to a worker.
pub enum Control {
    /// Apply new rules, then acknowledge with their configuration generation.
    SetRules {
        rules: Arc<Rules>,
        generation: u64,
        ack: crossbeam::channel::Sender<u64>,
    },
    /// One bounded step of a session listing.
    Sessions(ListStep),
    /// One bounded step of a session deletion.
    DeleteSessions(DeleteStep),
    ClearSessions,
}

macro_rules! dp_counters {
    ($($name:ident: $help:literal,)*) => {
        /// Dataplane counters of one worker (single writer, like the engine's), and what
        /// else it publishes for the metrics.
        #[derive(Default, Debug)]
        pub struct DpCounters {
            $(#[doc = $help] pub $name: Counter,)*
            pub stats: WorkerStats,
        }
        impl DpCounters {
            pub fn each(&self, mut f: impl FnMut(&'static str, &'static str, u64)) {
                $(f(stringify!($name), $help, self.$name.get());)*
            }
        }
    };
}

dp_counters! {
    rx_batches: "non-empty receive batches",
    tx_frames: "frames transmitted",
    copied_frames: "frames copied between UMEMs (no shared UMEM)",
    handoff_in: "frames received from other cores",
    idle_sleeps: "times the poll loop slept for lack of traffic",
    core_shared: "housekeeping ticks on which the worker found its core shared (it waited for its CPU more than a tenth of the time) and stopped spinning for a second",
    neigh_requests: "neighbour resolutions asked of the kernel",
    neigh_held: "frames held for a next hop that was not resolved yet",
    neigh_released: "held frames sent once their next hop resolved",
    neigh_hold_overflow: "held frames dropped because a hold limit was reached (also in drops no_neighbour)",
    neigh_hold_expired: "held frames dropped because their next hop did not resolve in time (also in drops no_neighbour)",
    neigh_hold_failed: "held frames dropped because the kernel failed to resolve their next hop (also in drops no_neighbour)",
    neigh_hold_active: "frames held for their next hop now",
    neighbour_resolution_failures: "next hops the kernel failed to resolve while frames waited for them",
}

/// One AF_XDP socket with the interface it serves.
pub struct Port {
    pub sock: XskSocket,
    pub ingress: Ingress,
    pub mac: [u8; 6],
    pub ifindex: u32,
    /// Index of the UMEM pool this socket's frames belong to.
    pub pool: usize,
    /// (VLAN id, ifindex of the kernel's device for that VLAN): where the neighbours of a
    /// tagged frame's next hop live.
    pub vlan_ifindex: Vec<(u16, u32)>,
}

/// A UMEM and its free frames.
pub struct Pool {
    pub umem: Umem,
    pub free: Vec<u64>,
}

impl Pool {
    pub fn new(umem: Umem) -> Pool {
        let free = (0..umem.frames()).map(|i| umem.frame_addr(i)).collect();
        Pool { umem, free }
    }
    fn chunk(&self, addr: u64) -> u64 {
        addr & !(self.umem.frame_size() as u64 - 1)
    }
}

pub struct WorkerShared {
    pub neigh: Arc<NeighTable>,
    /// Resolution requests for the management thread (ifindex, next hop).
    pub resolve: Arc<ArrayQueue<(u32, Ipv4Addr)>>,
    /// Handoff queue of every worker, indexed by engine core number.
    pub handoff: Vec<Arc<ArrayQueue<Box<HandoffFrame>>>>,
    /// Empty boxes recycled between workers so a handoff never allocates.
    pub handoff_free: Arc<ArrayQueue<Box<HandoffFrame>>>,
    pub stop: Arc<AtomicBool>,
    /// Wakes the management thread: signalled after a resolution request is queued.
    pub mgmt_wake: Arc<EventFd>,
}

pub struct Worker {
    pub engine: Engine,
    pub ports: Vec<Port>,
    pub pools: Vec<Pool>,
    pub shared: WorkerShared,
    pub control: ControlRx,
    pub counters: Arc<Counters>,
    pub dp: Arc<DpCounters>,
    pub batch: usize,
    pub polling: Polling,
    pub epoch: Instant,
    /// Port index for each egress: 0 = outside, 1 + i = inside interface i.
    pub egress_ports: Vec<usize>,
    /// Recently asked neighbour resolutions, to ask the kernel at most once a second each.
    asked: [(u32, Ipv4Addr, u64); 8],
    asked_next: usize,
    /// A handed-off frame taken from our queue but not yet processed (it started a new
    /// ingress run, or no frame was free); it is the oldest and goes first.
    handoff_carry: Option<Box<HandoffFrame>>,
    /// Frames waiting for their next hop, in their own chunks.
    hold: HoldQueue,
    /// The neighbour table generation the held neighbours were last looked up at.
    hold_gen: u64,
    /// Look the held neighbours up again even if the generation has not changed: a frame
    /// was held after its lookup missed, and the neighbour may have resolved in between.
    hold_recheck: bool,
    /// Busy time, batch histograms, pool use: accumulated here, published on the tick.
    meter: Meter,
}

/// Adaptive polling: how long the loop keeps polling after its last work before it sleeps
/// in poll(2). A wake-up from poll(2) costs tens of µs (on a VM the idle vCPU halts, and the
/// waker's IPI goes through the hypervisor), twice per request/response through the
/// gateway if the loop sleeps between the request and its answer. So the window adapts like
/// Linux's haltpoll governor: it doubles when traffic came back soon after the loop fell
/// asleep (polling a little longer would have caught it without a wake-up) and halves when
/// it came back late or not at all. "Soon" is judged over the whole idle period, however
/// many poll(2) timeouts (10 ms, 1 ms with several workers) it took: judged per sleep, a
/// flow with 12 ms gaps halved the window on each timeout and doubled it on the short
/// sleep after, and never got past the minimum (with several workers, any gap over 1.2 ms).
/// Steady traffic with gaps under the maximum (`dataplane.spin_max_us`) ends up never
/// sleeping; an idle gateway sleeps right after its last frame plus [`SPIN_MIN_NS`]. A worker that is preempted while it polls shares its core
/// with other work: spinning then only burns its time slice and the scheduler makes it wait
/// milliseconds, while a thread that sleeps is woken promptly. So preemption drops the
/// window to the minimum, and it does not grow again for [`SPIN_HOLD_NS`].
#[derive(Clone, Copy, Debug)]
struct Spin {
    window: u64,
    /// The longest window (`dataplane.spin_max_us`).
    max: u64,
    /// When the loop last did work (ns since the epoch).
    last_work: u64,
    /// When the loop first went to sleep since its last work.
    asleep_since: Option<u64>,
    /// No growth before this (ns since the epoch).
    hold_until: u64,
}

/// How long the window stays at its minimum after the worker was preempted.
pub const SPIN_HOLD_NS: u64 = 1_000_000_000;

/// The shortest spin window: covers the round trip behind the gateway (request out,
/// answer back) on the test topologies, so a single exchange costs one wake-up, not two.
/// Also the least `dataplane.spin_max_us` the configuration accepts.
pub const SPIN_MIN_NS: u64 = crate::config::SPIN_MAX_US_FLOOR as u64 * 1000;

/// How the poll loop waits for traffic (`dataplane.poll`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Polling {
    /// Never sleeps.
    Busy,
    /// Sleeps in poll(2) once no frame came for the spin window, at most `spin_max_ns`:
    /// traffic with gaps under it keeps the loop polling (a core busy while it lasts);
    /// sparser traffic pays a wake-up per packet instead.
    Adaptive { spin_max_ns: u64 },
}

impl Spin {
    fn new(max: u64) -> Spin {
        Spin {
            window: SPIN_MIN_NS,
            max: max.max(SPIN_MIN_NS),
            last_work: 0,
            asleep_since: None,
            hold_until: 0,
        }
    }

    /// The loop did work at `now`.
    fn worked(&mut self, now: u64) {
        self.last_work = now;
        self.asleep_since = None;
    }

    /// The loop goes to sleep at `now` (the first time since its last work, or again after
    /// a timeout).
    fn sleeping(&mut self, now: u64) {
        self.asleep_since.get_or_insert(now);
    }

    /// On the housekeeping tick: whether the core was shared since the last one.
    fn check_preempted(&mut self, shared: bool, now: u64) {
        if shared {
            self.window = SPIN_MIN_NS;
            self.hold_until = now + SPIN_HOLD_NS;
        }
    }

    /// After a sleep that `traffic` ended (false: the timeout), at `now`.
    fn after_sleep(&mut self, traffic: bool, now: u64) {
        let idle = now.saturating_sub(self.asleep_since.unwrap_or(now));
        self.window = if now < self.hold_until {
            SPIN_MIN_NS
        } else if idle >= self.max {
            (self.window / 2).max(SPIN_MIN_NS)
        } else if traffic {
            (self.window * 2).min(self.max)
        } else {
            // A timeout before the maximum: traffic may still come back soon enough.
            self.window
        };
        if traffic {
            self.asleep_since = None;
        }
    }
}

/// Whether the worker shares its core with other work, judged on each housekeeping tick.
///
/// By the time the worker waited, runnable, for its CPU ([`RunDelay`]): shared when the
/// wait grew by more than [`SHARED_WAIT_SHARE`] of the wall time since the last tick. A
/// count of preemptions cannot tell that from the brief preemptions any core sees (a
/// kworker, the softirq thread delivering the worker's own transmissions): on these VMs
/// those came in twos and threes every 50-200 ms while a paced flow ran, each dropping the
/// spin window to its minimum for a second, so a request every 2 ms paid two wake-ups
/// (p50 1.75x busy mode's). Where the kernel keeps no scheduler statistics, the old rule:
/// more than one involuntary switch per tick.
///
/// Only two such ticks in a row count: one is a burst (a kworker or kcompactd running 5 ms
/// once), and dropping the window for a second over it cost a flow of 500 requests/s a
/// wake-up per request for that second (bench/README.md); work that shares the core shows on
/// every tick, and is caught 50 ms later.
struct CoreShare {
    delay: Option<RunDelay>,
    last_delay: u64,
    last_switches: u64,
    last_check: u64,
    /// Whether the previous tick found the worker waiting too long.
    waited_last_tick: bool,
}

/// The share of the wall time a worker may wait for its CPU before its core counts as
/// shared (1/10: 5 ms of a 50 ms tick).
pub const SHARED_WAIT_SHARE: u64 = 10;

impl CoreShare {
    /// For the calling thread (the worker's own).
    fn open() -> CoreShare {
        CoreShare {
            delay: RunDelay::open(),
            last_delay: 0,
            last_switches: 0,
            last_check: 0,
            waited_last_tick: false,
        }
    }

    fn shared(&mut self, now: u64) -> bool {
        let wall = now.saturating_sub(self.last_check);
        self.last_check = now;
        let waited = match self.delay.as_ref().and_then(RunDelay::read) {
            Some(d) => {
                let waited = d.saturating_sub(self.last_delay);
                self.last_delay = d;
                waited_too_long(waited, wall)
            }
            None => {
                let s = involuntary_switches();
                let shared = s > self.last_switches.saturating_add(1);
                self.last_switches = s;
                shared
            }
        };
        self.sustained(waited)
    }

    /// This tick's verdict with the previous one's: shared only on the second in a row.
    fn sustained(&mut self, waited: bool) -> bool {
        let shared = waited && self.waited_last_tick;
        self.waited_last_tick = waited;
        shared
    }
}

/// Whether waiting `waited` ns for the CPU in `wall` ns means the core is shared.
fn waited_too_long(waited: u64, wall: u64) -> bool {
    waited.saturating_mul(SHARED_WAIT_SHARE) > wall
}

/// Marks a worker as running while it lives (cleared also when a panic unwinds `run`).
struct Running(Arc<DpCounters>);

impl Running {
    fn new(dp: Arc<DpCounters>) -> Running {
        dp.stats.running.store(true, Ordering::Relaxed);
        Running(dp)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.stats.running.store(false, Ordering::Relaxed);
    }
}

/// Why a held frame was dropped.
#[derive(Clone, Copy)]
enum HoldDrop {
    Overflow,
    Expired,
    Failed,
}

/// A frame ready for a transmit ring.
#[derive(Clone, Copy)]
struct Out {
    port: usize,
    desc: Desc,
}

/// Scratch space reused by every iteration (allocated once).
struct Scratch {
    descs: Vec<Desc>,
    verdicts: Vec<Verdict>,
    addrs: Vec<u64>,
    outs: Vec<Out>,
    tx: Vec<Desc>,
    /// (chunk base, offset, length) of each frame of the batch after the engine ran.
    pos: Vec<(u64, usize, usize)>,
    ready: Vec<(u64, usize, usize, Verdict)>,
    /// Packets of the current batch. The 'static lifetime is a lie confined to
    /// `process_frames`: the vector is always emptied before the frames are recycled.
    pkts: Vec<Pkt<'static>>,
}

impl Scratch {
    fn new(b: usize) -> Scratch {
        Scratch {
            descs: vec![Desc::default(); b],
            verdicts: vec![Verdict::Held; b],
            addrs: vec![0; b * 4],
            outs: Vec::with_capacity(b * 8),
            tx: Vec::with_capacity(b * 8),
            pos: Vec::with_capacity(b),
            ready: Vec::with_capacity(b * 4),
            pkts: Vec::with_capacity(b),
        }
    }
}

impl Worker {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        engine: Engine,
        ports: Vec<Port>,
        pools: Vec<Pool>,
        shared: WorkerShared,
        control: ControlRx,
        dp: Arc<DpCounters>,
        batch: usize,
        polling: Polling,
        egress_ports: Vec<usize>,
        epoch: Instant,
    ) -> Worker {
        let counters = Arc::clone(engine.counters());
        let umem_frames = pools.first().map_or(0, |p| p.umem.frames() as usize);
        Worker {
            engine,
            ports,
            pools,
            shared,
            control,
            counters,
            dp,
            batch,
            polling,
            epoch,
            egress_ports,
            asked: [(0, Ipv4Addr::UNSPECIFIED, 0); 8],
            asked_next: 0,
            handoff_carry: None,
            hold: HoldQueue::new(HoldLimits::for_umem(umem_frames)),
            hold_gen: 0,
            hold_recheck: false,
            meter: Meter::new(),
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Runs until the stop flag is raised.
    pub fn run(mut self) {
        let mut sc = Scratch::new(self.batch);
        let busy_poll = self.polling == Polling::Busy;
        let mut spin = Spin::new(match self.polling {
            Polling::Busy => SPIN_MIN_NS,
            Polling::Adaptive { spin_max_ns } => spin_max_ns,
        });
        let mut share = CoreShare::open();
        let mut last_tick = 0u64;
        let _running = Running::new(Arc::clone(&self.dp));
        self.dp
            .stats
            .tables
            .neigh_hold_capacity
            .set(self.hold.limits().frames as u64);
        // End of the previous round: each round's time is accounted as busy or idle.
        let mut round_start = self.now_ns();
        self.refill();
        while !self.shared.stop.load(Ordering::Relaxed) {
            let mut worked = false;
            self.reap_completions(&mut sc.addrs);
            // Before this round's frames, so a released frame goes out ahead of any later
            // frame to the same next hop.
            if self.hold.held() != 0 {
                worked |= self.release_held(&mut sc.outs);
            }
            for pi in 0..self.ports.len() {
                let n = self.ports[pi].sock.recv(&mut sc.descs);
                if n == 0 {
                    continue;
                }
                worked = true;
                self.dp.rx_batches.inc();
                if let Some(ps) = self.dp.stats.ports.get(pi) {
                    ps.rx_packets.add(n as u64);
                    ps.rx_bytes
                        .add(sc.descs[..n].iter().map(|d| u64::from(d.len)).sum());
                }
                let pool = self.ports[pi].pool;
                let ingress = self.ports[pi].ingress;
                sc.pos.clear();
                for d in &sc.descs[..n] {
                    match self.pools[pool].umem.check_desc(*d) {
                        Ok(frame) => sc.pos.push(frame),
                        Err(bad) => {
                            self.counters.dropped(DropReason::BadDescriptor);
                            if let BadDesc::Length { chunk } = bad {
                                self.pools[pool].free.push(chunk);
                            }
                        }
                    }
                }
                self.process_frames(pool, ingress, &mut sc);
            }
            worked |= self.process_handoffs(&mut sc);
            self.drain_ready(&mut sc);
            self.transmit(&mut sc);
            self.refill();
            let now = self.now_ns();
            self.meter.account(now.saturating_sub(round_start), worked);
            round_start = now;
            if now.saturating_sub(last_tick) > 50_000_000 {
                last_tick = now;
                self.engine.tick(now);
                if !busy_poll {
                    let shared = share.shared(now);
                    if shared {
                        self.dp.core_shared.inc();
                    }
                    spin.check_preempted(shared, now);
                }
                self.expire_held(now);
                self.meter.tick(now, &self.engine, &self.dp.stats);
                #[cfg(debug_assertions)]
                super::fault::check();
            }
            // Every round, not only every tick: a session listing is a thousand small steps
            // at a million sessions, one per message (two atomic loads when there is none).
            if !self.control.is_empty() {
                self.control_messages();
            }
            if worked {
                spin.worked(now);
            } else if busy_poll {
                // Copy mode sends a bounded batch per kick: what a burst left in a transmit
                // ring must not wait for the next traffic (only kicks a ring that holds some).
                self.kick_pending_tx();
            } else if !busy_poll
                && now.saturating_sub(spin.last_work) >= spin.window
                && self.ready_to_sleep()
            {
                spin.sleeping(now);
                let traffic = self.sleep_until_traffic();
                let woke = self.now_ns();
                spin.after_sleep(traffic, woke);
                self.meter.account(woke.saturating_sub(now), false);
                round_start = woke;
            }
        }
        // Let queued transmissions finish before the sockets close.
        for _ in 0..100 {
            if self.ports.iter().all(|p| p.sock.tx_pending() == 0) {
                break;
            }
            for p in &self.ports {
                let _ = p.sock.kick_tx();
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        self.discard_held();
    }

    /// Runs the engine over the frames listed in `sc.pos` (all in `pool`, all ours), then
    /// routes each by its verdict.
    fn process_frames(&mut self, pool: usize, ingress: Ingress, sc: &mut Scratch) {
        let n = sc.pos.len();
        let fsize = self.pools[pool].umem.frame_size() as usize;
        let now = self.now_ns();
        for &(base, off, len) in &sc.pos {
            // SAFETY: each chunk came from an rx ring or our free list, so we own it alone,
            // and distinct entries are distinct chunks. The slice is extended to 'static
            // only while it sits in `sc.pkts`, which is emptied below, before any chunk is
            // recycled and long before the UMEM is unmapped.
            let buf: &'static mut [u8] =
                unsafe { std::mem::transmute(self.pools[pool].umem.frame_mut(base, fsize)) };
            let len = len.min(fsize - off.min(fsize));
            sc.pkts.push(Pkt {
                frame: Frame::new(buf, off.min(fsize), len),
                ingress,
            });
        }
        self.engine
            .process(now, &mut sc.pkts, &mut sc.verdicts[..n]);
        // One more clock read per batch (vDSO, tens of ns): the engine's part of the batch.
        self.meter.batch(n, self.now_ns().saturating_sub(now));
        for (i, p) in sc.pkts.iter().enumerate() {
            sc.pos[i].1 = p.frame.off;
            sc.pos[i].2 = p.frame.len;
        }
        sc.pkts.clear();
        for i in 0..n {
            let (base, off, len) = sc.pos[i];
            self.route(pool, base, off, len, sc.verdicts[i], &mut sc.outs);
        }
    }

    /// Acts on one verdict: fill in MACs and queue for transmit, hand off, or recycle.
    #[inline]
    fn route(
        &mut self,
        pool: usize,
        base: u64,
        off: usize,
        len: usize,
        v: Verdict,
        outs: &mut Vec<Out>,
    ) {
        match v {
            Verdict::Forward { egress, next_hop } | Verdict::Reply { egress, next_hop } => {
                self.send(pool, base, off, len, egress, next_hop, outs)
            }
            Verdict::Handoff { core, ingress } => {
                self.hand_off(pool, base, off, len, core as usize, ingress);
                self.pools[pool].free.push(base);
            }
            Verdict::ToKernel => {
                // The XDP program passes the kernel's traffic before it reaches us; what
                // still arrives here cannot be re-injected and is counted.
                self.counters.dropped(DropReason::ToKernelUnavailable);
                self.pools[pool].free.push(base);
            }
            Verdict::Held | Verdict::Drop(_) => self.pools[pool].free.push(base),
        }
    }

    /// Whether nothing but new traffic can give the loop work: no frame waits in a transmit
    /// ring for a kick (copy mode sends a bounded batch per kick; a transient error leaves
    /// frames behind) and no fill ring waits for a wakeup. Kicks those that do.
    fn ready_to_sleep(&self) -> bool {
        let pending = self.kick_pending_tx();
        for p in &self.ports {
            p.sock.wakeup_rx();
        }
        !pending
    }

    /// Kicks every socket whose transmit ring still holds frames; whether any did.
    fn kick_pending_tx(&self) -> bool {
        let mut pending = false;
        for p in &self.ports {
            if p.sock.tx_pending() != 0 {
                let _ = p.sock.kick_tx();
                pending = true;
            }
        }
        pending
    }

    /// Adaptive polling: sleep in poll(2) on the sockets, bounded so handoffs (which have no
    /// file descriptor) and housekeeping are never late by more than a few milliseconds.
    /// While frames wait for a next hop the sleep is short too: their neighbour resolves
    /// without any traffic on our sockets (the ARP reply goes to the kernel). Returns
    /// whether a socket became readable (false: the timeout).
    fn sleep_until_traffic(&mut self) -> bool {
        self.dp.idle_sleeps.inc();
        let timeout = if self.shared.handoff.len() > 1 || self.hold.held() != 0 {
            1
        } else {
            10
        };
        let mut fds = [-1; MAX_WAIT_FDS];
        for (f, p) in fds.iter_mut().zip(&self.ports) {
            *f = p.sock.fd();
        }
        // The control channel's wake-up last: the sockets come first in any case.
        let n = self.ports.len().min(MAX_WAIT_FDS - 1);
        fds[n] = self.control.fd();
        wait_readable(&fds[..n + 1], timeout)
    }

    fn control_messages(&mut self) {
        while let Ok(m) = self.control.try_recv() {
            match m {
                Control::SetRules {
                    rules,
                    generation,
                    ack,
                } => {
                    self.engine.set_rules(rules);
                    let _ = ack.send(generation);
                }
                Control::ClearSessions => self.engine.clear_sessions(),
                Control::Sessions(step) => step.answer(&self.engine),
                Control::DeleteSessions(step) => step.answer(&mut self.engine),
            }
        }
    }
}

#[cfg(test)]
mod tests;
