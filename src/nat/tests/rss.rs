//! RSS-aware port choice: with a predictable outside NIC hash, the external ports a worker
//! picks make the replies land on that worker's own queue.

use super::util::*;
use crate::nat::Ingress;
use crate::nat::rss::{DEFAULT_KEY, Rss};
use crate::nat::rules::{RssSteering, Rules};
use std::sync::Arc;

fn steered_rules(cores: usize, with_rss: bool) -> Arc<Rules> {
    let toml = conf(
        "pool = [\"192.168.1.16\"]\nfiltering = \"endpoint-independent\"",
        "",
        "",
    );
    let cfg = crate::config::parse(&toml).unwrap();
    let mut r = Rules::new(
        &cfg,
        Arc::new(crate::nat::ports::BlockPartition::new(cores)),
    );
    if with_rss {
        // Queue i for worker i; a 128-entry table spread over the queues, as `ethtool -X equal`.
        let ind: Vec<u32> = (0..128).map(|i| i % cores as u32).collect();
        r.rss = Some(RssSteering {
            rss: Rss::new(&DEFAULT_KEY, ind).unwrap(),
            tcp_ports: true,
            udp_ports: true,
            queue_of_core: (0..cores as u32).collect(),
        });
    }
    Arc::new(r)
}

/// Translates flows from many inside hosts on their owning cores and counts how many of the
/// replies the NIC would deliver to the owning core's queue.
fn landed(cores: usize, with_rss: bool) -> (usize, usize) {
    let r = steered_rules(cores, with_rss);
    let mut hs: Vec<H> = (0..cores).map(|c| H::on_core(r.clone(), c)).collect();
    let check = Rss::new(&DEFAULT_KEY, (0..128).map(|i| i % cores as u32).collect()).unwrap();
    let (mut total, mut home) = (0, 0);
    for host in 2..60u8 {
        let src = [10, 0, 0, host];
        let owner = r.inside_owner(0, u32::from(ip(src)));
        for sport in [40000u16, 40001, 40002] {
            let p = hs[owner].fwd(&udp(src, sport, R1, 53), IN0, fwd_out());
            total += 1;
            let q = check.ipv4_queue(ip(R1), p.src, Some(53), Some(p.sport));
            if q as usize == owner {
                home += 1;
            }
            // The reply is owned by the core that allocated the port, whatever the NIC does.
            let mut buf = udp(R1, 53, [192, 168, 1, 16], p.sport);
            let f = crate::nat::Frame::whole(&mut buf);
            assert_eq!(hs[owner].e.owner(&f, Ingress::Outside), Some(owner));
        }
    }
    (home, total)
}

#[test]
fn ports_are_chosen_so_replies_land_on_the_owning_queue() {
    let (home, total) = landed(2, true);
    assert_eq!(home, total, "every reply should hash to its owner's queue");
    let (home, total) = landed(4, true);
    assert_eq!(home, total);
}

#[test]
fn without_rss_about_one_in_n_lands_home() {
    // The control experiment: port preservation alone lands replies on the owner's queue
    // only by chance, so the steering above is doing the work.
    let (home, total) = landed(2, false);
    assert!(home < total, "{home}/{total}");
}
