//! Sessions (one per 5-tuple) and mappings (one per inside endpoint, shared by that endpoint's
//! sessions under endpoint-independent mapping), with their lookup keys and the TCP state machine.
//!
//! Memory: every table is sized from `sessions.capacity_per_core` at start-up. Per session slot
//! that is the 40-byte `Session`, two 32-byte index slots (inside and outside view, each with
//! the fast-path data of its direction) at <= 50 % load, a
//! mapping slot and its two index slots, a host slot and its index slot, and the
//! address-dependent filter slot, plus fixed costs (port bitmaps, fragment table, the interned
//! external addresses: at most 65535, `store::extaddr`): about 376 bytes per slot at the default
//! capacity (`Engine::memory_bytes`; the test `memory_per_session` prints it).

use super::table::{Key, hash_words};
use crate::packet::ipv4::Protocol;

pub const NONE: u32 = u32::MAX;

/// Inside view of a session: (realm, protocol, inside addr:port, remote addr:port). For ICMP
/// queries the "port" is the query identifier and the remote port is 0.
///
/// `repr(C)` in this order packs the fields into two little-endian words that the compiler
/// loads whole, so comparing keys is two XORs and one branch (see [`InKey::words`]).
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct InKey {
    pub in_addr: u32,
    pub rem_addr: u32,
    pub in_port: u16,
    pub rem_port: u16,
    pub realm: u16,
    pub proto: Protocol,
}

impl InKey {
    #[inline(always)]
    fn words(&self) -> [u64; 2] {
        [
            self.in_addr as u64 | (self.rem_addr as u64) << 32,
            self.in_port as u64
                | (self.rem_port as u64) << 16
                | (self.realm as u64) << 32
                | (self.proto.0 as u64) << 48,
        ]
    }
}

impl PartialEq for InKey {
    /// Branch-free over the fields: a table lookup compares against a slot that may still be
    /// on its way from memory, and one predictable branch beats five.
    #[inline(always)]
    fn eq(&self, o: &InKey) -> bool {
        let (a, b) = (self.words(), o.words());
        ((a[0] ^ b[0]) | (a[1] ^ b[1])) == 0
    }
}

impl Eq for InKey {}

impl Key for InKey {
    /// Protocol 0: sessions are TCP, UDP or ICMP.
    const EMPTY: InKey = InKey {
        realm: 0,
        proto: Protocol(0),
        in_port: 0,
        rem_port: 0,
        in_addr: 0,
        rem_addr: 0,
    };
    #[inline(always)]
    fn hash(&self) -> u64 {
        hash_words(&self.words())
    }
}

/// Outside view of a session: (protocol, external addr:port, remote addr:port). External
/// addresses belong to exactly one realm, so no realm is needed. Laid out like [`InKey`].
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct OutKey {
    pub ext_addr: u32,
    pub rem_addr: u32,
    pub ext_port: u16,
    pub rem_port: u16,
    pub proto: Protocol,
}

impl OutKey {
    #[inline(always)]
    fn words(&self) -> [u64; 2] {
        [
            self.ext_addr as u64 | (self.rem_addr as u64) << 32,
            self.ext_port as u64 | (self.rem_port as u64) << 16 | (self.proto.0 as u64) << 32,
        ]
    }
}

impl PartialEq for OutKey {
    /// Branch-free, as for [`InKey`].
    #[inline(always)]
    fn eq(&self, o: &OutKey) -> bool {
        let (a, b) = (self.words(), o.words());
        ((a[0] ^ b[0]) | (a[1] ^ b[1])) == 0
    }
}

impl Eq for OutKey {}

impl Key for OutKey {
    const EMPTY: OutKey = OutKey {
        proto: Protocol(0),
        ext_port: 0,
        rem_port: 0,
        ext_addr: 0,
        rem_addr: 0,
    };
    #[inline(always)]
    fn hash(&self) -> u64 {
        hash_words(&self.words())
    }
}

/// A mapping's inside key. Under endpoint-independent mapping the remote fields are 0; under
/// address-(and-port-)dependent mapping they hold the remote address (and port).
pub type MapInKey = InKey;

/// A mapping's outside key: (protocol, external address, external port).
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct MapOutKey {
    pub proto: Protocol,
    pub port: u16,
    pub addr: u32,
}

