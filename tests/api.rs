//! Namespace tests of issue 11 parts 4 and 5 (a safe API, the CLI): the real `natgw` binary
//! on a testbed topology, talked to over TCP in its namespace and over its Unix socket with
//! raw HTTP/1.1 (nothing of natgw's own client), and the real `natgw` CLI against it.
//!
//! - authentication: over TCP only /metrics, /healthz and /readyz answer without the token;
//!   a missing or wrong token is 401, no token file 403; the socket opens everything; a POST
//!   needs a non-form content type or an Authorization header;
//! - limits: oversized head 431, oversized body 413, malformed 400; 500 idle connections and
//!   slow clients (a header byte a second) while /metrics answers within a second and a UDP
//!   flow through natgw loses nothing;
//! - natgw refuses to start with a non-loopback listener without a token, with a bad token
//!   file, and while another natgw answers on its socket;
//! - the CLI: status, sessions, drops, reload, mappings list, --json, --url with a token,
//!   exit codes 1 and 3.
//!
//! Each test has its own topology tag (`ap?`). Needs root and `ip`; under `CI=true` a missing
//! prerequisite is a failure.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddrV4, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use natgw_testbed::lab::api_get;
use natgw_testbed::netns::prerequisites;
use natgw_testbed::process::NatgwProcess;
use natgw_testbed::{GW_INSIDE_IF, GW_OUTSIDE_IF, Topology, TopologySpec, run_in_netns};

const NATGW: &str = env!("CARGO_BIN_EXE_natgw");
const API: &str = "127.0.0.1:9180";
const TOKEN: &str = "test-token-0123456789abcdef";

fn topology(test: &str, tag: &str) -> Option<Topology> {
    if !prerequisites(test) {
        return None;
    }
    Topology::cleanup_stale(tag).unwrap();
    Some(Topology::build(&TopologySpec::new(tag)).unwrap_or_else(|e| panic!("{tag}: {e}")))
}

/// A file holding `text` with `mode`, removed on drop.
struct TempFile(PathBuf);

