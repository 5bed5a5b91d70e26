//! Engine test suite: golden translations checked with an independent parser (etherparse) and
//! full checksum recomputation, plus robustness (truncation, fuzz, property) tests.

mod util;

mod eventlog;
mod floods;
mod frag;
mod hostile;
mod icmp;
mod limits;
mod listing;
mod mapping;
mod mtu;
mod multi;
mod reload;
mod robust;
mod rss;
mod rst;
mod tcp;
