//! End-to-end tests of issue 3: the real `natgw` binary runs in the gateway namespace of a
//! testbed topology (crates/testbed) and every packet comes from the kernels' own stacks:
//! sockets opened inside the host and server namespaces, never frames the tests craft.
//!
//! Each test has its own topology tag, so tests run in parallel. natgw is stopped with
//! SIGTERM at the end of a test (which must then exit cleanly and leave no XDP program
//! behind); on failure it is killed and its stderr is appended to the failure message.
//!
//! Needs root and the `ip` command. Without them each test prints a skip notice and passes,
//! except under `CI=true` where a missing prerequisite is a failure.

use std::fs::File;
use std::io::{self, Read, Write};
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use natgw_testbed::lab::{api_get, api_request};
use natgw_testbed::{RawIcmp, Topology, TopologySpec, ipv4_payload, run_in_netns};

const NATGW: &str = env!("CARGO_BIN_EXE_natgw");
/// natgw's HTTP API inside the gateway namespace (the configuration default).
const READY_TIMEOUT: Duration = Duration::from_secs(10);
const IO_TIMEOUT: Duration = Duration::from_secs(5);

// ---------------------------------------------------------------------------------------
// Prerequisites, natgw process and topology guard
// ---------------------------------------------------------------------------------------

use natgw_testbed::netns::prerequisites;

/// One natgw process, started with `ip netns exec <gw> natgw run --config <file>`; its stderr
/// goes to a file so that it can be read at any time without blocking the process.
struct Natgw {
    child: Child,
}

impl Natgw {
    fn spawn(ns: &str, config: &Path, stderr_path: &Path) -> Natgw {
        let stderr = File::options()
            .create(true)
            .append(true)
            .open(stderr_path)
            .unwrap_or_else(|e| panic!("{}: {e}", stderr_path.display()));
        // `ip netns exec` execs natgw in place: the child's pid is natgw's.
        let child = Command::new("ip")
            .args(["netns", "exec", ns, NATGW, "run", "--config"])
            .arg(config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {NATGW}: {e}"));
        Natgw { child }
    }

    fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) has no memory-safety preconditions; the pid is our own child,
        // not yet reaped, so it cannot have been reused.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// Waits up to `timeout` for the process to exit.
    fn wait_timeout(&mut self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(s)) = self.child.try_wait() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn kill(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.child.wait();
    }
}

impl Drop for Natgw {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.signal(libc::SIGTERM);
            if self.wait_timeout(Duration::from_secs(3)).is_none() {
                self.kill();
            }
        }
    }
}

/// A topology with natgw running in its gateway namespace. Dropping it stops natgw and
/// removes the topology, also when a test fails.
struct Lab {
    name: String,
    // Declared before `topo`: natgw is stopped before the namespaces go away.
    natgw: Option<Natgw>,
    topo: Topology,
    config_path: PathBuf,
    stderr_path: PathBuf,
}

impl Lab {
    /// Builds the topology of `spec` and starts natgw with the topology's configuration as
    /// adjusted by `configure`. None if the prerequisites are missing (outside CI).
    fn start(
        name: &str,
        spec: TopologySpec,
        configure: impl FnOnce(&Topology, String) -> String,
    ) -> Option<Lab> {
        if !prerequisites(name) {
            return None;
        }
        Topology::cleanup_stale(&spec.tag).unwrap();
        let topo = Topology::build(&spec).unwrap_or_else(|e| panic!("building {spec:?}: {e}"));
        let dir = std::env::temp_dir();
        let pid = std::process::id();
        let config_path = dir.join(format!("natgw-e2e-{}-{pid}.toml", spec.tag));
        let stderr_path = dir.join(format!("natgw-e2e-{}-{pid}.stderr", spec.tag));
        let config = configure(&topo, topo.natgw_config());
        std::fs::write(&config_path, &config).unwrap();
        let _ = std::fs::remove_file(&stderr_path);
        let mut lab = Lab {
            name: name.to_string(),
            natgw: None,
            topo,
            config_path,
            stderr_path,
        };
        lab.start_natgw();
        Some(lab)
    }

    fn gw(&self) -> &str {
        self.topo.gw_ns()
    }

    /// Starts natgw and waits until its API answers.
    fn start_natgw(&mut self) {
        assert!(self.natgw.is_none(), "natgw already running");
        let n = Natgw::spawn(self.topo.gw_ns(), &self.config_path, &self.stderr_path);
        self.natgw = Some(n);
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(s) = self.natgw.as_mut().unwrap().wait_timeout(Duration::ZERO) {
                self.natgw = None;
                panic!(
                    "{}: natgw exited ({s}) before its API answered\n{}",
                    self.name,
                    self.stderr_report()
                );
            }
            if api_get(self.gw(), "/stats").is_ok() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "{}: natgw's API did not answer within {READY_TIMEOUT:?}\n{}",
                    self.name,
                    self.stderr_report()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr_path).unwrap_or_default()
    }

    fn stderr_report(&self) -> String {
        format!(
            "--- natgw stderr ---\n{}--- end of natgw stderr ---",
            self.stderr()
        )
    }

    /// SIGKILLs natgw (no clean-up of its own) and reaps it.
    fn kill_natgw(&mut self) {
        let mut n = self.natgw.take().expect("natgw running");
        n.kill();
    }

    /// SIGTERMs natgw; it must exit successfully within a few seconds and leave no XDP
    /// program on the gateway's interfaces.
    fn stop_natgw(&mut self) {
        let mut n = self.natgw.take().expect("natgw running");
        n.signal(libc::SIGTERM);
        let status = n.wait_timeout(Duration::from_secs(5));
        assert!(status.is_some(), "natgw did not exit within 5 s of SIGTERM");
        let status = status.unwrap();
        assert!(status.success(), "natgw exited with {status} after SIGTERM");
        let out = self
            .topo
            .exec(self.gw(), &["ip", "-d", "link", "show"])
            .unwrap();
        let links = String::from_utf8_lossy(&out.stdout);
        assert!(
            !links.contains("xdp"),
            "XDP still attached after natgw exited:\n{links}"
        );
    }

    /// Runs the test body; on success stops natgw cleanly (checked), on failure adds natgw's
    /// stderr to the panic message. The topology is removed either way.
    fn run(mut self, body: impl FnOnce(&mut Lab)) {
        let r = catch_unwind(AssertUnwindSafe(|| {
            body(&mut self);
            self.stop_natgw();
        }));
        if let Err(p) = r {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()));
            // natgw's own view of what happened, while it still runs.
            let stats = match &self.natgw {
                Some(_) => match api_get(self.gw(), "/stats") {
                    Ok(b) => format!("natgw /stats: {b}\n"),
                    Err(e) => format!("natgw /stats: {e}\n"),
                },
                None => String::new(),
            };
            if let Some(n) = self.natgw.as_mut() {
                n.kill();
            }
            match msg {
                Some(m) => panic!("{}: {m}\n{stats}{}", self.name, self.stderr_report()),
                None => {
                    eprintln!("{}", self.stderr_report());
                    resume_unwind(p)
                }
            }
        }
    }

    fn stats(&self) -> Stats {
        let body = api_get(self.gw(), "/stats").unwrap_or_else(|e| panic!("GET /stats: {e}"));
        Stats(body)
    }

    fn sessions(&self) -> Sessions {
        let body = api_get(self.gw(), "/sessions").unwrap_or_else(|e| panic!("GET /sessions: {e}"));
        Sessions::parse(&body)
    }

    /// Polls /stats until `counter` reaches at least `want` (bounded); returns the last value.
    fn wait_counter(&self, counter: &str, want: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.stats().get(counter);
            if v >= want || Instant::now() >= deadline {
                return v;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        self.natgw = None;
        // A failure message already carries natgw's stderr.
        let _ = std::fs::remove_file(&self.config_path);
        let _ = std::fs::remove_file(&self.stderr_path);
    }
}

