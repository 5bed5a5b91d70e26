//! `[control]`: the address the management API (HTTP, Prometheus metrics) listens on.

use std::net::SocketAddr;
use std::str::FromStr;

use super::err;
use super::raw::RawControl;
use crate::config::ConfigError;
use crate::config::model::Control;

const DEFAULT_LISTEN: &str = "127.0.0.1:9180";

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
    Ok(Control { listen })
}