impl Key for MapOutKey {
    const EMPTY: MapOutKey = MapOutKey {
        proto: Protocol(0),
        port: 0,
        addr: 0,
    };
    #[inline(always)]
    fn hash(&self) -> u64 {
        hash_words(&[(self.proto.0 as u64) << 48 | (self.port as u64) << 32 | self.addr as u64])
    }
}

/// Address-dependent filtering: how many sessions of mapping `map` talk to `rem_addr`.
#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
pub struct FilterKey {
    pub map: u32,
    pub rem_addr: u32,
}

impl Key for FilterKey {
    /// Only sessions with a mapping are counted, and NONE is no mapping's index.
    const EMPTY: FilterKey = FilterKey {
        map: NONE,
        rem_addr: 0,
    };
    #[inline(always)]
    fn hash(&self) -> u64 {
        hash_words(&[(self.map as u64) << 32 | self.rem_addr as u64])
    }
}

/// TCP tracking, after RFC 6146 section 3.5.2 / RFC 7857 section 2.2: a connection is
/// established once both sides sent a SYN; it is transitory while opening, once both sides
/// sent a FIN, and after a RST (kept for the transitory timeout, not removed).
pub mod tcp {
    pub const SYN_OUT: u16 = 1;
    pub const SYN_IN: u16 = 2;
    pub const FIN_OUT: u16 = 4;
    pub const FIN_IN: u16 = 8;
    pub const RST: u16 = 16;
    /// Data seen in both directions without SYNs (session picked up mid-stream).
    pub const SEEN_OUT: u16 = 32;
    pub const SEEN_IN: u16 = 64;
    /// After both SYNs, a segment with ACK and without SYN (the handshake's third segment),
    /// or a SYN-ACK from both sides (a simultaneous open). Until then a connection is
    /// opening, not established (conntrack's SYN_RECV): a spoofed SYN that a listening
    /// server answers with its SYN-ACK gets no further than that.
    pub const ACKED: u16 = 128;
    /// A SYN-ACK seen from inside / from outside.
    pub const SYNACK_OUT: u16 = 256;
    pub const SYNACK_IN: u16 = 512;

    /// An outbound segment with ACK went through the full path: the `InVal::ack` of the
    /// session is the inside host's receive point (see there). Kept across RST and FIN.
    pub const ACK_OUT: u16 = 1 << 10;
    /// Bits 12..16: 14 minus the window scale the inside host announced in its SYN or
    /// SYN-ACK (RFC 7323), so that the default 0 (no SYN of it seen: a session picked up
    /// mid-stream, or opened from outside and not answered yet) means the largest, 14.
    const WS_SHIFT: u16 = 12;
    const WS_MASK: u16 = 0xf << WS_SHIFT;

    const SYNS: u16 = SYN_OUT | SYN_IN;

    /// The fields of a TCP segment that the state tracking reads.
    #[derive(Clone, Copy, Debug, Default)]
    pub struct Seg {
        pub flags: u8,
        pub seq: u32,
        pub ack: u32,
        /// Payload bytes (SYN and FIN not counted).
        pub payload: u16,
        /// A SYN's window scale option (None: no option, the scale is 0).
        pub wscale: Option<u8>,
    }

    /// The window scale the inside host announced (14 if none of its SYNs was seen).
    pub fn wscale(s: u16) -> u8 {
        (crate::packet::tcp::MAX_WINDOW_SCALE).saturating_sub(((s & WS_MASK) >> WS_SHIFT) as u8)
    }

    /// Records the window scale of an outbound SYN (`None`: it had no option, scale 0).
    pub fn set_wscale(s: u16, ws: Option<u8>) -> u16 {
        let max = crate::packet::tcp::MAX_WINDOW_SCALE;
        let field = (max - ws.unwrap_or(0).min(max)) as u16;
        (s & !WS_MASK) | field << WS_SHIFT
    }

