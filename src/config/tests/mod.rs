//! Configuration test suite: every key path and message a rejected file reports, defaults, the
//! shipped examples, and robustness against arbitrary text. One file per concern, as in
//! `nat/tests`; the fixtures are in `util`.

mod util;

mod bounds;
mod control;
mod defaults;
mod errors;
mod examples;
mod externals;
mod mappings;
mod realm;
mod robust;
mod sections;
mod values;