// ---------------------------------------------------------------------------------------
// natgw's API (natgw_testbed::lab::api_get) and just enough JSON
// ---------------------------------------------------------------------------------------

/// The number after `"key":` in `json`.
fn json_u64(json: &str, key: &str) -> Option<u64> {
    let pat = format!("\"{key}\":");
    let i = json.find(&pat)? + pat.len();
    let digits: String = json[i..]
        .chars()
        .take_while(|c| c.is_ascii_digit())
        .collect();
    digits.parse().ok()
}

/// The string after `"key":` in `json` (no escapes expected).
fn json_string<'a>(json: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":\"");
    let i = json.find(&pat)? + pat.len();
    let len = json[i..].find('"')?;
    Some(&json[i..i + len])
}

/// The value of the Prometheus sample `series` (name and labels exactly as rendered).
fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no sample {series} in /metrics:\n{text}")) as u64
}

#[derive(Debug)]
struct Stats(String);

impl Stats {
    fn get(&self, counter: &str) -> u64 {
        json_u64(&self.0, counter)
            .unwrap_or_else(|| panic!("no counter {counter:?} in /stats: {}", self.0))
    }
}

#[derive(Debug)]
struct Session {
    protocol: String,
    inside: SocketAddrV4,
    external: SocketAddrV4,
    remote: SocketAddrV4,
}

#[derive(Debug)]
struct Sessions {
    total: u64,
    list: Vec<Session>,
}

impl Sessions {
    fn parse(body: &str) -> Sessions {
        let total = json_u64(body, "total").unwrap_or_else(|| panic!("/sessions: {body}"));
        // Session objects hold no nested objects: each runs from `{"core"` to the next `}`.
        let list = body
            .split("{\"core\"")
            .skip(1)
            .map(|rest| {
                let obj = format!(
                    "{{\"core\"{}",
                    &rest[..rest.find('}').unwrap_or(rest.len())]
                );
                let obj = obj.as_str();
                let addr = |k: &str| -> SocketAddrV4 {
                    json_string(obj, k)
                        .and_then(|s| s.parse().ok())
                        .unwrap_or_else(|| panic!("/sessions: no {k} in {obj}"))
                };
                Session {
                    protocol: json_string(obj, "protocol").unwrap_or("").to_string(),
                    inside: addr("inside"),
                    external: addr("external"),
                    remote: addr("remote"),
                }
            })
            .collect();
        Sessions { total, list }
    }
}

// ---------------------------------------------------------------------------------------
// Traffic helpers: kernel sockets only
// ---------------------------------------------------------------------------------------

fn v4(a: SocketAddr) -> SocketAddrV4 {
    match a {
        SocketAddr::V4(a) => a,
        SocketAddr::V6(a) => panic!("IPv6 address {a}"),
    }
}

fn in_pool(a: Ipv4Addr, pool: (Ipv4Addr, Ipv4Addr)) -> bool {
    (pool.0..=pool.1).contains(&a)
}

/// Pings with a few attempts: the first packets of a fresh topology wait for ARP.
fn ping_ok(t: &Topology, ns: &str, dst: Ipv4Addr) {
    let mut last = None;
    for _ in 0..4 {
        match t.ping(ns, dst, Duration::from_secs(1)) {
            Ok(_) => return,
            Err(e) => last = Some(e),
        }
    }
    panic!("ping {dst} from {ns}: {last:?}");
}

/// A UDP echo server in the server namespace: answers every datagram with the source it
/// saw (`a.b.c.d:port\n`) followed by the datagram itself.
struct UdpEcho {
    addr: SocketAddrV4,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl UdpEcho {
    fn start(t: &Topology, port: u16) -> UdpEcho {
        let sock = run_in_netns(t.server_ns(), || UdpSocket::bind((t.server_addr(), port)))
            .unwrap_or_else(|e| panic!("UDP echo bind on port {port}: {e}"));
        let addr = v4(sock.local_addr().unwrap());
        sock.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = std::thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            while !flag.load(Ordering::Relaxed) {
                let Ok((n, from)) = sock.recv_from(&mut buf) else {
                    continue;
                };
                let mut reply = format!("{from}\n").into_bytes();
                reply.extend_from_slice(&buf[..n]);
                let _ = sock.send_to(&reply, from);
            }
        });
        UdpEcho {
            addr,
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

/// A UDP socket bound in `ns`.
fn udp_socket(ns: &str, addr: SocketAddrV4) -> UdpSocket {
    run_in_netns(ns, || UdpSocket::bind(addr))
        .unwrap_or_else(|e| panic!("UDP bind {addr} in {ns}: {e}"))
}

/// Splits an echo reply into the source the server saw and the echoed payload.
fn parse_echo(reply: &[u8]) -> (SocketAddrV4, &[u8]) {
    let nl = reply
        .iter()
        .position(|&b| b == b'\n')
        .unwrap_or_else(|| panic!("malformed echo reply {reply:?}"));
    let seen = std::str::from_utf8(&reply[..nl])
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("malformed echo reply {reply:?}"));
    (seen, &reply[nl + 1..])
}

/// Sends `payload` from `sock` to the echo server `to` (retrying a few times: the first
/// packets may wait for ARP) and checks the reply: from `to`, carrying `payload` whole.
/// Returns the source address the server saw. A reply carrying another payload (a late
/// answer to an earlier, retried exchange) is skipped: a reply delivered to the wrong socket
/// shows as a missing reply on the right one.
fn udp_echo(sock: &UdpSocket, to: SocketAddrV4, payload: &[u8]) -> SocketAddrV4 {
    let me = sock.local_addr().unwrap();
    let mut buf = vec![0u8; 65536];
    for _ in 0..5 {
        sock.send_to(payload, to).unwrap();
        let deadline = Instant::now() + Duration::from_millis(700);
        while let Some(left) = deadline.checked_duration_since(Instant::now()) {
            sock.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                .unwrap();
            let Ok((n, from)) = sock.recv_from(&mut buf) else {
                break;
            };
            assert_eq!(v4(from), to, "reply to {me} from an unexpected source");
            let (seen, echoed) = parse_echo(&buf[..n]);
            if echoed == payload {
                return seen;
            }
        }
    }
    panic!("no UDP echo from {to} for {me} ({} bytes)", payload.len());
}

/// Deterministic pseudo-random bytes (xorshift64*), so that both sides can check content.
struct Stream(u64);

impl Stream {
    fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            let v = self.0.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }
}