    /// Whether an inbound segment may change the state (and refresh the session): anything
    /// but RST and FIN may; those only if acceptable to the inside host, which receives them.
    /// `rcv` is the session's `InVal::ack`. A spoofed RST or FIN from off the path has to
    /// guess a sequence number in the window (RFC 5961 section 3; conntrack's
    /// `tcp_in_window` does the same for every segment).
    ///
    /// - Synchronised (`ACK_OUT`): `rcv` is the highest ACK the inside host sent, i.e. what
    ///   its peer knows of its RCV.NXT. Acceptable if `seq - rcv` (mod 2^32) is at most
    ///   `65535 << wscale`: the largest window the host can have advertised, so no legitimate
    ///   RST is refused whatever window it really advertised (its peer sends nothing past
    ///   the right edge `rcv + window`, and a RST's sequence number is its SND.NXT, or the
    ///   ACK of the segment it answers). A blind attacker hits one value in 2^32 / (65535 <<
    ///   wscale): 65536 tries for an unscaled window, 512 at Linux's usual scale 7. Tracking
    ///   the advertised window itself would tighten this but needs 16 more bits in the slot.
    ///   A FIN is also acceptable if it ends at most that far below `rcv`: a retransmission
    ///   of a FIN the inside host acknowledged already (its ACK was lost), which it has to
    ///   see to acknowledge again.
    /// - After the inside host's SYN only (`SYN_OUT`, no `ACK_OUT`): `rcv` is its ISN + 1.
    ///   RFC 9293 SYN-SENT accepts a RST only with an ACK of exactly that; so does this,
    ///   also for a FIN (none is valid before the handshake).
    /// - Nothing seen from the inside host (a session opened from outside, not answered
    ///   yet): no window to check against; the session is transitory anyway and a host in
    ///   LISTEN ignores a RST (RFC 9293 section 3.10.7.2), so the segment is accepted.
    pub fn inbound_acceptable(s: u16, rcv: u32, seg: &Seg) -> bool {
        use crate::packet::tcp::flags as f;
        if seg.flags & (f::RST | f::FIN) == 0 {
            return true;
        }
        if s & ACK_OUT != 0 {
            let w = (u16::MAX as u32) << wscale(s);
            if seg.seq.wrapping_sub(rcv) <= w {
                return true;
            }
            let end = seg.seq.wrapping_add(u32::from(seg.payload) + 1);
            seg.flags & f::RST == 0 && rcv.wrapping_sub(end) <= w
        } else if s & SYN_OUT != 0 {
            seg.flags & f::ACK != 0 && seg.ack == rcv
        } else {
            true
        }
    }

    pub fn is_established(s: u16) -> bool {
        s & RST == 0
            && (s & (SYNS | ACKED) == SYNS | ACKED
                || s & SYNS == 0 && s & (SEEN_OUT | SEEN_IN) == SEEN_OUT | SEEN_IN)
            && s & (FIN_OUT | FIN_IN) != FIN_OUT | FIN_IN
    }

    /// Whether a segment without SYN, FIN or RST in a direction already `seen` can change
    /// nothing: the fast path may take it. Not while a handshake is still open (its third
    /// segment is one of those).
    pub fn plain_changes_nothing(s: u16, seen: u16) -> bool {
        s & seen != 0 && (s & SYNS == 0 || s & ACKED != 0)
    }

    /// Apply a segment's flags (`outbound`: inside to outside).
    pub fn update(s: u16, flags: u8, outbound: bool) -> u16 {
        use crate::packet::tcp::flags as f;
        let mut s = s;
        if flags & f::RST != 0 {
            return s | RST;
        }
        if flags & f::SYN != 0 {
            // A new SYN after a RST or a full close re-opens (port reuse by the same endpoints).
            if s & RST != 0 || s & (FIN_OUT | FIN_IN) == FIN_OUT | FIN_IN {
                s = 0;
            }
            s |= if outbound { SYN_OUT } else { SYN_IN };
            if flags & f::ACK != 0 {
                s |= if outbound { SYNACK_OUT } else { SYNACK_IN };
                if s & (SYNACK_OUT | SYNACK_IN) == SYNACK_OUT | SYNACK_IN {
                    s |= ACKED;
                }
            }
        } else if flags & f::ACK != 0 && s & SYNS == SYNS {
            s |= ACKED;
        }
        if flags & f::FIN != 0 {
            s |= if outbound { FIN_OUT } else { FIN_IN };
        }
        s | if outbound { SEEN_OUT } else { SEEN_IN }
    }
}