impl TempFile {
    fn new(name: &str, text: &str, mode: u32) -> TempFile {
        let p = std::env::temp_dir().join(format!("natgw-api-{}-{name}", std::process::id()));
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        TempFile(p)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The topology's configuration with `keys` added to its `[control]` table.
fn config(t: &Topology, keys: &str) -> String {
    t.natgw_config()
        .replacen("[control]\n", &format!("[control]\n{keys}\n"), 1)
}

/// An answer: status, head (lowercased), body.
#[derive(Debug)]
struct Answer {
    status: u16,
    head: String,
    body: String,
}

fn parse_answer(raw: &[u8]) -> Answer {
    let text = String::from_utf8_lossy(raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    Answer {
        status,
        head: head.to_ascii_lowercase(),
        body: body.to_string(),
    }
}

/// Sends `raw` and reads the answer until natgw closes (requests say Connection: close).
fn exchange<S: Read + Write>(mut s: S, raw: &[u8]) -> Answer {
    s.write_all(raw).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    parse_answer(&out)
}

fn tcp(ns: &str) -> TcpStream {
    let s = run_in_netns(ns, || {
        TcpStream::connect_timeout(&API.parse().unwrap(), Duration::from_secs(2))
    })
    .unwrap_or_else(|e| panic!("connecting to {API} in {ns}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

/// A request with `headers` (each ending in \r\n) and no body.
fn req(method: &str, path: &str, headers: &str) -> Vec<u8> {
    format!("{method} {path} HTTP/1.1\r\nHost: natgw\r\nConnection: close\r\n{headers}\r\n")
        .into_bytes()
}

fn over_tcp(ns: &str, method: &str, path: &str, headers: &str) -> Answer {
    exchange(tcp(ns), &req(method, path, headers))
}

fn over_unix(socket: &Path, method: &str, path: &str, headers: &str) -> Answer {
    let s = UnixStream::connect(socket).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    exchange(s, &req(method, path, headers))
}

fn bearer(t: &str) -> String {
    format!("Authorization: Bearer {t}\r\n")
}

#[track_caller]
fn expect(a: &Answer, status: u16, body_has: &str) {
    assert_eq!(a.status, status, "{a:?}");
    assert!(a.body.contains(body_has), "{body_has:?} not in {a:?}");
}

/// natgw started to fail: its exit status and stderr (it must exit within 10 s).
fn start_fails(ns: Option<&str>, config_text: &str, name: &str) -> (Output, String) {
    let cfg = TempFile::new(&format!("{name}.toml"), config_text, 0o600);
    let mut cmd = match ns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns, NATGW]);
            c
        }
        None => Command::new(NATGW),
    };
    let mut child = cmd
        .args(["run", "--config"])
        .arg(&cfg.0)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("natgw {name} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "natgw {name} started: {err}");
    (out, err)
}

#[test]
fn tcp_needs_the_token_except_for_metrics_and_health() {
    let Some(t) = topology("tcp_needs_the_token_except_for_metrics_and_health", "apa") else {
        return;
    };
    let token = TempFile::new("apa-token", &format!("{TOKEN}\n"), 0o600);
    let cfg = config(&t, &format!("token_file = \"{}\"", token.0.display()));
    let natgw = NatgwProcess::start(NATGW, &t, &cfg, "apa");
    let ns = t.gw_ns();
    for p in ["/metrics", "/healthz", "/readyz"] {
        expect(&over_tcp(ns, "GET", p, ""), 200, "");
    }
    expect(&over_tcp(ns, "GET", "/readyz", ""), 200, "ready");
    assert!(
        over_tcp(ns, "GET", "/metrics", "")
            .body
            .contains("natgw_drops_total")
    );
    for (m, p) in [
        ("GET", "/stats"),
        ("GET", "/sessions"),
        ("GET", "/status"),
        ("GET", "/mappings"),
        ("POST", "/reload"),
        ("POST", "/sessions/clear"),
    ] {
        let a = over_tcp(ns, m, p, "Content-Type: application/json\r\n");
        expect(&a, 401, "Authorization: Bearer");
        assert!(a.head.contains("www-authenticate: bearer"), "{a:?}");
        let wrong = over_tcp(ns, m, p, &bearer("test-token-0123456789abcdeX"));
        expect(&wrong, 401, "wrong token");
        let short = over_tcp(ns, m, p, &bearer("test"));
        expect(&short, 401, "wrong token");
        let a = over_tcp(ns, m, p, &format!("Bearer {TOKEN}\r\n"));
        assert_eq!(a.status, 400, "a header without a name is malformed: {a:?}");
    }
    // The right token opens them; the bearer header alone makes a POST non-simple.
    expect(
        &over_tcp(ns, "GET", "/stats", &bearer(TOKEN)),
        200,
        "\"uptime_secs\"",
    );
    expect(
        &over_tcp(ns, "POST", "/reload", &bearer(TOKEN)),
        200,
        "\"ok\":true",
    );
    expect(
        &over_tcp(ns, "POST", "/sessions/clear", &bearer(TOKEN)),
        200,
        "\"ok\":true",
    );
    // The socket needs no token, but a POST a cross-site form could send is refused.
    let sock = natgw.socket();
    expect(&over_unix(sock, "GET", "/stats", ""), 200, "uptime_secs");
    for ct in [
        "",
        "Content-Type: text/plain\r\n",
        "Content-Type: application/x-www-form-urlencoded\r\n",
    ] {
        expect(
            &over_unix(sock, "POST", "/reload", ct),
            415,
            "Content-Type: application/json",
        );
    }
    expect(
        &over_unix(
            sock,
            "POST",
            "/reload",
            "Content-Type: application/json\r\n",
        ),
        200,
        "reloaded",
    );
    let m = api_get(ns, "/metrics").unwrap();
    assert!(
        m.contains("natgw_api_denied_total{listener=\"tcp\"}"),
        "API counters missing:\n{m}"
    );
    assert!(
        !m.contains("natgw_api_denied_total{listener=\"tcp\"} 0\n"),
        "{m}"
    );

    // A second natgw on the same socket (another port) refuses to start, naming it; the
    // first keeps its socket.
    let second = cfg.replacen("[control]\n", "[control]\nlisten = \"127.0.0.1:9181\"\n", 1);
    let (_, err) = start_fails(Some(ns), &second, "apa-second");
    assert!(
        err.contains("control.socket:") && err.contains("another natgw answers on it"),
        "{err}"
    );
    expect(&over_unix(sock, "GET", "/healthz", ""), 200, "ok");
    drop(natgw);
}

#[test]
fn without_a_token_file_tcp_serves_only_metrics_and_health() {
    let Some(t) = topology(
        "without_a_token_file_tcp_serves_only_metrics_and_health",
        "apb",
    ) else {
        return;
    };
    let natgw = NatgwProcess::start(NATGW, &t, &t.natgw_config(), "apb");
    let ns = t.gw_ns();
    expect(
        &over_tcp(ns, "GET", "/metrics", ""),
        200,
        "natgw_uptime_seconds",
    );
    expect(&over_tcp(ns, "GET", "/healthz", ""), 200, "ok");
    for (m, p) in [("GET", "/sessions"), ("GET", "/stats"), ("POST", "/reload")] {
        let a = over_tcp(ns, m, p, "Content-Type: application/json\r\n");
        expect(&a, 403, "Unix socket (control.socket");
        // Not even with a token: there is none to compare with.
        expect(
            &over_tcp(ns, m, p, &bearer(TOKEN)),
            403,
            "control.token_file",
        );
    }
    expect(
        &over_unix(natgw.socket(), "GET", "/sessions", ""),
        200,
        "\"total\"",
    );
    // The whole exposition, the API's counters after the workers', is one valid document.
    let text = over_tcp(ns, "GET", "/metrics", "").body;
    assert!(
        text.contains("natgw_api_connections_active{listener=\"unix\"}"),
        "{text}"
    );
    match Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    {
        Ok(mut c) => {
            c.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
            let out = c.wait_with_output().unwrap();
            assert!(
                out.status.success(),
                "promtool: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(e) => assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "promtool is required under CI: {e}"
        ),
    }
}

#[test]
fn oversized_and_malformed_requests_get_4xx() {
    let Some(t) = topology("oversized_and_malformed_requests_get_4xx", "apc") else {
        return;
    };
    let cfg = config(&t, "max_header_bytes = 8192\nmax_body_bytes = 1024");
    let natgw = NatgwProcess::start(NATGW, &t, &cfg, "apc");
    let ns = t.gw_ns();
    let big = format!("X-Fill: {}\r\n", "a".repeat(9000));
    assert_eq!(over_tcp(ns, "GET", "/metrics", &big).status, 431);
    let many: String = (0..400).map(|i| format!("X-H{i}: {i}\r\n")).collect();
    assert_eq!(over_tcp(ns, "GET", "/metrics", &many).status, 431);
    let sock = natgw.socket();
    let json = "Content-Type: application/json\r\n";
    // A declared length over the limit: refused before the body is read.
    let a = over_unix(
        sock,
        "POST",
        "/reload",
        &format!("{json}Content-Length: 5000\r\n"),
    );
    expect(&a, 413, "control.max_body_bytes");
    // A chunked body that grows past it.
    let mut raw = req(
        "POST",
        "/reload",
        &format!("{json}Transfer-Encoding: chunked\r\n"),
    );
    for _ in 0..3 {
        raw.extend_from_slice(format!("200\r\n{}\r\n", "b".repeat(512)).as_bytes());
    }
    raw.extend_from_slice(b"0\r\n\r\n");
    let s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    expect(&exchange(s, &raw), 413, "control.max_body_bytes");
    for bad in [
        &b"GARBAGE\r\n\r\n"[..],
        b"GET /metrics HTTP/9.9\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nNo-Colon-Header\r\n\r\n",
        b"GET /metrics HTTP/1.1\r\nContent-Length: x\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    ] {
        let a = exchange(tcp(ns), bad);
        assert_eq!(a.status, 400, "{:?}: {a:?}", String::from_utf8_lossy(bad));
    }
    expect(
        &over_tcp(ns, "GET", "/nothing", ""),
        404,
        "no endpoint /nothing",
    );
    let a = over_tcp(ns, "DELETE", "/metrics", "");
    assert_eq!(a.status, 405, "{a:?}");
    assert!(a.head.contains("allow: get"), "{a:?}");
    let bad = over_unix(sock, "GET", "/sessions?proto=sctp", "");
    expect(&bad, 400, "is not tcp, udp or icmp");
    let m = api_get(ns, "/metrics").unwrap();
    let malformed = m
        .lines()
        .find(|l| l.starts_with("natgw_api_malformed_total{listener=\"tcp\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(malformed >= 7, "431s and 400s counted: {malformed}\n{m}");
    drop(natgw);
}

/// Every drop counter of /stats summed.
fn drops(json: &str) -> u64 {
    let v: serde_json::Value = serde_json::from_str(json).unwrap();
    v.as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| k.starts_with("drop_") || k.starts_with("xdp_drop_"))
        .map(|(_, v)| v.as_u64().unwrap_or(0))
        .sum()
}

fn metric(m: &str, name: &str) -> u64 {
    m.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

#[test]
fn idle_and_slow_clients_leave_metrics_and_forwarding_alone() {
    let Some(t) = topology(
        "idle_and_slow_clients_leave_metrics_and_forwarding_alone",
        "apd",
    ) else {
        return;
    };
    // A short deadline so that the slow clients are cut off within the test.
    let cfg = config(&t, "request_timeout = 3\nidle_timeout = 5");
    let natgw = NatgwProcess::start(NATGW, &t, &cfg, "apd");
    let ns = t.gw_ns().to_string();

    // A UDP echo server behind natgw, a client on an inside host.
    let srv = SocketAddrV4::new(t.server_addr(), 7007);
    let server = run_in_netns(t.server_ns(), || UdpSocket::bind(srv)).unwrap();
    server
        .set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let echo = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut buf = [0u8; 1500];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = server.recv_from(&mut buf) {
                    let _ = server.send_to(&buf[..n], from);
                }
            }
        })
    };
    let client = run_in_netns(&t.hosts()[0].ns, || {
        UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0))
    })
    .unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let echo_once = |i: u32| -> bool {
        let msg = format!("echo {i}");
        client.send_to(msg.as_bytes(), srv).unwrap();
        let mut buf = [0u8; 64];
        let deadline = Instant::now() + Duration::from_secs(1);
        while Instant::now() < deadline {
            if let Ok(n) = client.recv(&mut buf)
                && &buf[..n] == msg.as_bytes()
            {
                return true;
            }
        }
        false
    };
    assert!(echo_once(0), "the UDP flow does not work before the test");
    let drops_before = drops(&api_get(&ns, "/stats").unwrap());

