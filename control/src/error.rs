//! The API error type: every failure becomes an HTTP status and an [`ErrorBody`] with a
//! machine-readable code (and a `signal` `error` message on the WebSocket).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use greenroom_proto::{Capability, ErrorBody, ErrorCode};

use crate::auth::AuthError;
use crate::call::CallError;

/// An API failure.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// Malformed JSON or missing fields.
    #[error("invalid JSON: {0}")]
    InvalidJson(String),
    /// Well-formed but wrong values.
    #[error("{0}")]
    BadRequest(String),
    /// Token problems.
    #[error(transparent)]
    Auth(#[from] AuthError),
    /// The token is limited to another call.
    #[error("this token is limited to call {0}")]
    WrongCall(String),
    /// No such call or object.
    #[error("{0} not found")]
    NotFound(String),
    /// A refused call transition.
    #[error(transparent)]
    Call(#[from] CallError),
    /// A body or message over the limit.
    #[error("payload too large")]
    TooLarge,
    /// The media plane refused.
    #[error("media: {0}")]
    Media(String),
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// A signaling message of a type the server does not know.
    #[error("{0}")]
    UnknownMessage(String),
    /// The socket already joined a call.
    #[error("this connection already joined a call")]
    AlreadyJoined,
    /// The socket sends messages faster than allowed; the message was dropped.
    #[error("rate limited: at most {0} messages per second (burst {1}); message dropped")]
    RateLimited(u32, u32),
    /// The user holds as many signaling sockets as allowed.
    #[error("too many connections: at most {0} signaling sockets per user")]
    TooManyConnections(usize),
    /// The token lacks a right that has no capability (e.g. an admin-only route).
    #[error("{0}")]
    Forbidden(String),
    /// Cluster mode: the call cannot be placed or reached now.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

impl ApiError {
    /// The status and body of this error.
    pub fn parts(&self) -> (StatusCode, ErrorBody) {
        let (status, code, capability) = match self {
            ApiError::InvalidJson(_) => (StatusCode::BAD_REQUEST, ErrorCode::InvalidJson, None),
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, ErrorCode::BadRequest, None),
            ApiError::Auth(AuthError::Expired) => {
                (StatusCode::UNAUTHORIZED, ErrorCode::TokenExpired, None)
            }
            ApiError::Auth(AuthError::UnknownKey(_)) => {
                (StatusCode::UNAUTHORIZED, ErrorCode::UnknownKey, None)
            }
            ApiError::Auth(AuthError::Sign(_)) => {
                (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, None)
            }
            ApiError::Auth(_) => (StatusCode::UNAUTHORIZED, ErrorCode::Unauthorized, None),
            ApiError::WrongCall(_) => (StatusCode::FORBIDDEN, ErrorCode::WrongCall, None),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, ErrorCode::NotFound, None),
            ApiError::Call(e) => match e {
                CallError::MissingCapability(c) => (
                    StatusCode::FORBIDDEN,
                    ErrorCode::MissingCapability,
                    Some(*c),
                ),
                CallError::Blocked(_) => (StatusCode::FORBIDDEN, ErrorCode::Blocked, None),
                CallError::Ended => (StatusCode::FORBIDDEN, ErrorCode::CallEnded, None),
                CallError::Backstage => (
                    StatusCode::FORBIDDEN,
                    ErrorCode::Backstage,
                    Some(Capability::JoinBackstage),
                ),
                CallError::NotRequestable(c) => {
                    (StatusCode::FORBIDDEN, ErrorCode::NotRequestable, Some(*c))
                }
                CallError::UnknownParticipant(_) => {
                    (StatusCode::NOT_FOUND, ErrorCode::NotFound, None)
                }
                CallError::BadRequest(_) => (StatusCode::BAD_REQUEST, ErrorCode::BadRequest, None),
            },
            ApiError::TooLarge => (StatusCode::PAYLOAD_TOO_LARGE, ErrorCode::TooLarge, None),
            ApiError::Media(_) => (StatusCode::BAD_REQUEST, ErrorCode::MediaError, None),
            ApiError::ShuttingDown => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::ShuttingDown,
                None,
            ),
            ApiError::UnknownMessage(_) => {
                (StatusCode::BAD_REQUEST, ErrorCode::UnknownMessage, None)
            }
            ApiError::AlreadyJoined => (StatusCode::CONFLICT, ErrorCode::AlreadyJoined, None),
            ApiError::RateLimited(..) => {
                (StatusCode::TOO_MANY_REQUESTS, ErrorCode::RateLimited, None)
            }
            ApiError::TooManyConnections(_) => (
                StatusCode::TOO_MANY_REQUESTS,
                ErrorCode::TooManyConnections,
                None,
            ),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, ErrorCode::Unauthorized, None),
            ApiError::Cluster(crate::cluster::ClusterError::Config(_)) => {
                (StatusCode::INTERNAL_SERVER_ERROR, ErrorCode::Internal, None)
            }
            ApiError::Cluster(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::ClusterUnavailable,
                None,
            ),
        };
        (
            status,
            ErrorBody {
                code,
                message: self.to_string(),
                capability,
            },
        )
    }

    /// The body alone.
    pub fn body(&self) -> ErrorBody {
        self.parts().1
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, body) = self.parts();
        (status, Json(body)).into_response()
    }
}