/// 64-bit FNV-1a, fed incrementally.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// A TCP sink in the server namespace: accepts one connection, hashes everything until EOF,
/// then answers with the byte count and the hash (16 bytes) and closes.
fn tcp_sink(t: &Topology) -> (SocketAddrV4, JoinHandle<io::Result<SocketAddrV4>>) {
    let listener = run_in_netns(t.server_ns(), || TcpListener::bind((t.server_addr(), 0)))
        .expect("TCP listen on the server");
    let addr = v4(listener.local_addr().unwrap());
    let h = std::thread::spawn(move || -> io::Result<SocketAddrV4> {
        listener.set_nonblocking(true)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let (mut conn, peer) = loop {
            match listener.accept() {
                Ok(c) => break c,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                    std::thread::sleep(Duration::from_millis(10))
                }
                Err(e) => return Err(e),
            }
        };
        conn.set_nonblocking(false)?;
        conn.set_read_timeout(Some(IO_TIMEOUT))?;
        let mut hash = Fnv::new();
        let mut total = 0u64;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = conn.read(&mut buf)?;
            if n == 0 {
                break;
            }
            hash.update(&buf[..n]);
            total += n as u64;
        }
        let mut ans = total.to_be_bytes().to_vec();
        ans.extend_from_slice(&hash.0.to_be_bytes());
        conn.write_all(&ans)?;
        Ok(v4(peer))
    });
    (addr, h)
}

/// Sends `len` pseudo-random bytes from `ns` to a [`tcp_sink`] and checks that the sink
/// counted and hashed exactly what was sent. Returns the peer address the sink saw.
fn tcp_transfer(t: &Topology, ns: &str, len: usize) -> SocketAddrV4 {
    let (to, sink) = tcp_sink(t);
    let mut c = run_in_netns(ns, || {
        TcpStream::connect_timeout(&SocketAddr::V4(to), Duration::from_secs(3))
    })
    .unwrap_or_else(|e| panic!("TCP connect from {ns} to {to}: {e}"));
    c.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    c.set_write_timeout(Some(IO_TIMEOUT)).unwrap();
    let mut data = Stream(0x9e37_79b9_7f4a_7c15 ^ len as u64);
    let mut hash = Fnv::new();
    let mut buf = vec![0u8; 1 << 16];
    let mut left = len;
    let start = Instant::now();
    while left > 0 {
        let n = left.min(buf.len());
        data.fill(&mut buf[..n]);
        hash.update(&buf[..n]);
        c.write_all(&buf[..n])
            .unwrap_or_else(|e| panic!("TCP send after {} bytes: {e}", len - left));
        left -= n;
    }
    c.shutdown(Shutdown::Write).unwrap();
    let mut ans = [0u8; 16];
    c.read_exact(&mut ans)
        .unwrap_or_else(|e| panic!("TCP: no answer from the sink: {e}"));
    let elapsed = start.elapsed();
    let peer = sink.join().unwrap().expect("TCP sink");
    let got_len = u64::from_be_bytes(ans[..8].try_into().unwrap());
    let got_hash = u64::from_be_bytes(ans[8..].try_into().unwrap());
    assert_eq!(got_len, len as u64, "bytes received by the server");
    assert_eq!(
        got_hash, hash.0,
        "content hash at the server differs from the client's"
    );
    eprintln!("TCP {len} bytes from {ns} in {elapsed:?}");
    peer
}

/// Connects from `ns` to `to` and exchanges a line each way with the server side that
/// `listener` (bound elsewhere) accepts. Returns the peer the listener saw.
fn tcp_exchange(ns: &str, to: SocketAddrV4, listener: &TcpListener) -> SocketAddrV4 {
    let mut last = None;
    let mut client = None;
    // The first SYN may wait for ARP somewhere; retry rather than wait for the kernel's
    // one-second SYN retransmission twice.
    for _ in 0..3 {
        match run_in_netns(ns, || {
            TcpStream::connect_timeout(&SocketAddr::V4(to), Duration::from_secs(2))
        }) {
            Ok(c) => {
                client = Some(c);
                break;
            }
            Err(e) => last = Some(e),
        }
    }
    let mut client = client.unwrap_or_else(|| panic!("TCP connect from {ns} to {to}: {last:?}"));
    client.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let deadline = Instant::now() + IO_TIMEOUT;
    let (mut conn, seen) = loop {
        match listener.accept() {
            Ok(c) => break c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10))
            }
            Err(e) => panic!("accept: {e}"),
        }
    };
    conn.set_nonblocking(false).unwrap();
    conn.set_read_timeout(Some(IO_TIMEOUT)).unwrap();
    client.write_all(b"hello through natgw\n").unwrap();
    let mut buf = [0u8; 20];
    conn.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"hello through natgw\n");
    conn.write_all(b"and back\n").unwrap();
    let mut buf = [0u8; 9];
    client.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"and back\n");
    v4(seen)
}

/// The configuration of `t` with a static TCP port forward `ext` -> `int` in the (first)
/// realm.
fn config_with_forward(t: &Topology, cfg: String, ext: SocketAddrV4, int: SocketAddrV4) -> String {
    config_with_static(t, cfg, "tcp", ext, int)
}

/// The configuration of `t` with a static `protocol` port forward `ext` -> `int` in the
/// (first) realm.
fn config_with_static(
    t: &Topology,
    cfg: String,
    protocol: &str,
    ext: SocketAddrV4,
    int: SocketAddrV4,
) -> String {
    let pool = t.pool(0);
    let pool_line = format!("pool = [\"{}-{}\"]\n", pool.0, pool.1);
    assert!(cfg.contains(&pool_line), "{cfg}");
    cfg.replacen(
        &pool_line,
        &format!(
            "{pool_line}static = [{{ protocol = \"{protocol}\", external = \"{ext}\", internal = \"{int}\" }}]\n"
        ),
        1,
    )
}