    // 500 idle connections (new ones keep coming as natgw closes the oldest), and 20
    // clients sending their request a byte a second.
    let idle_open = Arc::new(AtomicU64::new(0));
    let idle = {
        let (stop, ns, idle_open) = (Arc::clone(&stop), ns.clone(), Arc::clone(&idle_open));
        std::thread::spawn(move || {
            let mut conns = std::collections::VecDeque::new();
            while !stop.load(Ordering::Relaxed) {
                // 500 a second: a connection that has just sent its request is not among
                // the oldest idle ones that make room (a flood far faster than
                // max_connections per round trip could close it before its first byte).
                let fresh = run_in_netns(&ns, || {
                    (0..10)
                        .filter_map(|_| TcpStream::connect(API).ok())
                        .collect::<Vec<_>>()
                });
                idle_open.fetch_add(fresh.len() as u64, Ordering::Relaxed);
                conns.extend(fresh);
                while conns.len() > 500 {
                    conns.pop_front();
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        })
    };
    let slow_cut = Arc::new(AtomicU64::new(0));
    let slow: Vec<_> = (0..20)
        .map(|_| {
            let (stop, ns, cut) = (Arc::clone(&stop), ns.clone(), Arc::clone(&slow_cut));
            std::thread::spawn(move || {
                let request = b"GET /metrics HTTP/1.1\r\nHost: natgw\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut s) = run_in_netns(&ns, || TcpStream::connect(API)) else {
                        std::thread::sleep(Duration::from_millis(100));
                        continue;
                    };
                    for b in request {
                        if stop.load(Ordering::Relaxed) {
                            return;
                        }
                        if s.write_all(&[*b]).is_err() {
                            cut.fetch_add(1, Ordering::Relaxed);
                            break;
                        }
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            })
        })
        .collect();

    // Meanwhile: /metrics over TCP, each on a fresh connection, and the UDP flow.
    let start = Instant::now();
    let mut worst = Duration::ZERO;
    let (mut scrapes, mut echoes) = (0u32, 0u32);
    while start.elapsed() < Duration::from_secs(12) {
        let t0 = Instant::now();
        let a = over_tcp(&ns, "GET", "/metrics", "");
        let took = t0.elapsed();
        assert_eq!(a.status, 200, "after {:?}: {a:?}", start.elapsed());
        assert!(took < Duration::from_secs(1), "/metrics took {took:?}");
        worst = worst.max(took);
        scrapes += 1;
        echoes += 1;
        assert!(echo_once(echoes), "echo {echoes} lost");
        std::thread::sleep(Duration::from_millis(200));
    }
    stop.store(true, Ordering::Relaxed);
    idle.join().unwrap();
    for s in slow {
        s.join().unwrap();
    }
    echo.join().unwrap();
    let m = over_tcp(&ns, "GET", "/metrics", "").body;
    let evicted = metric(&m, "natgw_api_connections_evicted_total{listener=\"tcp\"}");
    let timeouts = metric(&m, "natgw_api_request_timeouts_total{listener=\"tcp\"}");
    let drops_after = drops(&api_get(&ns, "/stats").unwrap());
    eprintln!(
        "{scrapes} scrapes, worst {worst:?}; {echoes} echoes; {} idle connections opened, \
         {evicted} evicted; {} slow clients cut, {timeouts} request timeouts",
        idle_open.load(Ordering::Relaxed),
        slow_cut.load(Ordering::Relaxed)
    );
    assert!(idle_open.load(Ordering::Relaxed) >= 500);
    assert!(
        evicted >= 400,
        "idle connections were not closed for new ones: {evicted}"
    );
    assert!(
        timeouts >= 20,
        "slow clients were not cut off at the deadline: {timeouts}"
    );
    assert!(slow_cut.load(Ordering::Relaxed) >= 20);
    assert_eq!(drops_after, drops_before, "natgw dropped frames meanwhile");
    drop(natgw);
}

#[test]
fn natgw_refuses_an_open_listener_without_a_token_and_bad_token_files() {
    if !prerequisites("natgw_refuses_an_open_listener_without_a_token_and_bad_token_files") {
        return;
    }
    // Refused while the configuration is read: nothing is bound or attached.
    let spec = TopologySpec::new("ape");
    let open =
        spec.natgw_config()
            .replacen("[control]\n", "[control]\nlisten = \"0.0.0.0:9180\"\n", 1);
    let (_, err) = start_fails(None, &open, "ape-open");
    assert!(
        err.contains(
            "control.listen: 0.0.0.0:9180 is not a loopback address: set control.token_file"
        ),
        "{err}"
    );
    let check = Command::new(NATGW)
        .args(["check", "--config", "/dev/stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            c.stdin.take().unwrap().write_all(open.as_bytes())?;
            c.wait_with_output()
        })
        .unwrap();
    assert!(!check.status.success());
    assert!(String::from_utf8_lossy(&check.stderr).contains("control.listen"));
    // Token files: read before anything is bound, so no namespace is needed.
    let readable = TempFile::new("ape-readable", TOKEN, 0o644);
    let empty = TempFile::new("ape-empty", "\n", 0o600);
    let missing = std::env::temp_dir().join("natgw-api-ape-no-such-token");
    for (path, reason) in [
        (&readable.0, "is readable by others (mode 0644)"),
        (&empty.0, "is empty"),
        (&missing, "No such file"),
    ] {
        let cfg = open.replacen(
            "[control]\n",
            &format!("[control]\ntoken_file = \"{}\"\n", path.display()),
            1,
        );
        let (_, err) = start_fails(None, &cfg, "ape-token");
        assert!(
            err.contains("control.token_file:") && err.contains(reason),
            "{reason}: {err}"
        );
    }
}

/// Runs the CLI; (exit code, stdout, stderr).
fn cli(args: &[&str]) -> (i32, String, String) {
    natgw_testbed::process::run_to_end(NATGW, args)
}

#[test]
fn cli_against_a_running_natgw() {
    let Some(t) = topology("cli_against_a_running_natgw", "apf") else {
        return;
    };
    let token = TempFile::new("apf-token", TOKEN, 0o600);
    let h1 = t.hosts()[0].addr;
    let (pool0, _) = t.pool(0);
    let mut cfg = config(&t, &format!("token_file = \"{}\"", token.0.display()));
    cfg.push_str(&format!(
        "static = [{{ protocol = \"tcp\", external = \"{pool0}:8080\", internal = \"{h1}:80\" }}]\n"
    ));
    let natgw = NatgwProcess::start(NATGW, &t, &cfg, "apf");
    let sock = natgw.socket().to_str().unwrap().to_string();
    let s = ["--socket", sock.as_str()];

    // A UDP session from the first host.
    let srv = SocketAddrV4::new(t.server_addr(), 7008);
    let server = run_in_netns(t.server_ns(), || UdpSocket::bind(srv)).unwrap();
    let client = run_in_netns(&t.hosts()[0].ns, || {
        UdpSocket::bind(SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 40000))
    })
    .unwrap();
    client.send_to(b"hello", srv).unwrap();
    server
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 16];
    server
        .recv_from(&mut buf)
        .expect("the datagram crossed natgw");

