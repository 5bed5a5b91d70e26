//! The validated configuration model. Everything downstream (engine tables, dataplane set-up,
//! the management plane) is built from these types; they are produced only by `config::parse`,
//! which fills every default and rejects inconsistent input, so consumers may trust them.

use std::net::Ipv4Addr;

/// An IPv4 prefix, normalised: host bits are zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Net {
    pub addr: Ipv4Addr,
    pub len: u8,
}

impl Ipv4Net {
    pub fn mask(&self) -> u32 {
        if self.len == 0 {
            0
        } else {
            u32::MAX << (32 - self.len as u32)
        }
    }
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        (u32::from(a) & self.mask()) == u32::from(self.addr)
    }
    pub fn first(&self) -> u32 {
        u32::from(self.addr)
    }
    pub fn last(&self) -> u32 {
        u32::from(self.addr) | !self.mask()
    }
    pub fn overlaps(&self, o: &Ipv4Net) -> bool {
        self.first() <= o.last() && o.first() <= self.last()
    }
}

/// An inclusive range of IPv4 addresses (a pool entry: one address, a range or a prefix).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct AddrRange {
    pub first: Ipv4Addr,
    pub last: Ipv4Addr,
}

impl AddrRange {
    pub fn len(&self) -> u32 {
        u32::from(self.last) - u32::from(self.first) + 1
    }
    pub fn is_empty(&self) -> bool {
        false
    }
    pub fn contains(&self, a: Ipv4Addr) -> bool {
        (u32::from(self.first)..=u32::from(self.last)).contains(&u32::from(a))
    }
    pub fn iter(&self) -> impl Iterator<Item = Ipv4Addr> {
        (u32::from(self.first)..=u32::from(self.last)).map(Ipv4Addr::from)
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    pub outside: OutsideInterface,
    pub inside: Vec<InsideInterface>,
    pub dataplane: Dataplane,
    pub sessions: Sessions,
    pub fragments: Fragments,
    pub control: Control,
    /// `[eventlog]`: the NAT event log's outputs (docs/eventlog.md); what is logged is per
    /// realm (`Realm::log`).
    pub eventlog: EventLog,
    pub realms: Vec<Realm>,
}

/// `[eventlog]`: where the NAT event log goes. Without a realm that logs, nothing is written.
#[derive(Clone, Debug, PartialEq, Default)]
pub struct EventLog {
    /// JSON lines, appended; reopened on SIGHUP and reload (logrotate).
    pub file: Option<std::path::PathBuf>,
    /// RFC 5424 syslog over this unix datagram socket (normally /dev/log).
    pub syslog: Option<std::path::PathBuf>,
    /// Records each worker's ring holds for the logger (a power of two).
    pub ring: u32,
}

/// `[realm.log]`: which events of a realm are logged; all off by default.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RealmLog {
    /// Dynamic mapping creation and deletion (APMADD/APMDEL).
    pub mappings: bool,
    /// Session creation and deletion (SADD/SDEL).
    pub sessions: bool,
    /// Session records carry the destination (endpoint-dependent logging).
    pub destinations: bool,
    /// Address and port exhaustion (AEXH/PEXH), rate-limited.
    pub exhaustion: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OutsideInterface {
    /// Kernel interface name.
    pub name: String,
    /// natgw's own address on the outside link: source of ICMP errors natgw emits towards the
    /// outside, answered to pings.
    pub address: Ipv4Addr,
    /// Next hop for all outbound traffic (the upstream router).
    pub gateway: Ipv4Addr,
    /// Addresses whose traffic is passed to the kernel untouched (SSH, BGP, ...). The XDP program
    /// passes them before any NAT processing.
    pub management: Vec<Ipv4Addr>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct InsideInterface {
    pub name: String,
    /// Addresses on the inside link(s) passed to the kernel untouched.
    pub management: Vec<Ipv4Addr>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum XdpMode {
    /// Native (driver) mode, falling back to generic (skb) mode.
    Auto,
    Native,
    Generic,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PollMode {
    /// Spin without ever sleeping: lowest latency, burns the core.
    Busy,
    /// Spin while there is traffic, back off to sleeping in poll(2) when idle.
    Adaptive,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Worker {
    /// CPU core the poll loop is pinned to.
    pub core: usize,
    /// NIC queue this worker owns on every interface.
    pub queue: u32,
}

/// The least `dataplane.spin_max_us`, and the worker's shortest spin window (`SPIN_MIN_NS`):
/// 200 µs covers the round trip behind the gateway on the test topologies.
pub const SPIN_MAX_US_FLOOR: u32 = 200;

#[derive(Clone, Debug, PartialEq)]
pub struct Dataplane {
    pub workers: Vec<Worker>,
    pub xdp_mode: XdpMode,
    pub poll: PollMode,
    /// Adaptive polling: the longest the loop keeps polling after its last frame before it
    /// sleeps (µs). Traffic with shorter gaps never waits for a wake-up.
    pub spin_max_us: u32,
    /// Frames per receive/transmit batch.
    pub batch_size: usize,
    /// Descriptors per AF_XDP ring (power of two).
    pub ring_size: u32,
    /// UMEM frames per worker (power of two).
    pub umem_frames: u32,
    /// Capacity of each inter-worker handoff queue, in frames.
    pub handoff_queue: usize,
    /// Forward without translating (benchmark baseline): frames are routed but not NATed.
    pub forward_only: bool,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Sessions {
    /// Session slots per worker, allocated at start-up.
    pub capacity_per_core: u32,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Fragments {
    /// Concurrent fragmented datagrams tracked per worker.
    pub max_datagrams: u32,
    /// Out-of-order fragments held (waiting for the first fragment) per worker.
    pub max_held: u32,
    /// How long a fragment table entry / held fragment lives, seconds.
    pub timeout: u32,
}

/// Where the CLI finds natgw by default; systemd's `RuntimeDirectory=natgw` creates /run/natgw
/// (deploy/natgw.service).
pub const DEFAULT_SOCKET: &str = "/run/natgw/natgw.sock";

#[derive(Clone, Debug, PartialEq)]
pub struct Control {
    /// Listen address of the HTTP API and Prometheus endpoint.
    pub listen: std::net::SocketAddr,
    /// The Unix socket the CLI talks to; every endpoint is served there (its file mode and
    /// group are the authentication).
    pub socket: std::path::PathBuf,
    /// Group of the socket (mode 0660), by name or number; None: natgw's own group.
    pub socket_group: Option<String>,
    /// File holding the bearer token that opens the non-public endpoints over TCP; None:
    /// over TCP only /metrics, /healthz and /readyz answer.
    pub token_file: Option<std::path::PathBuf>,
    /// Connections open at once, per listener; more are closed at once (after idle ones).
    pub max_connections: u32,
    /// Largest request head (request line and headers), bytes.
    pub max_header_bytes: u32,
    /// Largest request body, bytes.
    pub max_body_bytes: u32,
    /// One deadline for a whole request, from its first byte to the end of the answer, s.
    pub request_timeout: u32,
    /// How long a connection may wait for its (next) request, seconds.
    pub idle_timeout: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PortPolicy {
    /// Keep the inside port when free, else a bounded random search.
    PreserveThenRandom,
    /// Always a bounded random search (RFC 6056 style).
    Random,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mapping {
    EndpointIndependent,
    AddressDependent,
    AddressAndPortDependent,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filtering {
    EndpointIndependent,
    AddressDependent,
    AddressAndPortDependent,
}

/// A static mapping's protocol: the crate's one protocol type; the parser accepts "tcp"
/// and "udp" (`display::PROTOCOLS`).
pub use crate::packet::ipv4::Protocol;

#[derive(Clone, Debug, PartialEq)]
pub struct StaticMapping {
    pub protocol: Protocol,
    pub external: std::net::SocketAddrV4,
    pub internal: std::net::SocketAddrV4,
}

#[derive(Clone, Debug, PartialEq)]
pub struct OneToOne {
    pub external: Ipv4Addr,
    pub internal: Ipv4Addr,
}

/// A realm's mappings file. Its entries follow the inline ones in `Realm::static_mappings`
/// and `Realm::one_to_one`, from `statics_from` and `one_to_one_from` on.
#[derive(Clone, Debug, PartialEq)]
pub struct MappingsFile {
    /// As written in the configuration: error messages name entries by it
    /// (`mappings-office.toml: static[12].external`) and `to_toml` writes it back.
    pub name: String,
    /// Resolved against the configuration file's directory.
    pub path: std::path::PathBuf,
    pub statics_from: usize,
    pub one_to_one_from: usize,
}

impl MappingsFile {
    /// The key path of entry `j` of `key` ("static" or "one_to_one") of realm `i`, whose
    /// mappings file is `file`: in the configuration (`realm[0].static[3]`) or in the file
    /// (`mappings-office.toml: static[12]`, counting from the file's first entry).
    pub fn field(file: Option<&MappingsFile>, i: usize, key: &str, j: usize) -> String {
        let from = file.map(|m| match key {
            "static" => m.statics_from,
            _ => m.one_to_one_from,
        });
        match (file, from) {
            (Some(m), Some(from)) if j >= from => format!("{}: {key}[{}]", m.name, j - from),
            _ => format!("realm[{i}].{key}[{j}]"),
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct Route {
    pub prefix: Ipv4Net,
    pub via: Ipv4Addr,
}

/// Idle timeouts, seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Timeouts {
    pub udp: u32,
    pub tcp_established: u32,
    pub tcp_transitory: u32,
    pub icmp: u32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

#[derive(Clone, Debug, PartialEq)]
pub struct Ports {
    pub policy: PortPolicy,
    /// Range dynamic ports >= 1024 are taken from. Inside ports < 1024 map into 1-1023 (port class
    /// is kept, RFC 4787 REQ-3).
    pub range: PortRange,
    /// Most external ports (all protocols together) one inside host may hold at once.
    pub per_host_limit: u32,
}

/// Per-realm bounds on state an attacker (or one busy host) could otherwise grow until the
/// session table is full. Both are per worker core, like the table itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Most sessions one inside host may hold at once (RFC 6888 REQ-4), whatever opened
    /// them, except those counted by `inbound_per_mapping`.
    pub per_host_sessions: u32,
    /// Most sessions traffic from outside may open through one static mapping or one 1:1
    /// mapping (a SYN flood at a port forward stops there).
    pub inbound_per_mapping: u32,
}

/// A tenant: inside networks identified by an inside interface and optional VLAN, with their own
/// external pool. Several realms may use the same inside prefixes.
#[derive(Clone, Debug, PartialEq)]
pub struct Realm {
    pub name: String,
    /// Name of the inside interface this realm lives on.
    pub interface: String,
    /// 802.1Q VLAN id on that interface; None = untagged.
    pub vlan: Option<u16>,
    pub prefixes: Vec<Ipv4Net>,
    /// natgw's own address on this realm's inside link (the hosts' default gateway): answers
    /// pings and is the source of ICMP errors natgw sends inside.
    pub gateway: Option<Ipv4Addr>,
    pub pool: Vec<AddrRange>,
    /// Inline entries first, then those of `mappings_file` (see [`MappingsFile`]).
    pub static_mappings: Vec<StaticMapping>,
    pub one_to_one: Vec<OneToOne>,
    /// `mappings_file`: more static and 1:1 mappings, in a file of their own (large tables,
    /// and the file the API's mapping edits are written back to).
    pub mappings_file: Option<MappingsFile>,
    /// Inside routes: prefixes not directly on the inside link, reached via an inside router.
    pub routes: Vec<Route>,
    pub ports: Ports,
    pub limits: Limits,
    pub mapping: Mapping,
    pub filtering: Filtering,
    pub inbound_refresh: bool,
    pub hairpinning: bool,
    /// TCP MSS clamping of SYN and SYN-ACK segments through this realm (both directions).
    pub mss_clamp: MssClamp,
    pub timeouts: Timeouts,
    /// `[realm.log]`: the realm's NAT event log (off by default).
    pub log: RealmLog,
}

/// `mss_clamp`: lower the MSS option of TCP SYN and SYN-ACK segments (PPPoE and tunnel
/// uplinks, whose MTU is below what the hosts on either side assume).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MssClamp {
    Off,
    /// The smaller of the outside link's and the realm's link's MTU, less 40 bytes of IPv4
    /// and TCP header.
    Auto,
    /// At most this many bytes.
    Value(u16),
}
