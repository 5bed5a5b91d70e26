//! The NAT event log through the real binary (issue 12, docs/eventlog.md): natgw logs to a
//! JSON lines file and to a syslog socket the test binds (a unix datagram socket standing
//! in for /dev/log). UDP and ICMP from an inside host create mappings and sessions: their
//! APMADD/SADD records name the inside and the external endpoint the server saw, the
//! protocol and the realm, in both outputs. The ICMP session expires after its timeout and
//! its deletion records appear. A moved-away file is reopened on reload (logrotate). Then the test stops reading its syslog socket (a stuck
//! syslog daemon): while an inside host opens thousands of flows, forwarding goes on and
//! `natgw_eventlog_lost_total` rises.
//!
//! Needs root and the `ip` command; under `CI=true` a missing prerequisite is a failure.
//! Run under the shared lock: `CI=true flock /tmp/natgw-netns.lock cargo test --test eventlog`.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, UdpSocket};
use std::os::unix::net::UnixDatagram;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use natgw_testbed::lab::{api_get, api_request};
use natgw_testbed::netns::prerequisites;
use natgw_testbed::process::NatgwProcess;
use natgw_testbed::sockets::internet_checksum;
use natgw_testbed::{Topology, TopologySpec, run_in_netns};

const NATGW: &str = env!("CARGO_BIN_EXE_natgw");

/// The sum over all series of `name` in a Prometheus exposition.
fn metric_sum(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64
}

/// The value of `"key":` in a JSON line (string or number), as text.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let pat = format!("\"{key}\":");
    let rest = &line[line.find(&pat)? + pat.len()..];
    Some(match rest.strip_prefix('"') {
        Some(s) => &s[..s.find('"')?],
        None => &rest[..rest.find([',', '}'])?],
    })
}

/// The value of `NAME="..."` in a syslog message.
fn param<'a>(msg: &'a str, name: &str) -> Option<&'a str> {
    let pat = format!(" {name}=\"");
    let rest = &msg[msg.find(&pat)? + pat.len()..];
    Some(&rest[..rest.find('"')?])
}

/// A mapping as the records must show it.
struct Expect<'a> {
    event: &'a str,
    proto: u8,
    inside: SocketAddrV4,
    external: Option<SocketAddrV4>,
}

impl Expect<'_> {
    fn json_matches(&self, l: &str) -> bool {
        field(l, "event") == Some(self.event)
            && field(l, "realm") == Some("lab")
            && field(l, "proto") == Some(&self.proto.to_string())
            && field(l, "isaddr") == Some(&self.inside.ip().to_string())
            && field(l, "isport") == Some(&self.inside.port().to_string())
            && self.external.is_none_or(|x| {
                field(l, "xsaddr") == Some(&x.ip().to_string())
                    && field(l, "xsport") == Some(&x.port().to_string())
            })
    }

    fn syslog_matches(&self, m: &str) -> bool {
        m.starts_with("<134>1 ")
            && m.split(' ').nth(3) == Some("natgw")
            && m.split(' ').nth(5) == Some(self.event)
            && param(m, "REALM") == Some("lab")
            && param(m, "PROTO") == Some(&self.proto.to_string())
            && param(m, "ISADDR") == Some(&self.inside.ip().to_string())
            && param(m, "ISPORT") == Some(&self.inside.port().to_string())
            && self.external.is_none_or(|x| {
                param(m, "XSADDR") == Some(&x.ip().to_string())
                    && param(m, "XSPORT") == Some(&x.port().to_string())
            })
    }
}

