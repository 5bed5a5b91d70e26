//! Per-worker counters. Each worker is the only writer of its own set, so an increment is a
//! relaxed load + store (no locked read-modify-write on the hot path); the management thread
//! reads them at any time and sums over workers.

use super::types::DropReason;
use crate::packet::ipv4::Protocol;
use crossbeam::utils::CachePadded;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// Realm ids counted per realm: twice the configuration's 4096 realms, since a reload gives a
/// new realm an id that no realm of the previous configuration held (`rules::realm_ids`), so
/// ids stay below that. A session of a realm id beyond it is counted in the totals only.
pub const REALM_SLOTS: usize = 8192;

/// The protocols sessions are counted by, in slot order.
pub const SESSION_PROTOCOLS: [Protocol; 3] = [Protocol::TCP, Protocol::UDP, Protocol::ICMP];

/// Sessions of one realm per protocol (`SESSION_PROTOCOLS` order): created and removed
/// (expired, evicted, cleared, reset) so far; the difference is the sessions in the table.
/// Two monotonic counters instead of a gauge: each changes at exactly one place, and
/// the gauge comes out of a subtraction at scrape time.
#[derive(Default, Debug)]
pub struct RealmSessions {
    pub created: [Counter; 3],
    pub removed: [Counter; 3],
}

#[inline(always)]
fn proto_slot(p: Protocol) -> usize {
    match p {
        Protocol::TCP => 0,
        Protocol::UDP => 1,
        _ => 2,
    }
}

#[derive(Default, Debug)]
pub struct Counter(AtomicU64);

impl Counter {
    #[inline(always)]
    pub fn add(&self, n: u64) {
        // Single writer: no lost updates, and readers only ever see whole values.
        self.0.store(self.0.load(Relaxed).wrapping_add(n), Relaxed);
    }
    #[inline(always)]
    pub fn inc(&self) {
        self.add(1)
    }
    pub fn get(&self) -> u64 {
        self.0.load(Relaxed)
    }
    /// For gauges written by their single owner.
    pub fn set(&self, v: u64) {
        self.0.store(v, Relaxed)
    }
}

macro_rules! counters {
    ($($name:ident: $help:literal,)*) => {
        #[derive(Debug)]
        pub struct Counters {
            $(#[doc = $help] pub $name: Counter,)*
            /// Padded (crossbeam's CachePadded, 128-byte aligned): the struct then starts and
            /// ends on cache lines of its own, which no other worker's counters (or the Arc's
            /// reference counts, touched whenever the management plane clones its handle) share.
            pub drops: CachePadded<[Counter; DropReason::COUNT]>,
            /// Per realm id (below [`REALM_SLOTS`]): sessions created and removed.
            pub realm_sessions: Box<[RealmSessions]>,
            /// The NAT event log's ring and masks (`nat::eventlog`): off until configured.
            pub eventlog: super::eventlog::Sink,
        }
        // By hand: `Default` for arrays stops at 32 elements.
        impl Default for Counters {
            fn default() -> Self {
                Counters {
                    $($name: Counter::default(),)*
                    drops: CachePadded::new(std::array::from_fn(|_| Counter::default())),
                    realm_sessions: (0..REALM_SLOTS).map(|_| RealmSessions::default()).collect(),
                    eventlog: Default::default(),
                }
            }
        }
        impl Counters {
            /// (name, help, value) of every plain counter, for exposition.
            pub fn each(&self, mut f: impl FnMut(&'static str, &'static str, u64)) {
                $(f(stringify!($name), $help, self.$name.get());)*
            }
        }
    };
}

counters! {
    rx_frames: "frames given to the engine",
    in2out: "frames translated inside to outside",
    out2in: "frames translated outside to inside",
    hairpinned: "frames translated back inwards after an inside-to-external hop",
    icmp_errors_translated: "ICMP error messages translated (both directions)",
    replies: "frames answered by the engine itself (echo replies, ICMP errors)",
    to_kernel: "frames passed to the kernel",
    handoffs: "frames handed to the core owning their flow",
    fragments_translated: "non-first fragments translated via the fragment table",
    fragments_held: "out-of-order fragments held for their first fragment",
    fragmented: "datagrams larger than their egress link's MTU, fragmented to fit (RFC 791)",
    fragments_made: "fragments sent of the datagrams natgw fragmented",
    mss_clamped: "TCP SYN and SYN-ACK segments whose MSS option was lowered (mss_clamp)",
    sessions_created: "sessions created",
    sessions_expired: "sessions removed after their idle timeout",
    sessions_evicted_transitory: "unestablished or closing TCP sessions evicted to make room in a full table (or under an inbound limit)",
    sessions_evicted_idle: "idle UDP/ICMP sessions evicted to make room in a full table",
    sessions_deleted: "sessions removed by the operator (DELETE /sessions, POST /sessions/clear)",
    mappings_created: "address/port mappings created",
    sessions_removed_by_reload: "sessions removed because a reload removed their realm, pool address, port forward or 1:1 mapping",
    sessions_active: "sessions in the table (gauge)",
    mappings_active: "mappings in the table (gauge)",
    forwarded_untranslated: "frames routed without translation (forward-only mode)",
}

impl Counters {
    #[inline(always)]
    pub fn dropped(&self, r: DropReason) {
        self.drops[r as usize].inc();
    }
    pub fn drops_of(&self, r: DropReason) -> u64 {
        self.drops[r as usize].get()
    }
    pub fn total_drops(&self) -> u64 {
        self.drops.iter().map(Counter::get).sum()
    }

    /// A session of `realm` (id) and `proto` was created (besides `sessions_created`).
    #[inline(always)]
    pub fn session_opened(&self, realm: u16, proto: Protocol) {
        if let Some(r) = self.realm_sessions.get(usize::from(realm)) {
            r.created[proto_slot(proto)].inc();
        }
    }

    /// A session of `realm` and `proto` left the table, for whatever reason.
    #[inline(always)]
    pub fn session_closed(&self, realm: u16, proto: Protocol) {
        if let Some(r) = self.realm_sessions.get(usize::from(realm)) {
            r.removed[proto_slot(proto)].inc();
        }
    }

    /// (created, in the table now) of `realm` and `SESSION_PROTOCOLS[p]`.
    pub fn realm_sessions_of(&self, realm: u16, p: usize) -> (u64, u64) {
        match self.realm_sessions.get(usize::from(realm)) {
            // Saturating: two relaxed loads may see the counters at slightly different
            // moments.
            Some(r) => {
                let removed = r.removed[p].get();
                let created = r.created[p].get();
                (created, created.saturating_sub(removed))
            }
            None => (0, 0),
        }
    }
}
