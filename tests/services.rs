//! Namespace tests of issue 9 part 2: the box's own services next to natgw. The real `natgw`
//! binary on a testbed topology, real kernel traffic and real components: Debian's dnsmasq
//! in the gateway namespace serving DHCP and DNS on the inside link, busybox `udhcpc` in an
//! inside host taking its address, default route and DNS server from it (through natgw's
//! XDP program), and plain UDP and TCP services on the gateway's own addresses, none of
//! them listed under `management`.
//!
//! Tags `sv?`; needs root, `ip`, `dnsmasq` and `busybox`; under `CI=true` a missing
//! prerequisite is a failure. Every process a test starts is killed when it ends.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use natgw_testbed::lab::{api_get, stat};
use natgw_testbed::netns::prerequisites_with;
use natgw_testbed::{HOST_IF, RawIcmp, Topology, TopologySpec, ipv4_payload, run_in_netns};

const NATGW: &str = env!("CARGO_BIN_EXE_natgw");
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const GW_IN: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);
const GW_OUT: Ipv4Addr = Ipv4Addr::new(192, 168, 1, 2);
/// The name dnsmasq serves (a static host entry): the outside server.
const SERVER_NAME: &str = "server.natgw.test";

// ---------------------------------------------------------------------------------------
// natgw and helper processes in a topology
// ---------------------------------------------------------------------------------------

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

/// A process started by a test, killed (and reaped) when dropped.
struct Proc(Option<Child>);

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            signal(&c, libc::SIGKILL);
            let _ = c.wait();
        }
    }
}

struct Lab {
    name: String,
    // Dropped in declaration order: helpers and natgw before the namespaces.
    helpers: Vec<Proc>,
    natgw: Proc,
    topo: Topology,
    dir: PathBuf,
}

