//! `[control]`: the management API's listeners (HTTP on `listen`, the CLI's Unix socket),
//! who may use which endpoint (`token_file`), and the limits that keep a misbehaving client
//! from costing more than its own connection.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use super::err;
use super::raw::RawControl;
use super::values::int_in;
use crate::config::ConfigError;
use crate::config::model::{Control, DEFAULT_SOCKET};

const DEFAULT_LISTEN: &str = "127.0.0.1:9180";
/// sun_path is 108 bytes including the terminating NUL.
const MAX_SOCKET_PATH: usize = 107;

pub(super) fn build_control(r: RawControl) -> Result<Control, ConfigError> {
    let f = "control.listen";
    let s = r.listen.as_deref().unwrap_or(DEFAULT_LISTEN);
    let listen = SocketAddr::from_str(s.trim()).map_err(|_| {
        err(
            f,
            format!("{s:?} is not an address and port (a.b.c.d:port or [v6]:port)"),
        )
    })?;
    if listen.port() == 0 {
        return Err(err(f, format!("{s:?}: port 0 is not allowed")));
    }
    let token_file = match r.token_file.as_deref() {
        None => None,
        Some(t) if t.trim().is_empty() => {
            return Err(err("control.token_file", "must not be empty"));
        }
        Some(t) => {
            let p = PathBuf::from(t);
            if !p.is_absolute() {
                return Err(err(
                    "control.token_file",
                    format!("{t:?} is not an absolute path"),
                ));
            }
            Some(p)
        }
    };
    // Anyone on the network could list subscribers' sessions or clear them: a listener
    // reachable from elsewhere needs a token for everything but the public endpoints.
    if !listen.ip().is_loopback() && token_file.is_none() {
        return Err(err(
            f,
            format!(
                "{listen} is not a loopback address: set control.token_file (a bearer token \
                 for every endpoint but /metrics, /healthz and /readyz) or listen on \
                 127.0.0.1 / [::1]"
            ),
        ));
    }
    let sf = "control.socket";
    let socket = PathBuf::from(r.socket.as_deref().unwrap_or(DEFAULT_SOCKET));
    let sl = socket.as_os_str().len();
    if !socket.is_absolute() || socket.file_name().is_none() {
        return Err(err(
            sf,
            format!("{:?} is not an absolute file path", socket.display()),
        ));
    }
    if sl > MAX_SOCKET_PATH {
        return Err(err(
            sf,
            format!("{sl} bytes long, a Unix socket path has at most {MAX_SOCKET_PATH}"),
        ));
    }
    let socket_group = match r.socket_group {
        None => None,
        Some(g) => {
            let ok = !g.is_empty()
                && g.len() <= 32
                && g.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_-.".contains(&b));
            if !ok {
                return Err(err(
                    "control.socket_group",
                    format!("{g:?} is not a group name or number (1-32 of a-z A-Z 0-9 _ - .)"),
                ));
            }
            Some(g)
        }
    };
    let int = |v: Option<i64>, field: &str, default: i64, lo: i64, hi: i64| {
        int_in(v.unwrap_or(default), field, lo, hi).map(|v| v as u32)
    };
    Ok(Control {
        listen,
        socket,
        socket_group,
        token_file,
        max_connections: int(r.max_connections, "control.max_connections", 64, 1, 4096)?,
        // hyper's read buffer cannot be smaller than 8 KiB.
        max_header_bytes: int(
            r.max_header_bytes,
            "control.max_header_bytes",
            16 << 10,
            8 << 10,
            1 << 20,
        )?,
        max_body_bytes: int(
            r.max_body_bytes,
            "control.max_body_bytes",
            1 << 20,
            1 << 10,
            64 << 20,
        )?,
        request_timeout: int(r.request_timeout, "control.request_timeout", 10, 1, 300)?,
        idle_timeout: int(r.idle_timeout, "control.idle_timeout", 30, 1, 3600)?,
    })
}
