//! The API's listeners, opened before the gateway starts so that a problem with them stops
//! `natgw run` before any XDP program is attached: the TCP listener (`control.listen`), the
//! CLI's Unix socket (`control.socket`) and the bearer token (`control.token_file`).

use crate::config::Control;
use std::fmt;
use std::io;
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Why the API could not be opened; names the key.
#[derive(Debug)]
pub struct ListenError {
    pub field: &'static str,
    pub reason: String,
}

impl fmt::Display for ListenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.reason)
    }
}

impl std::error::Error for ListenError {}

fn fail(field: &'static str, reason: impl Into<String>) -> ListenError {
    ListenError {
        field,
        reason: reason.into(),
    }
}

/// The socket file natgw created; removed on drop if it is still that file (the next natgw
/// would replace a stale one anyway, but a clean stop leaves nothing behind).
#[derive(Debug)]
pub struct SocketFile {
    path: PathBuf,
    dev: u64,
    ino: u64,
}

impl Drop for SocketFile {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::symlink_metadata(&self.path)
            && (m.dev(), m.ino()) == (self.dev, self.ino)
        {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Reads the bearer token. Refused: a missing or unreadable file, an empty token, a token a
/// header cannot carry, and a file that users other than its owner and group may access.
pub fn read_token(path: &Path) -> Result<String, ListenError> {
    let f = "control.token_file";
    let p = path.display();
    let meta = std::fs::metadata(path).map_err(|e| fail(f, format!("{p}: {e}")))?;
    if !meta.is_file() {
        return Err(fail(f, format!("{p} is not a regular file")));
    }
    let mode = meta.permissions().mode() & 0o777;
    if mode & 0o007 != 0 {
        return Err(fail(
            f,
            format!(
                "{p} is readable by others (mode {mode:04o}): the token opens every endpoint; \
                 chmod o-rwx {p}"
            ),
        ));
    }
    let text = std::fs::read_to_string(path).map_err(|e| fail(f, format!("{p}: {e}")))?;
    let token = text.trim();
    if token.is_empty() {
        return Err(fail(f, format!("{p} is empty")));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(fail(
            f,
            format!("{p}: the token has spaces or non-ASCII characters a header cannot carry"),
        ));
    }
    Ok(token.to_string())
}

/// Binds the TCP listener.
pub fn bind_tcp(cfg: &Control) -> Result<std::net::TcpListener, ListenError> {
    let l = std::net::TcpListener::bind(cfg.listen)
        .map_err(|e| fail("control.listen", format!("{}: {e}", cfg.listen)))?;
    l.set_nonblocking(true)
        .map_err(|e| fail("control.listen", e.to_string()))?;
    Ok(l)
}

/// A group by name or number.
fn group_id(group: &str) -> Result<libc::gid_t, ListenError> {
    let f = "control.socket_group";
    if let Ok(gid) = group.parse::<libc::gid_t>() {
        return Ok(gid);
    }
    let name = std::ffi::CString::new(group).map_err(|_| fail(f, "contains NUL"))?;
    let mut buf = vec![0 as libc::c_char; 16 << 10];
    // SAFETY: all-zero is a valid `group` (null pointers, zero ids) for getgrnam_r to fill.
    let mut grp: libc::group = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::group = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; buf outlives it and its length is passed;
    // grp's string fields point into buf, which is not read afterwards.
    let r = unsafe {
        libc::getgrnam_r(
            name.as_ptr(),
            &mut grp,
            buf.as_mut_ptr(),
            buf.len(),
            &mut out,
        )
    };
    if r != 0 {
        return Err(fail(
            f,
            format!("looking up {group:?}: {}", io::Error::from_raw_os_error(r)),
        ));
    }
    if out.is_null() {
        return Err(fail(f, format!("there is no group {group:?}")));
    }
    Ok(grp.gr_gid)
}

/// Creates the CLI's socket: its directory if missing, a stale socket file (no one answers on
/// it) replaced, mode 0660 and the configured group. Refused while another natgw answers on
/// the path, and when the path is something else than a socket.
pub fn bind_unix(cfg: &Control) -> Result<(UnixListener, SocketFile), ListenError> {
    let f = "control.socket";
    let path = &cfg.socket;
    let p = path.display();
    let gid = cfg.socket_group.as_deref().map(group_id).transpose()?;
    if let Some(dir) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(dir)
            .map_err(|e| fail(f, format!("creating {}: {e}", dir.display())))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => {
                return Err(fail(
                    f,
                    format!(
                        "{p}: another natgw answers on it; stop it first or give this one \
                         another control.socket"
                    ),
                ));
            }
            // Nobody listens: left behind by a natgw that was killed.
            Err(_) => std::fs::remove_file(path)
                .map_err(|e| fail(f, format!("removing the stale {p}: {e}")))?,
        },
        Ok(_) => {
            return Err(fail(
                f,
                format!("{p} exists and is not a socket; natgw does not replace it"),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(fail(f, format!("{p}: {e}"))),
    }
    // Created 0600 (the umask applies to bind(2)): no one else can connect in the moment
    // before the group and the final mode are set. Nothing else runs yet to mind the umask.
    // SAFETY: umask(2) cannot fail; the old mask is put back right after.
    let old = unsafe { libc::umask(0o177) };
    let bound = UnixListener::bind(path);
    // SAFETY: as above.
    unsafe { libc::umask(old) };
    let l = bound.map_err(|e| fail(f, format!("{p}: {e}")))?;
    let meta = std::fs::symlink_metadata(path).map_err(|e| fail(f, format!("{p}: {e}")))?;
    let file = SocketFile {
        path: path.clone(),
        dev: meta.dev(),
        ino: meta.ino(),
    };
    if let Some(gid) = gid {
        std::os::unix::fs::lchown(path, None, Some(gid)).map_err(|e| {
            fail(
                "control.socket_group",
                format!("giving {p} to group {gid}: {e}"),
            )
        })?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o660))
        .map_err(|e| fail(f, format!("{p}: {e}")))?;
    l.set_nonblocking(true)
        .map_err(|e| fail(f, format!("{p}: {e}")))?;
    Ok((l, file))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        std::env::temp_dir().join(format!("natgw-listen-{}-{name}", std::process::id()))
    }

    #[test]
    fn token_file_checks() {
        let p = tmp("token");
        let err = |p: &Path| read_token(p).unwrap_err().to_string();
        assert!(err(&p).contains("No such file"), "{}", err(&p));
        std::fs::write(&p, "  \n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(err(&p).ends_with("is empty"), "{}", err(&p));
        std::fs::write(&p, "s3cret-token\n").unwrap();
        assert_eq!(read_token(&p).unwrap(), "s3cret-token");
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = err(&p);
        assert!(
            e.starts_with("control.token_file:") && e.contains("readable by others (mode 0644)"),
            "{e}"
        );
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o640)).unwrap();
        std::fs::write(&p, "two words").unwrap();
        assert!(err(&p).contains("header cannot carry"));
        let _ = std::fs::remove_file(&p);
    }

