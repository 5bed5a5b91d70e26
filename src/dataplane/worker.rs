//! One pinned poll loop per core: receive a batch from each of its AF_XDP sockets, run the
//! engine, fill in link-layer addresses, transmit, recycle frames. The hot path takes no lock,
//! makes no allocation and makes syscalls only per batch (tx kick, rx wakeup, idle poll).

use super::hold::{Held, HoldLimits, HoldQueue, Push};
use super::neigh::{NeighState, NeighTable};
use crate::nat::counters::Counter;
use crate::nat::{Counters, DropReason, Egress, Engine, Frame, Ingress, Pkt, Rules, Verdict};
use crossbeam::queue::ArrayQueue;
use natgw_kernel::wake::{EventFd, MAX_WAIT_FDS, involuntary_switches, wait_readable};
use natgw_kernel::xsk::{BadDesc, Desc, Umem, XskSocket};
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

/// Messages from the management thread to a worker.
pub enum Control {
    SetRules(Arc<Rules>),
    /// Reply with a snapshot of the worker's sessions.
    Sessions(crossbeam::channel::Sender<Vec<SessionInfo>>),
    ClearSessions,
}

/// A session as the management plane lists it.
#[derive(Clone, Debug)]
pub struct SessionInfo {
    pub core: usize,
    pub realm: String,
    pub proto: crate::packet::ipv4::Protocol,
    pub inside: (Ipv4Addr, u16),
    pub external: (Ipv4Addr, u16),
    pub remote: (Ipv4Addr, u16),
    pub tcp_established: bool,
    pub age_secs: u32,
    pub expires_in_secs: u32,
    pub inbound: bool,
}