/// What a UDP socket's error queue said about an ICMP error.
#[derive(Debug, PartialEq, Eq)]
struct IcmpError {
    origin: u8,
    icmp_type: u8,
    icmp_code: u8,
    offender: Ipv4Addr,
}

fn setsockopt_int(fd: i32, level: i32, opt: i32, v: i32) {
    // SAFETY: valid option buffer of the declared size.
    let r = unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const i32).cast(),
            size_of::<i32>() as u32,
        )
    };
    assert_eq!(
        r,
        0,
        "setsockopt({level}, {opt}): {}",
        io::Error::last_os_error()
    );
}

/// Waits up to `timeout` for an entry in the socket's error queue (IP_RECVERR).
fn recv_icmp_error(sock: &UdpSocket, timeout: Duration) -> Option<IcmpError> {
    let fd = sock.as_raw_fd();
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let mut p = libc::pollfd {
            fd,
            events: 0,
            revents: 0,
        };
        // SAFETY: one valid pollfd. POLLERR is always reported.
        let r = unsafe { libc::poll(&mut p, 1, left.as_millis().max(1) as i32) };
        if r <= 0 {
            return None;
        }
        let mut data = [0u8; 256];
        let mut control = [0u64; 64];
        // SAFETY: all-zero sockaddr_in and msghdr are valid.
        let mut from: libc::sockaddr_in = unsafe { zeroed() };
        let mut iov = libc::iovec {
            iov_base: data.as_mut_ptr().cast(),
            iov_len: data.len(),
        };
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_name = (&mut from as *mut libc::sockaddr_in).cast();
        msg.msg_namelen = size_of::<libc::sockaddr_in>() as u32;
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 64]>();
        // SAFETY: msg points to live buffers of the declared sizes.
        let n = unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
        if n < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::WouldBlock {
                // POLLERR without a queued error: a plain socket error; clear it.
                let _ = sock.take_error();
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            panic!("recvmsg(MSG_ERRQUEUE): {e}");
        }
        // SAFETY: walking the control buffer the kernel filled, with the libc macros.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::IPPROTO_IP && (*c).cmsg_type == libc::IP_RECVERR {
                    let ee = libc::CMSG_DATA(c) as *const libc::sock_extended_err;
                    let ee = ee.read_unaligned();
                    let off = (libc::CMSG_DATA(c) as *const libc::sock_extended_err).add(1)
                        as *const libc::sockaddr_in;
                    let off = off.read_unaligned();
                    return Some(IcmpError {
                        origin: ee.ee_origin,
                        icmp_type: ee.ee_type,
                        icmp_code: ee.ee_code,
                        offender: Ipv4Addr::from(u32::from_be(off.sin_addr.s_addr)),
                    });
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
    }
}

/// Sends UDP probes with `ttl` from a socket connected to `to` in `ns` and returns the first
/// ICMP error the kernel delivers to that socket. The kernel matches an ICMP error to a
/// socket by the quoted header, so delivery proves natgw restored the inside addresses.
fn ttl_probe(ns: &str, src: SocketAddrV4, to: SocketAddrV4, ttl: i32) -> IcmpError {
    let sock = udp_socket(ns, src);
    let fd = sock.as_raw_fd();
    setsockopt_int(fd, libc::IPPROTO_IP, libc::IP_RECVERR, 1);
    sock.connect(to).unwrap();
    sock.set_ttl(ttl as u32).unwrap();
    for _ in 0..5 {
        // An earlier error may be reported by send() itself; the queue holds it either way.
        let _ = sock.send(b"ttl probe");
        if let Some(e) = recv_icmp_error(&sock, Duration::from_millis(700)) {
            return e;
        }
    }
    panic!("no ICMP error delivered to the TTL {ttl} probe socket {src} -> {to} in {ns}");
}

// ---------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------

#[test]
fn ping_reaches_the_server_from_a_pool_address() {
    let spec = TopologySpec::new("ep");
    let Some(lab) = Lab::start("ping", spec, |_, c| c) else {
        return;
    };
    lab.run(|lab| {
        let t = &lab.topo;
        let h1 = t.hosts()[0].clone();
        let server = t.server_addr();
        let icmp = run_in_netns(t.server_ns(), RawIcmp::open).unwrap();
        ping_ok(t, &h1.ns, server);
        // The echo request as the server received it.
        let mut seen = None;
        while let Some((src, pkt)) = icmp.recv(Duration::from_millis(200)).unwrap() {
            if let Some(m) = ipv4_payload(&pkt, 1)
                && m.first() == Some(&8)
            {
                seen = Some(src);
            }
        }
        let seen = seen.expect("the server's raw socket saw no echo request");
        assert!(
            in_pool(seen, t.pool(0)),
            "server saw the echo request from {seen}, not from pool {:?}",
            t.pool(0)
        );
        assert_ne!(seen, h1.addr);
        for _ in 0..3 {
            t.ping(&h1.ns, server, Duration::from_secs(1))
                .expect("ping after the first");
        }
        let s = lab.stats();
        assert!(s.get("in2out") >= 4 && s.get("out2in") >= 4, "{s:?}");
        let sessions = lab.sessions();
        assert!(
            sessions.list.iter().any(|x| x.protocol == "icmp"
                && *x.inside.ip() == h1.addr
                && *x.external.ip() == seen),
            "{sessions:?}"
        );
    });
}

#[test]
fn udp_from_several_hosts_with_endpoint_independent_mapping() {
    let mut spec = TopologySpec::new("eu");
    spec.inside_hosts = 3;
    let Some(lab) = Lab::start("udp", spec, |_, c| c) else {
        return;
    };
    lab.run(|lab| {
        let t = &lab.topo;
        let echo_a = UdpEcho::start(t, 7001);
        let echo_b = UdpEcho::start(t, 7002);
        let mut externals = Vec::new();
        for h in t.hosts() {
            for port in [40000u16, 40001, 50000] {
                let src = SocketAddrV4::new(h.addr, port);
                let sock = udp_socket(&h.ns, src);
                let msg = format!("{src} to a");
                let seen_a = udp_echo(&sock, echo_a.addr, msg.as_bytes());
                let seen_b = udp_echo(&sock, echo_b.addr, b"to b");
                assert!(in_pool(*seen_a.ip(), t.pool(0)), "{src} seen as {seen_a}");
                assert_eq!(
                    seen_a, seen_b,
                    "endpoint-independent mapping: {src} seen as {seen_a} by one server \
                     port and {seen_b} by another"
                );
                externals.push((src, seen_a));
            }
        }
        // Different inside endpoints never share an external endpoint.
        for (i, a) in externals.iter().enumerate() {
            for b in &externals[i + 1..] {
                assert_ne!(a.1, b.1, "{} and {} share an external endpoint", a.0, b.0);
            }
        }
        let sessions = lab.sessions();
        for (src, ext) in &externals {
            for to in [echo_a.addr, echo_b.addr] {
                assert!(
                    sessions.list.iter().any(|s| s.protocol == "udp"
                        && s.inside == *src
                        && s.external == *ext
                        && s.remote == to),
                    "no session {src} -> {to} via {ext} in {sessions:?}"
                );
            }
        }
    });
}

