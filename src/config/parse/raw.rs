//! The file as serde reads it: every key optional, every value in its loosest TOML type, unknown
//! keys rejected. The builders convert and validate these, so that every error names its key path.

use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) outside: Option<RawOutside>,
    #[serde(default)]
    pub(super) inside: Vec<RawInside>,
    pub(super) dataplane: Option<RawDataplane>,
    pub(super) sessions: Option<RawSessions>,
    pub(super) fragments: Option<RawFragments>,
    pub(super) control: Option<RawControl>,
    pub(super) eventlog: Option<super::eventlog::RawEventLog>,
    #[serde(default)]
    pub(super) realm: Vec<RawRealm>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOutside {
    pub(super) interface: Option<String>,
    pub(super) address: Option<String>,
    pub(super) gateway: Option<String>,
    #[serde(default)]
    pub(super) management: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawInside {
    pub(super) interface: Option<String>,
    #[serde(default)]
    pub(super) management: Vec<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDataplane {
    pub(super) workers: Option<Vec<RawWorker>>,
    pub(super) xdp_mode: Option<String>,
    pub(super) poll: Option<String>,
    pub(super) spin_max_us: Option<i64>,
    pub(super) batch_size: Option<i64>,
    pub(super) ring_size: Option<i64>,
    pub(super) umem_frames: Option<i64>,
    pub(super) handoff_queue: Option<i64>,
    pub(super) forward_only: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWorker {
    pub(super) core: Option<i64>,
    pub(super) queue: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawSessions {
    pub(super) capacity_per_core: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawFragments {
    pub(super) max_datagrams: Option<i64>,
    pub(super) max_held: Option<i64>,
    pub(super) timeout: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawControl {
    pub(super) listen: Option<String>,
    pub(super) socket: Option<String>,
    pub(super) socket_group: Option<String>,
    pub(super) token_file: Option<String>,
    pub(super) max_connections: Option<i64>,
    pub(super) max_header_bytes: Option<i64>,
    pub(super) max_body_bytes: Option<i64>,
    pub(super) request_timeout: Option<i64>,
    pub(super) idle_timeout: Option<i64>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRealm {
    pub(super) name: Option<String>,
    pub(super) interface: Option<String>,
    pub(super) vlan: Option<i64>,
    #[serde(default)]
    pub(super) prefixes: Vec<String>,
    pub(super) gateway: Option<String>,
    #[serde(default)]
    pub(super) pool: Vec<String>,
    #[serde(default)]
    pub(super) routes: Vec<RawRoute>,
    #[serde(default, rename = "static")]
    pub(super) statics: Vec<RawStatic>,
    #[serde(default)]
    pub(super) one_to_one: Vec<RawOneToOne>,
    pub(super) mappings_file: Option<String>,
    pub(super) mapping: Option<String>,
    pub(super) filtering: Option<String>,
    pub(super) inbound_refresh: Option<bool>,
    pub(super) hairpinning: Option<bool>,
    pub(super) mss_clamp: Option<RawMss>,
    pub(super) ports: Option<RawPorts>,
    pub(super) limits: Option<RawLimits>,
    pub(super) timeouts: Option<RawTimeouts>,
    pub(super) log: Option<super::eventlog::RawRealmLog>,
}

/// `mss_clamp`: a number of bytes or a keyword ("auto", "off").
#[derive(Deserialize)]
#[serde(untagged)]
pub(super) enum RawMss {
    Bytes(i64),
    Keyword(String),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawRoute {
    pub(super) prefix: Option<String>,
    pub(super) via: Option<String>,
}

/// A realm's `mappings_file`: the same `static` and `one_to_one` lists as inline, nothing else.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawMappingsFile {
    #[serde(default, rename = "static")]
    pub(super) statics: Vec<RawStatic>,
    #[serde(default)]
    pub(super) one_to_one: Vec<RawOneToOne>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawStatic {
    pub(super) protocol: Option<String>,
    pub(super) external: Option<String>,
    pub(super) internal: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawOneToOne {
    pub(super) external: Option<String>,
    pub(super) internal: Option<String>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawPorts {
    pub(super) policy: Option<String>,
    pub(super) range: Option<String>,
    pub(super) per_host_limit: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLimits {
    pub(super) per_host_sessions: Option<i64>,
    pub(super) inbound_per_mapping: Option<i64>,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTimeouts {
    pub(super) udp: Option<i64>,
    pub(super) tcp_established: Option<i64>,
    pub(super) tcp_transitory: Option<i64>,
    pub(super) icmp: Option<i64>,
}
