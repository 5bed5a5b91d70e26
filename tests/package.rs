//! The Debian package (issue 12, "Deploy and packaging"): installs the .deb that `NATGW_DEB`
//! names on this machine with `dpkg -i`, checks its files, their owner and mode, the natgw
//! user and group, the enabled-but-not-started unit, `systemd-analyze verify` and `natgw
//! check` of what it installed, then starts natgw the way the installed unit says (its
//! User=, Group=, capabilities, LimitMEMLOCK=, UMask=, RuntimeDirectory=, ExecCondition=,
//! ExecStartPre=, ExecStart=, ExecReload=, KillSignal=) on a namespace topology, since this
//! machine has no systemd as PID 1, and finally purges the package again.
//!
//! `deploy/debian/check-package` (called by .ci/run) builds the package with cargo-deb and runs
//! this test with `NATGW_DEB` set. Without `NATGW_DEB` the test does nothing (plain
//! `cargo test`); with it set to a file that does not exist it fails. Needs root, `ip`,
//! `dpkg`, `setpriv`, `prlimit` and `systemd-analyze`; under `CI=true` a missing one is a
//! failure. Run it under the namespace lock: it builds topology `dpk`.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use natgw_testbed::lab::api_get;
use natgw_testbed::netns::prerequisites_with;
use natgw_testbed::process::thread_caps;
use natgw_testbed::{Topology, TopologySpec};

const UNIT: &str = "/lib/systemd/system/natgw.service";
const CONFIG: &str = "/etc/natgw/natgw.toml";
const RUNTIME_DIR: &str = "/run/natgw";

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs `cmd`, panicking with its output unless it succeeds; returns stdout and stderr.
fn ok(cmd: &mut Command) -> String {
    let o = run(cmd);
    assert!(
        o.status.success(),
        "{cmd:?} failed ({}):\n{}",
        o.status,
        text(&o)
    );
    text(&o)
}

fn installed() -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", "natgw"])
        .output()
        .is_ok_and(|o| o.status.success() && String::from_utf8_lossy(&o.stdout) != "not-installed")
}

/// `getent <db> <key>`, split at ':'.
fn getent(db: &str, key: &str) -> Option<Vec<String>> {
    let o = Command::new("getent").args([db, key]).output().ok()?;
    if !o.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&o.stdout)
            .trim()
            .split(':')
            .map(str::to_string)
            .collect(),
    )
}

/// Removes the natgw user and group (postrm keeps them, as Debian's packages do).
fn remove_user() {
    if getent("passwd", "natgw").is_some() {
        let _ = Command::new("userdel").arg("natgw").status();
    }
    if getent("group", "natgw").is_some() {
        let _ = Command::new("groupdel").arg("natgw").status();
    }
}

/// Purges the package, stops natgw and removes what the test (or systemd, for the runtime
/// directory) made, also when the test fails halfway.
struct Installed {
    natgw: Option<Child>,
    remove_user: bool,
}

