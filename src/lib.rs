//! kiwi-stackbuild: store KIWI root trees as OCI images and build images
//! from them again. The binary is a thin layer over this library.

// The one exception, with its soundness argued there: tools::bind_lifetime.
#![deny(unsafe_code)]

pub mod cli;
pub(crate) mod derive;
pub mod description;
pub(crate) mod fault;
pub(crate) mod fsutil;
pub mod inputs;
pub mod interrupt;
pub(crate) mod labels;
pub mod layer;
pub mod listing;
pub(crate) mod obs;
pub mod oci;
pub(crate) mod progress;
pub mod reference;
pub mod registry;
pub mod restore;
pub(crate) mod stash;
pub mod store;
pub mod suggest;
pub mod tools;
pub(crate) mod transfer;
pub(crate) mod workflow;
