//! The signaling socket below the protocol: the HTTP/1.1 upgrade, and every server message
//! written as frames of at most [`MAX_FRAME`] bytes.
//!
//! tungstenite copies each frame it writes into its write buffer, and that buffer keeps the
//! capacity of the largest frame it ever held: one large message (the `joined` snapshot of a
//! big call: about 75 bytes per participant) pinned that much memory per socket for the
//! socket's life (docs/BENCHMARKS.md, *Memory per audio listener, control plane*). A message
//! longer than [`MAX_FRAME`] therefore goes out as a text frame and continuation frames
//! (RFC 6455 section 5.4, fragmentation), which every WebSocket client reassembles into the
//! same message. axum's `WebSocket` writes whole messages only, so this module takes the
//! upgraded connection from hyper itself: axum's `WebSocketUpgrade` still validates the
//! request (the same rejections), [`accept`] answers 101 and wraps the connection in
//! tokio-tungstenite (the version axum uses), whose frame API writes the fragments.

use std::convert::Infallible;
use std::future::Future;

use axum::body::Body;
use axum::extract::ws::{Utf8Bytes, WebSocketUpgrade};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use tokio_tungstenite_axum::WebSocketStream;
use tungstenite::protocol::frame::coding::{Data, OpCode};
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::{Role, WebSocketConfig};
use tungstenite::Bytes;

/// One upgraded signaling socket.
pub type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// The largest frame payload the server writes; longer messages are fragmented. Small enough
/// that the write buffer each socket keeps stays a few KiB, large enough that a message needs
/// few frames (a `joined` snapshot of 600 participants: about 22).
pub const MAX_FRAME: usize = 2 << 10;

/// hyper's handle on the connection's upgrade, cloned before axum's `WebSocketUpgrade` (which
/// takes it out of the request) validates the request: put this extractor before it.
#[derive(Debug)]
pub struct RawUpgrade(Option<OnUpgrade>);

impl<S: Send + Sync> FromRequestParts<S> for RawUpgrade {
    type Rejection = Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Infallible> {
        Ok(RawUpgrade(parts.extensions.get::<OnUpgrade>().cloned()))
    }
}

/// Answers a request axum's `validated` upgrade accepted with 101 and runs `callback` on the
/// socket once the connection is upgraded (never, if the upgrade fails: `callback` is dropped).
/// `headers` are the request's (its `Sec-WebSocket-Key`).
pub fn accept<C, Fut>(
    raw: RawUpgrade,
    validated: WebSocketUpgrade,
    headers: &HeaderMap,
    config: WebSocketConfig,
    callback: C,
) -> Response
where
    C: FnOnce(Socket) -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    // axum checked the method, `Connection`, `Upgrade`, the version and that the key and the
    // upgrade are there; it never upgrades itself (its `on_upgrade` is not called).
    drop(validated);
    let (Some(on_upgrade), Some(key)) = (raw.0, headers.get(header::SEC_WEBSOCKET_KEY)) else {
        return StatusCode::UPGRADE_REQUIRED.into_response();
    };
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let Ok(accept) = HeaderValue::from_str(&accept) else {
        // Base64 is always a valid header value; answered rather than assumed.
        return StatusCode::INTERNAL_SERVER_ERROR.into_response();
    };
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        callback(socket).await;
    });
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    h.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    response
}

/// The frames of one text message: a single final text frame when it fits in `max` bytes,
/// else a text frame and continuation frames of at most `max` bytes each, the last one final.
/// Each cut falls on a character boundary, so every fragment is valid UTF-8 by itself.
/// `max` below 4 (the longest UTF-8 character) counts as 4.
pub fn frames(text: Utf8Bytes, max: usize) -> Frames {
    Frames {
        text: Bytes::from(text),
        at: 0,
        max: max.max(4),
        done: false,
    }
}

/// The iterator of [`frames`].
#[derive(Debug)]
pub struct Frames {
    /// The message (valid UTF-8).
    text: Bytes,
    /// Where the next frame starts.
    at: usize,
    /// The largest payload of a frame (at least 4).
    max: usize,
    /// Whether the final frame was made.
    done: bool,
}

impl Iterator for Frames {
    type Item = Frame;

    fn next(&mut self) -> Option<Frame> {
        if self.done {
            return None;
        }
        let len = self.text.len();
        let start = self.at;
        let mut end = start.saturating_add(self.max).min(len);
        // Back off continuation bytes (10xxxxxx) to a character's first byte; at most 3, and
        // `max` is at least 4, so the frame is never empty unless the message is.
        while end < len && end > start && self.text[end] & 0xC0 == 0x80 {
            end -= 1;
        }
        let opcode = if start == 0 {
            Data::Text
        } else {
            Data::Continue
        };
        let last = end == len;
        self.done = last;
        self.at = end;
        Some(Frame::message(
            self.text.slice(start..end),
            OpCode::Data(opcode),
            last,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(text: &str, max: usize) -> Vec<Frame> {
        frames(Utf8Bytes::from(text), max).collect()
    }

    #[test]
    fn a_short_message_is_one_final_text_frame() {
        for text in ["", "x", &"a".repeat(MAX_FRAME)] {
            let f = split(text, MAX_FRAME);
            assert_eq!(f.len(), 1, "{} bytes", text.len());
            assert_eq!(f[0].header().opcode, OpCode::Data(Data::Text));
            assert!(f[0].header().is_final);
            assert_eq!(f[0].payload(), text.as_bytes());
        }
    }

    #[test]
    fn a_long_message_is_bounded_fragments_that_reassemble_it() {
        // Mixed widths (1 to 4 bytes per character), so cuts land inside characters.
        let text: String = "aé€😀".repeat(3000);
        for max in [4, 5, 7, 1000, MAX_FRAME] {
            let f = split(&text, max);
            assert!(f.len() > 1, "max {max}");
            let mut whole = Vec::new();
            for (i, frame) in f.iter().enumerate() {
                let h = frame.header();
                let want = if i == 0 { Data::Text } else { Data::Continue };
                assert_eq!(h.opcode, OpCode::Data(want), "frame {i}, max {max}");
                assert_eq!(h.is_final, i == f.len() - 1, "frame {i}, max {max}");
                assert!(!frame.payload().is_empty(), "frame {i}, max {max}");
                assert!(frame.payload().len() <= max, "frame {i}, max {max}");
                assert!(std::str::from_utf8(frame.payload()).is_ok(), "frame {i}");
                whole.extend_from_slice(frame.payload());
            }
            assert_eq!(whole, text.as_bytes(), "max {max}");
        }
    }

    #[test]
    fn a_max_below_one_character_still_makes_progress() {
        let f = split("😀😀", 1);
        assert_eq!(f.len(), 2);
        assert!(f.iter().all(|f| f.payload().len() == 4));
    }
}