/// Reads the syslog socket and the JSON file until both have a record matching `e`
/// (within `timeout`); returns the file's line and the syslog message.
fn find(
    sock: &UnixDatagram,
    seen: &mut Vec<String>,
    file: &std::path::Path,
    e: &Expect<'_>,
    timeout: Duration,
) -> (String, String) {
    let deadline = Instant::now() + timeout;
    let mut buf = vec![0u8; 4096];
    loop {
        while let Ok(n) = sock.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let line = text.lines().find(|l| e.json_matches(l));
        let msg = seen.iter().find(|m| e.syslog_matches(m));
        if let (Some(l), Some(m)) = (line, msg) {
            return (l.to_string(), m.clone());
        }
        assert!(
            Instant::now() < deadline,
            "no {} record for {} -> {:?} (proto {}) within {timeout:?}:\nfile:\n{text}\nsyslog:\n{}",
            e.event,
            e.inside,
            e.external,
            e.proto,
            seen.join("\n")
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// An ICMP echo request with identifier `id` (for a raw ICMP socket).
fn echo_request(id: u16, seq: u16) -> [u8; 16] {
    let mut p = [0u8; 16];
    p[0] = 8;
    p[4..6].copy_from_slice(&id.to_be_bytes());
    p[6..8].copy_from_slice(&seq.to_be_bytes());
    p[8..].copy_from_slice(b"eventlog");
    let c = internet_checksum(&p);
    p[2..4].copy_from_slice(&c.to_be_bytes());
    p
}

fn send_icmp(ns: &str, dst: Ipv4Addr, id: u16) {
    // SAFETY: plain socket(2); checked below.
    let fd = run_in_netns(ns, || unsafe {
        libc::socket(libc::AF_INET, libc::SOCK_RAW, libc::IPPROTO_ICMP)
    });
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: all-zero sockaddr_in is valid; filled below.
    let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    to.sin_family = libc::AF_INET as libc::sa_family_t;
    to.sin_addr.s_addr = u32::from(dst).to_be();
    for seq in 0..3 {
        let p = echo_request(id, seq);
        // SAFETY: p and to are valid for the given lengths; fd is ours.
        let n = unsafe {
            libc::sendto(
                fd,
                p.as_ptr().cast(),
                p.len(),
                0,
                (&to as *const libc::sockaddr_in).cast(),
                size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_eq!(n, p.len() as isize, "{}", std::io::Error::last_os_error());
    }
    // SAFETY: our own fd.
    unsafe { libc::close(fd) };
}

/// Sends `msg` from `sock` to the echo server and waits for the echo: the external
/// endpoint the server saw comes back as the payload.
fn echo(sock: &UdpSocket, to: SocketAddrV4) -> Option<SocketAddrV4> {
    let mut buf = [0u8; 64];
    for _ in 0..5 {
        let _ = sock.send_to(b"hello", to);
        if let Ok((n, _)) = sock.recv_from(&mut buf) {
            return std::str::from_utf8(&buf[..n]).ok()?.parse().ok();
        }
    }
    None
}

#[test]
fn mappings_are_logged_to_file_and_syslog_and_a_stalled_logger_only_loses_records() {
    let name = "mappings_are_logged_to_file_and_syslog_and_a_stalled_logger_only_loses_records";
    if !prerequisites(name) {
        return;
    }
    let spec = TopologySpec::new("evl");
    Topology::cleanup_stale(&spec.tag).unwrap();
    let topo = Topology::build(&spec).unwrap_or_else(|e| panic!("building {spec:?}: {e}"));
    let host = topo.hosts()[0].clone();
    let server = topo.server_addr();

    let dir = std::env::temp_dir().join(format!("natgw-eventlog-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("events.jsonl");
    let sock_path = dir.join("log.sock");
    let syslog = UnixDatagram::bind(&sock_path).unwrap();
    syslog.set_nonblocking(true).unwrap();
    let config = format!(
        "{}[realm.log]\nevents = [\"mappings\", \"sessions\"]\n\
         [realm.timeouts]\nicmp = 60\n\
         [eventlog]\nfile = \"{}\"\nsyslog = \"{}\"\nring = 64\n",
        topo.natgw_config(),
        file.display(),
        sock_path.display()
    );
    let natgw = NatgwProcess::start(NATGW, &topo, &config, "eventlog");

    // The server: a UDP echo of the source address and port it saw.
    let stop = Arc::new(AtomicBool::new(false));
    let srv = run_in_netns(topo.server_ns(), || UdpSocket::bind((server, 0))).unwrap();
    let srv_addr = match srv.local_addr().unwrap() {
        SocketAddr::V4(v) => v,
        _ => unreachable!(),
    };
    srv.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let echo_thread = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((_, from)) = srv.recv_from(&mut buf) {
                    let _ = srv.send_to(from.to_string().as_bytes(), from);
                }
            }
        })
    };

    // 1. A UDP mapping: APMADD and SADD with the endpoint the server saw.
    let udp = run_in_netns(&host.ns, || UdpSocket::bind((host.addr, 0))).unwrap();
    udp.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let inside = match udp.local_addr().unwrap() {
        SocketAddr::V4(v) => v,
        _ => unreachable!(),
    };
    let external = echo(&udp, srv_addr).expect("no UDP echo through natgw");
    assert_ne!(external.ip(), inside.ip(), "not translated");
    let mut seen = Vec::new();
    for event in ["APMADD", "SADD"] {
        let e = Expect {
            event,
            proto: 17,
            inside,
            external: Some(external),
        };
        let (line, msg) = find(&syslog, &mut seen, &file, &e, Duration::from_secs(5));
        // RFC 3339 with milliseconds, UTC.
        let t = field(&line, "time").unwrap();
        assert!(
            t.len() == 24 && t.ends_with('Z') && &t[19..20] == ".",
            "{line}"
        );
        assert_eq!(msg.split(' ').nth(1), Some(t), "{msg}");
    }

    // 2. An ICMP echo mapping that expires after its 60 s timeout: APMDEL and SDEL.
    let id = 0x4e57;
    send_icmp(&host.ns, server, id);
    let icmp = |event| Expect {
        event,
        proto: 1,
        inside: SocketAddrV4::new(host.addr, id),
        external: None,
    };
    find(
        &syslog,
        &mut seen,
        &file,
        &icmp("APMADD"),
        Duration::from_secs(5),
    );
    let t0 = Instant::now();
    find(
        &syslog,
        &mut seen,
        &file,
        &icmp("SDEL"),
        Duration::from_secs(90),
    );
    find(
        &syslog,
        &mut seen,
        &file,
        &icmp("APMDEL"),
        Duration::from_secs(5),
    );
    assert!(
        t0.elapsed() >= Duration::from_secs(50),
        "the ICMP mapping was deleted before its timeout ({:?})",
        t0.elapsed()
    );
    // The UDP flow's removal by the operator is logged too.
    let (status, _, body) = api_request(topo.gw_ns(), "POST", "/sessions/clear").unwrap();
    assert_eq!(status, 200, "{body}");
    let e = Expect {
        event: "APMDEL",
        proto: 17,
        inside,
        external: Some(external),
    };
    find(&syslog, &mut seen, &file, &e, Duration::from_secs(5));

    // logrotate: the file is moved away and natgw told to reload (SIGHUP takes the same
    // path); it reopens the file even though this reload is refused (NatgwProcess has
    // removed the configuration file), and the next record goes to a new file.
    let rotated = dir.join("events.jsonl.1");
    std::fs::rename(&file, &rotated).unwrap();
    let _ = api_request(topo.gw_ns(), "POST", "/reload").unwrap();
    let udp2 = run_in_netns(&host.ns, || UdpSocket::bind((host.addr, 0))).unwrap();
    udp2.set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let inside2 = match udp2.local_addr().unwrap() {
        SocketAddr::V4(v) => v,
        _ => unreachable!(),
    };
    let external2 = echo(&udp2, srv_addr).expect("no UDP echo after the reload");
    let e = Expect {
        event: "APMADD",
        proto: 17,
        inside: inside2,
        external: Some(external2),
    };
    find(&syslog, &mut seen, &file, &e, Duration::from_secs(5));
    let old = std::fs::read_to_string(&rotated).unwrap();
    assert!(
        !old.lines().any(|l| e.json_matches(l)),
        "written to the rotated file:\n{old}"
    );

    // 3. The syslog daemon stalls: the test stops reading. Thousands of new flows fill its
    // socket, then the logger's rings; forwarding goes on, and the lost records are counted.
    let metrics = || api_get(topo.gw_ns(), "/metrics").unwrap();
    let lost_before = metric_sum(&metrics(), "natgw_eventlog_lost_total");
    assert_eq!(lost_before, 0, "records lost before the stall");
    let mut echoed = 0;
    for i in 0..3000 {
        let s = run_in_netns(&host.ns, || UdpSocket::bind((host.addr, 0))).unwrap();
        let _ = s.send_to(b"flow", srv_addr);
        if i % 500 == 0 && echo(&udp, srv_addr).is_some() {
            echoed += 1;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let lost = loop {
        let m = metrics();
        let lost = metric_sum(&m, "natgw_eventlog_lost_total");
        if lost > 0 || Instant::now() > deadline {
            break lost;
        }
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(lost > 0, "no records counted as lost:\n{}", metrics());
    assert_eq!(echoed, 6, "forwarding stalled with the logger");
    assert!(
        echo(&udp, srv_addr).is_some(),
        "no echo after the stall: forwarding stopped"
    );
    let m = metrics();
    assert!(
        metric_sum(&m, "natgw_eventlog_records_total") > 0,
        "nothing counted as written:\n{m}"
    );
    assert!(
        api_get(topo.gw_ns(), "/stats").is_ok(),
        "natgw stopped answering:\n{}",
        natgw.stderr()
    );

    stop.store(true, Ordering::Relaxed);
    echo_thread.join().unwrap();
    drop(natgw);
    let _ = std::fs::remove_dir_all(&dir);
}