pub mod flags {
    /// Session created by an inbound packet (static mapping, 1:1, endpoint-independent filter).
    pub const INBOUND: u8 = 1;
    /// Counted in the address-dependent filter table.
    pub const FILTER_COUNTED: u8 = 2;
    /// An inside-to-inside flow through an external address (hairpinning).
    pub const HAIRPIN: u8 = 4;
    /// Counted in its inside host's `HostSlot::sessions` (every session but those below).
    pub const HOST_COUNTED: u8 = 8;
    /// Opened from outside through a static or 1:1 mapping: counted against that mapping's
    /// inbound limit instead (`Store::inbound`), not against the host.
    pub const INBOUND_COUNTED: u8 = 16;
    /// A 1:1 mapping's session (its inbound count is per inside address, any protocol).
    pub const ONE_TO_ONE: u8 = 32;
    /// In its mapping's list of transitory inbound TCP sessions (`store::limits`): an
    /// `INBOUND_COUNTED` TCP session that is not established.
    pub const EVICT_LISTED: u8 = 64;
}

/// Fast-path data of a session kept in its `in_tab` slot, next to the key: an established
/// outbound packet reads and writes only this slot (and the small, hot table of external
/// addresses), never the `Session`.
///
/// 16 bytes, so that key and value fill a 32-byte slot, two to a cache line (`mem.rs`). The
/// external address is held as a 16-bit index into the store's interning table
/// (`store::extaddr`) to make room for `ack`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct InVal {
    /// Session index and fast-path flags, see [`slot`].
    pub sess: u32,
    /// The external address, as its index in the store's table of external addresses.
    pub ext_idx: u16,
    pub ext_port: u16,
    /// TCP: the receive side of the inside host, for the check of inbound RST and FIN
    /// segments (`tcp::inbound_acceptable`). With `tcp::ACK_OUT` in the session's state, the
    /// highest acknowledgement number the inside host sent (its RCV.NXT as its peer last
    /// heard it); before that, after its SYN, its ISN + 1. Written by both in2out paths from
    /// every outbound segment with ACK: the fast path already writes this slot (`expires`),
    /// so tracking it costs no cache line.
    pub ack: u32,
    /// Deadline as refreshed by outbound packets (see [`Session::expires`]).
    pub expires: u32,
}

const _: () = assert!(std::mem::size_of::<InVal>() == 16);

/// Fast-path data of a session kept in its `out_tab` slot (the inbound twin of [`InVal`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutVal {
    pub sess: u32,
    pub in_addr: u32,
    pub in_port: u16,
    pub realm: u16,
    /// Deadline as refreshed by inbound packets.
    pub expires: u32,
}

/// The `sess` word of an index slot: the session index in the low bits, flags in the top.
pub mod slot {
    /// Packets of this direction may take the fast path: not a hairpin (outbound), and for
    /// TCP this direction was already seen, so a segment without SYN/FIN/RST changes no state.
    pub const FAST: u32 = 1 << 31;
    /// TCP only: established (the established timeout applies, else the transitory one).
    pub const EST: u32 = 1 << 30;
    /// Session capacity is at most 2^26 (config), so indexes never reach the flag bits.
    pub const INDEX: u32 = (1 << 30) - 1;

    /// May the fast path take a packet whose slot holds `sess` and `expires`, at `now`?
    #[inline(always)]
    pub fn fast_live(sess: u32, expires: u32, now: u32) -> bool {
        sess & FAST != 0 && expires > now
    }
}

/// The protocol of a free session or mapping slot (0, IPv6 hop-by-hop options, is never
/// translated).
pub const FREE: Protocol = Protocol(0);

/// A session slot. `proto == FREE` marks a free slot.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C)]
pub struct Session {
    pub in_addr: u32,
    pub ext_addr: u32,
    pub rem_addr: u32,
    pub in_port: u16,
    pub ext_port: u16,
    pub rem_port: u16,
    pub realm: u16,
    /// TCP state, see [`tcp`].
    pub tcp: u16,
    pub proto: Protocol,
    pub flags: u8,
    /// Mapping index, or NONE for static and 1:1 sessions.
    pub map: u32,
    /// Seconds (engine clock).
    pub created: u32,
    /// A lower bound of the deadline: the fast path refreshes the deadlines in the two index
    /// slots only. The real deadline is the latest of the three (`Engine::deadline`); the
    /// slow path writes all three at once, which is also how a TCP state change shortens it.
    pub expires: u32,
}

