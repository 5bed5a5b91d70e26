//! NAT engine.

pub mod ports;
pub mod rng;
pub mod table;