#[test]
fn tcp_50_megabytes_arrive_intact() {
    let spec = TopologySpec::new("et");
    let Some(lab) = Lab::start("tcp", spec, |_, c| c) else {
        return;
    };
    lab.run(|lab| {
        let t = &lab.topo;
        let h1 = t.hosts()[0].clone();
        ping_ok(t, &h1.ns, t.server_addr());
        let peer = tcp_transfer(t, &h1.ns, 50 << 20);
        assert!(in_pool(*peer.ip(), t.pool(0)), "server saw {peer}");
        assert!(lab.stats().get("in2out") > 30_000);
    });
}

#[test]
fn port_forward_reaches_an_inside_server() {
    let spec = TopologySpec::new("ef");
    let ext = SocketAddrV4::new(spec.addressing.pools[0].0, 8080);
    let int = SocketAddrV4::new(spec.addressing.first_host, 80);
    let Some(lab) = Lab::start("port_forward", spec, |t, c| {
        config_with_forward(t, c, ext, int)
    }) else {
        return;
    };
    lab.run(|lab| {
        let t = &lab.topo;
        let listener = run_in_netns(t.host_ns(0), || TcpListener::bind(int)).unwrap();
        for _ in 0..2 {
            let seen = tcp_exchange(t.server_ns(), ext, &listener);
            assert_eq!(
                *seen.ip(),
                t.server_addr(),
                "the inside server must see the real client"
            );
        }
        let sessions = lab.sessions();
        assert!(
            sessions
                .list
                .iter()
                .any(|s| s.protocol == "tcp" && s.inside == int && s.external == ext),
            "{sessions:?}"
        );
    });
}

#[test]
fn hairpin_to_a_forwarded_port() {
    let mut spec = TopologySpec::new("eh");
    spec.inside_hosts = 2;
    let ext = SocketAddrV4::new(spec.addressing.pools[0].0, 8080);
    let int = SocketAddrV4::new(spec.addressing.first_host, 80);
    let Some(lab) = Lab::start("hairpin", spec, |t, c| config_with_forward(t, c, ext, int)) else {
        return;
    };
    lab.run(|lab| {
        let t = &lab.topo;
        let h2 = t.hosts()[1].clone();
        let listener = run_in_netns(t.host_ns(0), || TcpListener::bind(int)).unwrap();
        let seen = tcp_exchange(&h2.ns, ext, &listener);
        assert!(
            in_pool(*seen.ip(), t.pool(0)),
            "h1 must see h2 by its external address, saw {seen}"
        );
        let s = lab.stats();
        assert!(s.get("hairpinned") >= 2, "{s:?}");
    });
}

#[test]
fn unsolicited_inbound_udp_is_dropped_and_counted() {
    let spec = TopologySpec::new("ed");
    let Some(lab) = Lab::start("unsolicited", spec, |_, c| c) else {
        return;
    };
    lab.run(|lab| {
        let t = &lab.topo;
        let h1 = t.hosts()[0].clone();
        let echo = UdpEcho::start(t, 7001);
        let inside = udp_socket(&h1.ns, SocketAddrV4::new(h1.addr, 40000));
        let ext = udp_echo(&inside, echo.addr, b"make one session");
        let sessions_before = lab.sessions().total;
        assert!(sessions_before >= 1);
        let drops_before = lab.stats().get("drop_unsolicited");
        // An inside socket on the port an unsolicited datagram names: nothing may reach it.
        let port9 = udp_socket(&h1.ns, SocketAddrV4::new(h1.addr, 9));
        let pool = t.pool(0);
        let other = if *ext.ip() == pool.0 { pool.1 } else { pool.0 };
        let outside = udp_socket(t.server_ns(), SocketAddrV4::new(t.server_addr(), 6000));
        let targets = [
            SocketAddrV4::new(*ext.ip(), 9),
            SocketAddrV4::new(other, ext.port()),
            SocketAddrV4::new(other, 9),
        ];
        for to in targets {
            outside.send_to(b"unsolicited", to).unwrap();
        }
        let want = drops_before + targets.len() as u64;
        let got = lab.wait_counter("drop_unsolicited", want, Duration::from_secs(3));
        assert!(
            got >= want,
            "drop_unsolicited {drops_before} -> {got}, want >= {want}"
        );
        assert_eq!(
            lab.sessions().total,
            sessions_before,
            "a session was created"
        );
        let mut buf = [0u8; 256];
        let unsolicited_src = v4(outside.local_addr().unwrap());
        for s in [&inside, &port9] {
            s.set_read_timeout(Some(Duration::from_millis(300)))
                .unwrap();
            while let Ok((n, from)) = s.recv_from(&mut buf) {
                // A late duplicate echo (of a retried exchange) is no leak.
                assert_ne!(
                    v4(from),
                    unsolicited_src,
                    "{:?} received unsolicited {:?}",
                    s.local_addr(),
                    &buf[..n]
                );
            }
        }
        // The legitimate session still works.
        assert_eq!(udp_echo(&inside, echo.addr, b"still there"), ext);
    });
}

const SO_EE_ORIGIN_ICMP: u8 = 2;

#[test]
fn ttl_expiry_comes_back_as_translated_time_exceeded() {
    let spec = TopologySpec::new("ex");
    let Some(lab) = Lab::start("ttl", spec, |_, c| c) else {
        return;
    };
    lab.run(|lab| {
        let t = &lab.topo;
        let h1 = t.hosts()[0].clone();
        let a = &t.spec().addressing;
        let to = SocketAddrV4::new(t.server_addr(), 33434);
        let e = ttl_probe(&h1.ns, SocketAddrV4::new(h1.addr, 41000), to, 2);
        assert_eq!(
            e,
            IcmpError {
                origin: SO_EE_ORIGIN_ICMP,
                icmp_type: 11,
                icmp_code: 0,
                offender: a.router_outside,
            },
            "TTL 2: Time Exceeded from the outside router"
        );
        let s = lab.stats();
        assert!(s.get("icmp_errors_translated") >= 1, "{s:?}");
        let e = ttl_probe(&h1.ns, SocketAddrV4::new(h1.addr, 41001), to, 1);
        assert_eq!(
            e,
            IcmpError {
                origin: SO_EE_ORIGIN_ICMP,
                icmp_type: 11,
                icmp_code: 0,
                offender: a.inside_gw,
            },
            "TTL 1: Time Exceeded from natgw itself, as the realm gateway"
        );
        assert!(lab.stats().get("replies") >= 1);
    });
}