impl Session {
    pub fn in_key(&self) -> InKey {
        InKey {
            realm: self.realm,
            proto: self.proto,
            in_port: self.in_port,
            rem_port: self.rem_port,
            in_addr: self.in_addr,
            rem_addr: self.rem_addr,
        }
    }
    pub fn out_key(&self) -> OutKey {
        OutKey {
            proto: self.proto,
            ext_port: self.ext_port,
            rem_port: self.rem_port,
            ext_addr: self.ext_addr,
            rem_addr: self.rem_addr,
        }
    }
}

/// A dynamic mapping slot. `proto == FREE` marks a free slot.
#[derive(Clone, Copy, Debug, Default)]
pub struct MappingSlot {
    pub key: MapInKey,
    pub ext_addr: u32,
    pub ext_port: u16,
    pub proto: Protocol,
    pub sessions: u32,
    pub host: u32,
    /// Address-dependent filtering: sessions to one remote address are counted here, in the
    /// mapping, and only other remotes in the filter table (a new mapping's first session,
    /// the common case, then costs no filter-table access).
    pub rem0: u32,
    pub rem0_sessions: u32,
}

/// Per inside host: its paired external address (meaningful while it holds mappings), how
/// many mappings and how many sessions it holds. The slot lives while either count is
/// positive.
#[derive(Clone, Copy, Debug, Default)]
pub struct HostSlot {
    pub realm: u16,
    /// The paired external address (an address, not a pool position: a reload may move
    /// or remove pool addresses).
    pub ext_addr: u32,
    pub addr: u32,
    pub mappings: u32,
    /// Sessions with `flags::HOST_COUNTED` (RFC 6888 REQ-4: limit state per subscriber).
    pub sessions: u32,
}

#[cfg(test)]
mod tests {
    use super::tcp::*;
    use crate::packet::tcp::flags as f;

    #[test]
    fn three_way_handshake_establishes() {
        let s = update(0, f::SYN, true);
        assert!(!is_established(s));
        let s = update(s, f::SYN | f::ACK, false);
        assert!(
            !is_established(s),
            "SYN and SYN-ACK alone: still opening (SYN_RECV)"
        );
        let s = update(s, f::ACK, true);
        assert!(is_established(s));
    }

    #[test]
    fn a_spoofed_syn_answered_by_a_listening_server_is_not_established() {
        // Outside sends a SYN (never its ACK); the inside server answers, retransmitting.
        let mut s = update(0, f::SYN, false);
        for _ in 0..3 {
            s = update(s, f::SYN | f::ACK, true);
            assert!(!is_established(s));
            assert!(
                !plain_changes_nothing(s, SEEN_IN),
                "the ACK must reach update"
            );
        }
        assert!(is_established(update(s, f::ACK, false)));
    }

    #[test]
    fn simultaneous_open_establishes() {
        let s = update(0, f::SYN, true);
        let s = update(s, f::SYN, false);
        assert!(!is_established(s));
        let s = update(s, f::SYN | f::ACK, true);
        assert!(!is_established(s));
        let s = update(s, f::SYN | f::ACK, false);
        assert!(
            is_established(s),
            "both SYN-ACKs complete a simultaneous open"
        );
    }

    #[test]
    fn fin_both_ways_is_transitory_but_one_fin_is_not() {
        let s = update(update(0, f::SYN, true), f::SYN | f::ACK, false);
        let s = update(s, f::FIN | f::ACK, true);
        assert!(
            is_established(s),
            "half-close keeps the established timeout"
        );
        let s = update(s, f::FIN | f::ACK, false);
        assert!(!is_established(s));
    }

    #[test]
    fn rst_is_transitory_and_syn_reopens() {
        let s = update(update(0, f::SYN, true), f::SYN | f::ACK, false);
        let s = update(s, f::RST, false);
        assert!(!is_established(s));
        let s = update(s, f::SYN, true);
        assert_eq!(s & RST, 0);
        let s = update(s, f::SYN | f::ACK, false);
        assert!(!is_established(s));
        let s = update(s, f::ACK, true);
        assert!(is_established(s));
    }

    #[test]
    fn mid_stream_pickup_needs_both_directions() {
        let s = update(0, f::ACK, true);
        assert!(!is_established(s));
        assert!(is_established(update(s, f::ACK, false)));
    }
}
