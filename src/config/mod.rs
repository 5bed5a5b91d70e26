//! Configuration: one TOML file turned into a validated [`Config`].

mod model;
pub use model::*;
