//! Batched UDP I/O: what a shard waits on and how others reach it ([`inbox`]), the egress queue and `sendmmsg`/GSO sender ([`batch`]), the pooled
//! ingress batches a shard gets from the receive thread ([`rx`]), the batched `recvmmsg` read
//! of the receive threads ([`recv`]), and the floor measurement of what one forwarded packet
//! costs at least on this machine ([`floor`]).

pub mod batch;
pub mod floor;
pub(crate) mod inbox;
pub(crate) mod recv;
pub mod rx;
