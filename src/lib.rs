//! kiwi-stackbuild: store KIWI root trees as OCI images and build images
//! from them again. The binary is a thin layer over this library.

// The one exception, with its soundness argued there: tools::bind_lifetime.
#![deny(unsafe_code)]

pub mod cli;
pub mod derive;
pub mod description;
pub mod fault;
pub mod fsutil;
pub mod interrupt;
pub mod labels;
pub mod layer;
pub mod listing;
pub mod obs;
pub mod oci;
pub mod progress;
pub mod reference;
pub mod registry;
pub mod restore;
pub mod stash;
pub mod store;
pub mod tools;
pub mod transfer;
pub mod workflow;
