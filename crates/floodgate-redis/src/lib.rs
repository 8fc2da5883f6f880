//! The Redis store for floodgate.
