//! natgw as a process in a topology's gateway namespace, for tests that need nothing more
//! than "natgw runs with this configuration": started with `ip netns exec`, ready once its
//! API answers on the topology's own Unix socket ([`control_socket`], set by the generated
//! configuration), its stderr in a file that failure messages quote, SIGTERM (then SIGKILL)
//! on drop.

use crate::Topology;
use crate::lab::{api_get, control_socket};
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running natgw; stopped on drop.
pub struct NatgwProcess {
    child: Child,
    stderr: PathBuf,
    /// The configuration file, kept until natgw stops (a reload reads it again).
    config: PathBuf,
    socket: PathBuf,
}

impl NatgwProcess {
    /// Runs the binary `exe` (a test's `env!("CARGO_BIN_EXE_natgw")`) with `config` in the
    /// gateway namespace of `topo` and waits up to 10 s for its API; panics with natgw's
    /// stderr if it exits or stays silent. `name` makes the temporary file names unique.
    /// `config` should set `control.socket` to the topology's [`control_socket`], as
    /// `natgw_config()` does.
    pub fn start(exe: &str, topo: &Topology, config: &str, name: &str) -> NatgwProcess {
        let pid = std::process::id();
        let dir = std::env::temp_dir();
        let cfg = dir.join(format!("natgw-{name}-{pid}.toml"));
        let stderr = dir.join(format!("natgw-{name}-{pid}.stderr"));
        std::fs::write(&cfg, config).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", topo.gw_ns(), exe, "run", "--config"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(&stderr).unwrap())
            .spawn()
            .expect("starting natgw");
        let socket = control_socket(topo.gw_ns());
        let mut n = NatgwProcess {
            child,
            stderr,
            config: cfg,
            socket,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while api_get(topo.gw_ns(), "/stats").is_err() {
            if let Ok(Some(s)) = n.child.try_wait() {
                panic!("natgw exited ({s}):\n{}", n.stderr());
            }
            assert!(
                Instant::now() < deadline,
                "natgw API silent:\n{}",
                n.stderr()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        n
    }

    /// The configuration file natgw was started with (a reload reads it again); removed
    /// on drop.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config
    }

    /// Sends `sig` to natgw (`ip netns exec` execs it: the child is natgw itself).
    pub fn signal(&self, sig: libc::c_int) {
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, sig) };
    }

    /// natgw's Unix socket.
    pub fn socket(&self) -> &std::path::Path {
        &self.socket
    }

    /// natgw's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What natgw has written to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }
}

/// Runs the binary `exe` with `args` (a CLI command, stdin closed) to its end: exit code
/// (-1 when killed by a signal), stdout, stderr.
pub fn run_to_end(exe: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(exe)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {exe}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).to_string(),
        String::from_utf8_lossy(&out.stderr).to_string(),
    )
}

/// The `field:` line of /proc/<pid>/task/<tid>/status (its value, trimmed; None where it
/// cannot be read), for every thread of `pid`, with the thread's name.
pub fn thread_status(pid: u32, field: &str) -> Vec<(String, Option<String>)> {
    let key = format!("{field}:");
    let mut v = Vec::new();
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let dir = t.unwrap().path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        let status = std::fs::read_to_string(dir.join("status")).unwrap_or_default();
        let value = status
            .lines()
            .find_map(|l| l.strip_prefix(key.as_str()))
            .map(|x| x.trim().to_string());
        v.push((name.trim().to_string(), value));
    }
    v
}

/// The `CapEff:` mask of every thread of `pid`, with the thread's name (`u64::MAX` where
/// it cannot be read).
pub fn thread_caps(pid: u32) -> Vec<(String, u64)> {
    thread_status(pid, "CapEff")
        .into_iter()
        .map(|(name, x)| {
            let eff = x.map_or(u64::MAX, |x| u64::from_str_radix(&x, 16).unwrap());
            (name, eff)
        })
        .collect()
}

impl Drop for NatgwProcess {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own unreaped child.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(3);
        while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_file(&self.stderr);
        let _ = std::fs::remove_file(&self.config);
    }
}
