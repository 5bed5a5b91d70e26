//! `natgw lab`: builds a namespace topology (inside hosts, natgw's gateway namespace, an
//! outside router and a server), runs the natgw binary on it, drives a short mix of real
//! kernel traffic through it (ping, UDP, a TCP transfer, a port forward), prints what
//! happened, and removes everything it created, also on Ctrl-C.

use crate::{Topology, TopologySpec, run_in_netns};
use natgw_kernel::signal;
use std::fmt;
use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct LabOptions {
    pub hosts: usize,
    pub workers: u32,
    pub tcp_bytes: usize,
    pub keep_config: bool,
}

/// Why `natgw lab` did not finish.
#[derive(Debug)]
pub enum LabError {
    /// SIGINT or SIGTERM: everything the lab created has been removed.
    Interrupted,
    /// The topology could not be built.
    Topology(std::io::Error),
    /// natgw rejected the configuration the lab generated (a bug of the lab).
    ConfigRejected(String),
    /// natgw's API did not answer in time.
    NotUp,
    /// A system call, command or socket operation failed; the text says which.
    Io(String),
    /// Traffic did not go through natgw as expected.
    Traffic(String),
}

impl fmt::Display for LabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LabError::Interrupted => f.write_str("interrupted"),
            LabError::Topology(e) => write!(f, "building the lab topology: {e}"),
            LabError::ConfigRejected(e) => write!(f, "internal: lab configuration rejected: {e}"),
            LabError::NotUp => f.write_str("natgw did not come up within 15 s"),
            LabError::Io(e) | LabError::Traffic(e) => f.write_str(e),
        }
    }
}

impl std::error::Error for LabError {}

impl From<std::io::Error> for LabError {
    fn from(e: std::io::Error) -> Self {
        LabError::Io(e.to_string())
    }
}

/// An I/O error as a [`LabError`] whose message starts with `what`.
fn io_context(what: &str) -> impl FnOnce(std::io::Error) -> LabError + '_ {
    move |e| LabError::Io(format!("{what}: {e}"))
}

fn stop_requested() -> bool {
    signal::signalled()
}

/// The Unix socket (`control.socket`) of the natgw that runs in gateway namespace `gw_ns`:
/// one per topology, so that tests running at once never meet on natgw's default socket.
/// [`TopologySpec::natgw_config`](crate::TopologySpec::natgw_config) sets it.
///
/// Their directory is created here, world-writable and sticky like /tmp itself, so that a
/// natgw that tests run as an unprivileged user can create its socket in it.
pub fn control_socket(gw_ns: &str) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join("natgw-testbed");
    let _ = std::fs::create_dir(&dir);
    let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777));
    dir.join(format!("{gw_ns}.sock"))
}

/// GET `path` from the API of the natgw in namespace `ns`, over its Unix socket
/// ([`control_socket`]; every endpoint is open there): the body of a 200 answer; any other
/// status is an error naming it.
pub fn api_get(ns: &str, path: &str) -> std::io::Result<String> {
    let (status, head, body) = api_request(ns, "GET", path)?;
    if status != 200 {
        return Err(std::io::Error::other(format!("GET {path}: {head} {body}")));
    }
    Ok(body)
}

/// Sends `method path` to the API of the natgw in namespace `ns` over its Unix socket;
/// returns the status code, the status line and the body (de-chunked), whatever the status.
/// A POST carries `Content-Type: application/json`, as natgw asks of it.
pub fn api_request(ns: &str, method: &str, path: &str) -> std::io::Result<(u16, String, String)> {
    let mut s = std::os::unix::net::UnixStream::connect(control_socket(ns))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.set_write_timeout(Some(Duration::from_secs(5)))?;
    let ctype = if method == "POST" {
        "Content-Type: application/json\r\n"
    } else {
        ""
    };
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: natgw\r\nConnection: close\r\n{ctype}\r\n"
    )?;
    let mut out = Vec::new();
    s.read_to_end(&mut out)?;
    let out = String::from_utf8_lossy(&out);
    let (head, body) = out
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("malformed answer: {out:?}")))?;
    let line = head.lines().next().unwrap_or("").to_string();
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("malformed status line: {line:?}")))?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)?
    } else {
        body.to_string()
    };
    Ok((status, line, body))
}

/// A chunked body (RFC 9112 7.1) as one string.
fn dechunk(mut body: &str) -> std::io::Result<String> {
    let bad = || std::io::Error::other("malformed chunked body");
    let mut out = String::new();
    loop {
        let (size, rest) = body.split_once("\r\n").ok_or_else(bad)?;
        let size = usize::from_str_radix(size.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad())?;
        if size == 0 {
            return Ok(out);
        }
        out.push_str(rest.get(..size).ok_or_else(bad)?);
        body = rest.get(size + 2..).ok_or_else(bad)?;
    }
}