    let (code, out, err) = cli(&[&s[..], &["status"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with(&format!("natgw {}", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    for want in [
        "ready        yes",
        GW_OUTSIDE_IF,
        GW_INSIDE_IF,
        "sessions     1 active",
        "generation   1",
    ] {
        assert!(out.contains(want), "{want:?} not in\n{out}");
    }
    let (code, out, _) = cli(&[&s[..], &["status", "--json"]].concat());
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["status"]["workers"], 1);
    assert_eq!(v["stats"]["sessions_active"], 1);

    let inside = format!("{h1}:40000");
    let (code, out, err) = cli(&[&s[..], &["sessions", "--proto", "udp"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.contains(&inside) && out.ends_with("1 of 1 session(s)\n"),
        "{out}"
    );
    let (_, out, _) = cli(&[&s[..], &["sessions", "--json", "--inside", &inside]].concat());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["total"], 1, "{out}");
    assert_eq!(v["sessions"][0]["remote"], srv.to_string());
    let (_, out, _) = cli(&[&s[..], &["sessions", "--proto", "tcp"]].concat());
    assert_eq!(out, "0 of 0 session(s)\n");
    // `natgw sessions | head`: stdout a pipe whose reader is gone (closed before natgw
    // starts, so the write fails for certain) ends the output quietly, no panic.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let o = Command::new(NATGW)
        .args([&s[..], &["sessions"]].concat())
        .stdin(Stdio::null())
        .stdout(writer)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(err.is_empty(), "{err}");
    let (code, _, err) = cli(&[&s[..], &["sessions", "--inside", "10.0.0"]].concat());
    assert_eq!(code, 1, "natgw refuses a bad filter: {err}");
    assert!(
        err.contains("inside: \"10.0.0\" is not an IPv4 address"),
        "{err}"
    );

    let (code, out, _) = cli(&[&s[..], &["drops"]].concat());
    assert_eq!(code, 0);
    assert!(!out.is_empty());
    let (code, out, _) = cli(&[&s[..], &["drops", "--json", "--all"]].concat());
    assert_eq!(code, 0);
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v.get("drop_ttl_exceeded").is_some(), "{out}");

    let (code, out, _) = cli(&[&s[..], &["mappings", "list"]].concat());
    assert_eq!(code, 0);
    assert!(
        out.contains("forward")
            && out.contains(&format!("{pool0}:8080"))
            && out.contains(&format!("{h1}:80")),
        "{out}"
    );
    let (_, out, _) = cli(&[&s[..], &["mappings", "list", "--json"]].concat());
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        v["realms"][0]["static"][0]["external"],
        format!("{pool0}:8080")
    );

    let (code, out, err) = cli(&[&s[..], &["reload"]].concat());
    assert_eq!(code, 0, "{err}");
    assert!(
        out.starts_with("natgw: reloaded 1 realm(s), configuration generation 2"),
        "{out}"
    );
    // A file natgw refuses: exit 1 with its reason; the running configuration stays.
    std::fs::write(natgw.config_path(), "[outside]\n").unwrap();
    let (code, _, err) = cli(&[&s[..], &["reload"]].concat());
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("required key is missing"), "{err}");
    std::fs::write(natgw.config_path(), &cfg).unwrap();

    // Over HTTP: with the token, and without it (refused: 1).
    let (code, out, err) = run_in_netns(t.gw_ns(), || {
        cli(&[
            "status",
            "--url",
            "http://127.0.0.1:9180",
            "--token-file",
            token.0.to_str().unwrap(),
        ])
    });
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ready        yes"), "{out}");
    let (code, _, err) = run_in_netns(t.gw_ns(), || {
        cli(&["status", "--url", "http://127.0.0.1:9180"])
    });
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("401"), "{err}");
    // Usage: 2.
    assert_eq!(cli(&["sessions", "--proto", "sctp"]).0, 2);
    assert_eq!(cli(&["status", "--url", "https://x"]).0, 2);
    drop(natgw);
    // Nobody answers: 3.
    let (code, _, err) = cli(&[&s[..], &["status"]].concat());
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("cannot reach natgw"), "{err}");
    assert_eq!(
        run_in_netns(t.gw_ns(), || cli(&[
            "drops",
            "--url",
            "http://127.0.0.1:9180"
        ]))
        .0,
        3
    );
}