impl Installed {
    fn stop(&mut self) {
        if let Some(mut c) = self.natgw.take() {
            // SAFETY: kill(2) on our own unreaped child.
            unsafe { libc::kill(c.id() as libc::pid_t, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(c.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(RUNTIME_DIR);
        if installed() {
            let _ = Command::new("dpkg").args(["--purge", "natgw"]).status();
        }
        if self.remove_user {
            remove_user();
        }
    }
}

/// The `[Service]` settings of a unit file: each key's values in file order (a key may
/// repeat, like SystemCallFilter=).
fn service_section(unit: &str) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    let mut in_service = false;
    for line in unit.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_service = line == "[Service]";
            continue;
        }
        if !in_service || line.is_empty() || line.starts_with('#') {
            continue;
        }
        if let Some((k, v)) = line.split_once('=') {
            m.entry(k.to_string()).or_default().push(v.to_string());
        }
    }
    m
}

/// Splits a unit's command line into words the way systemd does for the quoting this unit
/// uses (single and double quotes, no escapes); a leading `-`/`@`/`+` prefix is refused, the
/// test does not emulate them.
fn command_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut quote: Option<char> = None;
    let mut in_word = false;
    for c in line.chars() {
        match quote {
            Some(q) if c == q => quote = None,
            Some(_) => cur.push(c),
            None if c == '\'' || c == '"' => {
                quote = Some(c);
                in_word = true;
            }
            None if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            None => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    assert!(quote.is_none(), "unterminated quote in {line:?}");
    if in_word {
        words.push(cur);
    }
    assert!(
        !words.is_empty() && words[0].starts_with('/'),
        "the test emulates absolute commands without prefixes only: {line:?}"
    );
    words
}

/// How the unit starts a process, as a command line for root to run: prlimit for
/// LimitMEMLOCK=, setpriv for User=/Group= (supplementary groups of the user), the ambient,
/// inheritable and bounding capability sets and NoNewPrivileges=, a shell for UMask=.
struct Launcher {
    prefix: Vec<String>,
    /// LimitMEMLOCK=infinity could not be set here (root without CAP_SYS_RESOURCE, as in
    /// this workplace's sandbox, cannot raise a hard limit): CAP_IPC_LOCK, the other way
    /// natgw accepts to lock its memory, stands in for it.
    ipc_lock_for_memlock: bool,
}

impl Launcher {
    fn from_unit(s: &HashMap<String, Vec<String>>) -> Launcher {
        let one = |k: &str| -> String {
            let v = s.get(k).unwrap_or_else(|| panic!("the unit has no {k}="));
            assert_eq!(v.len(), 1, "{k}= set more than once");
            v[0].clone()
        };
        let memlock = match s.get("LimitMEMLOCK").map(|v| v[0].as_str()) {
            Some("infinity") => Some("unlimited".to_string()),
            Some(v) => Some(v.to_string()),
            None => None,
        };
        let memlock_arg = memlock.map(|v| format!("--memlock={v}:{v}"));
        let ipc_lock_for_memlock = memlock_arg.as_ref().is_some_and(|a| {
            !Command::new("prlimit")
                .args([a.as_str(), "true"])
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        });
        let caps = |k: &str| -> String {
            let mut set = String::from("-all");
            for c in one(k).split_whitespace() {
                let c = c
                    .strip_prefix("CAP_")
                    .unwrap_or_else(|| panic!("{k}: {c} is not a capability"));
                set.push_str(&format!(",+{}", c.to_lowercase()));
            }
            if ipc_lock_for_memlock && !set.contains("+ipc_lock") {
                set.push_str(",+ipc_lock");
            }
            set
        };
        let ambient = caps("AmbientCapabilities");
        let bounding = caps("CapabilityBoundingSet");
        let mut prefix: Vec<String> = Vec::new();
        match memlock_arg {
            Some(_) if ipc_lock_for_memlock => eprintln!(
                "NOTE: LimitMEMLOCK= cannot be set on this machine (no CAP_SYS_RESOURCE): \
                 CAP_IPC_LOCK stands in for it"
            ),
            Some(a) => prefix.extend(["prlimit".into(), a]),
            None => {}
        }
        prefix.extend([
            "setpriv".into(),
            format!("--reuid={}", one("User")),
            format!("--regid={}", one("Group")),
            "--init-groups".into(),
            format!("--inh-caps={ambient}"),
            format!("--ambient-caps={ambient}"),
            format!("--bounding-set={bounding}"),
        ]);
        if s.get("NoNewPrivileges").is_some_and(|v| v[0] == "yes") {
            prefix.push("--no-new-privs".into());
        }
        let umask = s.get("UMask").map_or("0022".to_string(), |v| v[0].clone());
        prefix.extend([
            "/bin/sh".into(),
            "-c".into(),
            format!("umask {umask} && exec \"$0\" \"$@\""),
        ]);
        Launcher {
            prefix,
            ipc_lock_for_memlock,
        }
    }

    /// The unit's command `line` under the launcher, in namespace `ns` if given.
    fn command(&self, ns: Option<&str>, line: &str) -> Command {
        let mut cmd = match ns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).args(&self.prefix);
                c
            }
            None => {
                let mut c = Command::new(&self.prefix[0]);
                c.args(&self.prefix[1..]);
                c
            }
        };
        cmd.args(command_words(line)).stdin(Stdio::null());
        cmd
    }
}