impl Lab {
    /// Builds the topology and starts natgw with its standard configuration. None when
    /// prerequisites are missing (outside CI).
    fn start(name: &str, spec: TopologySpec) -> Option<Lab> {
        let extra = [
            (
                "dnsmasq",
                "--version",
                "dnsmasq (apt-get install dnsmasq-base)",
            ),
            ("busybox", "--help", "busybox (apt-get install busybox)"),
        ];
        if !prerequisites_with(name, &extra) {
            return None;
        }
        Topology::cleanup_stale(&spec.tag).unwrap();
        let topo = Topology::build(&spec).unwrap_or_else(|e| panic!("building {spec:?}: {e}"));
        let dir =
            std::env::temp_dir().join(format!("natgw-svc-{}-{}", spec.tag, std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("natgw.toml");
        std::fs::write(&config, topo.natgw_config()).unwrap();
        let stderr = File::create(dir.join("natgw.stderr")).unwrap();
        let natgw = Command::new("ip")
            .args(["netns", "exec", topo.gw_ns(), NATGW, "run", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {NATGW}: {e}"));
        let mut lab = Lab {
            name: name.into(),
            helpers: Vec::new(),
            natgw: Proc(Some(natgw)),
            topo,
            dir,
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        while api_get(lab.topo.gw_ns(), "/stats").is_err() {
            let c = lab.natgw.0.as_mut().unwrap();
            if let Some(s) = wait_timeout(c, Duration::ZERO) {
                lab.natgw.0 = None;
                panic!("{name}: natgw exited ({s})\n{}", lab.report());
            }
            assert!(
                Instant::now() < deadline,
                "{name}: natgw's API did not answer within {READY_TIMEOUT:?}\n{}",
                lab.report()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Some(lab)
    }

    fn report(&self) -> String {
        let mut r = String::new();
        let mut files: Vec<PathBuf> = std::fs::read_dir(&self.dir)
            .map(|d| d.filter_map(|e| e.ok()).map(|e| e.path()).collect())
            .unwrap_or_default();
        files.sort();
        for f in files.iter().filter(|f| {
            f.extension()
                .is_some_and(|e| e == "stderr" || e == "log" || e == "out")
        }) {
            let text = std::fs::read_to_string(f).unwrap_or_default();
            r += &format!("--- {} ---\n{text}", f.display());
        }
        r + "--- end ---"
    }

    fn stats(&self) -> String {
        api_get(self.topo.gw_ns(), "/stats").unwrap_or_else(|e| format!("(no /stats: {e})"))
    }

    /// Runs the body; a failure message carries natgw's and the helpers' output. natgw must
    /// still be running at the end (it did not fall over) and stop cleanly on SIGTERM.
    fn run(mut self, body: impl FnOnce(&mut Lab)) {
        let r = catch_unwind(AssertUnwindSafe(|| {
            body(&mut self);
            self.helpers.clear();
            let mut c = self.natgw.0.take().expect("natgw running");
            assert!(
                wait_timeout(&mut c, Duration::ZERO).is_none(),
                "natgw exited during the test"
            );
            signal(&c, libc::SIGTERM);
            let s = wait_timeout(&mut c, Duration::from_secs(5));
            if s.is_none() {
                self.natgw.0 = Some(c);
                panic!("natgw did not exit within 5 s of SIGTERM");
            }
            assert!(s.unwrap().success(), "natgw's exit after SIGTERM: {s:?}");
        }));
        if let Err(p) = r {
            self.helpers.clear();
            self.natgw = Proc(None);
            let report = self.report();
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            match msg {
                Some(m) => panic!("{}: {m}\n{report}", self.name),
                None => {
                    eprintln!("{report}");
                    resume_unwind(p)
                }
            }
        }
    }

    /// `ip args` in `ns`, which must succeed.
    fn ip(&self, ns: &str, args: &[&str]) -> String {
        let mut a = vec!["ip"];
        a.extend_from_slice(args);
        let out = self.topo.exec(ns, &a).unwrap();
        assert!(out.status.success(), "ip {args:?} in {ns}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn sysctl(&self, ns: &str, kv: &str) {
        let out = self.topo.exec(ns, &["sysctl", "-qw", kv]).unwrap();
        assert!(out.status.success(), "sysctl {kv} in {ns}: {out:?}");
    }

    /// Starts `args` in `ns` as a helper (killed when the test ends), output to
    /// `<dir>/<log>`.
    fn helper(&mut self, ns: &str, log: &str, args: &[&str], env: &[(&str, &str)]) {
        let out = File::create(self.dir.join(log)).unwrap();
        let mut cmd = self.topo.command(ns, args);
        cmd.stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let c = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {args:?}: {e}"));
        self.helpers.push(Proc(Some(c)));
    }

    /// dnsmasq in the gateway namespace: DHCP for 10.0.0.100-150 on `ifaces` (router and DNS
    /// server: the gateway) and DNS on the gateway address, with `SERVER_NAME` as a static
    /// host entry for the outside server. Returns once it answers DNS.
    fn start_dnsmasq(&mut self, ifaces: &[&str]) {
        let d = self.dir.display().to_string();
        let server = self.topo.server_addr();
        let mut args: Vec<String> = [
            "dnsmasq",
            "--keep-in-foreground",
            "--log-facility=-",
            "--conf-file=/dev/null",
            "--user=root",
            "--group=root",
            "--bind-interfaces",
            "--except-interface=lo",
            "--no-resolv",
            "--no-hosts",
            "--no-poll",
            "--log-dhcp",
            "--log-queries",
            "--dhcp-authoritative",
            "--dhcp-range=10.0.0.100,10.0.0.150,255.255.255.0,10m",
            "--dhcp-option=option:router,10.0.0.1",
            "--dhcp-option=option:dns-server,10.0.0.1",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("--listen-address={GW_IN}"));
        for i in ifaces {
            args.push(format!("--interface={i}"));
        }
        args.push(format!("--host-record={SERVER_NAME},{server}"));
        args.push(format!("--dhcp-leasefile={d}/dnsmasq.leases"));
        args.push(format!("--pid-file={d}/dnsmasq.pid"));
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let gw = self.topo.gw_ns().to_string();
        self.helper(&gw, "dnsmasq.log", &argv, &[]);
        // Ready when it answers a query on the gateway address from inside its namespace.
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let got = run_in_netns(&gw, || {
                resolve(GW_IN, SERVER_NAME, Duration::from_millis(200))
            });
            if got.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not answer DNS within 5 s: {got:?}"
            );
        }
    }

    /// Runs busybox udhcpc on the host in `ns` (its address removed first) until it has a
    /// lease, applied by a small script: the address, a default route via the router
    /// option, and (written to a file) the DNS servers. Returns (address/len, DNS servers).
    fn dhcp(&mut self, ns: &str) -> (String, Vec<Ipv4Addr>) {
        self.ip(ns, &["addr", "flush", "dev", HOST_IF]);
        self.ip(ns, &["route", "flush", "table", "main"]);
        let tag = ns.to_string();
        let script = self.dir.join(format!("udhcpc-{tag}.sh"));
        let lease = self.dir.join(format!("lease-{tag}.out"));
        std::fs::write(
            &script,
            "#!/bin/sh\n\
             # udhcpc's lease script: apply the lease, record the DNS servers.\n\
             case \"$1\" in\n\
             deconfig) ip addr flush dev \"$interface\"; ip link set \"$interface\" up ;;\n\
             bound|renew)\n\
             \tip addr flush dev \"$interface\"\n\
             \tip addr add \"$ip/$mask\" dev \"$interface\"\n\
             \tfor r in $router; do ip route replace default via \"$r\" dev \"$interface\"; done\n\
             \techo \"$ip/$mask $dns\" > \"$NATGW_LEASE_OUT\" ;;\n\
             esac\n\
             exit 0\n",
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let log = self.dir.join(format!("udhcpc-{tag}.log"));
        let out = File::create(&log).unwrap();
        let mut c = self
            .topo
            .command(
                ns,
                &[
                    "busybox",
                    "udhcpc",
                    "-i",
                    HOST_IF,
                    "-f",
                    "-q",
                    "-n",
                    "-t",
                    "4",
                    "-T",
                    "2",
                    "-s",
                    script.to_str().unwrap(),
                ],
            )
            .env("NATGW_LEASE_OUT", &lease)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap();
        let s = wait_timeout(&mut c, Duration::from_secs(20));
        let mut p = Proc(Some(c));
        let s = s.unwrap_or_else(|| panic!("udhcpc in {ns} still running after 20 s"));
        p.0 = None;
        assert!(
            s.success(),
            "udhcpc in {ns} got no lease ({s}); /stats: {}",
            self.stats()
        );
        let text = std::fs::read_to_string(&lease)
            .unwrap_or_else(|e| panic!("no lease recorded by the script: {e}"));
        let mut words = text.split_whitespace();
        let addr = words.next().expect("address in the lease").to_string();
        let dns = words.map(|w| w.parse().unwrap()).collect();
        (addr, dns)
    }
}

// ---------------------------------------------------------------------------------------
// Traffic
// ---------------------------------------------------------------------------------------

/// A DNS query for the A record of `name`, sent to `server` from a socket opened in the
/// calling thread's namespace; the first address of the answer.
fn resolve(server: Ipv4Addr, name: &str, timeout: Duration) -> std::io::Result<Ipv4Addr> {
    let sock = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    sock.set_read_timeout(Some(timeout))?;
    let id: u16 = 0x5a17;
    let mut q = Vec::new();
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]); // RD; one question
    for label in name.split('.') {
        q.push(label.len() as u8);
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]); // root; type A; class IN
    sock.send_to(&q, (server, 53))?;
    let mut buf = [0u8; 512];
    let (n, _) = sock.recv_from(&mut buf)?;
    let a = &buf[..n];
    let bad = |m: &str| std::io::Error::other(format!("DNS answer {a:02x?}: {m}"));
    if n < 12 || a[..2] != id.to_be_bytes() {
        return Err(bad("not ours"));
    }
    if a[3] & 0x0f != 0 || u16::from_be_bytes([a[6], a[7]]) == 0 {
        return Err(bad("no answer"));
    }
    // Skip the question, then walk the answers for the first A record.
    let mut i = q.len();
    while i + 12 <= n {
        // Name: a compression pointer (2 bytes) or labels.
        if a[i] & 0xc0 == 0xc0 {
            i += 2;
        } else {
            while i < n && a[i] != 0 {
                i += 1 + a[i] as usize;
            }
            i += 1;
        }
        if i + 10 > n {
            break;
        }
        let (ty, len) = (
            u16::from_be_bytes([a[i], a[i + 1]]),
            u16::from_be_bytes([a[i + 8], a[i + 9]]) as usize,
        );
        i += 10;
        if ty == 1 && len == 4 && i + 4 <= n {
            return Ok(Ipv4Addr::new(a[i], a[i + 1], a[i + 2], a[i + 3]));
        }
        i += len;
    }
    Err(bad("no A record"))
}

/// A UDP echo service bound to `addr` in `ns`, on a thread stopped when dropped.
struct UdpEcho {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    fn start(ns: &str, addr: SocketAddrV4) -> UdpEcho {
        let sock = run_in_netns(ns, || UdpSocket::bind(addr))
            .unwrap_or_else(|e| panic!("UDP bind {addr} in {ns}: {e}"));
        sock.set_read_timeout(Some(Duration::from_millis(50)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut buf = [0u8; 2048];
            while !st.load(Ordering::Relaxed) {
                if let Ok((n, from)) = sock.recv_from(&mut buf) {
                    let _ = sock.send_to(&buf[..n], from);
                }
            }
        });
        UdpEcho {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for UdpEcho {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A TCP service in `ns` on `addr` that answers every connection with `hello <peer>`, after
/// reading one line; on a thread stopped when dropped.
struct TcpHello {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl TcpHello {
    fn start(ns: &str, addr: SocketAddrV4) -> TcpHello {
        let l = run_in_netns(ns, || TcpListener::bind(addr))
            .unwrap_or_else(|e| panic!("TCP bind {addr} in {ns}: {e}"));
        l.set_nonblocking(true).unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let st = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match l.accept() {
                    Ok((mut s, peer)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut b = [0u8; 64];
                        let _ = s.read(&mut b);
                        let _ = s.write_all(format!("hello {peer}\n").as_bytes());
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        TcpHello {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for TcpHello {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// From `ns`, a datagram to `to` until the echo comes back (within 3 s).
fn udp_echo(ns: &str, to: SocketAddrV4) -> Result<(), String> {
    let sock = run_in_netns(ns, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 64];
    while Instant::now() < deadline {
        let _ = sock.send_to(b"ping", to);
        if let Ok((n, from)) = sock.recv_from(&mut buf)
            && from == std::net::SocketAddr::V4(to)
            && &buf[..n] == b"ping"
        {
            return Ok(());
        }
    }
    Err(format!("no UDP echo from {to} to {ns} within 3 s"))
}

/// From `ns`, a TCP connection to `to`: the service's greeting (within 3 s).
fn tcp_hello(ns: &str, to: SocketAddrV4) -> Result<String, String> {
    let mut s = run_in_netns(ns, || {
        TcpStream::connect_timeout(&to.into(), Duration::from_secs(3))
    })
    .map_err(|e| format!("TCP connect {to} from {ns}: {e}"))?;
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    s.write_all(b"hi\n").map_err(|e| e.to_string())?;
    let mut out = String::new();
    s.read_to_string(&mut out)
        .map_err(|e| format!("TCP read from {to} in {ns}: {e}"))?;
    Ok(out)
}

/// From `ns`, UDP datagrams with TTL `ttl` towards `to`, until an ICMP Time Exceeded
/// comes back; the address it came from.
fn time_exceeded_from(ns: &str, to: SocketAddrV4, ttl: u32) -> Option<Ipv4Addr> {
    let (sock, icmp) = run_in_netns(ns, || {
        let s = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0)).unwrap();
        s.set_ttl(ttl).unwrap();
        (s, RawIcmp::open().unwrap())
    });
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline {
        sock.send_to(b"trace", to).unwrap();
        let until = Instant::now() + Duration::from_millis(300);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match icmp.recv(left) {
                Ok(Some((src, pkt))) => {
                    if let Some(m) = ipv4_payload(&pkt, libc::IPPROTO_ICMP as u8)
                        && m.first() == Some(&11)
                    {
                        return Some(src);
                    }
                }
                _ => break,
            }
        }
    }
    None
}

fn ping_ok(t: &Topology, ns: &str, dst: Ipv4Addr) -> Result<(), String> {
    let mut last = None;
    for _ in 0..3 {
        match t.ping(ns, dst, Duration::from_secs(1)) {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(e),
        }
    }
    Err(format!("ping {dst} from {ns}: {last:?}"))
}

/// natgw counted no frame for the kernel it could not deliver, and holds no session with
/// any of `addrs` (broadcasts and its own addresses are never NAT traffic).
fn assert_nothing_translated_for(lab: &Lab, addrs: &[Ipv4Addr]) {
    let stats = lab.stats();
    assert_eq!(
        stat(&stats, "drop_to_kernel_unavailable"),
        0,
        "frames for the kernel reached natgw's workers: {stats}"
    );
    let sessions = api_get(lab.topo.gw_ns(), "/sessions?limit=1000").unwrap();
    for a in addrs {
        assert!(
            !sessions.contains(&format!("\"{a}:")) && !sessions.contains(&format!("\"{a}\"")),
            "a session with {a}: {sessions}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Tests
// ---------------------------------------------------------------------------------------

/// dnsmasq on the gateway serves DHCP and DNS to the inside link through natgw's XDP
/// program: the host's DISCOVER (0.0.0.0:68 -> 255.255.255.255:67) and REQUEST reach it,
/// udhcpc applies address, default route and DNS server, the name resolves through
/// dnsmasq on the gateway address, and the outside server it names is reached through
/// natgw (translated to a pool address). The broadcasts created no session.
#[test]
fn dhcp_and_dns_from_dnsmasq_on_the_gateway() {
    let mut spec = TopologySpec::new("svd");
    spec.inside_hosts = 2;
    let Some(lab) = Lab::start("dhcp_and_dns_from_dnsmasq_on_the_gateway", spec) else {
        return;
    };
    lab.run(|lab| {
        lab.start_dnsmasq(&[natgw_testbed::GW_INSIDE_IF]);
        let h = lab.topo.host_ns(0).to_string();
        let (addr, dns) = lab.dhcp(&h);
        let ip: Ipv4Addr = addr.split('/').next().unwrap().parse().unwrap();
        assert!(
            (Ipv4Addr::new(10, 0, 0, 100)..=Ipv4Addr::new(10, 0, 0, 150)).contains(&ip)
                && addr.ends_with("/24"),
            "lease {addr}"
        );
        assert_eq!(dns, vec![GW_IN], "DNS servers of the lease");
        let shown = lab.ip(&h, &["-4", "addr", "show", "dev", HOST_IF]);
        assert!(shown.contains(&format!("inet {addr} ")), "{shown}");
        let route = lab.ip(&h, &["route", "show", "default"]);
        assert!(route.contains("default via 10.0.0.1"), "{route}");

        // The name through dnsmasq on the gateway, then the server it names.
        let server = run_in_netns(&h, || resolve(dns[0], SERVER_NAME, Duration::from_secs(2)))
            .unwrap_or_else(|e| panic!("resolving {SERVER_NAME} via {}: {e}", dns[0]));
        assert_eq!(server, lab.topo.server_addr());
        let srv_ns = lab.topo.server_ns().to_string();
        let _echo = UdpEcho::start(&srv_ns, SocketAddrV4::new(server, 7007));
        udp_echo(&h, SocketAddrV4::new(server, 7007)).unwrap();
        let sessions = api_get(lab.topo.gw_ns(), "/sessions").unwrap();
        assert!(
            sessions.contains(&format!("\"{ip}:")),
            "the server was reached through natgw: {sessions}"
        );

        // A second host gets another lease the same way.
        let h2 = lab.topo.host_ns(1).to_string();
        let (addr2, _) = lab.dhcp(&h2);
        assert_ne!(addr2, addr);
        assert_nothing_translated_for(lab, &[Ipv4Addr::BROADCAST, GW_IN, Ipv4Addr::UNSPECIFIED]);
    });
}

/// Services on the box's own addresses, none listed under `management`: UDP on
/// 10.0.0.1:5353 and TCP on port 2222 (10.0.0.1 from inside, the outside address from
/// inside and from the server) answer; limited and subnet broadcasts from an inside host
/// reach a socket on the gateway; pings to both addresses are answered; traceroute through
/// the gateway still sees it (Time Exceeded from 10.0.0.1) and the router behind it.
#[test]
fn udp_and_tcp_services_on_the_gateway_addresses() {
    let Some(lab) = Lab::start(
        "udp_and_tcp_services_on_the_gateway_addresses",
        TopologySpec::new("svs"),
    ) else {
        return;
    };
    lab.run(|lab| {
        let gw = lab.topo.gw_ns().to_string();
        let h = lab.topo.host_ns(0).to_string();
        let srv = lab.topo.server_ns().to_string();
        let _udp = UdpEcho::start(&gw, SocketAddrV4::new(GW_IN, 5353));
        let _tcp = TcpHello::start(&gw, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 2222));
        let host = lab.topo.hosts()[0].addr;

        udp_echo(&h, SocketAddrV4::new(GW_IN, 5353)).unwrap();
        let hello = tcp_hello(&h, SocketAddrV4::new(GW_IN, 2222)).unwrap();
        assert!(hello.starts_with(&format!("hello {host}:")), "{hello}");
        let hello = tcp_hello(&h, SocketAddrV4::new(GW_OUT, 2222)).unwrap();
        assert!(hello.starts_with(&format!("hello {host}:")), "{hello}");
        let hello = tcp_hello(&srv, SocketAddrV4::new(GW_OUT, 2222)).unwrap();
        assert!(
            hello.starts_with(&format!("hello {}:", lab.topo.server_addr())),
            "{hello}"
        );

        // Broadcasts from the host reach the gateway's kernel.
        let bsock = run_in_netns(&gw, || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 9999))).unwrap();
        bsock
            .set_read_timeout(Some(Duration::from_millis(300)))
            .unwrap();
        let tx = run_in_netns(&h, || UdpSocket::bind((host, 0))).unwrap();
        tx.set_broadcast(true).unwrap();
        for dst in [Ipv4Addr::BROADCAST, Ipv4Addr::new(10, 0, 0, 255)] {
            let payload = format!("to {dst}");
            let mut got = false;
            for _ in 0..5 {
                tx.send_to(payload.as_bytes(), (dst, 9999)).unwrap();
                let mut b = [0u8; 64];
                if let Ok((n, from)) = bsock.recv_from(&mut b)
                    && &b[..n] == payload.as_bytes()
                {
                    assert_eq!(from.ip(), std::net::IpAddr::V4(host));
                    got = true;
                    break;
                }
            }
            assert!(got, "broadcast to {dst} did not reach the gateway's socket");
        }

        ping_ok(&lab.topo, &h, GW_IN).unwrap();
        ping_ok(&lab.topo, &srv, GW_OUT).unwrap();
        let to = SocketAddrV4::new(lab.topo.server_addr(), 33434);
        assert_eq!(time_exceeded_from(&h, to, 1), Some(GW_IN), "hop 1");
        assert_eq!(
            time_exceeded_from(&h, to, 2),
            Some(lab.topo.spec().addressing.router_outside),
            "hop 2"
        );
        assert_nothing_translated_for(
            lab,
            &[
                Ipv4Addr::BROADCAST,
                Ipv4Addr::new(10, 0, 0, 255),
                GW_IN,
                GW_OUT,
            ],
        );
    });
}

/// Two tenants on VLANs 100 and 200 with the same gateway address 10.0.0.1: natgw's XDP
/// program passes it to the kernel on each realm's VLAN. A TCP service on the gateway
/// answers hosts of both tenants (the testbed's policy routing by mark sends the replies
/// back into the right VLAN: `tcp_fwmark_accept`), pings to the gateway are answered in
/// both, and dnsmasq hands out leases on both VLAN devices.
#[test]
fn services_on_an_overlapping_gateway_on_two_vlans() {
    let mut spec = TopologySpec::new("svv");
    spec.vlans = true;
    let Some(lab) = Lab::start("services_on_an_overlapping_gateway_on_two_vlans", spec) else {
        return;
    };
    lab.run(|lab| {
        let gw = lab.topo.gw_ns().to_string();
        lab.sysctl(&gw, "net.ipv4.tcp_fwmark_accept=1");
        let _tcp = TcpHello::start(&gw, SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 2222));
        let vids = lab.topo.spec().vlan_ids;
        for t in 0..2 {
            let host = lab.topo.tenant_host(t, 0).clone();
            let hello = tcp_hello(&host.ns, SocketAddrV4::new(GW_IN, 2222))
                .unwrap_or_else(|e| panic!("tenant {t}: {e}"));
            assert!(
                hello.starts_with(&format!("hello {}:", host.addr)),
                "{hello}"
            );
            ping_ok(&lab.topo, &host.ns, GW_IN).unwrap();
        }
        let devs: Vec<String> = vids.iter().map(|v| format!("eth-in.{v}")).collect();
        let devs: Vec<&str> = devs.iter().map(String::as_str).collect();
        lab.start_dnsmasq(&devs);
        for t in 0..2 {
            let ns = lab.topo.tenant_host(t, 0).ns.clone();
            let (addr, dns) = lab.dhcp(&ns);
            assert!(
                addr.starts_with("10.0.0.") && dns == vec![GW_IN],
                "tenant {t}: {addr} {dns:?}"
            );
        }
        assert_nothing_translated_for(lab, &[Ipv4Addr::BROADCAST, GW_IN]);
    });
}
