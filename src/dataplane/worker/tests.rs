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
    let (_tx, rx) = super::control::channel(1).unwrap();
    Worker::new(
        engine,
        Vec::new(),
        vec![Pool::new(Umem::new(64, 2048).unwrap())],
        shared,
        rx,
        Arc::default(),
        batch,
        Polling::Adaptive {
            spin_max_ns: 4_000_000,
        },
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
    const SPIN_MAX_NS: u64 = 4_000_000;
    let mut s = Spin::new(SPIN_MAX_NS);
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
    s.after_sleep(true, 300_000, 0);
    s.check_preempted(false, 1);
    assert_eq!(s.window, SPIN_MIN_NS * 2, "not shared: unchanged");
    s.check_preempted(true, 2);
    assert_eq!(s.window, SPIN_MIN_NS);
    s.after_sleep(true, 300_000, 3);
    assert_eq!(s.window, SPIN_MIN_NS, "held");
    s.after_sleep(true, 300_000, 2 + SPIN_HOLD_NS);
    assert_eq!(s.window, SPIN_MIN_NS * 2, "grows again after the hold");
}

/// The maximum is the operator's (`dataplane.spin_max_us`): a flow with 10 ms gaps (100
/// packets a second) keeps a 16 ms window polling through them, while a 4 ms window
/// sleeps after every packet (each sleep ends after 10 ms, past its maximum, and halves it).
#[test]
fn spin_window_grows_to_the_configured_maximum() {
    // 16 ms: doubles from 200 µs to 12.8 ms, past the gap; 4 ms: stays at the minimum.
    for (max, settles_at) in [(16_000_000, 12_800_000), (4_000_000, SPIN_MIN_NS)] {
        let mut s = Spin::new(max);
        // Polling through a gap is no sleep at all; each gap the window misses is a sleep
        // of the rest of the gap (10 ms less the window), ended by the next packet.
        for _ in 0..20 {
            if s.window < 10_000_000 {
                s.after_sleep(true, 10_000_000 - s.window, 0);
            }
        }
        assert_eq!(s.window, settles_at, "maximum {max} ns");
    }
    // Below the minimum, the minimum.
    assert_eq!(Spin::new(1).max, SPIN_MIN_NS);
}

/// A core counts as shared when the worker waited for it more than a tenth of the time:
/// brief preemptions (a kworker, the softirq thread) do not collapse the spin window.
#[test]
fn a_core_is_shared_when_the_worker_waits_a_tenth_of_the_time() {
    // Two ticks in a row: one burst is not a shared core.
    let mut c = CoreShare {
        delay: None,
        last_delay: 0,
        last_switches: 0,
        last_check: 0,
        waited_last_tick: false,
    };
    assert!(!c.sustained(true), "one tick: a burst");
    assert!(!c.sustained(false));
    assert!(!c.sustained(true));
    assert!(c.sustained(true), "the second tick in a row: shared");
    assert!(c.sustained(true), "and every one after");
    assert!(!c.sustained(false));

    let tick = 50_000_000;
    assert!(!waited_too_long(0, tick));
    assert!(!waited_too_long(200_000, tick), "a few brief preemptions");
    assert!(!waited_too_long(tick / SHARED_WAIT_SHARE, tick));
    assert!(waited_too_long(tick / SHARED_WAIT_SHARE + 1, tick));
    assert!(waited_too_long(tick / 2, tick), "half the core");
    assert!(
        !waited_too_long(u64::MAX, u64::MAX),
        "saturates, no overflow"
    );
}

fn sorted(mut v: Vec<u64>) -> Vec<u64> {
    v.sort_unstable();
    v
}
