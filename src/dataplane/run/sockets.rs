//! Socket creation: every worker's AF_XDP socket on its queue of each interface, its
//! UMEMs and the registration with the interfaces' XDP programs.

use super::checks::Links;
use super::{FRAME_SIZE, StartError};
use crate::config::Config;
use crate::dataplane::worker::{Pool, Port};
use crate::dataplane::xdp::XdpProgram;
use crate::nat::Ingress;
use natgw_kernel::netlink::{self, LinkInfo};
use natgw_kernel::xsk::{Umem, XskConfig, XskSocket};
use std::io;

/// The kernel's VLAN devices `<interface>.<vid>` for the tagged realms on `interface`. The
/// hosts of a VLAN are the kernel's neighbours on that device (it answers their ARP for the
/// realm gateway there and can resolve them), never on the untagged parent, and two VLANs
/// may hold the same address. A VLAN without such a device keeps the parent's ifindex.
fn vlan_devices(cfg: &Config, interface: &str) -> Vec<(u16, u32)> {
    cfg.realms
        .iter()
        .filter(|r| r.interface == interface)
        .filter_map(|r| r.vlan)
        .filter_map(|v| {
            let l = netlink::link_by_name(&format!("{interface}.{v}")).ok()?;
            Some((v, l.ifindex))
        })
        .collect()
}

/// One worker's ports (outside first, then inside in config order) and buffer pools.
pub(super) struct WorkerSockets {
    pub(super) ports: Vec<Port>,
    pub(super) pools: Vec<Pool>,
    /// Inside sockets that could not share the outside socket's UMEM.
    pub(super) copy_fallbacks: usize,
}

fn umem(worker: usize, frames: u32) -> Result<Umem, StartError> {
    Umem::new(frames, FRAME_SIZE).map_err(|err| StartError::Umem { worker, err })
}

fn socket_error(l: &LinkInfo, queue: u32) -> impl FnOnce(io::Error) -> StartError + '_ {
    move |err| StartError::Socket {
        ifname: l.name.clone(),
        queue,
        err,
    }
}

fn register(prog: &XdpProgram, l: &LinkInfo, sock: &XskSocket) -> Result<(), StartError> {
    let queue = sock.queue();
    prog.register_socket(queue, sock.fd())
        .map_err(|err| StartError::Register {
            ifname: l.name.clone(),
            queue,
            err,
        })
}

/// Creates worker `wi`'s sockets on its queue of every interface and registers them with
/// the interfaces' programs. Inside sockets share the outside socket's UMEM where the
/// driver allows it; otherwise they get a UMEM of their own and frames are copied between
/// them (counted in `copy_fallbacks`).
pub(super) fn create_sockets(
    cfg: &Config,
    links: &Links,
    progs: &[XdpProgram],
    wi: usize,
    queue: u32,
) -> Result<WorkerSockets, StartError> {
    let dp = &cfg.dataplane;
    let xcfg = XskConfig {
        ring_size: dp.ring_size,
        copy: None,
        need_wakeup: true,
    };
    let outside = &links.outside;
    let umem0 = umem(wi, dp.umem_frames)?;
    let first = XskSocket::new(&umem0, outside.ifindex, queue, &xcfg)
        .map_err(socket_error(outside, queue))?;
    register(&progs[0], outside, &first)?;
    let mut ports = vec![Port {
        sock: first,
        ingress: Ingress::Outside,
        mac: outside.mac,
        ifindex: outside.ifindex,
        pool: 0,
        vlan_ifindex: Vec::new(),
    }];
    let mut extra_pools = Vec::new();
    let mut copy_fallbacks = 0;
    for (ii, l) in links.inside.iter().enumerate() {
        let shared = XskSocket::new_shared(&umem0, &ports[0].sock, l.ifindex, queue, &xcfg);
        let (sock, pool) = match shared {
            Ok(s) => (s, 0),
            Err(_) => {
                let u = umem(wi, dp.umem_frames)?;
                let s =
                    XskSocket::new(&u, l.ifindex, queue, &xcfg).map_err(socket_error(l, queue))?;
                extra_pools.push(Pool::new(u));
                copy_fallbacks += 1;
                (s, extra_pools.len())
            }
        };
        register(&progs[1 + ii], l, &sock)?;
        ports.push(Port {
            sock,
            ingress: Ingress::Inside(ii as u8),
            mac: l.mac,
            ifindex: l.ifindex,
            pool,
            vlan_ifindex: vlan_devices(cfg, &l.name),
        });
    }
    let mut pools = vec![Pool::new(umem0)];
    pools.extend(extra_pools);
    Ok(WorkerSockets {
        ports,
        pools,
        copy_fallbacks,
    })
}
