//! The control plane's pure state machines, compiled here from their source files.
//!
//! The fuzz targets need only `call.rs` (with `policy.rs`) and `ring.rs` of greenroom-control.
//! Depending on the whole crate would build its server stack (axum, str0m, rusqlite, ...) with
//! coverage instrumentation, which takes most of a fuzz build; these modules use nothing of the
//! crate but each other, `greenroom-proto` and a few small crates, so they are compiled by path.
//! If one of them starts using another module of greenroom-control, add it here (or depend on
//! the crate instead).

#![allow(missing_docs)]

#[path = "../../control/src/policy.rs"]
pub mod policy;

#[path = "../../control/src/call.rs"]
pub mod call;

#[path = "../../control/src/ring.rs"]
pub mod ring;