    fn control(socket: &Path) -> Control {
        let mut c = crate::config::parse(
            "[outside]\ninterface = \"eth1\"\naddress = \"192.168.1.2\"\n\
             gateway = \"192.168.1.1\"\n[[inside]]\ninterface = \"eth0\"\n\
             [[realm]]\nname = \"r\"\ninterface = \"eth0\"\nprefixes = [\"10.0.0.0/24\"]\n\
             pool = [\"192.168.1.10\"]\n",
        )
        .unwrap()
        .control;
        c.socket = socket.to_path_buf();
        c
    }

    #[test]
    fn socket_is_created_private_and_stale_ones_replaced() {
        let dir = tmp("sockdir");
        let path = dir.join("sub/natgw.sock");
        let cfg = control(&path);
        let (l, file) = bind_unix(&cfg).unwrap();
        let m = std::fs::symlink_metadata(&path).unwrap();
        assert_eq!(m.permissions().mode() & 0o777, 0o660);
        // Someone answers: refused, and the file is left alone.
        let e = bind_unix(&cfg).unwrap_err().to_string();
        assert!(e.contains("another natgw answers"), "{e}");
        assert!(path.exists());
        // Killed (the listener closed, the file left): replaced.
        drop(l);
        std::mem::forget(file);
        let (_l, file) = bind_unix(&cfg).unwrap();
        drop(file);
        assert!(!path.exists(), "removed on drop");
        // Not a socket: never removed.
        std::fs::write(&path, "x").unwrap();
        let e = bind_unix(&cfg).unwrap_err().to_string();
        assert!(e.contains("is not a socket"), "{e}");
        let mut bad = cfg.clone();
        bad.socket_group = Some("no-such-group-natgw".into());
        let e = bind_unix(&bad).unwrap_err().to_string();
        assert!(
            e.starts_with("control.socket_group: there is no group"),
            "{e}"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