macro_rules! dp_counters {
    ($($name:ident: $help:literal,)*) => {
        /// Dataplane counters of one worker (single writer, like the engine's).
        #[derive(Default, Debug)]
        pub struct DpCounters { $(#[doc = $help] pub $name: Counter,)* }
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
    neigh_requests: "neighbour resolutions asked of the kernel",
    neigh_held: "frames held for a next hop that was not resolved yet",
    neigh_released: "held frames sent once their next hop resolved",
    neigh_hold_overflow: "held frames dropped because a hold limit was reached (also in drops no_neighbour)",
    neigh_hold_expired: "held frames dropped because their next hop did not resolve in time (also in drops no_neighbour)",
    neigh_hold_failed: "held frames dropped because the kernel failed to resolve their next hop (also in drops no_neighbour)",
    neigh_hold_active: "frames held for their next hop now",
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
    pub control: crossbeam::channel::Receiver<Control>,
    pub counters: Arc<Counters>,
    pub dp: Arc<DpCounters>,
    pub batch: usize,
    pub busy_poll: bool,
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
}

/// Adaptive polling: how long the loop keeps polling after its last work before it sleeps
/// in poll(2). A wake-up from poll(2) costs tens of µs (on a VM the idle vCPU halts, and the
/// waker's IPI goes through the hypervisor), twice per request/response through the
/// gateway if the loop sleeps between the request and its answer. So the window adapts like
/// Linux's haltpoll governor: it doubles when traffic came back soon after a sleep began
/// (polling a little longer would have caught it without a wake-up) and halves when a
/// sleep was long or ended without traffic. Steady traffic with gaps under
/// [`SPIN_MAX_NS`] ends up never sleeping; an idle gateway sleeps right after its last
/// frame plus [`SPIN_MIN_NS`]. A worker that is preempted while it polls shares its core
/// with other work: spinning then only burns its time slice and the scheduler makes it wait
/// milliseconds, while a thread that sleeps is woken promptly. So preemption drops the
/// window to the minimum, and it does not grow again for [`SPIN_HOLD_NS`].
#[derive(Clone, Copy, Debug)]
struct Spin {
    window: u64,
    /// When the loop last did work (ns since the epoch).
    last_work: u64,
    /// Involuntary context switches seen at the last check.
    switches: u64,
    /// No growth before this (ns since the epoch).
    hold_until: u64,
}

/// How long the window stays at its minimum after the worker was preempted.
pub const SPIN_HOLD_NS: u64 = 1_000_000_000;

/// The shortest spin window: covers the round trip behind the gateway (request out,
/// answer back) on the test topologies, so a single exchange costs one wake-up, not two.
pub const SPIN_MIN_NS: u64 = 200_000;
/// The longest: traffic with gaps under this keeps the loop polling (a core busy while it
/// lasts); sparser traffic pays a wake-up per packet instead.
pub const SPIN_MAX_NS: u64 = 4_000_000;

impl Spin {
    fn new() -> Spin {
        Spin {
            window: SPIN_MIN_NS,
            last_work: 0,
            switches: 0,
            hold_until: 0,
        }
    }

    /// On the housekeeping tick: `switches` preemptions so far (more than one since the
    /// last tick: the core is shared).
    fn check_preempted(&mut self, switches: u64, now: u64) {
        if switches > self.switches.saturating_add(1) {
            self.window = SPIN_MIN_NS;
            self.hold_until = now + SPIN_HOLD_NS;
        }
        self.switches = switches;
    }

    /// After a sleep of `slept` ns that `traffic` ended (false: the timeout), at `now`.
    fn after_sleep(&mut self, traffic: bool, slept: u64, now: u64) {
        self.window = if now < self.hold_until {
            SPIN_MIN_NS
        } else if traffic && slept < SPIN_MAX_NS {
            (self.window * 2).min(SPIN_MAX_NS)
        } else {
            (self.window / 2).max(SPIN_MIN_NS)
        };
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
        control: crossbeam::channel::Receiver<Control>,
        dp: Arc<DpCounters>,
        batch: usize,
        busy_poll: bool,
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
            busy_poll,
            epoch,
            egress_ports,
            asked: [(0, Ipv4Addr::UNSPECIFIED, 0); 8],
            asked_next: 0,
            handoff_carry: None,
            hold: HoldQueue::new(HoldLimits::for_umem(umem_frames)),
            hold_gen: 0,
            hold_recheck: false,
        }
    }

    fn now_ns(&self) -> u64 {
        self.epoch.elapsed().as_nanos() as u64
    }

    /// Runs until the stop flag is raised.
    pub fn run(mut self) {
        let mut sc = Scratch::new(self.batch);
        let mut spin = Spin::new();
        let mut last_tick = 0u64;
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
            if now.saturating_sub(last_tick) > 50_000_000 {
                last_tick = now;
                self.engine.tick(now);
                if !self.busy_poll {
                    spin.check_preempted(involuntary_switches(), now);
                }
                self.control_messages();
                self.expire_held(now);
                #[cfg(debug_assertions)]
                super::fault::check();
            }
            if worked {
                spin.last_work = now;
            } else if !self.busy_poll
                && now.saturating_sub(spin.last_work) >= spin.window
                && self.ready_to_sleep()
            {
                let traffic = self.sleep_until_traffic();
                let woke = self.now_ns();
                spin.after_sleep(traffic, woke.saturating_sub(now), woke);
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

    /// Fills in the link-layer addresses for `next_hop` on `egress` and queues the frame on
    /// that port (copied into the port's UMEM when it has its own). For an unresolved
    /// neighbour the kernel is asked to resolve it and the frame is held in its chunk
    /// until it resolves (see `hold`).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn send(
        &mut self,
        pool: usize,
        base: u64,
        off: usize,
        len: usize,
        egress: Egress,
        next_hop: Ipv4Addr,
        outs: &mut Vec<Out>,
    ) {
        let port = self.egress_ports[match egress {
            Egress::Outside => 0,
            Egress::Inside(i) => 1 + i as usize,
        }];
        let ifindex = self.egress_ifindex(port, pool, base + off as u64, len);
        let Some(dst_mac) = self.shared.neigh.lookup(ifindex, next_hop) else {
            self.hold_frame(pool, base, off, len, port, ifindex, next_hop);
            return;
        };
        if self.hold.held() != 0 {
            // Frames held for this next hop go first (it resolved since the last check).
            self.release_neighbour(ifindex, next_hop, dst_mac, outs);
        }
        self.emit(pool, base, off, len, port, dst_mac, outs);
    }

    /// Fills in the MACs of a frame for `port` and queues it there (copied into the
    /// port's UMEM when it has its own).
    #[inline]
    #[allow(clippy::too_many_arguments)]
    fn emit(
        &mut self,
        pool: usize,
        base: u64,
        off: usize,
        len: usize,
        port: usize,
        dst_mac: [u8; 6],
        outs: &mut Vec<Out>,
    ) {
        let (src_mac, epool) = (self.ports[port].mac, self.ports[port].pool);
        // SAFETY: we own the chunk (see process_frames; a held chunk stays ours).
        let d = unsafe { self.pools[pool].umem.frame_mut(base + off as u64, 12) };
        d[..6].copy_from_slice(&dst_mac);
        d[6..12].copy_from_slice(&src_mac);
        let desc = if epool == pool {
            Desc {
                addr: base + off as u64,
                len: len as u32,
            }
        } else {
            match self.copy_to_pool(pool, base, off, len, epool) {
                Some(desc) => desc,
                None => return,
            }
        };
        outs.push(Out { port, desc });
    }

    /// A frame whose next hop is not resolved: ask the kernel and hold the frame in its
    /// chunk. Only on a miss; bounded work (a scan of the neighbours already waited for).
    #[allow(clippy::too_many_arguments)]
    fn hold_frame(
        &mut self,
        pool: usize,
        base: u64,
        off: usize,
        len: usize,
        port: usize,
        ifindex: u32,
        next_hop: Ipv4Addr,
    ) {
        let frame = Held {
            pool: pool as u16,
            port: port as u16,
            off: off as u32,
            len: len as u32,
            base,
        };
        let now = self.now_ns();
        let generation = self.shared.neigh.generation();
        let push = self.hold.push(ifindex, next_hop, frame, now, generation);
        // A new wait always asks the kernel, even if it was asked less than a second ago
        // (the neighbour may have been flushed since); later frames ask at most once a
        // second, in case a request was lost.
        self.ask_resolve(ifindex, next_hop, push == Push::Held { first: true });
        match push {
            Push::Held { .. } => self.dp.neigh_held.inc(),
            Push::Evicted(old) => {
                self.dp.neigh_held.inc();
                self.drop_held(old, HoldDrop::Overflow);
            }
            Push::Refused(f) => self.drop_held(f, HoldDrop::Overflow),
        }
        // The neighbour may have resolved between the lookup and now, without a later
        // generation change: look again at the next check.
        self.hold_recheck = true;
        self.dp.neigh_hold_active.set(self.hold.held() as u64);
    }

    /// Returns a held frame's chunk to its pool, counted.
    fn drop_held(&mut self, h: Held, why: HoldDrop) {
        self.pools[h.pool as usize].free.push(h.base);
        self.counters.dropped(DropReason::NoNeighbour);
        match why {
            HoldDrop::Overflow => &self.dp.neigh_hold_overflow,
            HoldDrop::Expired => &self.dp.neigh_hold_expired,
            HoldDrop::Failed => &self.dp.neigh_hold_failed,
        }
        .inc();
    }

    /// Sends the frames held for `addr` on `ifindex`, oldest first, now that its MAC is
    /// known.
    fn release_neighbour(
        &mut self,
        ifindex: u32,
        addr: Ipv4Addr,
        mac: [u8; 6],
        outs: &mut Vec<Out>,
    ) {
        if let Some(i) = self.hold.find(ifindex, addr) {
            self.release_at(i, mac, outs);
        }
    }

    fn release_at(&mut self, i: usize, mac: [u8; 6], outs: &mut Vec<Out>) {
        while let Some(h) = self.hold.pop(i) {
            self.dp.neigh_released.inc();
            let (pool, port) = (h.pool as usize, h.port as usize);
            self.emit(
                pool,
                h.base,
                h.off as usize,
                h.len as usize,
                port,
                mac,
                outs,
            );
        }
        self.hold.remove(i);
        self.dp.neigh_hold_active.set(self.hold.held() as u64);
    }

    /// Once per round while frames are held: if the neighbour table changed (or a frame
    /// was just held), looks up every neighbour waited for, sends the frames of those now
    /// resolved and drops those whose resolution failed after they were held. Returns
    /// whether any frame left the queue.
    fn release_held(&mut self, outs: &mut Vec<Out>) -> bool {
        let generation = self.shared.neigh.generation();
        if generation == self.hold_gen && !self.hold_recheck {
            return false;
        }
        self.hold_gen = generation;
        self.hold_recheck = false;
        let before = self.hold.held();
        // From the highest number down: removing one renumbers only the last.
        for i in (0..self.hold.pending()).rev() {
            let (ifindex, addr, since_gen) = self.hold.neighbour(i);
            match self.shared.neigh.state(ifindex, addr) {
                NeighState::Usable(mac) => self.release_at(i, mac, outs),
                NeighState::Failed(at) if at > since_gen => {
                    while let Some(h) = self.hold.pop(i) {
                        self.drop_held(h, HoldDrop::Failed);
                    }
                    self.hold.remove(i);
                }
                // Still being resolved, or a failure from before this wait (the kernel
                // was asked again).
                NeighState::Failed(_) | NeighState::Unknown => {}
            }
        }
        self.dp.neigh_hold_active.set(self.hold.held() as u64);
        self.hold.held() != before
    }

    /// Drops held frames older than the hold time (on the housekeeping tick).
    fn expire_held(&mut self, now: u64) {
        if self.hold.held() == 0 {
            return;
        }
        for i in (0..self.hold.pending()).rev() {
            while let Some(h) = self.hold.pop_expired(i, now) {
                self.drop_held(h, HoldDrop::Expired);
            }
            self.hold.remove(i);
        }
        self.dp.neigh_hold_active.set(self.hold.held() as u64);
    }

    /// At shutdown: every held chunk back to its pool, counted as expired.
    fn discard_held(&mut self) {
        for i in (0..self.hold.pending()).rev() {
            while let Some(h) = self.hold.pop(i) {
                self.drop_held(h, HoldDrop::Expired);
            }
            self.hold.remove(i);
        }
        self.dp.neigh_hold_active.set(0);
    }

    /// The interface whose neighbours a frame leaving by `port` goes to: the port's own, or
    /// for a frame the engine tagged with one of the port's VLANs, that VLAN's device.
    #[inline]
    fn egress_ifindex(&self, port: usize, pool: usize, addr: u64, len: usize) -> u32 {
        let p = &self.ports[port];
        if p.vlan_ifindex.is_empty() || len < 18 {
            return p.ifindex;
        }
        // The engine has already set the frame's tag for its egress VLAN.
        let d = self.pools[pool].umem.frame(addr, 16);
        if d.len() >= 16 && d[12..14] == [0x81, 0x00] {
            let vid = u16::from_be_bytes([d[14], d[15]]) & 0x0fff;
            if let Some(&(_, i)) = p.vlan_ifindex.iter().find(|(v, _)| *v == vid) {
                return i;
            }
        }
        p.ifindex
    }

    /// No shared UMEM between the receiving and the sending socket: the frame is copied into
    /// a free chunk of `epool` (counted) and its own chunk recycled. None: no free chunk, the
    /// frame is dropped and counted.
    fn copy_to_pool(
        &mut self,
        pool: usize,
        base: u64,
        off: usize,
        len: usize,
        epool: usize,
    ) -> Option<Desc> {
        let Some(nb) = self.pools[epool].free.pop() else {
            self.counters.dropped(DropReason::TxFull);
            self.pools[pool].free.push(base);
            return None;
        };
        let src = self.pools[pool].umem.frame(base + off as u64, len);
        // Same offset as in the source chunk: `off + len` fits a chunk, while a frame that
        // grew in front (VLAN tag pushed) need not fit after TX_HEADROOM. Both pools use
        // FRAME_SIZE chunks.
        // SAFETY: `nb` came from the free list: ours alone.
        let dst = unsafe { self.pools[epool].umem.frame_mut(nb + off as u64, len) };
        let n = dst.len().min(src.len());
        dst[..n].copy_from_slice(&src[..n]);
        self.pools[pool].free.push(base);
        self.dp.copied_frames.inc();
        Some(Desc {
            addr: nb + off as u64,
            len: n as u32,
        })
    }

    /// Copies a frame onto the handoff queue of the core that owns its flow; a full queue
    /// or no free buffer drops it, counted. The caller recycles the frame's chunk.
    fn hand_off(
        &mut self,
        pool: usize,
        base: u64,
        off: usize,
        len: usize,
        core: usize,
        ingress: Ingress,
    ) {
        let q = self.shared.handoff.get(core);
        let boxed = self.shared.handoff_free.pop();
        match (q, boxed) {
            (Some(q), Some(mut b)) if len <= HANDOFF_MTU => {
                let src = self.pools[pool].umem.frame(base + off as u64, len);
                b.data[..src.len()].copy_from_slice(src);
                b.len = src.len() as u16;
                b.ingress = ingress;
                if let Err(b) = q.push(b) {
                    let _ = self.shared.handoff_free.push(b);
                    self.counters.dropped(DropReason::HandoffFull);
                }
            }
            (_, b) => {
                if let Some(b) = b {
                    let _ = self.shared.handoff_free.push(b);
                }
                self.counters.dropped(DropReason::HandoffFull);
            }
        }
    }

    /// Frames other cores handed to us: copied into our UMEM and run through the engine.
    fn process_handoffs(&mut self, sc: &mut Scratch) -> bool {
        let Some(q) = self.shared.handoff.get(self.engine.core()).cloned() else {
            return false;
        };
        let mut any = false;
        loop {
            sc.pos.clear();
            let mut ingress = None;
            while sc.pos.len() < self.batch && !self.pools[0].free.is_empty() {
                // One engine call per ingress kind: stop at a change. A frame taken but not
                // processed waits in `handoff_carry` and goes first next time: pushing it
                // back to the end of the queue would reorder the frames of its flow.
                let Some(b) = self.handoff_carry.take().or_else(|| q.pop()) else {
                    break;
                };
                if ingress.is_some_and(|i| i != b.ingress) {
                    self.handoff_carry = Some(b);
                    break;
                }
                ingress = Some(b.ingress);
                let base = self.pools[0].free.pop().unwrap_or_default();
                let len = b.len as usize;
                // SAFETY: a free chunk is ours alone.
                let dst = unsafe { self.pools[0].umem.frame_mut(base + TX_HEADROOM as u64, len) };
                let n = dst.len().min(len);
                dst[..n].copy_from_slice(&b.data[..n]);
                let _ = self.shared.handoff_free.push(b);
                sc.pos.push((base, TX_HEADROOM, n));
                self.dp.handoff_in.inc();
            }
            let Some(ingress) = ingress else { break };
            any = true;
            self.process_frames(0, ingress, sc);
        }
        any
    }

    /// Fragments released from the engine's hold buffer.
    fn drain_ready(&mut self, sc: &mut Scratch) {
        sc.ready.clear();
        let pools = &mut self.pools;
        let ready = &mut sc.ready;
        let counters = &self.counters;
        self.engine.drain_ready(|bytes, v| {
            let Some(base) = pools[0].free.pop() else {
                // The engine has let go of the fragment: it is lost, and counted.
                counters.dropped(DropReason::TxFull);
                return;
            };
            // A fragment may have grown by a VLAN tag past what fits after TX_HEADROOM:
            // start it earlier rather than cut it.
            let fsize = pools[0].umem.frame_size() as usize;
            let off = TX_HEADROOM.min(fsize.saturating_sub(bytes.len()));
            // SAFETY: a free chunk is ours alone.
            let dst = unsafe { pools[0].umem.frame_mut(base + off as u64, bytes.len()) };
            let n = dst.len().min(bytes.len());
            dst[..n].copy_from_slice(&bytes[..n]);
            ready.push((base, off, n, v));
        });
        for i in 0..sc.ready.len() {
            let (base, off, len, v) = sc.ready[i];
            self.route(0, base, off, len, v, &mut sc.outs);
        }
    }

    fn transmit(&mut self, sc: &mut Scratch) {
        if sc.outs.is_empty() {
            return;
        }
        for pi in 0..self.ports.len() {
            sc.tx.clear();
            sc.tx
                .extend(sc.outs.iter().filter(|o| o.port == pi).map(|o| o.desc));
            if sc.tx.is_empty() {
                continue;
            }
            let sent = self.ports[pi].sock.send(&sc.tx);
            self.dp.tx_frames.add(sent as u64);
            for d in &sc.tx[sent..] {
                let pool = self.ports[pi].pool;
                let base = self.pools[pool].chunk(d.addr);
                self.pools[pool].free.push(base);
                self.counters.dropped(DropReason::TxFull);
            }
            let _ = self.ports[pi].sock.kick_tx();
        }
        sc.outs.clear();
    }

    /// Gives every socket's fill ring free frames, keeping some back for transmit copies.
    fn refill(&mut self) {
        for p in &mut self.ports {
            let pool = &mut self.pools[p.pool];
            let n = pool
                .free
                .len()
                .saturating_sub(self.batch * 2)
                .min(self.batch * 4);
            if n == 0 {
                continue;
            }
            let start = pool.free.len() - n;
            let given = p.sock.fill(&pool.free[start..]);
            // `fill` takes a prefix of the slice: remove exactly those frames.
            pool.free.drain(start..start + given);
            if given > 0 {
                p.sock.wakeup_rx();
            }
        }
    }

    fn reap_completions(&mut self, scratch: &mut [u64]) {
        for p in &mut self.ports {
            loop {
                let n = p.sock.complete(scratch);
                let pool = &mut self.pools[p.pool];
                for a in &scratch[..n] {
                    let base = pool.chunk(*a);
                    pool.free.push(base);
                }
                if n < scratch.len() {
                    break;
                }
            }
        }
    }

    /// Asks the management thread to have the kernel resolve `addr` on `ifindex`: at most
    /// once a second per neighbour, unless `now_anyway`.
    fn ask_resolve(&mut self, ifindex: u32, addr: Ipv4Addr, now_anyway: bool) {
        let now = self.now_ns();
        if !now_anyway
            && self.asked.iter().any(|&(i, a, t)| {
                i == ifindex && a == addr && now.saturating_sub(t) < 1_000_000_000
            })
        {
            return;
        }
        self.asked[self.asked_next] = (ifindex, addr, now);
        self.asked_next = (self.asked_next + 1) % self.asked.len();
        if self.shared.resolve.push((ifindex, addr)).is_ok() {
            self.dp.neigh_requests.inc();
            // At most once a second per neighbour (above): the management thread sleeps
            // until traffic of its own or this.
            self.shared.mgmt_wake.signal();
        }
    }

    /// Whether nothing but new traffic can give the loop work: no frame waits in a transmit
    /// ring for a kick (copy mode sends a bounded batch per kick; a transient error leaves
    /// frames behind) and no fill ring waits for a wakeup. Kicks those that do.
    fn ready_to_sleep(&self) -> bool {
        let mut ready = true;
        for p in &self.ports {
            if p.sock.tx_pending() != 0 {
                let _ = p.sock.kick_tx();
                ready = false;
            }
            p.sock.wakeup_rx();
        }
        ready
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
        wait_readable(&fds[..self.ports.len().min(MAX_WAIT_FDS)], timeout)
    }

    fn control_messages(&mut self) {
        while let Ok(m) = self.control.try_recv() {
            match m {
                Control::SetRules(r) => self.engine.set_rules(r),
                Control::ClearSessions => self.engine.clear_sessions(),
                Control::Sessions(reply) => {
                    let _ = reply.send(snapshot(&self.engine));
                }
            }
        }
    }
}

/// The engine's sessions as the management plane lists them.
pub fn snapshot(engine: &Engine) -> Vec<SessionInfo> {
    let rules = engine.rules();
    let now = engine.now_secs();
    let mut v = Vec::with_capacity(engine.session_count());
    engine.for_each_session(|s| {
        v.push(SessionInfo {
            core: engine.core(),
            realm: rules
                .realms
                .get(s.realm as usize)
                .map(|r| r.name.clone())
                .unwrap_or_default(),
            proto: s.proto,
            inside: (Ipv4Addr::from(s.in_addr), s.in_port),
            external: (Ipv4Addr::from(s.ext_addr), s.ext_port),
            remote: (Ipv4Addr::from(s.rem_addr), s.rem_port),
            tcp_established: s.proto == crate::packet::ipv4::Protocol::TCP
                && crate::nat::session::tcp::is_established(s.tcp),
            age_secs: now.saturating_sub(s.created),
            expires_in_secs: s.expires.saturating_sub(now),
            inbound: s.flags & crate::nat::session::flags::INBOUND != 0,
        })
    });
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::ports::BlockPartition;

    const CONF: &str = "[outside]\ninterface = \"eth1\"\naddress = \"192.168.1.2\"\n\
        gateway = \"192.168.1.1\"\n[[inside]]\ninterface = \"eth0\"\n\
        [sessions]\ncapacity_per_core = 1024\n[[realm]]\nname = \"r\"\ninterface = \"eth0\"\n\
        prefixes = [\"10.0.0.0/24\"]\ngateway = \"10.0.0.1\"\npool = [\"192.168.1.10\"]\n";

    fn udp(src: [u8; 4], sport: u16, dst: [u8; 4], dport: u16) -> Vec<u8> {
        let mut f = Vec::new();
        etherparse::PacketBuilder::ethernet2([2; 6], [4; 6])
            .ipv4(src, dst, 64)
            .udp(sport, dport)
            .write(&mut f, b"handoff")
            .unwrap();
        f
    }

    /// A worker of core 0 of two, without sockets: enough for the handoff path.
    fn worker(batch: usize) -> Worker {
        let cfg = crate::config::parse(CONF).unwrap();
        let rules = Arc::new(Rules::new(&cfg, Arc::new(BlockPartition::new(2))));
        let engine = Engine::new(0, rules, Arc::new(Counters::default()));
        let handoff_free = Arc::new(ArrayQueue::new(64));
        for _ in 0..64 {
            let _ = handoff_free.push(Box::new(HandoffFrame {
                ingress: Ingress::Outside,
                len: 0,
                data: [0; HANDOFF_MTU],
            }));
        }
        let shared = WorkerShared {
            neigh: Arc::new(NeighTable::new(16)),
            resolve: Arc::new(ArrayQueue::new(16)),
            handoff: (0..2).map(|_| Arc::new(ArrayQueue::new(32))).collect(),
            handoff_free,
            stop: Arc::new(AtomicBool::new(false)),
            mgmt_wake: Arc::new(EventFd::new().unwrap()),
        };
        let (_tx, rx) = crossbeam::channel::bounded(1);
        Worker::new(
            engine,
            Vec::new(),
            vec![Pool::new(Umem::new(64, 2048).unwrap())],
            shared,
            rx,
            Arc::default(),
            batch,
            false,
            Vec::new(),
            Instant::now(),
        )
    }

    fn owner(w: &Worker, f: &[u8], ingress: Ingress) -> Option<usize> {
        let mut b = f.to_vec();
        w.engine.owner(&Frame::whole(&mut b), ingress)
    }

    /// Handed-off frames of mixed ingress kinds keep their order, also when the free list
    /// runs dry, and every UMEM frame returns to the free list exactly once.
    #[test]
    fn handoffs_keep_their_order() {
        let mut w = worker(4);
        let mut sc = Scratch::new(4);
        // Frames core 1 owns: processed on core 0 they are handed off again, unmodified,
        // so core 1's queue shows the order core 0 processed them in.
        let inside: Vec<Vec<u8>> = (2..250u8)
            .map(|h| udp([10, 0, 0, h], 5000, [198, 51, 100, 7], 53))
            .filter(|f| owner(&w, f, Ingress::Inside(0)) == Some(1))
            .take(3)
            .collect();
        let outside: Vec<Vec<u8>> = (1024..4096u16)
            .map(|p| udp([198, 51, 100, 7], 53, [192, 168, 1, 10], p))
            .filter(|f| owner(&w, f, Ingress::Outside) == Some(1))
            .take(2)
            .collect();
        assert_eq!((inside.len(), outside.len()), (3, 2));
        let input = [
            (Ingress::Inside(0), &inside[0]),
            (Ingress::Outside, &outside[0]),
            (Ingress::Inside(0), &inside[1]),
            (Ingress::Inside(0), &inside[2]),
            (Ingress::Outside, &outside[1]),
        ];
        let (q0, q1) = (
            Arc::clone(&w.shared.handoff[0]),
            Arc::clone(&w.shared.handoff[1]),
        );
        for (ingress, f) in input {
            let mut b = w.shared.handoff_free.pop().unwrap();
            b.ingress = ingress;
            b.len = f.len() as u16;
            b.data[..f.len()].copy_from_slice(f);
            assert!(q0.push(b).is_ok());
        }
        // No free frame: nothing is taken, nothing is lost.
        let free = std::mem::take(&mut w.pools[0].free);
        assert!(!w.process_handoffs(&mut sc));
        assert_eq!(q0.len(), 5);
        w.pools[0].free = free;
        assert!(w.process_handoffs(&mut sc));
        assert!(q0.is_empty());
        let mut out = Vec::new();
        while let Some(b) = q1.pop() {
            out.push((b.ingress, b.data[..b.len as usize].to_vec()));
        }
        let want: Vec<_> = input.iter().map(|(i, f)| (*i, f.to_vec())).collect();
        assert_eq!(out, want);
        let mut free = w.pools[0].free.clone();
        free.sort_unstable();
        free.dedup();
        assert_eq!(free.len(), 64, "every frame back in the free list once");
    }

    /// An IPv4/UDP fragment from `src` (payload offset `off` bytes, a multiple of 8).
    fn fragment(src: [u8; 4], off: u16, more: bool, payload: &[u8]) -> Vec<u8> {
        let mut ip = etherparse::Ipv4Header::new(
            payload.len() as u16,
            64,
            etherparse::IpNumber::UDP,
            src,
            [198, 51, 100, 7],
        )
        .unwrap();
        ip.identification = 0x4242;
        ip.more_fragments = more;
        ip.fragment_offset = (off / 8).try_into().unwrap();
        ip.header_checksum = ip.calc_header_checksum();
        let mut f = Vec::new();
        etherparse::Ethernet2Header {
            source: [2; 6],
            destination: [4; 6],
            ether_type: etherparse::EtherType::IPV4,
        }
        .write(&mut f)
        .unwrap();
        ip.write(&mut f).unwrap();
        f.extend_from_slice(payload);
        f
    }

    /// A fragment the engine releases from its hold buffer while no UMEM frame is free is
    /// lost: it must show in a drop counter.
    #[test]
    fn released_fragment_without_a_free_frame_is_counted() {
        let mut w = worker(4);
        let mut sc = Scratch::new(4);
        // UDP header (ports 5000 -> 53, length 8 + 24, no checksum) and 8 bytes of data,
        // then the last 16 bytes, which arrive first and are held.
        let mut first = vec![0x13, 0x88, 0x00, 0x35, 0x00, 0x20, 0x00, 0x00];
        first.extend_from_slice(&[1; 8]);
        let host = (2..250u8)
            .map(|h| [10, 0, 0, h])
            .find(|&a| owner(&w, &fragment(a, 0, true, &first), Ingress::Inside(0)) == Some(0))
            .unwrap();
        let frames = [
            fragment(host, 16, false, &[2; 16]),
            fragment(host, 0, true, &first),
        ];
        let mut verdicts = Vec::new();
        for f in &frames {
            let mut b = f.clone();
            let mut pkts = [Pkt {
                frame: Frame::whole(&mut b),
                ingress: Ingress::Inside(0),
            }];
            let mut v = [Verdict::Held];
            w.engine.process(0, &mut pkts, &mut v);
            verdicts.push(v[0]);
        }
        assert_eq!(verdicts[0], Verdict::Held);
        assert!(matches!(verdicts[1], Verdict::Forward { .. }));
        w.pools[0].free.clear();
        let before = w.counters.drops_of(DropReason::TxFull);
        w.drain_ready(&mut sc);
        assert_eq!(w.counters.drops_of(DropReason::TxFull), before + 1);
        assert!(sc.outs.is_empty());
    }

    /// Frames held for an unresolved next hop go back to the pool they came from, exactly
    /// once, whichever way they leave: overflow, a failed resolution, the timeout, shutdown.
    /// A failure reported before a frame was held does not drop it (the kernel was asked
    /// again), one reported after does.
    #[test]
    fn held_frames_return_to_their_pools() {
        use natgw_kernel::netlink::{NUD_FAILED, Neighbour};
        let mut w = worker(4);
        w.pools.push(Pool::new(Umem::new(64, 2048).unwrap()));
        let all: Vec<Vec<u64>> = w.pools.iter().map(|p| sorted(p.free.clone())).collect();
        let limits = w.hold.limits();
        assert_eq!((limits.frames, limits.per_neighbour), (8, 8));
        let (a, b) = (Ipv4Addr::new(10, 0, 0, 2), Ipv4Addr::new(10, 0, 0, 3));
        let failed = |addr| Neighbour {
            ifindex: 7,
            addr,
            mac: None,
            state: NUD_FAILED,
        };
        // An old failure of `a`: frames held after it wait.
        w.shared.neigh.update(&failed(a)).unwrap();
        let hold = |w: &mut Worker, pool: usize, addr| {
            let base = w.pools[pool].free.pop().unwrap();
            w.hold_frame(pool, base, TX_HEADROOM, 60, 0, 7, addr);
        };
        for k in 0..6 {
            hold(&mut w, k % 2, a);
        }
        for k in 0..4 {
            hold(&mut w, k % 2, b);
        }
        // 8 frames at most: the last two were refused.
        assert_eq!(w.hold.held(), 8);
        assert_eq!(w.dp.neigh_held.get(), 8);
        assert_eq!(w.dp.neigh_hold_overflow.get(), 2);
        assert_eq!(w.dp.neigh_hold_active.get(), 8);
        assert_eq!(w.shared.resolve.pop(), Some((7, a)), "the kernel is asked");
        let mut outs = Vec::new();
        assert!(!w.release_held(&mut outs), "an old failure drops nothing");
        assert_eq!(w.hold.held(), 8);
        // `a` fails now: its 6 frames go.
        w.shared.neigh.update(&failed(a)).unwrap();
        assert!(w.release_held(&mut outs));
        assert_eq!(w.dp.neigh_hold_failed.get(), 6);
        assert_eq!(w.hold.held(), 2);
        // `b`'s frames time out.
        let now = w.now_ns();
        w.expire_held(now);
        assert_eq!(w.hold.held(), 2, "not yet");
        w.expire_held(now + limits.timeout_ns);
        assert_eq!(w.dp.neigh_hold_expired.get(), 2);
        assert_eq!(w.hold.held(), 0);
        // Shutdown with frames held.
        for k in 0..3 {
            hold(&mut w, k % 2, b);
        }
        w.discard_held();
        assert_eq!(w.dp.neigh_hold_expired.get(), 5);
        assert_eq!(w.dp.neigh_hold_active.get(), 0);
        assert!(outs.is_empty());
        assert_eq!(w.counters.drops_of(DropReason::NoNeighbour), 2 + 6 + 2 + 3);
        let back: Vec<Vec<u64>> = w.pools.iter().map(|p| sorted(p.free.clone())).collect();
        assert_eq!(back, all, "every chunk back in its own pool, once");
    }

    /// The spin window grows while traffic keeps coming back soon after each sleep began,
    /// up to the maximum, and falls back to the minimum once sleeps are long or empty.
    #[test]
    fn spin_window_adapts_within_its_bounds() {
        let mut s = Spin::new();
        assert_eq!(s.window, SPIN_MIN_NS);
        for _ in 0..20 {
            s.after_sleep(true, 300_000, 0);
        }
        assert_eq!(
            s.window, SPIN_MAX_NS,
            "steady traffic: polls through its gaps"
        );
        s.after_sleep(true, SPIN_MAX_NS + 1, 0);
        assert_eq!(s.window, SPIN_MAX_NS / 2, "a long gap halves it");
        for _ in 0..20 {
            s.after_sleep(false, 10_000_000, 0);
        }
        assert_eq!(s.window, SPIN_MIN_NS, "idle: back to the minimum");
        // Preempted: the minimum, held for a while even with steady traffic.
        s.check_preempted(0, 0);
        s.after_sleep(true, 300_000, 0);
        s.check_preempted(1, 1);
        assert_eq!(s.window, SPIN_MIN_NS * 2, "one switch is noise");
        s.check_preempted(5, 2);
        assert_eq!(s.window, SPIN_MIN_NS);
        s.after_sleep(true, 300_000, 3);
        assert_eq!(s.window, SPIN_MIN_NS, "held");
        s.after_sleep(true, 300_000, 3 + SPIN_HOLD_NS);
        assert_eq!(s.window, SPIN_MIN_NS * 2, "grows again after the hold");
    }

    fn sorted(mut v: Vec<u64>) -> Vec<u64> {
        v.sort_unstable();
        v
    }
}
