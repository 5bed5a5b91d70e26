//! natgw: a poll-mode NAT44 gateway on AF_XDP.
//!
//! Data flows one way: `config` -> tables; frames -> `nat::Engine` -> verdicts -> rings
//! (`dataplane`). `control` reads counters and sends commands to the workers.

pub mod config;
pub mod control;
pub mod dataplane;
pub mod log;
pub mod nat;
pub mod packet;
