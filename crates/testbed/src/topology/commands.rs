//! Running `ip` batches, commands fed on stdin, and sysctls.

use std::io::{self, Write as _};
use std::process::{Command, Stdio};

use crate::netns::annotate;

/// Runs `cmd` with `input` on stdin; the error carries stderr.
pub(super) fn run_with_stdin(cmd: &mut Command, input: &str) -> io::Result<()> {
    let what = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| annotate(e, &what))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "{what}: {}\ninput:\n{input}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// `ip -n ns -batch -`: one process for many commands; stops at the first failure.
pub(super) fn ip_batch(ns: &str, cmds: &[String]) -> io::Result<()> {
    run_with_stdin(
        Command::new("ip").args(["-n", ns, "-batch", "-"]),
        &(cmds.join("\n") + "\n"),
    )
}

/// Writes a sysctl of the calling thread's network namespace (`key` relative to /proc/sys).
pub(super) fn write_sysctl(key: &str, value: &str) -> io::Result<()> {
    std::fs::write(format!("/proc/sys/{key}"), value)
        .map_err(|e| annotate(e, &format!("sysctl {key}={value}")))
}

pub(super) fn write_sysctl_if_present(key: &str, value: &str) -> io::Result<()> {
    match write_sysctl(key, value) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        r => r,
    }
}
