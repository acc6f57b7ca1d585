//! The error type of the bots.

use std::time::Duration;

use greenroom_proto::ErrorBody;

/// Everything that can go wrong in a bot. Bad server input is reported here, never by a panic.
#[derive(Debug, thiserror::Error)]
pub enum BotError {
    /// The WebRTC stack failed.
    #[error("webrtc: {0}")]
    WebRtc(#[from] webrtc::error::Error),
    /// Something did not happen in time.
    #[error("timed out after {after:?} waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: String,
        /// How long.
        after: Duration,
    },
    /// The WebSocket failed.
    #[error("websocket: {0}")]
    WebSocket(#[from] Box<tokio_tungstenite::tungstenite::Error>),
    /// A message could not be encoded or decoded.
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// The signaling connection is closed.
    #[error("signaling connection closed")]
    Closed,
    /// The server answered a request with an `error` message.
    #[error("server error {:?}: {}", .0.code, .0.message)]
    Server(ErrorBody),
    /// The peer sent something that breaks the protocol (bad SDP, unknown mid, ...).
    #[error("protocol: {0}")]
    Protocol(String),
    /// The peer connection failed or closed.
    #[error("peer connection {0}")]
    ConnectionFailed(String),
    /// A light bot's str0m peer failed.
    #[error("str0m: {0}")]
    Rtc(#[from] str0m::RtcError),
    /// A socket operation failed.
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
}

impl BotError {
    /// A [`BotError::Timeout`].
    pub fn timeout(what: impl Into<String>, after: Duration) -> Self {
        BotError::Timeout {
            what: what.into(),
            after,
        }
    }
}

/// Result with a [`BotError`].
pub type Result<T, E = BotError> = std::result::Result<T, E>;
