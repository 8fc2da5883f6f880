//! The fuzz targets, one module each.

pub mod config;
pub mod identity;
pub mod json_api;
pub mod lua;
