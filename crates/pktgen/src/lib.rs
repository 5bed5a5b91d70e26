//! natgw's benchmark packet generator and sink on AF_XDP (natgw-kernel's sockets and XDP
//! loader), usable on their own on a real box (`natgw-bench gen`, `natgw-bench sink`) and
//! as a library by a driver that runs them and reads their reports ([`generator::run`],
//! [`sink::run`]; `json()` gives the same JSON as `--json`).
//!
//! Bounded everywhere: a fixed UMEM per queue, batches of at most [`generator::MAX_BATCH`],
//! per-flow state allocated once ([`flows::MAX_FLOWS`]), a fixed latency histogram; no
//! allocation per packet; every frame that is not a bench frame is counted by reason.
//!
//! `frame.rs` builds the templates and parses/reflects frames, `flows.rs` maps flow ids to
//! source addresses and ports, `pace.rs` paces by the clock, `track.rs` does the sequence
//! accounting, `latency.rs` the histogram, `port.rs` the AF_XDP sockets, `generator.rs` and
//! `sink.rs` the two tools, `json.rs` their reports, `cli.rs` the command line; `forwarder.rs` is the raw AF_XDP
//! forwarder and `compare.rs` the side-by-side comparison (`natgw-bench compare`).

pub mod cli;
pub mod compare;
pub mod flows;
pub mod forwarder;
pub mod frame;
pub mod generator;
pub mod json;
pub mod latency;
pub mod pace;
pub mod plot;
pub mod port;
pub mod sink;
pub mod track;
