//! Network namespaces for tests: prerequisites, unique names, the `ip` command, a namespace
//! deleted on drop, veth pairs, and running code inside a namespace.
//!
//! Code that must run inside a namespace runs on a dedicated thread that `setns`es into
//! it ([`run_in_netns`]): the caller's threads never change namespace. Sockets created on
//! such a thread stay in that namespace and can be used from any thread afterwards.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use natgw_kernel::sys;

/// Whether the test can run: root and the `ip` command are needed. Without them the test
/// is skipped with a notice, except under `CI=true` where a missing prerequisite fails.
pub fn prerequisites(test: &str) -> bool {
    prerequisites_with(test, &[])
}

/// Like [`prerequisites`], also needing each `(command, version flag, description)` of `extra`.
pub fn prerequisites_with(test: &str, extra: &[(&str, &str, &str)]) -> bool {
    let root = sys::is_root();
    let works = |cmd: &str, arg: &str| {
        Command::new(cmd)
            .arg(arg)
            .output()
            .is_ok_and(|o| o.status.success())
    };
    let mut missing: Vec<&str> = Vec::new();
    if !root {
        missing.push("root");
    }
    if !works("ip", "-V") {
        missing.push("the `ip` command (iproute2)");
    }
    for (cmd, arg, what) in extra {
        if !works(cmd, arg) {
            missing.push(what);
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("{test}: needs {}", missing.join(" and "));
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{msg} (CI=true: missing prerequisites are failures)");
    }
    eprintln!("SKIPPED {msg}");
    false
}

/// A name unique to this process and call: `xt<pid hex><tag><n>`.
pub fn unique_name(tag: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "xt{:x}{tag}{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub(crate) fn annotate(e: io::Error, what: &str) -> io::Error {
    io::Error::new(e.kind(), format!("{what}: {e}"))
}

/// Runs `ip args`; the error carries the command and its stderr.
pub fn ip(args: &[&str]) -> io::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| annotate(e, &format!("ip {}", args.join(" "))))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(io::Error::other(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A network namespace, deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Creates namespace `name` with `lo` up.
    pub fn new(name: &str) -> Netns {
        ip(&["netns", "add", name]).unwrap();
        let ns = Netns {
            name: name.to_string(),
        };
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// `ip -n <ns> args...`, panicking on failure.
    pub fn ip(&self, args: &[&str]) -> String {
        self.try_ip(args).unwrap()
    }

    /// `ip -n <ns> args...`.
    pub fn try_ip(&self, args: &[&str]) -> io::Result<String> {
        let mut a = vec!["-n", self.name.as_str()];
        a.extend_from_slice(args);
        ip(&a)
    }

    /// Runs `cmd` inside the namespace (`ip netns exec`), panicking on failure.
    pub fn exec(&self, cmd: &[&str]) -> String {
        let mut a = vec!["netns", "exec", self.name.as_str()];
        a.extend_from_slice(cmd);
        ip(&a).unwrap()
    }

    /// Adds `cidr` (e.g. "10.1.0.1/24") to `ifname`.
    pub fn add_addr(&self, ifname: &str, cidr: &str) {
        self.ip(&["addr", "add", cidr, "dev", ifname]);
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Deleting the namespace also destroys the interfaces in it.
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("cleanup: {e}");
        }
    }
}

/// Runs `f` on a new thread inside network namespace `ns` (a name under /run/netns, or an
/// absolute path) and returns its result; a panic in `f` is propagated. The calling thread
/// stays where it is. Sockets created by `f` stay in `ns` and can be used from any thread.
/// Panics if `ns` cannot be entered; [`try_run_in_netns`] returns that as an error.
pub fn run_in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    try_run_in_netns(ns, f).unwrap_or_else(|e| panic!("entering network namespace {ns}: {e}"))
}

/// [`run_in_netns`], with failure to enter the namespace as an error.
pub fn try_run_in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> io::Result<T> {
    let path = if ns.starts_with('/') {
        ns.to_string()
    } else {
        format!("/run/netns/{ns}")
    };
    let path = CString::new(path)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "namespace name contains NUL"))?;
    std::thread::scope(|s| {
        let h = s.spawn(|| {
            // SAFETY: valid NUL-terminated path.
            let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(sys::last_os_error("open(netns)"));
            }
            // SAFETY: `fd` was just opened and is owned by nothing else.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            // SAFETY: setns changes only this (fresh, short-lived) thread's namespace.
            sys::cvt(
                unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) },
                "setns",
            )?;
            Ok(f())
        });
        match h.join() {
            Ok(v) => v,
            Err(p) => std::panic::resume_unwind(p),
        }
    })
}

/// A veth pair `a_if` in `a` and `b_if` in `b`, one rx and one tx queue each, given MACs,
/// both up.
pub fn veth_pair(a: &Netns, a_if: &str, a_mac: [u8; 6], b: &Netns, b_if: &str, b_mac: [u8; 6]) {
    let am = mac_str(a_mac);
    let bm = mac_str(b_mac);
    a.ip(&[
        "link",
        "add",
        a_if,
        "address",
        &am,
        "numrxqueues",
        "1",
        "numtxqueues",
        "1",
        "type",
        "veth",
        "peer",
        "name",
        b_if,
        "address",
        &bm,
        "netns",
        &b.name,
        "numrxqueues",
        "1",
        "numtxqueues",
        "1",
    ]);
    a.ip(&["link", "set", a_if, "up"]);
    b.ip(&["link", "set", b_if, "up"]);
}

pub fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
