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

/// The poll loop's use of [`Spin`] over a stream of packets `gap` ns apart, with poll(2)
/// timing out after `timeout` ns: it polls through a gap shorter than its window; otherwise
/// it falls asleep when the window runs out, wakes on every timeout (and sleeps again at
/// once), and wakes for the packet. Returns the sleeps the last of `packets` gaps took.
fn run_gaps(s: &mut Spin, t: &mut u64, gap: u64, timeout: u64, packets: usize) -> usize {
    let mut sleeps = 0;
    for _ in 0..packets {
        sleeps = 0;
        let next = *t + gap;
        let mut now = *t + s.window;
        while now < next {
            s.sleeping(now);
            sleeps += 1;
            if now + timeout < next {
                now += timeout;
                s.after_sleep(false, now);
            } else {
                now = next;
                s.after_sleep(true, now);
            }
        }
        *t = next;
        s.worked(next);
    }
    sleeps
}

/// The spin window grows while traffic keeps coming back soon after the loop fell asleep,
/// up to the maximum, and falls back to the minimum once it is idle.
#[test]
fn spin_window_adapts_within_its_bounds() {
    const MAX: u64 = 4_000_000;
    let (mut s, mut t) = (Spin::new(MAX), 1);
    assert_eq!(s.window, SPIN_MIN_NS);
    run_gaps(&mut s, &mut t, 3_500_000, 10_000_000, 20);
    assert_eq!(s.window, MAX, "steady 3.5 ms gaps: polls through them");
    assert_eq!(run_gaps(&mut s, &mut t, 3_500_000, 10_000_000, 1), 0);
    run_gaps(&mut s, &mut t, 9_000_000, 10_000_000, 1);
    assert_eq!(s.window, MAX / 2, "a long gap halves it");
    // Idle: every timeout past the maximum halves it, down to the minimum.
    s.sleeping(t + s.window);
    for k in 1..20 {
        s.after_sleep(false, t + k * 10_000_000);
    }
    assert_eq!(s.window, SPIN_MIN_NS, "idle: back to the minimum");
    s.after_sleep(true, t + 200_000_001);
    // Preempted: the minimum, held for a while even with steady traffic.
    let mut t = SPIN_HOLD_NS;
    run_gaps(&mut s, &mut t, 300_000, 10_000_000, 1);
    assert_eq!(s.window, SPIN_MIN_NS * 2);
    s.check_preempted(false, t);
    assert_eq!(s.window, SPIN_MIN_NS * 2, "not shared: unchanged");
    s.check_preempted(true, t);
    assert_eq!(s.window, SPIN_MIN_NS);
    run_gaps(&mut s, &mut t, 300_000, 10_000_000, 3);
    assert_eq!(s.window, SPIN_MIN_NS, "held");
    t += SPIN_HOLD_NS;
    run_gaps(&mut s, &mut t, 300_000, 10_000_000, 1);
    assert_eq!(s.window, SPIN_MIN_NS * 2, "grows again after the hold");
}

/// The maximum is the operator's (`dataplane.spin_max_us`), and gaps longer than poll(2)'s
/// timeout grow the window too: the loop judges the whole idle period, not each sleep
/// (judged per sleep, each timeout halved the window and the short sleep after it doubled
/// it back: 12 ms gaps, or with several workers' 1 ms timeout 3 ms gaps, never left the
/// minimum).
#[test]
fn spin_window_grows_to_the_configured_maximum() {
    // (maximum, gap, poll timeout): polls through every gap in the end.
    for (max, gap, timeout) in [
        (16_000_000, 10_000_000, 10_000_000),
        (16_000_000, 12_000_000, 10_000_000),
        (16_000_000, 3_000_000, 1_000_000),
        (4_000_000, 3_000_000, 1_000_000),
    ] {
        let (mut s, mut t) = (Spin::new(max), 1);
        run_gaps(&mut s, &mut t, gap, timeout, 20);
        assert!(
            s.window > gap,
            "max {max}, gap {gap}, timeout {timeout}: {s:?}"
        );
        assert_eq!(
            run_gaps(&mut s, &mut t, gap, timeout, 1),
            0,
            "no sleep left"
        );
    }
    // Gaps longer than the maximum: a sleep each, the window at its minimum.
    for (max, gap) in [(4_000_000, 10_000_000), (16_000_000, 20_000_000)] {
        let (mut s, mut t) = (Spin::new(max), 1);
        assert!(run_gaps(&mut s, &mut t, gap, 10_000_000, 20) > 0);
        assert_eq!(s.window, SPIN_MIN_NS, "max {max}, gap {gap}");
    }
    // Below the minimum, the minimum; the configuration's floor is the same.
    assert_eq!(Spin::new(1).max, SPIN_MIN_NS);
    assert_eq!(
        SPIN_MIN_NS,
        u64::from(crate::config::SPIN_MAX_US_FLOOR) * 1000
    );
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
