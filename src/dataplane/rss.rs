//! The outside NIC's receive-side scaling as the engine's steering model: the raw ethtool
//! results (key, indirection table, hash function, hashed fields) become a software
//! Toeplitz model that port allocation uses to pick ports whose replies land on the
//! allocating worker's queue.

use crate::nat::rss::{Rss, RssError};
use crate::nat::rules::RssSteering;
use natgw_kernel::ethtool::{
    ETH_RSS_HASH_TOP, RXH_L4_B_0_1, RXH_L4_B_2_3, RssConfig, TCP_V4_FLOW, UDP_V4_FLOW, rss_config,
    rx_flow_hash_fields,
};

/// A software model of `cfg`, if it is a Toeplitz one.
pub fn toeplitz_model(cfg: &RssConfig) -> Option<Result<Rss, RssError>> {
    (cfg.hfunc == ETH_RSS_HASH_TOP).then(|| Rss::new(&cfg.key, cfg.indirection.clone()))
}

/// Reads the outside NIC's RSS key, indirection table and hashed fields (ethtool). None when
/// the NIC has no RSS (veth) or it is not Toeplitz: handoff then keeps everything correct.
pub fn rss_steering(ifname: &str, queue_of_core: &[u32]) -> Option<RssSteering> {
    let rss = toeplitz_model(&rss_config(ifname).ok()??)?.ok()?;
    let ports = |flow| {
        rx_flow_hash_fields(ifname, flow)
            .ok()
            .flatten()
            .is_some_and(|f| f & (RXH_L4_B_0_1 | RXH_L4_B_2_3) == (RXH_L4_B_0_1 | RXH_L4_B_2_3))
    };
    Some(RssSteering {
        rss,
        tcp_ports: ports(TCP_V4_FLOW),
        udp_ports: ports(UDP_V4_FLOW),
        queue_of_core: queue_of_core.to_vec(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nat::rss::DEFAULT_KEY;

    #[test]
    fn to_rss_only_for_toeplitz() {
        let mut cfg = RssConfig {
            key: DEFAULT_KEY.to_vec(),
            indirection: vec![0, 1],
            hfunc: ETH_RSS_HASH_TOP,
        };
        let rss = toeplitz_model(&cfg).unwrap().unwrap();
        assert_eq!(rss.indirection(), &[0, 1]);
        cfg.hfunc = 0x2;
        assert!(toeplitz_model(&cfg).is_none());
    }
}
