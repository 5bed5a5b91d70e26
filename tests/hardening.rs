//! Namespace tests of issue 10, parts 1 (fail closed) and 4 (faults): the real `natgw`
//! binary on a testbed topology, real kernel traffic, and real faults done to it (more
//! receive queues than workers with kernel forwarding on, a dying worker, the inside link
//! going down, deleted and re-created, SIGHUP), and part 5 (least privilege: natgw as an
//! unprivileged user with only its capabilities).
//!
//! Each test has its own topology tag (`f?`), so they run in parallel with each other and
//! with tests/e2e.rs. natgw's stderr goes to a file that failure messages include. Needs root
//! and `ip`; under `CI=true` a missing prerequisite is a failure.

use std::collections::HashSet;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use natgw_testbed::lab::api_get;
use natgw_testbed::netns::prerequisites;
use natgw_testbed::process::{thread_caps, thread_status};
use natgw_testbed::{GW_INSIDE_IF, Topology, TopologySpec, run_in_netns};

const NATGW: &str = env!("CARGO_BIN_EXE_natgw");
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How fast natgw must notice a fault it cannot follow and exit.
const FAULT_EXIT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// natgw in a topology
// ---------------------------------------------------------------------------------------

struct Lab {
    name: String,
    natgw: Option<Child>,
    topo: Topology,
    config_path: PathBuf,
    stderr_path: PathBuf,
    /// Extra environment for natgw.
    env: Vec<(String, String)>,
    /// A command natgw runs under, after `ip netns exec <gw>` (e.g. setpriv).
    launcher: Vec<String>,
}

fn signal(c: &Child, sig: libc::c_int) {
    // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own unreaped
    // child, so it cannot have been reused.
    unsafe { libc::kill(c.id() as libc::pid_t, sig) };
}