#[test]
fn two_workers_on_two_queues() {
    let mut spec = TopologySpec::new("ew");
    spec.inside_hosts = 3;
    spec.queues = 2;
    let Some(lab) = Lab::start("two_workers", spec, |_, c| c) else {
        return;
    };
    lab.run(|lab| {
        let t = &lab.topo;
        let echo = UdpEcho::start(t, 7001);
        let mut flows = Vec::new();
        for h in t.hosts() {
            for i in 0..8u16 {
                let src = SocketAddrV4::new(h.addr, 42000 + i);
                flows.push((src, udp_socket(&h.ns, src)));
            }
        }
        for round in 0..3 {
            for (src, sock) in &flows {
                let msg = format!("{src} round {round}");
                let seen = udp_echo(sock, echo.addr, msg.as_bytes());
                assert!(in_pool(*seen.ip(), t.pool(0)), "{src} seen as {seen}");
            }
        }
        for h in t.hosts() {
            let peer = tcp_transfer(t, &h.ns, 4 << 20);
            assert!(in_pool(*peer.ip(), t.pool(0)));
        }
        let s = lab.stats();
        assert_eq!(json_u64(&s.0, "workers"), Some(2), "{s:?}");
        assert!(s.get("handoffs") > 0, "no frame crossed cores: {s:?}");
        // Every frame handed off is taken by its owner (once in-flight ones have landed).
        let deadline = Instant::now() + Duration::from_secs(2);
        loop {
            let s = lab.stats();
            if s.get("handoffs") == s.get("handoff_in") {
                break;
            }
            assert!(Instant::now() < deadline, "handoffs lost: {s:?}");
            std::thread::sleep(Duration::from_millis(20));
        }
        // Both workers received from their own queues: the traffic was spread.
        let metrics = api_get(lab.gw(), "/metrics").expect("GET /metrics");
        for w in 0..2 {
            let v = metric(
                &metrics,
                &format!("natgw_rx_batches_total{{worker=\"{w}\"}}"),
            );
            assert!(
                v > 0,
                "worker {w} received nothing from its queue:\n{metrics}"
            );
        }
    });
}

#[test]
fn fragmented_udp_arrives_whole_both_ways() {
    let spec = TopologySpec::new("eg");
    let Some(lab) = Lab::start("fragments", spec, |_, c| c) else {
        return;
    };
    lab.run(|lab| {
        let t = &lab.topo;
        let h1 = t.hosts()[0].clone();
        let echo = UdpEcho::start(t, 7001);
        let sock = udp_socket(&h1.ns, SocketAddrV4::new(h1.addr, 43000));
        for len in [1473usize, 4000, 9000] {
            let mut payload = vec![0u8; len];
            Stream(len as u64).fill(&mut payload);
            let seen = udp_echo(&sock, echo.addr, &payload);
            assert!(in_pool(*seen.ip(), t.pool(0)));
        }
        let s = lab.stats();
        assert!(s.get("fragments_translated") > 0, "{s:?}");
    });
}

#[test]
fn restart_after_sigkill_works_at_once() {
    let spec = TopologySpec::new("ek");
    let Some(lab) = Lab::start("restart", spec, |_, c| c) else {
        return;
    };
    lab.run(|lab| {
        let h1 = lab.topo.hosts()[0].clone();
        let server = lab.topo.server_addr();
        ping_ok(&lab.topo, &h1.ns, server);
        let echo = UdpEcho::start(&lab.topo, 7001);
        let sock = udp_socket(&h1.ns, SocketAddrV4::new(h1.addr, 44000));
        udp_echo(&sock, echo.addr, b"before");
        for round in 0..2 {
            lab.kill_natgw();
            let t0 = Instant::now();
            lab.start_natgw();
            let ready = t0.elapsed();
            lab.topo
                .ping(&h1.ns, server, Duration::from_secs(1))
                .unwrap_or_else(|e| panic!("first ping after restart {round}: {e}"));
            let seen = udp_echo(&sock, echo.addr, format!("after {round}").as_bytes());
            assert!(in_pool(*seen.ip(), lab.topo.pool(0)));
            eprintln!(
                "restart {round}: API after {ready:?}, ping and UDP after {:?}",
                t0.elapsed()
            );
        }
    });
}

#[test]
fn two_vlan_tenants_with_the_same_addresses() {
    let mut spec = TopologySpec::new("ev");
    spec.vlans = true;
    let Some(lab) = Lab::start("vlan_tenants", spec, |_, c| c) else {
        return;
    };
    lab.run(|lab| {
        let t = &lab.topo;
        let a = t.tenant_host(0, 0).clone();
        let b = t.tenant_host(1, 0).clone();
        assert_eq!(a.addr, b.addr);
        ping_ok(t, &a.ns, t.server_addr());
        ping_ok(t, &b.ns, t.server_addr());
        let echo = UdpEcho::start(t, 7001);
        // The same inside address and port in both tenants, both sockets live at once.
        let src = SocketAddrV4::new(a.addr, 45000);
        let sa = udp_socket(&a.ns, src);
        let sb = udp_socket(&b.ns, src);
        let mut seen = [None, None];
        for round in 0..3 {
            for (i, (s, name)) in [(&sa, "tenant a"), (&sb, "tenant b")]
                .into_iter()
                .enumerate()
            {
                let got = udp_echo(s, echo.addr, format!("{name} {round}").as_bytes());
                assert!(
                    in_pool(*got.ip(), t.pool(i)),
                    "{name} seen as {got}, not from pool {:?}",
                    t.pool(i)
                );
                if let Some(prev) = seen[i] {
                    assert_eq!(prev, got, "{name}'s mapping changed");
                }
                seen[i] = Some(got);
            }
        }
        // Nothing crossed over: whatever still waits on a socket (late duplicates of retried
        // exchanges) is its own tenant's.
        let mut buf = [0u8; 256];
        for (s, name) in [(&sa, "tenant a"), (&sb, "tenant b")] {
            s.set_read_timeout(Some(Duration::from_millis(200)))
                .unwrap();
            while let Ok((n, _)) = s.recv_from(&mut buf) {
                let (_, echoed) = parse_echo(&buf[..n]);
                assert!(
                    echoed.starts_with(name.as_bytes()),
                    "{name} received {:?}",
                    String::from_utf8_lossy(echoed)
                );
            }
        }
        let listener =
            run_in_netns(t.server_ns(), || TcpListener::bind((t.server_addr(), 0))).unwrap();
        let to = v4(listener.local_addr().unwrap());
        assert!(in_pool(*tcp_exchange(&a.ns, to, &listener).ip(), t.pool(0)));
        assert!(in_pool(*tcp_exchange(&b.ns, to, &listener).ip(), t.pool(1)));
        let sessions = lab.sessions();
        for (i, ext) in seen.iter().enumerate() {
            let ext = ext.unwrap();
            assert!(
                sessions
                    .list
                    .iter()
                    .any(|s| s.inside == src && s.external == ext && in_pool(*ext.ip(), t.pool(i))),
                "{sessions:?}"
            );
        }
    });
}