fn mode_owner(p: &str) -> (u32, u32, u32) {
    let m = std::fs::metadata(p).unwrap_or_else(|e| panic!("{p}: {e}"));
    (m.permissions().mode() & 0o7777, m.uid(), m.gid())
}

/// Processes running `exe`.
fn processes_of(exe: &str) -> Vec<u32> {
    let mut v = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if std::fs::read_link(e.path().join("exe")).is_ok_and(|p| p == Path::new(exe)) {
            v.push(pid);
        }
    }
    v
}

#[test]
fn debian_package_installs_and_its_unit_starts_natgw() {
    let Some(deb) = std::env::var_os("NATGW_DEB").map(PathBuf::from) else {
        eprintln!(
            "SKIPPED debian_package: NATGW_DEB is not set (deploy/debian/check-package sets it)"
        );
        return;
    };
    assert!(
        deb.is_file(),
        "NATGW_DEB={} names no file (build it with deploy/debian/check-package)",
        deb.display()
    );
    if !prerequisites_with(
        "debian_package",
        &[
            ("dpkg", "--version", "dpkg"),
            ("setpriv", "--version", "setpriv (util-linux)"),
            ("prlimit", "--version", "prlimit (util-linux)"),
            ("systemd-analyze", "--version", "systemd-analyze (systemd)"),
        ],
    ) {
        return;
    }

    // A package or user left by an earlier run that was killed before its clean-up: on the
    // CI machine, remove them; elsewhere, refuse to touch a natgw someone installed.
    if installed() {
        assert!(
            ci(),
            "natgw is installed on this machine; this test installs and purges it (dpkg --purge natgw first)"
        );
        ok(Command::new("dpkg").args(["--purge", "natgw"]));
    }
    let user_before = getent("passwd", "natgw").is_some() || getent("group", "natgw").is_some();
    if user_before && ci() {
        remove_user();
    }
    let creates_user = getent("passwd", "natgw").is_none();
    let mut guard = Installed {
        natgw: None,
        remove_user: creates_user,
    };

    // --- dpkg -i --------------------------------------------------------------------------
    let out = ok(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(
        out.contains("installed and enabled, not started"),
        "postinst did not say what to do next:\n{out}"
    );

    // --- files, owner and mode --------------------------------------------------------------
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let files: &[(&str, u32, Option<&str>)] = &[
        ("/usr/bin/natgw", 0o755, None),
        (UNIT, 0o644, Some("deploy/natgw.service")),
        (CONFIG, 0o644, Some("deploy/debian/natgw.toml")),
        (
            "/usr/share/natgw/natgw.toml.example",
            0o644,
            Some("deploy/debian/natgw.toml"),
        ),
        (
            "/usr/lib/sysusers.d/natgw.conf",
            0o644,
            Some("deploy/debian/natgw.sysusers"),
        ),
        (
            "/usr/share/natgw/nftables-natgw.nft",
            0o644,
            Some("deploy/nftables-natgw.nft"),
        ),
        (
            "/usr/share/natgw/prometheus/prometheus.yml",
            0o644,
            Some("deploy/prometheus/prometheus.yml"),
        ),
        (
            "/usr/share/natgw/prometheus/natgw-alerts.yml",
            0o644,
            Some("deploy/prometheus/natgw-alerts.yml"),
        ),
        (
            "/usr/share/natgw/prometheus/README.md",
            0o644,
            Some("deploy/prometheus/README.md"),
        ),
        (
            "/usr/share/natgw/grafana/natgw.json",
            0o644,
            Some("deploy/grafana/natgw.json"),
        ),
        ("/usr/share/doc/natgw/README.md", 0o644, Some("README.md")),
        ("/usr/share/doc/natgw/tuning.md", 0o644, Some("tuning.md")),
        (
            "/usr/share/doc/natgw/config.md",
            0o644,
            Some("docs/config.md"),
        ),
        (
            "/usr/share/doc/natgw/systemd-security.md",
            0o644,
            Some("deploy/systemd-security.md"),
        ),
        (
            "/usr/share/doc/natgw/examples/minimal.toml",
            0o644,
            Some("deploy/examples/minimal.toml"),
        ),
        ("/usr/share/doc/natgw/copyright", 0o644, None),
    ];
    for (path, mode, source) in files {
        assert_eq!(
            mode_owner(path),
            (*mode, 0, 0),
            "{path}: mode, uid, gid (want {mode:o} root:root)"
        );
        if let Some(src) = source {
            assert!(
                std::fs::read(path).unwrap() == std::fs::read(repo.join(src)).unwrap(),
                "{path} is not {src}"
            );
        }
    }
    assert_eq!(mode_owner("/etc/natgw"), (0o755, 0, 0), "/etc/natgw");
    let conffiles = ok(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", "natgw"]));
    assert!(
        conffiles.contains(CONFIG),
        "{CONFIG} is not a conffile: {conffiles}"
    );

    // --- the natgw user and group -------------------------------------------------------
    let pw = getent("passwd", "natgw").expect("postinst created no natgw user");
    let gr = getent("group", "natgw").expect("postinst created no natgw group");
    let uid: u32 = pw[2].parse().unwrap();
    assert!(uid > 0 && uid < 1000, "natgw is not a system user: {pw:?}");
    assert_eq!(
        pw[3], gr[2],
        "natgw's primary group is not natgw: {pw:?} {gr:?}"
    );
    assert_eq!(
        pw[6], "/usr/sbin/nologin",
        "natgw has a login shell: {pw:?}"
    );
    assert_eq!(pw[5], "/nonexistent", "natgw has a home: {pw:?}");

    // postinst's fallback: where systemd-sysusers leaves the user missing, adduser makes the
    // same user. Run the installed postinst again with a systemd-sysusers that does nothing.
    let shim = std::env::temp_dir().join(format!("natgw-dpk-shim-{}", std::process::id()));
    std::fs::create_dir_all(&shim).unwrap();
    let fake = shim.join("systemd-sysusers");
    std::fs::write(&fake, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    ok(Command::new("userdel").arg("natgw"));
    if getent("group", "natgw").is_some() {
        ok(Command::new("groupdel").arg("natgw"));
    }
    let path = format!(
        "{}:{}",
        shim.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    ok(Command::new("/var/lib/dpkg/info/natgw.postinst")
        .args(["configure", "0.1.0-1"])
        .env("PATH", &path)
        .env_remove("DPKG_ROOT"));
    let _ = std::fs::remove_dir_all(&shim);
    let pw2 = getent("passwd", "natgw").expect("the adduser fallback created no natgw user");
    let gr2 = getent("group", "natgw").expect("the adduser fallback created no natgw group");
    assert_eq!(pw2[3], gr2[2], "fallback: primary group: {pw2:?} {gr2:?}");
    assert_eq!(
        (pw2[5].as_str(), pw2[6].as_str()),
        (pw[5].as_str(), pw[6].as_str()),
        "fallback: home and shell differ from sysusers.d's: {pw2:?} {pw:?}"
    );
    let uid: u32 = pw2[2].parse().unwrap();
    assert!(
        uid > 0 && uid < 1000,
        "fallback: not a system user: {pw2:?}"
    );
    let gid: u32 = gr2[2].parse().unwrap();

    // --- enabled, not started ------------------------------------------------------------
    let wants = "/etc/systemd/system/multi-user.target.wants/natgw.service";
    let link = std::fs::read_link(wants).unwrap_or_else(|e| panic!("not enabled: {wants}: {e}"));
    assert!(
        link.ends_with("systemd/system/natgw.service"),
        "{wants} -> {}",
        link.display()
    );
    assert!(
        processes_of("/usr/bin/natgw").is_empty(),
        "installing the package started natgw"
    );

    // --- systemd-analyze, natgw check ----------------------------------------------------
    let verify = ok(Command::new("systemd-analyze").args(["verify", UNIT]));
    assert!(
        verify.trim().is_empty(),
        "systemd-analyze verify {UNIT}:\n{verify}"
    );
    let security = run(Command::new("systemd-analyze").args([
        "security",
        "--offline=true",
        "--no-pager",
        UNIT,
    ]));
    let report = text(&security);
    let score = report
        .lines()
        .find_map(|l| l.split("Overall exposure level for natgw.service:").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse::<f64>().ok())
        .unwrap_or_else(|| panic!("no exposure level in:\n{report}"));
    eprintln!("systemd-analyze security --offline=true {UNIT}: exposure {score}");
    assert!(
        score <= 2.5,
        "the installed unit's exposure grew to {score} (deploy/systemd-security.md):\n{report}"
    );
    ok(Command::new("/usr/bin/natgw").args(["check", "--quiet", "--config", CONFIG]));

    // --- the unit's start, step by step ---------------------------------------------------
    let unit = std::fs::read_to_string(UNIT).unwrap();
    let svc = service_section(&unit);
    assert_eq!(svc["User"], ["natgw"]);
    assert_eq!(svc["Group"], ["natgw"]);
    let launcher = Launcher::from_unit(&svc);
    let only = |k: &str| -> String {
        let v = svc.get(k).unwrap_or_else(|| panic!("the unit has no {k}="));
        assert_eq!(v.len(), 1, "{k}= set more than once");
        v[0].clone()
    };

    // ExecCondition= skips the unit while the configuration is the package's example...
    let cond = only("ExecCondition");
    let o = run(&mut launcher.command(None, &cond));
    assert_eq!(
        o.status.code(),
        Some(1),
        "ExecCondition= with the example configuration: {}\n{}",
        o.status,
        text(&o)
    );
    assert!(
        text(&o).contains("is the unedited example"),
        "ExecCondition= does not say why it skips:\n{}",
        text(&o)
    );

    // ... and lets it start once the file is this box's configuration.
    let spec = TopologySpec::new("dpk");
    Topology::cleanup_stale(&spec.tag).unwrap();
    let topo = Topology::build(&spec).unwrap_or_else(|e| panic!("building {spec:?}: {e}"));
    std::fs::write(CONFIG, topo.natgw_config()).unwrap();
    let o = run(&mut launcher.command(None, &cond));
    assert!(
        o.status.success(),
        "ExecCondition= refuses an edited configuration:\n{}",
        text(&o)
    );

    // RuntimeDirectory=natgw: what systemd makes before ExecStartPre=.
    assert_eq!(svc["RuntimeDirectory"], ["natgw"]);
    let rt_mode = u32::from_str_radix(&only("RuntimeDirectoryMode"), 8).unwrap();
    let _ = std::fs::remove_dir_all(RUNTIME_DIR);
    std::fs::create_dir(RUNTIME_DIR).unwrap();
    std::os::unix::fs::chown(RUNTIME_DIR, Some(uid), Some(gid)).unwrap();
    std::fs::set_permissions(RUNTIME_DIR, std::fs::Permissions::from_mode(rt_mode)).unwrap();

    let gw = topo.gw_ns().to_string();
    ok(&mut launcher.command(Some(&gw), &only("ExecStartPre")));

    let stderr_path = std::env::temp_dir().join(format!("natgw-dpk-{}.stderr", std::process::id()));
    let stderr = File::create(&stderr_path).unwrap();
    let stderr_of = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    let child = launcher
        .command(Some(&gw), &only("ExecStart"))
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .expect("starting ExecStart=");
    let pid = child.id();
    guard.natgw = Some(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while api_get(&gw, "/stats").is_err() {
        if let Ok(Some(s)) = guard.natgw.as_mut().unwrap().try_wait() {
            panic!("natgw exited ({s}):\n{}", stderr_of());
        }
        assert!(
            Instant::now() < deadline,
            "natgw API silent:\n{}",
            stderr_of()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // It runs as natgw:natgw with no capability but those it keeps after set-up.
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let ids = |k: &str| -> Vec<u32> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(k))
            .unwrap()
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect()
    };
    assert_eq!(ids("Uid:"), [uid; 4], "{status}");
    assert_eq!(ids("Gid:"), [gid; 4], "{status}");
    assert_eq!(ids("Groups:"), [gid], "supplementary groups: {status}");
    let net_admin = 1u64 << 12;
    let bpf = 1u64 << 39;
    let ipc_lock = if launcher.ipc_lock_for_memlock {
        1u64 << 14
    } else {
        0
    };
    let threads = thread_caps(pid);
    assert!(
        threads.iter().any(|(n, _)| n.starts_with("natgw-w")),
        "{threads:?}"
    );
    for (name, eff) in &threads {
        // Workers keep nothing (but CAP_IPC_LOCK where it stands in for the memlock
        // limit); the others CAP_NET_ADMIN and CAP_BPF too (privileges.rs).
        let want = if name.starts_with("natgw-w") {
            ipc_lock
        } else {
            net_admin | bpf | ipc_lock
        };
        assert_eq!(
            *eff, want,
            "thread {name}: CapEff {eff:#x}, all: {threads:x?}"
        );
    }

    // It forwards: a ping from an inside host reaches the server through natgw.
    let h = topo.host_ns(0).to_string();
    let server = topo.server_addr();
    let deadline = Instant::now() + Duration::from_secs(10);
    let rtt = loop {
        match topo.ping(&h, server, Duration::from_secs(1)) {
            Ok(rtt) => break rtt,
            Err(e) if Instant::now() < deadline => eprintln!("ping {server}: {e}, again"),
            Err(e) => panic!(
                "no ping through natgw started as the unit: {e}\n{}",
                stderr_of()
            ),
        }
    };
    eprintln!("ping {server} through the packaged natgw: {rtt:?}");
    let metrics = api_get(&gw, "/metrics").unwrap();
    assert!(metrics.contains("natgw_in2out_total"), "{metrics}");

    // Installing the package again (an upgrade's maintainer scripts) keeps the edited
    // conffile and neither stops nor restarts the running gateway.
    let edited = std::fs::read_to_string(CONFIG).unwrap();
    let out = ok(Command::new("dpkg").arg("-i").arg(&deb));
    assert!(
        !out.contains("installed and enabled, not started"),
        "an upgrade repeats the first-install note:\n{out}"
    );
    assert_eq!(
        std::fs::read_to_string(CONFIG).unwrap(),
        edited,
        "the upgrade replaced the edited {CONFIG}"
    );
    assert!(
        guard.natgw.as_mut().unwrap().try_wait().unwrap().is_none(),
        "the upgrade stopped natgw:\n{}",
        stderr_of()
    );
    assert!(
        std::fs::read_link(wants).is_ok(),
        "the upgrade disabled the unit"
    );
    topo.ping(&h, server, Duration::from_secs(2))
        .unwrap_or_else(|e| panic!("no ping after the upgrade: {e}\n{}", stderr_of()));

    // ExecReload= (with $MAINPID), as the unit's user.
    let reload = only("ExecReload").replace("$MAINPID", &pid.to_string());
    ok(&mut launcher.command(None, &reload));
    let deadline = Instant::now() + Duration::from_secs(5);
    while !stderr_of().contains("SIGHUP: reloaded") {
        assert!(
            Instant::now() < deadline,
            "no reload after ExecReload=:\n{}",
            stderr_of()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    // KillSignal= ends it cleanly within TimeoutStopSec=.
    let sig = match only("KillSignal").as_str() {
        "SIGTERM" => libc::SIGTERM,
        "SIGINT" => libc::SIGINT,
        s => panic!("KillSignal={s}: not emulated"),
    };
    let timeout: u64 = only("TimeoutStopSec").parse().unwrap();
    let mut child = guard.natgw.take().unwrap();
    // SAFETY: kill(2) on our own unreaped child.
    unsafe { libc::kill(pid as libc::pid_t, sig) };
    let deadline = Instant::now() + Duration::from_secs(timeout);
    let exit = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() >= deadline {
            guard.natgw = Some(child);
            panic!("natgw still runs {timeout} s after {sig}:\n{}", stderr_of());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(exit.success(), "natgw ended with {exit}:\n{}", stderr_of());
    let _ = std::fs::remove_file(&stderr_path);
    drop(topo);

    // --- dpkg --purge ---------------------------------------------------------------------
    ok(Command::new("dpkg").args(["--purge", "natgw"]));
    for gone in [
        "/usr/bin/natgw",
        UNIT,
        CONFIG,
        "/etc/natgw",
        wants,
        "/usr/share/natgw",
        "/usr/lib/sysusers.d/natgw.conf",
    ] {
        assert!(
            std::fs::symlink_metadata(gone).is_err(),
            "{gone} is still there after dpkg --purge"
        );
    }
}
