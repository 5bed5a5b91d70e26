//! `[outside]` and `[[inside]]`: the interfaces natgw serves and the management addresses on them.

use std::net::Ipv4Addr;

use super::err;
use super::raw::{RawInside, RawOutside};
use super::values::{ifname, required, unicast};
use crate::config::ConfigError;
use crate::config::model::{InsideInterface, OutsideInterface};

pub(super) fn build_outside(r: RawOutside) -> Result<OutsideInterface, ConfigError> {
    let name = ifname(
        required(r.interface.as_deref(), "outside.interface")?,
        "outside.interface",
    )?;
    let address = unicast(
        required(r.address.as_deref(), "outside.address")?,
        "outside.address",
    )?;
    let gateway = unicast(
        required(r.gateway.as_deref(), "outside.gateway")?,
        "outside.gateway",
    )?;
    if gateway == address {
        return Err(err(
            "outside.gateway",
            format!("{gateway} is natgw's own outside address; the gateway is the upstream router"),
        ));
    }
    let management = management(&r.management, "outside")?;
    Ok(OutsideInterface {
        name,
        address,
        gateway,
        management,
    })
}

pub(super) fn build_inside(
    raw: &[RawInside],
    outside: &OutsideInterface,
) -> Result<Vec<InsideInterface>, ConfigError> {
    if raw.len() > super::MAX_INSIDE {
        return Err(err(
            "inside",
            format!(
                "{} [[inside]] interfaces; at most {} are supported",
                raw.len(),
                super::MAX_INSIDE
            ),
        ));
    }
    let mut inside: Vec<InsideInterface> = Vec::with_capacity(raw.len());
    for (i, r) in raw.iter().enumerate() {
        let p = format!("inside[{i}]");
        let f = format!("{p}.interface");
        let name = ifname(required(r.interface.as_deref(), &f)?, &f)?;
        if name == outside.name {
            return Err(err(f, format!("{name:?} is already the outside interface")));
        }
        if let Some(k) = inside.iter().position(|x| x.name == name) {
            return Err(err(
                f,
                format!("{name:?} is declared twice (also inside[{k}])"),
            ));
        }
        let management = management(&r.management, &p)?;
        inside.push(InsideInterface { name, management });
    }
    Ok(inside)
}

fn management(list: &[String], prefix: &str) -> Result<Vec<Ipv4Addr>, ConfigError> {
    let mut out: Vec<Ipv4Addr> = Vec::with_capacity(list.len());
    for (j, s) in list.iter().enumerate() {
        let f = format!("{prefix}.management[{j}]");
        let a = unicast(s, &f)?;
        if let Some(k) = out.iter().position(|b| *b == a) {
            return Err(err(
                f,
                format!("{a} is listed twice (also management[{k}])"),
            ));
        }
        out.push(a);
    }
    Ok(out)
}
