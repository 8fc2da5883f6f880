//! Integration tests of floodgate-core through its public API.
//!
//! One test binary (one link on a small machine) with a module per concern:
//! the algorithms' property tests and the memory store as its users see it.

mod algorithm_properties;
mod memory_store;