/// A number field of the flat /stats JSON object.
pub fn stat(json: &str, key: &str) -> u64 {
    let pat = format!("\"{key}\":");
    json.find(&pat)
        .and_then(|i| {
            json[i + pat.len()..]
                .split(|c: char| !c.is_ascii_digit())
                .next()
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct Natgw(Child);

impl Drop for Natgw {
    fn drop(&mut self) {
        // SAFETY: sending a signal to our own child.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn step(name: &str) {
    println!("\n== {name}");
}

fn check_stop() -> Result<(), LabError> {
    if stop_requested() {
        Err(LabError::Interrupted)
    } else {
        Ok(())
    }
}

fn fnv(data: &[u8], mut h: u64) -> u64 {
    for b in data {
        h ^= *b as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

/// Runs the lab: builds the topology, starts this executable as `natgw run` in the gateway
/// namespace, drives the traffic and removes everything again. `check_config` is natgw's
/// configuration parser, run on the generated configuration before natgw starts.
pub fn run<E: fmt::Display>(
    opts: &LabOptions,
    check_config: impl Fn(&str) -> Result<(), E>,
) -> Result<(), LabError> {
    signal::install_signal_handlers();
    let mut spec = TopologySpec::new("lab");
    spec.inside_hosts = opts.hosts.clamp(1, 8);
    spec.queues = opts.workers.clamp(1, 4);
    let _ = Topology::cleanup_stale("lab");
    step("building the topology");
    let topo = Topology::build(&spec).map_err(LabError::Topology)?;
    let a = &spec.addressing;
    let (pool0, _) = topo.pool(0);
    println!(
        "  inside hosts {} in 10.0.0.0/24 -> natgw ({}) -> router {} -> server {}",
        topo.hosts().len(),
        topo.gw_ns(),
        a.router_outside,
        topo.server_addr()
    );
    let h1 = topo.hosts()[0].addr;
    // The generated config ends inside the realm table: add a port forward pool0:8080 -> h1:80.
    let mut cfg = topo.natgw_config();
    cfg.push_str(&format!(
        "static = [{{ protocol = \"tcp\", external = \"{pool0}:8080\", internal = \"{h1}:80\" }}]\n"
    ));
    check_config(&cfg).map_err(|e| LabError::ConfigRejected(e.to_string()))?;
    let path = std::env::temp_dir().join(format!("natgw-lab-{}.toml", std::process::id()));
    std::fs::write(&path, &cfg).map_err(io_context(&format!("writing {}", path.display())))?;
    let exe = std::env::current_exe()?;
    step("starting natgw");
    let child = Command::new("ip")
        .args(["netns", "exec", topo.gw_ns()])
        .arg(&exe)
        .args(["run", "--config"])
        .arg(&path)
        .stdin(Stdio::null())
        .spawn()
        .map_err(io_context("starting natgw"))?;
    let natgw = Natgw(child);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if api_get(topo.gw_ns(), "/stats").is_ok() {
            break;
        }
        if Instant::now() > deadline {
            return Err(LabError::NotUp);
        }
        check_stop()?;
        std::thread::sleep(Duration::from_millis(100));
    }
    if !opts.keep_config {
        let _ = std::fs::remove_file(&path);
    }
    let result = drive(&topo, opts.tcp_bytes);
    let stats = api_get(topo.gw_ns(), "/stats").unwrap_or_default();
    let sessions = api_get(topo.gw_ns(), "/sessions?limit=8").unwrap_or_default();
    step("natgw counters");
    for k in [
        "rx_frames",
        "in2out",
        "out2in",
        "hairpinned",
        "replies",
        "handoffs",
        "fragments_translated",
        "sessions_created",
    ] {
        println!("  {k:<22} {}", stat(&stats, k));
    }
    println!(
        "  {:<22} {}",
        "sessions_active",
        stat(&stats, "sessions_active")
    );
    let drops: Vec<String> = stats
        .split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once(':')?;
            let k = k.trim_matches(|c| c == '"' || c == '{');
            let v: u64 = v.trim_matches('}').parse().ok()?;
            (k.starts_with("drop_") && v > 0).then(|| format!("{}={v}", &k[5..]))
        })
        .collect();
    println!(
        "  drops                  {}",
        if drops.is_empty() {
            "none".into()
        } else {
            drops.join(" ")
        }
    );
    step("sessions (first 8)");
    for s in sessions.split("},{").take(8) {
        let field = |k: &str| {
            let pat = format!("\"{k}\":\"");
            s.find(&pat)
                .map(|i| {
                    s[i + pat.len()..]
                        .split('"')
                        .next()
                        .unwrap_or("")
                        .to_string()
                })
                .unwrap_or_default()
        };
        if !field("protocol").is_empty() {
            println!(
                "  {:<5} {:>21} -> {:>21} -> {}",
                field("protocol"),
                field("inside"),
                field("external"),
                field("remote")
            );
        }
    }
    drop(natgw);
    step("cleaning up");
    drop(topo);
    println!("  namespaces removed");
    result
}

fn drive(topo: &Topology, opts_bytes: usize) -> Result<(), LabError> {
    let srv = topo.server_addr();
    let srv_ns = topo.server_ns().to_string();
    step("ping from each inside host to the server");
    for h in topo.hosts() {
        check_stop()?;
        let mut ok = 0;
        let mut rtt = Duration::ZERO;
        for _ in 0..4 {
            if let Ok(d) = topo.ping(&h.ns, srv, Duration::from_secs(1)) {
                ok += 1;
                rtt += d;
            }
        }
        if ok == 0 {
            return Err(LabError::Traffic(format!(
                "ping from {} to {srv} failed",
                h.addr
            )));
        }
        println!("  {} -> {srv}: {ok}/4 replies, avg {:?}", h.addr, rtt / ok);
    }

    step("UDP request/response (1000 datagrams per host)");
    let echo = run_in_netns(&srv_ns, || UdpSocket::bind("0.0.0.0:7000"))?;
    echo.set_read_timeout(Some(Duration::from_millis(200)))?;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop2 = stop.clone();
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let seen2 = seen.clone();
    let echo_t = std::thread::spawn(move || {
        let mut buf = [0u8; 2048];
        while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
            if let Ok((n, from)) = echo.recv_from(&mut buf) {
                seen2.lock().map(|mut s| s.insert(from)).ok();
                let _ = echo.send_to(&buf[..n], from);
            }
        }
    });
    for h in topo.hosts() {
        check_stop()?;
        let sock = run_in_netns(&h.ns, || UdpSocket::bind("0.0.0.0:0"))?;
        sock.set_read_timeout(Some(Duration::from_millis(500)))?;
        let t = Instant::now();
        let mut got = 0;
        for i in 0..1000u32 {
            let msg = i.to_be_bytes();
            let _ = sock.send_to(&msg, SocketAddrV4::new(srv, 7000));
            let mut b = [0u8; 16];
            if let Ok((n, _)) = sock.recv_from(&mut b)
                && b[..n] == msg
            {
                got += 1;
            }
        }
        let dt = t.elapsed();
        println!(
            "  {} : {got}/1000 echoed, {:.0} round trips/s",
            h.addr,
            got as f64 / dt.as_secs_f64()
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = echo_t.join();
    let ext: Vec<String> = seen
        .lock()
        .map(|s| s.iter().map(|a| a.to_string()).collect())
        .unwrap_or_default();
    println!("  the server saw them from: {}", ext.join(", "));

    step("TCP transfer inside -> server");
    let h = &topo.hosts()[0];
    let listener = run_in_netns(&srv_ns, || TcpListener::bind("0.0.0.0:5001"))?;
    let recv_t = std::thread::spawn(move || -> std::io::Result<(u64, usize)> {
        let (mut c, _) = listener.accept()?;
        c.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut h = 0xcbf29ce484222325u64;
        let mut n = 0;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let k = c.read(&mut buf)?;
            if k == 0 {
                break;
            }
            h = fnv(&buf[..k], h);
            n += k;
        }
        c.write_all(&h.to_be_bytes())?;
        Ok((h, n))
    });
    let total = opts_bytes;
    let mut data = vec![0u8; total];
    let mut x = 0x9e3779b97f4a7c15u64;
    for b in data.iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    let want = fnv(&data, 0xcbf29ce484222325);
    let t = Instant::now();
    let mut c = run_in_netns(&h.ns, move || {
        TcpStream::connect_timeout(&SocketAddrV4::new(srv, 5001).into(), Duration::from_secs(3))
    })
    .map_err(io_context("TCP connect"))?;
    c.write_all(&data)?;
    c.shutdown(std::net::Shutdown::Write)?;
    let mut back = [0u8; 8];
    c.set_read_timeout(Some(Duration::from_secs(10)))?;
    c.read_exact(&mut back)?;
    let dt = t.elapsed();
    let _ = recv_t.join();
    let ok = u64::from_be_bytes(back) == want;
    println!(
        "  {} MiB in {:.2} s = {:.0} Mbit/s, content hash {}",
        total >> 20,
        dt.as_secs_f64(),
        total as f64 * 8.0 / dt.as_secs_f64() / 1e6,
        if ok { "matches" } else { "DIFFERS" }
    );
    if !ok {
        return Err(LabError::Traffic("TCP content hash differs".into()));
    }

    {
        check_stop()?;
        let (pool0, _) = topo.pool(0);
        step(&format!("port forward {pool0}:8080 -> {}:80", h.addr));
        let l = run_in_netns(&h.ns, || TcpListener::bind("0.0.0.0:80"))?;
        let srv_t = std::thread::spawn(move || -> std::io::Result<String> {
            let (mut c, from) = l.accept()?;
            c.write_all(b"hello through natgw\n")?;
            Ok(from.to_string())
        });
        let mut c = run_in_netns(&srv_ns, move || {
            TcpStream::connect_timeout(
                &SocketAddrV4::new(pool0, 8080).into(),
                Duration::from_secs(3),
            )
        })
        .map_err(io_context("connecting to the forwarded port"))?;
        let mut s = String::new();
        c.set_read_timeout(Some(Duration::from_secs(5)))?;
        c.read_to_string(&mut s)?;
        let from = srv_t
            .join()
            .map_err(|_| LabError::Traffic("forward server panicked".into()))??;
        println!(
            "  server {srv} got {:?} from the inside server; the inside server saw {from}",
            s.trim()
        );
    }
    Ok(())
}
