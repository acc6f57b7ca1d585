//! Greenroom's control plane.

pub mod history;
pub mod ring;
