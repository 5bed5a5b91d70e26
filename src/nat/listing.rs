//! Listing and deleting sessions for the management plane in bounded steps.
//!
//! A worker owns its table and forwards between two management requests, so a listing of a
//! million sessions must not be one long walk: each step visits at most [`STEP_SLOTS`]
//! session slots and [`STEP_LIVE`] live sessions and returns a cursor (the next slot) that
//! the next request resumes from. The management plane sends one step at a time and the
//! worker answers it between two batches, so forwarding pauses for one step at most
//! (about 0.2 ms at 1M sessions: bench/README.md, "Session listing in bounded steps").
//!
//! A listing is live, not a snapshot: a session created or removed while the cursor moves
//! may be listed or not; every session that lives from the first step to the last is
//! listed exactly once (slots do not move).

use super::session::Session;
use crate::packet::ipv4::Protocol;

/// Session slots one step visits at most.
pub const STEP_SLOTS: u32 = 4096;
/// Live sessions one step examines at most (each costs two table lookups for its deadline).
pub const STEP_LIVE: u32 = 256;

/// Which sessions a listing or deletion is about. `None` matches anything.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// Stable realm id.
    pub realm: Option<u16>,
    pub proto: Option<Protocol>,
    pub inside: Option<Endpoint>,
    pub external: Option<Endpoint>,
    pub remote: Option<Endpoint>,
}

/// An address, and optionally a port (or ICMP query id).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Endpoint {
    pub addr: u32,
    pub port: Option<u16>,
}

impl Endpoint {
    #[inline]
    fn matches(&self, addr: u32, port: u16) -> bool {
        self.addr == addr && self.port.is_none_or(|p| p == port)
    }
}

impl Filter {
    pub fn matches(&self, s: &Session) -> bool {
        self.realm.is_none_or(|r| r == s.realm)
            && self.proto.is_none_or(|p| p == s.proto)
            && self.inside.is_none_or(|e| e.matches(s.in_addr, s.in_port))
            && self
                .external
                .is_none_or(|e| e.matches(s.ext_addr, s.ext_port))
            && self
                .remote
                .is_none_or(|e| e.matches(s.rem_addr, s.rem_port))
    }
}

/// Where a step ended: the slot to resume from, or `None` when the table has been walked.
pub type Cursor = Option<u32>;

#[cfg(test)]
mod tests {
    use super::*;

    fn session(realm: u16, proto: Protocol, inside: (u32, u16), rem: (u32, u16)) -> Session {
        Session {
            in_addr: inside.0,
            in_port: inside.1,
            ext_addr: 0xc0a8_010a,
            ext_port: 40000,
            rem_addr: rem.0,
            rem_port: rem.1,
            realm,
            proto,
            ..Session::default()
        }
    }

    #[test]
    fn filter_fields() {
        let s = session(1, Protocol::UDP, (0x0a00_0002, 5000), (0x0808_0808, 53));
        assert!(Filter::default().matches(&s));
        let by = |f: Filter| f.matches(&s);
        assert!(by(Filter {
            realm: Some(1),
            ..Filter::default()
        }));
        assert!(!by(Filter {
            realm: Some(0),
            ..Filter::default()
        }));
        assert!(!by(Filter {
            proto: Some(Protocol::TCP),
            ..Filter::default()
        }));
        let ep = |addr, port| Some(Endpoint { addr, port });
        assert!(by(Filter {
            inside: ep(0x0a00_0002, None),
            ..Filter::default()
        }));
        assert!(by(Filter {
            inside: ep(0x0a00_0002, Some(5000)),
            remote: ep(0x0808_0808, Some(53)),
            external: ep(0xc0a8_010a, Some(40000)),
            ..Filter::default()
        }));
        assert!(!by(Filter {
            inside: ep(0x0a00_0002, Some(5001)),
            ..Filter::default()
        }));
        assert!(!by(Filter {
            external: ep(0xc0a8_010b, None),
            ..Filter::default()
        }));
        assert!(!by(Filter {
            remote: ep(0x0808_0404, None),
            ..Filter::default()
        }));
    }
}
