//! The fuzz targets in `cargo test` (and so in CI): one test binary (one
//! link on a small machine) with a module per kind of replay.
//!
//! - `short_pass`: a few thousand inputs of every target from fixed seeds;
//! - `regressions`: every input file under `regressions/<target>/` (crashes
//!   the coverage-guided engine found), replayed;
//! - `found_bugs`: hand-written reproducers of the bugs the targets found
//!   in code this crate does not own, each guarding its fix.

mod found_bugs;
mod regressions;
mod short_pass;
