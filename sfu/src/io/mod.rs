//! Batched UDP I/O: the egress queue and `sendmmsg`/GSO sender ([`batch`]), and the floor
//! measurement of what one forwarded packet costs at least on this machine ([`floor`]).

pub mod batch;
pub mod floor;
