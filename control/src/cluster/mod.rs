//! Cluster mode on Redis (off by default): the node registry, atomic call placement, and
//! serving a call homed on another node (HTTP proxy, signaling relay). docs/SCALING.md has
//! the design.

mod config;

pub use config::ClusterConfig;
