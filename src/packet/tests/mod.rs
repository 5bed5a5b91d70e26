//! Tests of the packet views across modules: golden cross-checks against an independent parser
//! (etherparse), RFC 1624 incremental checksum updates against full recomputation, and random
//! buffers through every constructor and accessor. Small per-module unit tests stay beside their
//! code; the IPv4 view's larger suite is here.

mod fuzz;
mod golden;
mod incremental;
mod ipv4;

use proptest::prelude::*;

/// 16-bit values biased toward the one's complement edge cases (shared with `checksum`'s tests).
pub(super) fn word16() -> impl Strategy<Value = u16> {
    prop_oneof![
        Just(0u16),
        Just(0xFFFF),
        Just(1),
        Just(0xFFFE),
        any::<u16>()
    ]
}
