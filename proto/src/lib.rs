//! Greenroom's wire types: ids, capabilities, roles, call types, the signaling messages on
//! `/v1/signal`, call events, and the error body of the HTTP API.
//!
//! Everything here is plain data with serde; there is no I/O. The server, the browser SDK (by
//! convention, following docs/PROTOCOL.md), the load tester and the tests all speak these types.

mod model;
mod ring;
mod signal;
mod typescript;

pub use model::{validate_id, CallCid, CallType, Capability, CapabilitySet, Role, TrackSource};
pub use ring::*;
pub use signal::*;
pub use typescript::typescript_declarations;

/// Protocol version announced in `joined`; bumped on incompatible wire changes.
///
/// Version 2 added the optional `request_id` on client messages, echoed in direct replies.
pub const PROTOCOL_VERSION: u32 = 2;

/// Errors raised while parsing wire values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtoError {
    /// A capability name that is not one of the known ones.
    #[error("unknown capability `{0}`")]
    UnknownCapability(String),
    /// A role name that is not one of the known ones.
    #[error("unknown role `{0}`")]
    UnknownRole(String),
    /// A call type that is not one of the known ones.
    #[error("unknown call type `{0}`")]
    UnknownCallType(String),
    /// A call cid that is not `type:id`.
    #[error("invalid call cid `{0}`: expected `type:id`")]
    InvalidCid(String),
    /// An id with characters outside `[A-Za-z0-9_.@-]` or of the wrong length.
    #[error("invalid id `{0}`: 1 to 64 characters of A-Z a-z 0-9 _ . @ -")]
    InvalidId(String),
    /// A `request_id` with characters outside `[A-Za-z0-9_.:-]` or of the wrong length.
    #[error("invalid request_id `{0}`: 1 to 64 characters of A-Z a-z 0-9 _ - . :")]
    InvalidRequestId(String),
}
