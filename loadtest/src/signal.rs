//! The signaling layer: a WebSocket client for `/v1/signal` speaking the
//! [`greenroom_proto`] message types.

use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{SplitSink, SplitStream};
use futures_util::{SinkExt, StreamExt};
use greenroom_proto::{ClientMessage, Quality, ServerMessage, SubscribedTrack};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::error::{BotError, Result};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Builds the `/v1/signal` URL from a server base (`http://`, `https://`, `ws://` or `wss://`,
/// with or without the path) and a token.
pub fn signal_url(base: &str, token: &str) -> String {
    let base = base.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if base.starts_with("ws://") || base.starts_with("wss://") {
        base.to_owned()
    } else {
        format!("ws://{base}")
    };
    let base = if base.ends_with("/v1/signal") {
        base
    } else {
        format!("{base}/v1/signal")
    };
    format!("{base}?token={}", encode_query(token))
}

/// Percent-encodes everything outside the URL-safe set (a JWT needs none).
fn encode_query(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A connected signaling socket.
pub struct SignalClient {
    sender: SignalSender,
    receiver: SignalReceiver,
}

impl SignalClient {
    /// Opens `GET /v1/signal?token=...` on `base` (see [`signal_url`]).
    ///
    /// An HTTP error (e.g. 401 for a bad token) is a [`BotError::WebSocket`].
    pub async fn connect(base: &str, token: &str, timeout: Duration) -> Result<SignalClient> {
        let url = signal_url(base, token);
        let (ws, _) = tokio::time::timeout(timeout, tokio_tungstenite::connect_async(url))
            .await
            .map_err(|_| BotError::timeout("WebSocket connect", timeout))?
            .map_err(Box::new)?;
        let (sink, stream) = ws.split();
        Ok(SignalClient {
            sender: SignalSender {
                sink: Arc::new(tokio::sync::Mutex::new(sink)),
            },
            receiver: SignalReceiver { stream },
        })
    }

    /// Sends a message.
    pub async fn send(&self, msg: &ClientMessage) -> Result<()> {
        self.sender.send(msg).await
    }

    /// The next server message; see [`SignalReceiver::recv`].
    pub async fn recv(&mut self, timeout: Duration) -> Result<ServerMessage> {
        self.receiver.recv(timeout).await
    }

    /// Reads until `f` returns `Some`; see [`SignalReceiver::wait_for`].
    pub async fn wait_for<T>(
        &mut self,
        timeout: Duration,
        f: impl FnMut(&ServerMessage) -> Option<T>,
    ) -> Result<T> {
        self.receiver.wait_for(timeout, f).await
    }

    /// A clonable sending half.
    pub fn sender(&self) -> SignalSender {
        self.sender.clone()
    }

    /// Splits into a clonable sender and the receiver.
    pub fn into_split(self) -> (SignalSender, SignalReceiver) {
        (self.sender, self.receiver)
    }
}

/// The sending half of a signaling socket; cheap to clone.
#[derive(Clone)]
pub struct SignalSender {
    sink: Arc<tokio::sync::Mutex<SplitSink<Ws, Message>>>,
}

impl SignalSender {
    /// Sends a message as JSON text.
    pub async fn send(&self, msg: &ClientMessage) -> Result<()> {
        let text = serde_json::to_string(msg)?;
        self.send_raw(text).await
    }

    /// Sends arbitrary text (for tests of malformed input).
    pub async fn send_raw(&self, text: String) -> Result<()> {
        self.sink
            .lock()
            .await
            .send(Message::text(text))
            .await
            .map_err(|e| BotError::WebSocket(Box::new(e)))
    }

    /// Sends a close frame.
    pub async fn close(&self) -> Result<()> {
        self.sink
            .lock()
            .await
            .close()
            .await
            .map_err(|e| BotError::WebSocket(Box::new(e)))
    }
}

/// The receiving half of a signaling socket.
pub struct SignalReceiver {
    stream: SplitStream<Ws>,
}

impl SignalReceiver {
    /// The next message: `Ok(None)` when the socket closed, `Err` for a frame that is not a
    /// [`ServerMessage`] (the socket stays usable) or a socket error. Pings are answered by
    /// the WebSocket layer and skipped.
    pub async fn next(&mut self) -> Result<Option<ServerMessage>> {
        loop {
            let Some(frame) = self.stream.next().await else {
                return Ok(None);
            };
            match frame.map_err(Box::new)? {
                Message::Text(t) => return Ok(Some(serde_json::from_str(t.as_str())?)),
                Message::Binary(_) => {
                    return Err(BotError::Protocol(
                        "binary frame on the signal socket".into(),
                    ))
                }
                Message::Close(_) => return Ok(None),
                Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
            }
        }
    }

    /// The next message within `timeout`; [`BotError::Closed`] if the socket closed.
    pub async fn recv(&mut self, timeout: Duration) -> Result<ServerMessage> {
        match tokio::time::timeout(timeout, self.next()).await {
            Err(_) => Err(BotError::timeout("a server message", timeout)),
            Ok(Ok(Some(m))) => Ok(m),
            Ok(Ok(None)) => Err(BotError::Closed),
            Ok(Err(e)) => Err(e),
        }
    }

    /// Reads messages until `f` returns `Some`, discarding the others; undecodable frames are
    /// skipped too.
    pub async fn wait_for<T>(
        &mut self,
        timeout: Duration,
        mut f: impl FnMut(&ServerMessage) -> Option<T>,
    ) -> Result<T> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv(left).await {
                Ok(m) => {
                    if let Some(t) = f(&m) {
                        return Ok(t);
                    }
                }
                Err(BotError::Json(e)) => tracing::warn!(error = %e, "undecodable server message"),
                Err(BotError::Timeout { .. }) => {
                    return Err(BotError::timeout("matching server message", timeout))
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// Answers subscriber offers in order (`answer` applies one and returns the answer SDP), then
/// asks `quality` once for each video track not asked before. `answered` runs after each answer
/// sent, `error` on each failure; a failed offer is skipped. Shared by every bot kind.
pub(crate) async fn answer_offers<F, Fut>(
    mut offers: tokio::sync::mpsc::UnboundedReceiver<(String, Vec<SubscribedTrack>)>,
    sender: SignalSender,
    quality: Option<Quality>,
    mut answer: F,
    answered: impl Fn(),
    error: impl Fn(String),
) where
    F: FnMut(String, Vec<SubscribedTrack>) -> Fut,
    Fut: std::future::Future<Output = Result<String>>,
{
    let mut asked = std::collections::HashSet::new();
    while let Some((sdp, tracks)) = offers.recv().await {
        let video: Vec<String> = tracks
            .iter()
            .filter(|t| !t.track.source.is_audio())
            .map(|t| t.track.track_id.clone())
            .collect();
        match answer(sdp, tracks).await {
            Ok(sdp) => match sender.send(&ClientMessage::SubscriberAnswer { sdp }).await {
                Ok(()) => answered(),
                Err(e) => error(format!("sending subscriber_answer: {e}")),
            },
            Err(e) => {
                error(format!("applying subscriber_offer: {e}"));
                continue;
            }
        }
        let Some(quality) = quality else { continue };
        for track_id in video {
            if asked.insert(track_id.clone()) {
                if let Err(e) = sender
                    .send(&ClientMessage::SetQuality { track_id, quality })
                    .await
                {
                    error(format!("sending set_quality: {e}"));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalised() {
        assert_eq!(
            signal_url("http://127.0.0.1:7880", "a.b-c_d"),
            "ws://127.0.0.1:7880/v1/signal?token=a.b-c_d"
        );
        assert_eq!(signal_url("https://h/", "t"), "wss://h/v1/signal?token=t");
        assert_eq!(
            signal_url("ws://h:1/v1/signal", "t"),
            "ws://h:1/v1/signal?token=t"
        );
        assert_eq!(
            signal_url("h:1", "a b+"),
            "ws://h:1/v1/signal?token=a%20b%2B"
        );
    }
}