/// CPU time (user + system, clock ticks) of natgw's thread named `name`.
fn thread_cpu(pid: u32, name: &str) -> Option<u64> {
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let dir = t.ok()?.path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).ok()?;
        // The fields after the command, which is in parentheses.
        let rest = &stat[stat.rfind(')')? + 2..];
        let f: Vec<&str> = rest.split(' ').collect();
        return Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?);
    }
    None
}

#[test]
fn accept_backs_off_when_natgw_runs_out_of_descriptors() {
    let Some(t) = topology("accept_backs_off_when_natgw_runs_out_of_descriptors", "apg") else {
        return;
    };
    let cfg = config(&t, "max_connections = 4096\nidle_timeout = 2");
    let natgw = NatgwProcess::start(NATGW, &t, &cfg, "apg");
    let pid = natgw.pid();
    // A descriptor limit a little above what natgw holds now.
    let open = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    let limit = format!("--nofile={}:{}", open + 16, open + 16);
    let out = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &limit])
        .output()
        .expect("prlimit (util-linux)");
    assert!(out.status.success(), "{out:?}");
    // More connections than natgw has descriptors left: the kernel completes them (the
    // backlog), natgw's accept(2) fails with EMFILE until the first ones time out.
    let before = thread_cpu(pid, "natgw-api").expect("natgw-api thread");
    let conns: Vec<TcpStream> = run_in_netns(t.gw_ns(), || {
        (0..100)
            .filter_map(|_| TcpStream::connect(API).ok())
            .collect()
    });
    assert!(conns.len() > 32, "{} connections", conns.len());
    std::thread::sleep(Duration::from_millis(1500));
    let spent = thread_cpu(pid, "natgw-api").unwrap() - before;
    // Clock ticks (100 a second): a spinning accept loop would take ~150.
    assert!(
        spent < 30,
        "the API thread used {spent} ticks in 1.5 s while accept failed"
    );
    drop(conns);
    // Once the descriptors are back the API answers again, and says what happened.
    let deadline = Instant::now() + Duration::from_secs(10);
    let m = loop {
        match api_get(t.gw_ns(), "/metrics") {
            Ok(m) => break m,
            Err(e) => assert!(Instant::now() < deadline, "API silent after EMFILE: {e}"),
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let errors = metric(&m, "natgw_api_accept_errors_total{listener=\"tcp\"}");
    eprintln!("{spent} ticks while out of descriptors, {errors} accept errors");
    assert!(errors > 0, "no accept error counted:\n{m}");
    assert!(errors < 200, "accept failed {errors} times: no back-off");
    drop(natgw);
}
