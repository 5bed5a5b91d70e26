//! Issue 12, metrics: a real Prometheus server (Debian's `prometheus`) scrapes the real
//! natgw binary every second while real kernel traffic (UDP and TCP from an inside host to
//! the server) crosses it, and its HTTP API must show natgw's series with plausible values;
//! `promtool check metrics` must accept natgw's live exposition without a finding.
//!
//! Prometheus runs on loopback inside the gateway's namespace (where natgw's API listens),
//! with a generated configuration and a temporary storage directory, both removed with the
//! process (also when the test fails). Topology tag `mx`. Needs root, `ip`, `prometheus`
//! and `promtool`; under `CI=true` a missing prerequisite is a failure.

use std::io::{Read, Write};
use std::net::{SocketAddrV4, TcpListener, TcpStream, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use natgw_testbed::lab::api_get;
use natgw_testbed::netns::prerequisites_with;
use natgw_testbed::process::NatgwProcess;
use natgw_testbed::{Topology, TopologySpec, run_in_netns};

const NATGW: &str = env!("CARGO_BIN_EXE_natgw");
/// Prometheus' own listen address, inside the gateway namespace.
const PROM: &str = "127.0.0.1:9190";
/// natgw's API in the testbed's configuration.
const NATGW_API: &str = "127.0.0.1:9180";

/// A Prometheus server in a namespace; killed and its files removed on drop.
struct Prometheus {
    child: Child,
    dir: PathBuf,
    ns: String,
}

impl Prometheus {
    /// Starts Prometheus in `ns` scraping natgw's API every second and waits until it is
    /// ready (up to 30 s).
    fn start(ns: &str) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("natgw-prom-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let cfg = dir.join("prometheus.yml");
        std::fs::write(
            &cfg,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 900ms\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: natgw\n    static_configs:\n      - targets: [\"{NATGW_API}\"]\n"
            ),
        )
        .unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "prometheus"])
            .arg(format!("--config.file={}", cfg.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={PROM}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("stderr")).unwrap())
            .spawn()
            .expect("starting prometheus");
        let mut p = Prometheus {
            child,
            dir,
            ns: ns.to_string(),
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while p.get("/-/ready").is_err() {
            if let Ok(Some(s)) = p.child.try_wait() {
                panic!("prometheus exited ({s}):\n{}", p.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "prometheus not ready:\n{}",
                p.stderr()
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        p
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr")).unwrap_or_default()
    }

    /// GET `path` from Prometheus (HTTP/1.0: a plain body, never chunked).
    fn get(&self, path: &str) -> std::io::Result<String> {
        let path = path.to_string();
        run_in_netns(&self.ns, move || {
            let mut s = TcpStream::connect_timeout(
                &PROM.parse().expect("static address"),
                Duration::from_secs(2),
            )?;
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            write!(s, "GET {path} HTTP/1.0\r\nHost: prometheus\r\n\r\n")?;
            let mut out = String::new();
            s.read_to_string(&mut out)?;
            let (head, body) = out
                .split_once("\r\n\r\n")
                .ok_or_else(|| std::io::Error::other(format!("malformed answer: {out:?}")))?;
            if !head.contains(" 200 ") {
                return Err(std::io::Error::other(format!("GET {path}: {head}\n{body}")));
            }
            Ok(body.to_string())
        })
    }

    /// The values of an instant query's result vector (`/api/v1/query`).
    fn query(&self, q: &str) -> Vec<f64> {
        let body = self
            .get(&format!("/api/v1/query?query={}", urlencode(q)))
            .unwrap_or_else(|e| panic!("query {q}: {e}"));
        assert!(body.contains("\"status\":\"success\""), "query {q}: {body}");
        values(&body)
    }

    /// Waits up to 20 s for `q` to return one value for which `ok` holds; returns it.
    fn wait_for(&self, q: &str, ok: impl Fn(f64) -> bool) -> f64 {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let v = self.query(q);
            if let [x] = v[..]
                && ok(x)
            {
                return x;
            }
            assert!(
                Instant::now() < deadline,
                "{q}: {v:?}; targets: {}",
                self.get("/api/v1/targets").unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own unreaped child (`ip netns exec` execs prometheus).
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(5);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Percent-encodes a query for a URL.
fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Every `"value":[<time>,"<number>"]` of a query answer.
fn values(body: &str) -> Vec<f64> {
    let mut out = Vec::new();
    let mut rest = body;
    while let Some(i) = rest.find("\"value\":[") {
        rest = &rest[i + 9..];
        let Some(q) = rest.find(",\"") else { break };
        let after = &rest[q + 2..];
        let Some(end) = after.find('"') else { break };
        out.push(after[..end].parse().unwrap_or(f64::NAN));
        rest = &after[end..];
    }
    out
}

/// Traffic through natgw until stopped: UDP datagrams on several flows and a TCP stream
/// from an inside host to the server.
struct Traffic {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
}

impl Traffic {
    fn start(t: &Topology) -> Traffic {
        let stop = Arc::new(AtomicBool::new(false));
        let host = t.hosts()[0].clone();
        let server = t.server_addr();
        let mut threads = Vec::new();
        // UDP: 8 flows to a server socket that echoes nothing (each flow is a session).
        let srv = SocketAddrV4::new(server, 7100);
        let sink = run_in_netns(t.server_ns(), || UdpSocket::bind(srv)).unwrap();
        let socks: Vec<UdpSocket> = (0..8)
            .map(|i| {
                run_in_netns(&host.ns, || {
                    UdpSocket::bind(SocketAddrV4::new(host.addr, 7200 + i))
                })
                .unwrap()
            })
            .collect();
        {
            let stop = Arc::clone(&stop);
            threads.push(std::thread::spawn(move || {
                let data = [0x5au8; 1000];
                let mut buf = [0u8; 2048];
                sink.set_nonblocking(true).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    for s in &socks {
                        let _ = s.send_to(&data, srv);
                    }
                    while sink.recv_from(&mut buf).is_ok() {}
                    std::thread::sleep(Duration::from_millis(10));
                }
            }));
        }
        // TCP: a stream of 4 KiB writes, read by the server.
        let taddr = SocketAddrV4::new(server, 7300);
        let listener = run_in_netns(t.server_ns(), || TcpListener::bind(taddr)).unwrap();
        {
            let stop = Arc::clone(&stop);
            threads.push(std::thread::spawn(move || {
                let Ok((mut c, _)) = listener.accept() else {
                    return;
                };
                c.set_read_timeout(Some(Duration::from_millis(200)))
                    .unwrap();
                let mut buf = [0u8; 65536];
                while !stop.load(Ordering::Relaxed) {
                    match c.read(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
                        Err(_) => break,
                    }
                }
            }));
        }
        let mut client = run_in_netns(&host.ns, || {
            TcpStream::connect_timeout(&taddr.into(), Duration::from_secs(5))
        })
        .expect("TCP connection through natgw");
        {
            let stop = Arc::clone(&stop);
            threads.push(std::thread::spawn(move || {
                let data = [0xa5u8; 4096];
                client
                    .set_write_timeout(Some(Duration::from_secs(2)))
                    .unwrap();
                while !stop.load(Ordering::Relaxed) {
                    if client.write_all(&data).is_err() {
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(5));
                }
            }));
        }
        Traffic { stop, threads }
    }
}

impl Drop for Traffic {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// `promtool check metrics` on `text`: its findings (empty: none).
fn promtool_findings(text: &str) -> String {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    let mut f = String::from_utf8_lossy(&out.stdout).into_owned();
    f.push_str(&String::from_utf8_lossy(&out.stderr));
    if !out.status.success() && f.is_empty() {
        f = format!("promtool failed: {}", out.status);
    }
    f
}

#[test]
fn prometheus_scrapes_natgw_during_traffic() {
    let name = "prometheus_scrapes_natgw_during_traffic";
    if !prerequisites_with(
        name,
        &[
            ("prometheus", "--version", "prometheus (Debian: prometheus)"),
            ("promtool", "--version", "promtool (Debian: prometheus)"),
        ],
    ) {
        return;
    }
    let tag = "mx";
    Topology::cleanup_stale(tag).unwrap();
    let t = Topology::build(&TopologySpec::new(tag)).unwrap_or_else(|e| panic!("{tag}: {e}"));
    let natgw = NatgwProcess::start(NATGW, &t, &t.natgw_config(), "prom-mx");
    let prom = Prometheus::start(t.gw_ns());
    let traffic = Traffic::start(&t);

    // Prometheus reaches natgw, and what it stores is what natgw counts.
    prom.wait_for("up{job=\"natgw\"}", |v| v == 1.0);
    let active = prom.wait_for("sum(natgw_sessions_active)", |v| v >= 9.0);
    let udp = prom.wait_for("sum(natgw_sessions_active{protocol=\"udp\"})", |v| v >= 8.0);
    let created = prom.wait_for("sum(natgw_sessions_created_total)", |v| v >= 9.0);
    let used = prom.wait_for("sum(natgw_pool_ports_used)", |v| v >= 9.0);
    let usable = prom.wait_for("sum(natgw_pool_ports_usable)", |v| v > 1000.0);
    let ratio = prom.wait_for("max(natgw_pool_use_ratio)", |v| v > 0.0 && v < 1.0);
    let rx1 = prom.wait_for("sum(natgw_rx_bytes_total{direction=\"in2out\"})", |v| {
        v > 0.0
    });
    prom.wait_for("sum(natgw_tx_packets_total{direction=\"in2out\"})", |v| {
        v > 0.0
    });
    // Rising: a later sample (three scrapes on) holds more bytes.
    std::thread::sleep(Duration::from_secs(3));
    let rx2 = prom.wait_for("sum(natgw_rx_bytes_total{direction=\"in2out\"})", |v| {
        v > rx1
    });
    prom.wait_for("sum(rate(natgw_rx_packets_total[5s]))", |v| v > 10.0);
    prom.wait_for("sum(natgw_batch_size_count)", |v| v > 0.0);
    let p50 = prom.wait_for(
        "histogram_quantile(0.5, sum by (le) (rate(natgw_batch_seconds_bucket[5s])))",
        |v| v > 0.0 && v < 0.01,
    );
    let busy = prom.wait_for("max(natgw_worker_busy_ratio)", |v| v > 0.0 && v <= 1.0);
    prom.wait_for("min(natgw_worker_up)", |v| v == 1.0);
    prom.wait_for("natgw_ready", |v| v == 1.0);
    prom.wait_for("count(natgw_build_info)", |v| v == 1.0);
    prom.wait_for("natgw_config_generation", |v| v == 1.0);
    // One series per socket of each AF_XDP statistic (outside and inside per queue).
    prom.wait_for("count(natgw_xsk_rx_dropped_total)", |v| v >= 2.0);
    prom.wait_for("count(natgw_xsk_tx_ring_empty_descs_total)", |v| v >= 2.0);
    prom.wait_for("count(natgw_drops_total)", |v| v > 10.0);
    prom.wait_for("sum(natgw_reloads_total)", |v| v == 0.0);

    // The live exposition, mid-traffic, has no lint findings.
    let text = api_get(t.gw_ns(), "/metrics").expect("GET /metrics");
    let findings = promtool_findings(&text);
    assert!(findings.is_empty(), "promtool check metrics:\n{findings}");
    drop(traffic);
    eprintln!(
        "sessions active {active} (udp {udp}), created {created}, pool ports used {used} of \
         {usable} (max ratio {ratio}), in2out rx bytes {rx1} -> {rx2}, batch p50 {p50} s, \
         busy {busy}"
    );
    drop(prom);
    drop(natgw);
}
