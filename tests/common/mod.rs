//! Helpers shared by the integration tests: `mod common;` in a test file.

// Each test crate uses only some of the helpers.
#![allow(dead_code)]

pub mod archive;
pub mod chain;
pub mod crafted;
pub mod differential;
pub mod fixture;
pub mod images;
pub mod layers;
pub mod registry;
pub mod tree;
