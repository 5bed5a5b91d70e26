//! NAT engine.