fn wait_timeout(c: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Ok(Some(s)) = c.try_wait() {
            return Some(s);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Lab {
    /// Builds the topology; natgw is not started. None when prerequisites are missing
    /// (outside CI).
    fn new(name: &str, spec: TopologySpec) -> Option<Lab> {
        if !prerequisites(name) {
            return None;
        }
        Topology::cleanup_stale(&spec.tag).unwrap();
        let topo = Topology::build(&spec).unwrap_or_else(|e| panic!("building {spec:?}: {e}"));
        let dir = std::env::temp_dir();
        let pid = std::process::id();
        let config_path = dir.join(format!("natgw-hard-{}-{pid}.toml", spec.tag));
        let stderr_path = dir.join(format!("natgw-hard-{}-{pid}.stderr", spec.tag));
        let _ = std::fs::remove_file(&stderr_path);
        let config = topo.natgw_config();
        std::fs::write(&config_path, config).unwrap();
        Some(Lab {
            name: name.into(),
            natgw: None,
            topo,
            config_path,
            stderr_path,
            env: Vec::new(),
            launcher: Vec::new(),
        })
    }

    fn gw(&self) -> &str {
        self.topo.gw_ns()
    }

    fn set_config(&self, cfg: &str) {
        std::fs::write(&self.config_path, cfg).unwrap();
    }

    fn config(&self) -> String {
        std::fs::read_to_string(&self.config_path).unwrap()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn spawn(&mut self) {
        assert!(self.natgw.is_none(), "natgw already running");
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(&self.stderr_path)
            .unwrap();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.topo.gw_ns()])
            .args(&self.launcher)
            .args([NATGW, "run", "--config"])
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.natgw = Some(
            cmd.spawn()
                .unwrap_or_else(|e| panic!("starting {NATGW}: {e}")),
        );
    }

    /// Starts natgw and waits until its API answers (Ok) or it exits first (Err, with its
    /// status).
    fn try_start(&mut self) -> Result<(), ExitStatus> {
        self.spawn();
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(s) = self.exited(Duration::ZERO) {
                return Err(s);
            }
            if api_get(self.gw(), "/stats").is_ok() {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "natgw's API did not answer within {READY_TIMEOUT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn start(&mut self) {
        if let Err(s) = self.try_start() {
            panic!("natgw exited ({s}) before its API answered");
        }
    }

    /// natgw's exit status if it exits within `timeout` (it is then reaped).
    fn exited(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let s = wait_timeout(self.natgw.as_mut().expect("natgw started"), timeout)?;
        self.natgw = None;
        Some(s)
    }

    fn signal(&self, sig: libc::c_int) {
        signal(self.natgw.as_ref().expect("natgw running"), sig);
    }

    /// SIGTERM: natgw must exit successfully within 5 s.
    fn stop(&mut self) {
        self.signal(libc::SIGTERM);
        let s = self.exited(Duration::from_secs(5));
        assert!(s.is_some(), "natgw did not exit within 5 s of SIGTERM");
        let s = s.unwrap();
        assert!(s.success(), "natgw exited with {s} after SIGTERM");
    }

    /// Runs the test body, then stops natgw (if running) checking a clean exit; a failure
    /// message carries natgw's stderr. The topology is removed either way.
    fn run(mut self, body: impl FnOnce(&mut Lab)) {
        let r = catch_unwind(AssertUnwindSafe(|| {
            body(&mut self);
            if self.natgw.is_some() {
                self.stop();
            }
        }));
        if let Err(p) = r {
            if let Some(mut c) = self.natgw.take() {
                signal(&c, libc::SIGKILL);
                let _ = c.wait();
            }
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            let report = format!(
                "--- natgw stderr ---\n{}--- end of natgw stderr ---",
                self.stderr()
            );
            match msg {
                Some(m) => panic!("{}: {m}\n{report}", self.name),
                None => {
                    eprintln!("{report}");
                    resume_unwind(p)
                }
            }
        }
    }

    fn sysctl(&self, ns: &str, key: &str, value: &str) {
        let out = self
            .topo
            .exec(ns, &["sysctl", "-qw", &format!("{key}={value}")])
            .unwrap();
        assert!(
            out.status.success(),
            "sysctl {key}={value} in {ns}: {out:?}"
        );
    }

    fn ip(&self, ns: &str, args: &[&str]) {
        let mut a = vec!["ip"];
        a.extend_from_slice(args);
        let out = self.topo.exec(ns, &a).unwrap();
        assert!(out.status.success(), "ip {args:?} in {ns}: {out:?}");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.natgw.take() {
            signal(&c, libc::SIGKILL);
            let _ = c.wait();
        }
        let _ = std::fs::remove_file(&self.config_path);
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

// ---------------------------------------------------------------------------------------
// Traffic
// ---------------------------------------------------------------------------------------

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => panic!("IPv6 address {a}"),
    }
}

/// A UDP server in the server namespace that records the source of every datagram and
/// echoes it back.
struct Collector {
    addr: SocketAddrV4,
    seen: Arc<Mutex<Vec<SocketAddrV4>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Collector {
    fn start(t: &Topology, port: u16) -> Collector {
        let sock = run_in_netns(t.server_ns(), || UdpSocket::bind((t.server_addr(), port)))
            .unwrap_or_else(|e| panic!("UDP bind on the server, port {port}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let addr = v4(sock.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, st2) = (Arc::clone(&seen), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !st2.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    s2.lock().unwrap().push(v4(from));
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        Collector {
            addr,
            seen,
            stop,
            thread: Some(thread),
        }
    }

    fn seen(&self) -> Vec<SocketAddrV4> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn udp_socket(ns: &str, addr: SocketAddrV4) -> UdpSocket {
    run_in_netns(ns, || UdpSocket::bind(addr))
        .unwrap_or_else(|e| panic!("UDP bind {addr} in {ns}: {e}"))
}

/// Sends from `sock` to `to` until an echo comes back (within `timeout`); true if one did.
fn echo_within(sock: &UdpSocket, to: SocketAddrV4, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    let mut buf = [0u8; 256];
    sock.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    while Instant::now() < deadline {
        let _ = sock.send_to(b"probe", to);
        if let Ok((_, from)) = sock.recv_from(&mut buf)
            && v4(from) == to
        {
            return true;
        }
    }
    false
}

fn inside(a: Ipv4Addr) -> bool {
    a.octets()[0] == 10
}

/// One datagram from each of `ports` source ports of host 0 to `to`, with a little pacing.
fn many_flows(t: &Topology, to: SocketAddrV4, ports: std::ops::Range<u16>) {
    let h = t.hosts()[0].clone();
    for port in ports {
        let s = udp_socket(&h.ns, SocketAddrV4::new(h.addr, port));
        let _ = s.send_to(b"flow", to);
        if port % 16 == 0 {
            std::thread::sleep(Duration::from_millis(2));
        }
    }
}

// ---------------------------------------------------------------------------------------
// Part 1: fail closed
// ---------------------------------------------------------------------------------------

/// Two-queue veths, one worker, `ip_forward=1` in the gateway: natgw must refuse to start
/// (naming `ethtool -L`), or else nothing may reach the outside untranslated. Then with a
/// worker for every queue, the same flood of flows is all translated.
#[test]
fn unserved_queue_refuses_start_and_nothing_leaks() {
    let mut spec = TopologySpec::new("fq");
    spec.queues = 2;
    let Some(lab) = Lab::new("unserved_queue", spec) else {
        return;
    };
    let two_workers = lab.config();
    let one_worker = two_workers.replace(
        "workers = [{ core = 0, queue = 0 }, { core = 1, queue = 1 }]",
        "workers = [{ core = 0, queue = 0 }]",
    );
    assert_ne!(
        one_worker, two_workers,
        "worker line not found:\n{two_workers}"
    );
    lab.set_config(&one_worker);
    let gw = lab.gw().to_string();
    lab.sysctl(&gw, "net.ipv4.ip_forward", "1");
    lab.run(|lab| {
        let t_pool = lab.topo.pool(0);
        let check_flows = |lab: &Lab, port: u16, expect_translated: bool| {
            let c = Collector::start(&lab.topo, port);
            many_flows(&lab.topo, c.addr, 20000..20300);
            std::thread::sleep(Duration::from_millis(500));
            let seen = c.seen();
            if let Some(n) = lab.natgw.as_ref() {
                // natgw must still be running: after it exits, the kernel routes everything.
                let pid = n.id() as libc::pid_t;
                // SAFETY: signal 0 only checks that our unreaped child exists.
                assert_eq!(unsafe { libc::kill(pid, 0) }, 0, "natgw is gone");
                assert!(!lab.stderr().contains("natgw: stopping"), "natgw stopped");
            }
            let leaked: Vec<_> = seen.iter().filter(|s| inside(*s.ip())).collect();
            assert!(
                leaked.is_empty(),
                "{} of {} datagrams reached the server with an inside source (first: {:?})",
                leaked.len(),
                seen.len(),
                leaked.first()
            );
            if expect_translated {
                let translated: HashSet<_> = seen
                    .iter()
                    .filter(|s| (t_pool.0..=t_pool.1).contains(s.ip()))
                    .collect();
                assert!(
                    translated.len() >= 270,
                    "only {} of 300 flows arrived translated",
                    translated.len()
                );
            }
        };
        match lab.try_start() {
            Err(status) => {
                assert!(!status.success(), "natgw refused with a success status");
                let err = lab.stderr();
                assert!(
                    err.contains("ethtool -L eth-") && err.contains("no worker serves queue 1"),
                    "the refusal must say which queue and how to fix it: {err}"
                );
            }
            // Running with an unserved queue: nothing may leak.
            Ok(()) => {
                check_flows(lab, 7001, false);
                lab.stop();
            }
        }
        // Forwarding on is warned about, and with a worker per queue everything is
        // translated.
        lab.set_config(&two_workers);
        lab.start();
        assert!(
            lab.stderr().lines().any(|l| l.contains(" WARN ")
                && l.contains("natgw: the kernel forwards IPv4 on eth-out, eth-in")),
            "no forwarding warning: {}",
            lab.stderr()
        );
        let m = api_get(lab.gw(), "/metrics").unwrap();
        assert!(
            m.contains("natgw_kernel_forwarding{interface=\"eth-in\"} 1"),
            "{m}"
        );
        check_flows(lab, 7002, true);
        let m = api_get(lab.gw(), "/metrics").unwrap();
        assert!(
            m.contains("natgw_xdp_drops_total{interface=\"eth-in\",reason=\"unserved_queue\"} 0"),
            "{m}"
        );
    });
}

// ---------------------------------------------------------------------------------------
// Part 4: faults
// ---------------------------------------------------------------------------------------

/// A worker that dies (an injected panic in its poll loop, debug builds only) ends natgw
/// with a failure status within seconds, naming the worker.
#[test]
fn dead_worker_ends_natgw_with_failure() {
    if !cfg!(debug_assertions) {
        eprintln!("skipping: fault injection exists in debug builds only");
        return;
    }
    let spec = TopologySpec::new("fp");
    let Some(mut lab) = Lab::new("dead_worker", spec) else {
        return;
    };
    let trigger = std::env::temp_dir().join(format!("natgw-hard-fp-{}.panic", std::process::id()));
    let _ = std::fs::remove_file(&trigger);
    lab.env.push((
        "NATGW_DEBUG_WORKER_PANIC".into(),
        format!("0:{}", trigger.display()),
    ));
    lab.run(|lab| {
        lab.start();
        let c = Collector::start(&lab.topo, 7001);
        let h = lab.topo.hosts()[0].clone();
        let s = udp_socket(&h.ns, SocketAddrV4::new(h.addr, 40000));
        assert!(
            echo_within(&s, c.addr, Duration::from_secs(5)),
            "no traffic before the fault"
        );
        std::fs::write(&trigger, b"").unwrap();
        let t0 = Instant::now();
        let status = lab.exited(FAULT_EXIT);
        let _ = std::fs::remove_file(&trigger);
        let status = status
            .unwrap_or_else(|| panic!("natgw still running {FAULT_EXIT:?} after its worker died"));
        assert!(
            !status.success(),
            "natgw exited with {status} after a worker died"
        );
        let err = lab.stderr();
        assert!(
            err.contains("worker 0 died") && err.contains("injected worker fault"),
            "no clear log line: {err}"
        );
        eprintln!(
            "dead worker: natgw exited ({status}) after {:?}",
            t0.elapsed()
        );
    });
}

/// Waits until `ok()` (polled every 50 ms; fails after `timeout`); returns how long it took.
fn until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) -> Duration {
    let t0 = Instant::now();
    while !ok() {
        assert!(t0.elapsed() < timeout, "{what}: not within {timeout:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    t0.elapsed()
}

/// `ip link set down` / `up` of the inside link under traffic: natgw follows it (logs it,
/// `natgw_link_up`) and traffic resumes on the same sockets; an MTU change ends natgw with
/// a failure status.
#[test]
fn inside_link_down_up_resumes_and_mtu_change_exits() {
    let spec = TopologySpec::new("fl");
    let Some(lab) = Lab::new("link_down_up", spec) else {
        return;
    };
    lab.run(|lab| {
        lab.start();
        let c = Collector::start(&lab.topo, 7001);
        let h = lab.topo.hosts()[0].clone();
        let s = udp_socket(&h.ns, SocketAddrV4::new(h.addr, 40000));
        assert!(
            echo_within(&s, c.addr, Duration::from_secs(5)),
            "no traffic at first"
        );
        let gw = lab.gw().to_string();
        for round in 0..2 {
            lab.ip(&gw, &["link", "set", GW_INSIDE_IF, "down"]);
            until("natgw_link_up 0", Duration::from_secs(3), || {
                api_get(&gw, "/metrics")
                    .is_ok_and(|m| m.contains("natgw_link_up{interface=\"eth-in\"} 0"))
            });
            assert!(
                !echo_within(&s, c.addr, Duration::from_millis(300)),
                "traffic while down"
            );
            lab.ip(&gw, &["link", "set", GW_INSIDE_IF, "up"]);
            let took = until("traffic after link up", Duration::from_secs(10), || {
                echo_within(&s, c.addr, Duration::from_millis(200))
            });
            eprintln!("link down/up {round}: traffic again {took:?} after up");
            assert!(
                lab.exited(Duration::ZERO).is_none(),
                "natgw exited on down/up"
            );
        }
        let err = lab.stderr();
        assert!(
            err.contains("inside interface eth-in is down") && err.contains("eth-in is up again"),
            "{err}"
        );
        lab.ip(&gw, &["link", "set", GW_INSIDE_IF, "mtu", "1400"]);
        let status = lab
            .exited(FAULT_EXIT)
            .unwrap_or_else(|| panic!("natgw still running {FAULT_EXIT:?} after an MTU change"));
        assert!(
            !status.success(),
            "natgw exited with {status} after an MTU change"
        );
        assert!(
            lab.stderr()
                .contains("the MTU of inside interface eth-in changed from 1500 to 1400"),
            "{}",
            lab.stderr()
        );
    });
}

/// Deleting the inside veth under traffic ends natgw with a failure status within seconds;
/// started again on the re-created link (what systemd's Restart=on-failure does), it
/// forwards again.
#[test]
fn inside_link_deleted_and_recreated_exits_then_restarts() {
    let spec = TopologySpec::new("fd");
    let Some(lab) = Lab::new("link_recreated", spec) else {
        return;
    };
    lab.run(|lab| {
        lab.start();
        let c = Collector::start(&lab.topo, 7001);
        let h = lab.topo.hosts()[0].clone();
        let s = udp_socket(&h.ns, SocketAddrV4::new(h.addr, 40000));
        assert!(
            echo_within(&s, c.addr, Duration::from_secs(5)),
            "no traffic at first"
        );
        let stop = Arc::new(AtomicBool::new(false));
        // Traffic keeps flowing while the link goes away.
        let traffic = {
            let (stop, to) = (Arc::clone(&stop), c.addr);
            let s = s.try_clone().unwrap();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let _ = s.send_to(b"flood", to);
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        std::thread::sleep(Duration::from_millis(200));
        let t0 = Instant::now();
        lab.topo.delete_inside_link().unwrap();
        let status = lab.exited(FAULT_EXIT);
        stop.store(true, Ordering::Relaxed);
        traffic.join().unwrap();
        let status = status.unwrap_or_else(|| {
            panic!("natgw still running {FAULT_EXIT:?} after eth-in was deleted")
        });
        assert!(
            !status.success(),
            "natgw exited with {status} after its link was deleted"
        );
        assert!(
            lab.stderr().contains("inside interface eth-in was deleted"),
            "{}",
            lab.stderr()
        );
        eprintln!(
            "link deleted: natgw exited ({status}) after {:?}",
            t0.elapsed()
        );
        lab.topo.recreate_inside_link().unwrap();
        lab.start();
        assert!(
            echo_within(&s, c.addr, Duration::from_secs(10)),
            "no traffic after the restart on the re-created link"
        );
    });
}

/// SIGHUP reloads the configuration and never ends natgw: a session made before it is
/// still listed afterwards and still forwards.
#[test]
fn sighup_reloads_and_keeps_sessions() {
    let spec = TopologySpec::new("fh");
    let Some(lab) = Lab::new("sighup", spec) else {
        return;
    };
    lab.run(|lab| {
        lab.start();
        let c = Collector::start(&lab.topo, 7001);
        let h = lab.topo.hosts()[0].clone();
        let src = SocketAddrV4::new(h.addr, 40000);
        let s = udp_socket(&h.ns, src);
        assert!(
            echo_within(&s, c.addr, Duration::from_secs(5)),
            "no traffic at first"
        );
        let listed = |lab: &Lab| {
            let body = api_get(lab.gw(), "/sessions").unwrap();
            body.contains(&format!("\"inside\":\"{src}\""))
        };
        assert!(listed(lab), "the session is not listed");
        let external_before = c.seen().last().copied().unwrap();
        // Two reloads of the valid file, then one of a broken file: every HUP keeps natgw
        // running, the broken file leaves the running configuration in force.
        let cfg = lab.config();
        for round in 0..3 {
            lab.signal(libc::SIGHUP);
            until("SIGHUP logged", Duration::from_secs(3), || {
                lab.stderr().matches("natgw: SIGHUP:").count() > round
            });
            assert!(
                lab.exited(Duration::from_millis(200)).is_none(),
                "SIGHUP ended natgw"
            );
            if round == 1 {
                lab.set_config("this is not a configuration");
            }
        }
        let err = lab.stderr();
        assert!(err.contains("natgw: SIGHUP: reloaded 1 realm(s)"), "{err}");
        assert!(
            err.contains("reload refused, the running configuration stays"),
            "{err}"
        );
        lab.set_config(&cfg);
        assert!(listed(lab), "the session is gone after SIGHUP");
        assert!(
            echo_within(&s, c.addr, Duration::from_secs(3)),
            "no traffic after SIGHUP"
        );
        assert_eq!(
            c.seen().last().copied().unwrap(),
            external_before,
            "the mapping changed"
        );
    });
}

// ---------------------------------------------------------------------------------------
// Part 5: least privilege
// ---------------------------------------------------------------------------------------

/// What deploy/natgw.service gives natgw, as setpriv spells it. CAP_IPC_LOCK stands in for
/// the unit's LimitMEMLOCK=infinity, which the test cannot raise without CAP_SYS_RESOURCE.
const CAPS: &str = "-all,+net_admin,+net_raw,+bpf,+ipc_lock";

/// natgw as user and group `nobody` with exactly `caps` (inheritable, ambient and bounding
/// set).
fn unprivileged(caps: &str) -> Vec<String> {
    [
        "setpriv",
        "--reuid=65534",
        "--regid=65534",
        "--clear-groups",
        &format!("--inh-caps={caps}"),
        &format!("--ambient-caps={caps}"),
        &format!("--bounding-set={caps}"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[test]
fn unprivileged_user_with_only_its_capabilities_forwards() {
    let spec = TopologySpec::new("fu");
    let Some(mut lab) = Lab::new("least_privilege", spec) else {
        return;
    };
    lab.launcher = unprivileged(CAPS);
    lab.run(|lab| {
        lab.start();
        let pid = lab.natgw.as_ref().unwrap().id();
        let uid = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        assert!(
            uid.lines().any(|l| l.starts_with("Uid:\t65534\t65534")),
            "natgw does not run as nobody:\n{uid}"
        );
        let c = Collector::start(&lab.topo, 7002);
        let h = lab.topo.hosts()[0].clone();
        let s = udp_socket(&h.ns, SocketAddrV4::new(h.addr, 40000));
        assert!(
            echo_within(&s, c.addr, Duration::from_secs(5)),
            "no traffic through natgw as an unprivileged user"
        );
        assert!(!inside(*c.seen().last().unwrap().ip()), "not translated");
        // After set-up the workers hold only CAP_IPC_LOCK (locked allocations); the other
        // threads (management, API) keep CAP_NET_ADMIN (neighbour resolution), CAP_BPF
        // (XDP counters) and CAP_IPC_LOCK. CAP_NET_RAW is gone everywhere.
        let ipc_lock = 1u64 << 14;
        let runtime = 1u64 << 12 | 1 << 39 | ipc_lock;
        let threads = thread_caps(pid);
        assert!(
            threads.iter().any(|(n, _)| n.starts_with("natgw-w")),
            "{threads:?}"
        );
        for (name, eff) in &threads {
            let want = if name.starts_with("natgw-w") {
                ipc_lock
            } else {
                runtime
            };
            assert_eq!(
                *eff, want,
                "thread {name}: CapEff {eff:#x}, all: {threads:x?}"
            );
        }
    });
}

/// A box that keeps its gateway cores away from everything else (`isolcpus=`, or the
/// service manager's `CPUAffinity=`) starts natgw with an affinity that leaves the workers'
/// cores out; emulated here with `taskset -c 1` and the worker on core 0. natgw pins its
/// worker to core 0 anyway and keeps every other thread of its own on core 1. (It used to
/// refuse: "core 0 does not exist or is not usable by natgw".)
#[test]
fn workers_pin_to_their_cores_outside_the_inherited_affinity() {
    let cores = natgw_kernel::sched::online_cpus().unwrap();
    if cores.len() < 2 {
        assert!(std::env::var("CI").is_err(), "needs 2 cores, has {cores:?}");
        eprintln!("skipping: one core");
        return;
    }
    let spec = TopologySpec::new("fc");
    let Some(mut lab) = Lab::new("pinning", spec) else {
        return;
    };
    lab.launcher = vec!["taskset".into(), "-c".into(), "1".into()];
    lab.run(|lab| {
        lab.start();
        let c = Collector::start(&lab.topo, 7003);
        let h = lab.topo.hosts()[0].clone();
        let s = udp_socket(&h.ns, SocketAddrV4::new(h.addr, 40000));
        assert!(
            echo_within(&s, c.addr, Duration::from_secs(5)),
            "no traffic through the pinned worker"
        );
        let threads = thread_status(lab.natgw.as_ref().unwrap().id(), "Cpus_allowed_list");
        assert!(threads.iter().any(|(n, _)| n == "natgw-w0"), "{threads:?}");
        for (name, cores) in &threads {
            let want = if name == "natgw-w0" { "0" } else { "1" };
            assert_eq!(
                cores.as_deref(),
                Some(want),
                "thread {name}; all: {threads:?}"
            );
        }
    });
}

#[test]
fn without_its_capabilities_natgw_refuses_naming_them() {
    let spec = TopologySpec::new("fv");
    let Some(mut lab) = Lab::new("missing_capabilities", spec) else {
        return;
    };
    lab.launcher = unprivileged("-all,+net_raw");
    lab.run(|lab| {
        let s = lab
            .try_start()
            .expect_err("natgw started without its capabilities");
        assert!(!s.success(), "{s}");
        let err = lab.stderr();
        assert!(
            err.contains("missing: CAP_NET_ADMIN, CAP_BPF"),
            "the error does not name the missing capabilities:\n{err}"
        );
    });
}

#[test]
fn without_locked_memory_natgw_refuses_at_start_not_later() {
    let spec = TopologySpec::new("fw");
    let Some(mut lab) = Lab::new("no_memlock", spec) else {
        return;
    };
    // The capabilities to set up, but neither CAP_IPC_LOCK nor an unlimited memlock limit:
    // every allocation after mlockall(MCL_FUTURE) would count against a few MiB.
    lab.launcher = unprivileged("-all,+net_admin,+net_raw,+bpf");
    lab.run(|lab| {
        let s = lab
            .try_start()
            .expect_err("natgw started with a finite memlock limit");
        assert!(!s.success(), "{s}");
        let err = lab.stderr();
        assert!(
            err.contains("the locked-memory limit is finite and natgw lacks CAP_IPC_LOCK")
                && err.contains("LimitMEMLOCK=infinity"),
            "{err}"
        );
    });
}