/// Removes a namespace on drop.
struct Netns(String);

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

#[test]
fn start_with_a_missing_interface_fails_clearly() {
    if !prerequisites("missing_interface") {
        return;
    }
    Topology::cleanup_stale("eb").unwrap();
    let ns = Netns("ngw-eb-gw".to_string());
    let st = Command::new("ip")
        .args(["netns", "add", &ns.0])
        .status()
        .unwrap();
    assert!(st.success());
    for (outside, inside, named) in [
        ("ngw-missing0", "ngw-missing1", "ngw-missing0"),
        ("lo", "ngw-missing1", "ngw-missing1"),
    ] {
        let cfg = format!(
            "[outside]\ninterface = \"{outside}\"\naddress = \"192.168.1.2\"\n\
             gateway = \"192.168.1.1\"\n\n[[inside]]\ninterface = \"{inside}\"\n\n\
             [dataplane]\nworkers = [{{ core = 0, queue = 0 }}]\n\n\
             [[realm]]\nname = \"lab\"\ninterface = \"{inside}\"\nprefixes = [\"10.0.0.0/24\"]\n\
             gateway = \"10.0.0.1\"\npool = [\"192.168.1.10-192.168.1.13\"]\n"
        );
        // The configuration itself is valid: the failure must come from the machine check.
        natgw::config::parse(&cfg).unwrap_or_else(|e| panic!("{e}\n{cfg}"));
        let path =
            std::env::temp_dir().join(format!("natgw-e2e-eb-{}-{named}.toml", std::process::id()));
        std::fs::write(&path, &cfg).unwrap();
        let mut child = Command::new("ip")
            .args(["netns", "exec", &ns.0, NATGW, "run", "--config"])
            .arg(&path)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let status = loop {
            if let Some(s) = child.try_wait().unwrap() {
                break s;
            }
            if Instant::now() >= deadline {
                let _ = child.kill();
                let _ = child.wait();
                let _ = std::fs::remove_file(&path);
                panic!("natgw with missing interface {named} still running after 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let mut err = String::new();
        child
            .stderr
            .take()
            .unwrap()
            .read_to_string(&mut err)
            .unwrap();
        let _ = std::fs::remove_file(&path);
        assert!(!status.success(), "natgw exited successfully: {err}");
        assert!(
            err.contains(&format!("'{named}'")) && err.contains("does not exist"),
            "the message must name the missing interface {named}: {err:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// Issue 9, part 1: the first packet to an unresolved neighbour is held, not lost
// ---------------------------------------------------------------------------------------

/// Empties the gateway namespace's neighbour cache (natgw follows it over rtnetlink) and
/// checks that `addrs` have no link-layer address left there; then gives natgw's
/// management thread (which reads neighbour notifications every few ms) time to apply it.
fn flush_gateway_neighbours(lab: &Lab, addrs: &[Ipv4Addr]) {
    let t = &lab.topo;
    let out = t.exec(lab.gw(), &["ip", "neigh", "flush", "all"]).unwrap();
    assert!(out.status.success(), "ip neigh flush all: {out:?}");
    let out = t.exec(lab.gw(), &["ip", "-4", "neigh", "show"]).unwrap();
    let table = String::from_utf8_lossy(&out.stdout).to_string();
    for a in addrs {
        let a = a.to_string();
        assert!(
            !table
                .lines()
                .any(|l| l.split_whitespace().next() == Some(a.as_str()) && l.contains("lladdr")),
            "{a} still resolved in the gateway namespace after the flush:\n{table}"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
}

/// Waits up to `timeout` for one datagram on `sock`; None if none came.
fn recv_one(sock: &UdpSocket, timeout: Duration) -> Option<(Vec<u8>, SocketAddrV4)> {
    let mut buf = vec![0u8; 2048];
    sock.set_read_timeout(Some(timeout)).unwrap();
    let (n, from) = sock.recv_from(&mut buf).ok()?;
    Some((buf[..n].to_vec(), v4(from)))
}

/// Outbound: with the gateway's neighbour cache flushed (the router, natgw's next hop,
/// unresolved, and the inside host too), one UDP datagram, sent once, is answered: natgw
/// holds it while the kernel resolves the router, and holds the answer while it resolves
/// the host. Before the hold it was dropped as `no_neighbour`.
#[test]
fn first_datagram_to_a_flushed_next_hop_is_answered() {
    let spec = TopologySpec::new("nho");
    let router = spec.addressing.router_outside;
    let Some(lab) = Lab::start("first_datagram_outbound", spec, |_, c| c) else {
        return;
    };
    lab.run(|lab| {
        let t = &lab.topo;
        let h1 = t.hosts()[0].clone();
        let echo = UdpEcho::start(t, 7009);
        // Everything works, and every neighbour was resolved once ...
        ping_ok(t, &h1.ns, t.server_addr());
        // ... and is forgotten.
        flush_gateway_neighbours(lab, &[router, h1.addr]);
        let before = lab.stats();
        let sock = udp_socket(&h1.ns, SocketAddrV4::new(h1.addr, 41000));
        let sent = Instant::now();
        sock.send_to(b"only once", echo.addr).unwrap();
        let (reply, from) = recv_one(&sock, Duration::from_secs(3))
            .unwrap_or_else(|| panic!("no answer to the one datagram; /stats: {:?}", lab.stats()));
        // Two neighbours resolved on the way (the router out, the host back).
        eprintln!("first datagram answered after {:?}", sent.elapsed());
        assert_eq!(from, echo.addr);
        let (seen, echoed) = parse_echo(&reply);
        assert_eq!(echoed, b"only once");
        assert!(in_pool(*seen.ip(), t.pool(0)), "server saw {seen}");
        let after = lab.stats();
        let delta = |k: &str| after.get(k) - before.get(k);
        assert!(delta("neigh_held") >= 1, "{after:?}");
        assert!(delta("neigh_released") >= 1, "{after:?}");
        assert_eq!(delta("drop_no_neighbour"), 0, "{after:?}");
        assert_eq!(after.get("neigh_hold_active"), 0, "{after:?}");
    });
}

/// Inbound: the first datagram through a static UDP port forward to an inside host natgw
/// has never talked to (and with the gateway's neighbour cache flushed) reaches the host,
/// and the host's answer, sent once, reaches the outside client.
#[test]
fn first_datagram_through_a_port_forward_reaches_a_new_inside_host() {
    let mut spec = TopologySpec::new("nhi");
    spec.inside_hosts = 2;
    let router = spec.addressing.router_outside;
    let target = Ipv4Addr::from(u32::from(spec.addressing.first_host) + 1);
    let ext = SocketAddrV4::new(spec.addressing.pools[0].0, 5353);
    let int = SocketAddrV4::new(target, 53);
    let Some(lab) = Lab::start("first_datagram_inbound", spec, |t, c| {
        config_with_static(t, c, "udp", ext, int)
    }) else {
        return;
    };
    lab.run(|lab| {
        let t = &lab.topo;
        let h0 = t.hosts()[0].clone();
        assert_eq!(t.hosts()[1].addr, target);
        // natgw is up and the router knows the gateway; host 1 has sent nothing.
        ping_ok(t, &h0.ns, t.server_addr());
        flush_gateway_neighbours(lab, &[router, h0.addr, target]);
        let inside = udp_socket(&t.hosts()[1].ns, int);
        let client = udp_socket(t.server_ns(), SocketAddrV4::new(t.server_addr(), 42000));
        let before = lab.stats();
        client.send_to(b"first query", ext).unwrap();
        let (got, from) = recv_one(&inside, Duration::from_secs(3)).unwrap_or_else(|| {
            panic!(
                "the first datagram never reached {int}; /stats: {:?}",
                lab.stats()
            )
        });
        assert_eq!(got, b"first query");
        assert_eq!(from, v4(client.local_addr().unwrap()), "the real client");
        inside.send_to(b"first answer", from).unwrap();
        let (got, from) = recv_one(&client, Duration::from_secs(3))
            .unwrap_or_else(|| panic!("the answer never came back; /stats: {:?}", lab.stats()));
        assert_eq!((got.as_slice(), from), (&b"first answer"[..], ext));
        let after = lab.stats();
        assert!(after.get("neigh_released") - before.get("neigh_released") >= 1);
        assert_eq!(
            after.get("drop_no_neighbour"),
            before.get("drop_no_neighbour"),
            "{after:?}"
        );
    });
}

/// `ping -c 3` on a topology natgw has just started on: every echo request is answered
/// (one attempt each, 1 s apart at most), the first one too.
#[test]
fn three_pings_on_a_fresh_topology_get_three_replies() {
    let spec = TopologySpec::new("nhp");
    let Some(lab) = Lab::start("fresh_ping", spec, |_, c| c) else {
        return;
    };
    lab.run(|lab| {
        let t = &lab.topo;
        let h1 = t.hosts()[0].clone();
        for i in 1..=3 {
            t.ping(&h1.ns, t.server_addr(), Duration::from_secs(1))
                .unwrap_or_else(|e| panic!("ping {i} of 3: {e}; /stats: {:?}", lab.stats()));
        }
        assert_eq!(lab.stats().get("drop_no_neighbour"), 0);
    });
}

/// The session list through the API: filters chosen in the workers, pages that follow the
/// `next` cursor across both workers, a refused parameter named, and DELETE with a filter
/// removing exactly the sessions it names (whose flows then start afresh).
#[test]
fn session_listing_filters_pages_and_deletes() {
    let mut spec = TopologySpec::new("el");
    spec.inside_hosts = 3;
    spec.queues = 2;
    let Some(lab) = Lab::start("listing", spec, |_, c| c) else {
        return;
    };
    lab.run(|lab| {
        let t = &lab.topo;
        let echo = UdpEcho::start(t, 7001);
        let mut flows = Vec::new();
        for h in t.hosts() {
            for i in 0..8u16 {
                let src = SocketAddrV4::new(h.addr, 43000 + i);
                let sock = udp_socket(&h.ns, src);
                udp_echo(&sock, echo.addr, b"hello");
                flows.push((src, sock));
            }
        }
        let all = lab.sessions();
        let mine: Vec<_> = all.list.iter().filter(|s| s.remote == echo.addr).collect();
        assert_eq!(mine.len(), 24, "{all:?}");

        // A filter: one inside host's sessions only, with the Get-NetNatSession fields.
        let h0 = t.hosts()[0].addr;
        let body = api_get(lab.gw(), &format!("/sessions?inside={h0}&protocol=udp")).unwrap();
        let one = Sessions::parse(&body);
        assert_eq!(one.total, 8, "{body}");
        assert!(one.list.iter().all(|s| *s.inside.ip() == h0), "{body}");
        for k in [
            "inside_destination",
            "external_destination",
            "state",
            "created_unix",
            "idle_secs",
        ] {
            assert!(body.contains(&format!("\"{k}\":")), "no {k} in {body}");
        }

        // Pages of 5 by the cursor: every session once, across both workers.
        let mut seen = Vec::new();
        let mut path = format!("/sessions?remote={}&limit=5", echo.addr);
        for page in 0.. {
            assert!(page < 10, "more pages than sessions");
            let body = api_get(lab.gw(), &path).unwrap();
            let s = Sessions::parse(&body);
            assert!(s.list.len() <= 5, "{body}");
            seen.extend(s.list.into_iter().map(|s| s.inside));
            match json_string(&body, "next") {
                Some(c) => path = format!("/sessions?remote={}&limit=5&cursor={c}", echo.addr),
                None => break,
            }
        }
        seen.sort();
        let mut want: Vec<_> = flows.iter().map(|f| f.0).collect();
        want.sort();
        assert_eq!(seen, want, "pages lost or repeated sessions");

        // A bad parameter: 400, naming it.
        let (code, _, body) = api_request(lab.gw(), "GET", "/sessions?protocol=sctp").unwrap();
        assert_eq!(code, 400, "{body}");
        assert!(body.contains("protocol"), "{body}");

        // DELETE one host's sessions.
        let h1 = t.hosts()[1].addr;
        let (code, _, body) =
            api_request(lab.gw(), "DELETE", &format!("/sessions?inside={h1}")).unwrap();
        assert_eq!(code, 200, "{body}");
        assert_eq!(json_u64(&body, "removed"), Some(8), "{body}");
        let after = lab.sessions();
        assert!(after.list.iter().all(|s| *s.inside.ip() != h1), "{after:?}");
        let kept = after.list.iter().filter(|s| s.remote == echo.addr).count();
        assert_eq!(kept, 16, "other hosts' sessions were removed: {after:?}");
        assert!(lab.stats().get("sessions_deleted") >= 8);
        // The deleted flows start again.
        for (src, sock) in flows.iter().filter(|f| *f.0.ip() == h1) {
            let seen = udp_echo(sock, echo.addr, b"again");
            assert!(in_pool(*seen.ip(), t.pool(0)), "{src} seen as {seen}");
        }
    });
}
