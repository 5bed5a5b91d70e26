//! Tests of the packet views across modules: golden cross-checks against an independent parser
//! (etherparse), RFC 1624 incremental checksum updates against full recomputation, and random
//! buffers through every constructor and accessor. Small per-module unit tests stay beside their
//! code; the IPv4 view's larger suite is here.

mod fuzz;
mod golden;
mod incremental;
mod ipv4;
